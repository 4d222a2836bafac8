package proxy

import (
	"context"
	"net"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	rpcstatus "google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/moatless/moatless/internal/policy"
	"github.com/moatless/moatless/internal/testpki"
)

// segmentAuthz is an ext_authz server (Envoy's gRPC Authorization
// service, go-control-plane's types) that decides on the path it is
// handed as such services usually do, segment by segment and
// case-sensitively: /admin and everything under /admin/ is denied.
// It records the paths it was asked about.
type segmentAuthz struct {
	authv3.UnimplementedAuthorizationServer
	mu    sync.Mutex
	asked []string
}

func (a *segmentAuthz) Check(_ context.Context, req *authv3.CheckRequest) (*authv3.CheckResponse, error) {
	p := req.GetAttributes().GetRequest().GetHttp().GetPath()
	a.mu.Lock()
	a.asked = append(a.asked, p)
	a.mu.Unlock()
	p, _, _ = strings.Cut(p, "?")
	code := codes.OK
	if p == "/admin" || strings.HasPrefix(p, "/admin/") {
		code = codes.PermissionDenied
	}
	return &authv3.CheckResponse{Status: &rpcstatus.Status{Code: int32(code)}}, nil
}

func (a *segmentAuthz) take() []string {
	a.mu.Lock()
	defer a.mu.Unlock()
	s := a.asked
	a.asked = nil
	return s
}

// extAuthzProvider serves srv on a loopback port until the test ends and
// returns an Options.Custom that asks it, as an ext_authz client does:
// the method, the path (Request.Path: the reading, then the query) and
// the host; anything but OK denies.
func extAuthzProvider(t *testing.T, srv authv3.AuthorizationServer) policy.CustomFunc {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	gs := grpc.NewServer()
	authv3.RegisterAuthorizationServer(gs, srv)
	go gs.Serve(l)
	t.Cleanup(gs.Stop)
	conn, err := grpc.NewClient("passthrough:///"+l.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	client := authv3.NewAuthorizationClient(conn)
	return func(provider string, r *policy.Request) (bool, string) {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		resp, err := client.Check(ctx, &authv3.CheckRequest{Attributes: &authv3.AttributeContext{
			Request: &authv3.AttributeContext_Request{Http: &authv3.AttributeContext_HttpRequest{Method: r.Method, Path: r.Path, Host: r.Host}},
		}})
		if err != nil {
			return false, "ext_authz: " + err.Error()
		}
		if c := resp.GetStatus().GetCode(); c != int32(codes.OK) {
			return false, "ext_authz: " + codes.Code(c).String()
		}
		return true, ""
	}
}

// A CUSTOM provider that is not Rego (Options.Custom: here a client of a
// real ext_authz server over gRPC) is asked about every reading of the
// path an app may serve, through a real sidecar on every transport and
// both server paths: "/admin;x" (Tomcat, Jetty, Spring), "/admin%2Fusers"
// (WSGI, PHP) and "//admin" (routers that merge slashes) are all /admin
// to some app, and a provider deciding on /admin denies each; the app
// never gets them. Other paths are asked about as forwarded (normalized,
// with the query). Before, the provider saw only the path as received,
// allowed all three, and the app served /admin.
func TestCustomProviderAskedEveryReading(t *testing.T) {
	forServerPaths(t, func(t *testing.T, sp serverPath) {
		ca := testpki.NewCA(t, "example.org")
		app := newRecordingApp(t)
		ext := &segmentAuthz{}
		docs := `apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: ext, namespace: prod}
spec:
  action: CUSTOM
  provider: {name: ext-authz}
  rules: [{}]
`
		parsed, err := policy.Parse(strings.NewReader(docs))
		if err != nil {
			t.Fatal(err)
		}
		set, err := policy.Compile(parsed, policy.Options{Custom: extAuthzProvider(t, ext)})
		if err != nil {
			t.Fatal(err)
		}
		_, inL := startEngineSidecar(t, ca, set, app.addr, true, sp.edit)
		addr := inL.Addr().String()
		cases := []struct {
			target string
			want   int
			asked  []string // in order; the provider stops at the first deny
		}{
			{"/public?q=1", 200, []string{"/public?q=1"}},
			{"/public/./x;v=1", 200, []string{"/public/x;v=1", "/public/x"}},
			{"/admin", 403, []string{"/admin"}},
			{"/admin;x", 403, []string{"/admin;x", "/admin"}},
			{"/admin%2Fusers?q=1", 403, []string{"/admin%2Fusers?q=1", "/admin/users?q=1"}},
			{"//admin", 403, []string{"//admin", "/admin"}},
			{"/%61dmin%5Cusers", 403, []string{"/admin%5Cusers", "/admin/users"}},
		}
		for _, tr := range attackTransports(ca) {
			t.Run(tr.name, func(t *testing.T) {
				for _, tc := range cases {
					ext.take()
					app.take()
					if code := tr.do(t, addr, tc.target, nil); code != tc.want {
						t.Errorf("GET %s: status %d, want %d", tc.target, code, tc.want)
					}
					if asked := ext.take(); !slices.Equal(asked, tc.asked) {
						t.Errorf("GET %s: the provider was asked about %q, want %q", tc.target, asked, tc.asked)
					}
					if seen := app.take(); tc.want != 200 && len(seen) > 0 {
						t.Errorf("GET %s: the app was sent %s", tc.target, seen[0].uri)
					}
				}
			})
		}
	})
}
