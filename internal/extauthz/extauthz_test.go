package extauthz

import (
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/moatless/moatless/internal/authn"
	"github.com/moatless/moatless/internal/policy"
	"github.com/moatless/moatless/internal/policy/policytest"
	"github.com/moatless/moatless/internal/testpki"
)

// regoSet loads internal/policy/testdata/rego (the example, a
// role-based and an ownership-based policy) with a RequestAuthentication
// for an issuer whose tokens sign signs.
func regoSet(t testing.TB) (*policy.Set, func(claims map[string]any) string) {
	t.Helper()
	jwks, sign := policytest.Issuer(t)
	var b policy.Bundle
	dir := policytest.RegoDir()
	entries, _ := os.ReadDir(dir)
	for _, e := range entries {
		if e.IsDir() {
			continue
		}
		c, err := os.ReadFile(filepath.Join(dir, e.Name()))
		if err != nil {
			t.Fatal(err)
		}
		if err := b.Add(e.Name(), c); err != nil {
			t.Fatal(err)
		}
	}
	if err := b.Add("jwt.yaml", []byte(fmt.Sprintf(`apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {name: jwt, namespace: prod}
spec:
  jwtRules:
  - issuer: https://idp.example
    jwks: '%s'
    outputClaimToHeaders: [{header: x-user, claim: sub}]
`, jwks))); err != nil {
		t.Fatal(err)
	}
	set, err := b.Compile(policy.Options{})
	if err != nil {
		t.Fatal(err)
	}
	return set, func(claims map[string]any) string {
		now := time.Now()
		claims["iss"], claims["iat"], claims["exp"] = "https://idp.example", now.Unix(), now.Add(time.Hour).Unix()
		return sign(claims)
	}
}

func quiet() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

// listen starts s on addr until the test ends and returns the address it
// listens on.
func listen(t *testing.T, s *Server, addr string, tlsConf *tls.Config, uids []uint32) net.Addr {
	t.Helper()
	l, creds, err := Listen(addr, tlsConf, uids)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); s.Serve(ctx, l, creds) }()
	t.Cleanup(func() { cancel(); <-done })
	return l.Addr()
}

// serve starts a Server on addr and returns a connected go-control-plane
// client.
func serve(t *testing.T, s *Server, addr string, tlsConf *tls.Config, uids []uint32, dial grpc.DialOption) authv3.AuthorizationClient {
	t.Helper()
	target := "passthrough:///" + listen(t, s, addr, tlsConf, uids).String()
	if strings.HasPrefix(addr, "unix:") {
		target = addr
	}
	conn, err := grpc.NewClient(target, dial)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return authv3.NewAuthorizationClient(conn)
}

// check builds an Envoy CheckRequest for an HTTP request at hour h (UTC).
func check(method, path string, headers map[string]string, labels string, at time.Time) *authv3.CheckRequest {
	return &authv3.CheckRequest{Attributes: &authv3.AttributeContext{
		Source: &authv3.AttributeContext_Peer{
			Principal: "spiffe://example.org/ns/istio-system/sa/ingress",
			Address:   &corev3.Address{Address: &corev3.Address_SocketAddress{SocketAddress: &corev3.SocketAddress{Address: "127.0.0.1", PortSpecifier: &corev3.SocketAddress_PortValue{PortValue: 40000}}}},
		},
		Destination: &authv3.AttributeContext_Peer{
			Address: &corev3.Address{Address: &corev3.Address_SocketAddress{SocketAddress: &corev3.SocketAddress{Address: "127.0.0.1", PortSpecifier: &corev3.SocketAddress_PortValue{PortValue: 8080}}}},
		},
		Request: &authv3.AttributeContext_Request{
			Time: timestamppb.New(at),
			Http: &authv3.AttributeContext_HttpRequest{Method: method, Path: path, Host: "records.example", Headers: headers, Protocol: "HTTP/1.1"},
		},
		ContextExtensions: map[string]string{"labels": labels},
	}}
}

func TestCheckThroughGeneratedClient(t *testing.T) {
	set, token := regoSet(t)
	v := authn.NewVerifier(authn.Options{Logger: quiet()})
	t.Cleanup(func() { v.Close() })
	var mu sync.Mutex
	var denied []Record
	s, err := New(Config{
		Policy:      func() (*policy.Set, uint64) { return set, 7 },
		Verifier:    v,
		Destination: policy.Destination{Namespace: "prod"},
		Logger:      quiet(),
		OnDecision: func(_ context.Context, r Record) {
			mu.Lock()
			denied = append(denied, r)
			mu.Unlock()
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	sock := "unix:" + filepath.Join(t.TempDir(), "authz.sock")
	client := serve(t, s, sock, nil, nil, grpc.WithTransportCredentials(insecure.NewCredentials()))

	today := time.Now().UTC()
	at := func(h int) time.Time {
		return time.Date(today.Year(), today.Month(), today.Day(), h, 15, 0, 0, time.UTC)
	}
	alice := "Bearer " + token(map[string]any{"sub": "alice", "role": "user"})
	bob := "Bearer " + token(map[string]any{"sub": "bob", "role": "user", "roles": []string{"viewer"}})
	cases := []struct {
		name    string
		req     *authv3.CheckRequest
		code    codes.Code
		status  int32
		headers map[string]string
	}{
		{"example_owner_in_hours", check("GET", "/records/alice/7", map[string]string{"authorization": alice, "x-sensitivity-level": "2"}, "app=records", at(10)), codes.OK, 0, map[string]string{"x-user": "alice"}},
		{"example_owner_out_of_hours", check("GET", "/records/alice/7", map[string]string{"authorization": alice, "x-sensitivity-level": "2"}, "app=records", at(22)), codes.PermissionDenied, 403, nil},
		{"example_above_clearance", check("GET", "/records/bob/7", map[string]string{"authorization": bob, "x-sensitivity-level": "2"}, "app=records", at(10)), codes.PermissionDenied, 403, nil},
		{"example_non_owner", check("GET", "/records/alice/7", map[string]string{"authorization": bob, "x-sensitivity-level": "1"}, "app=records", at(10)), codes.PermissionDenied, 403, nil},
		{"role_viewer_reads", check("GET", "/reports/q1", map[string]string{"authorization": bob}, "app=reports", at(10)), codes.OK, 0, map[string]string{"x-user": "bob"}},
		{"ownership_headers_upstream", check("GET", "/documents/d1", map[string]string{"authorization": alice}, "app=documents", at(10)), codes.OK, 0, map[string]string{"x-user": "alice", "x-document-owner": "alice"}},
		{"ownership_status_404", check("GET", "/documents/d1", map[string]string{"authorization": bob}, "app=documents", at(10)), codes.PermissionDenied, 404, nil},
		{"invalid_token_401", check("GET", "/documents/d1", map[string]string{"authorization": alice[:len(alice)-4] + "AAAA"}, "app=documents", at(10)), codes.Unauthenticated, 401, nil},
		{"bad_labels_denied", check("GET", "/documents/d1", map[string]string{"authorization": alice}, "app", at(10)), codes.PermissionDenied, 403, nil},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			resp, err := client.Check(context.Background(), c.req)
			if err != nil {
				t.Fatal(err)
			}
			if codes.Code(resp.GetStatus().GetCode()) != c.code {
				t.Fatalf("status %v (%s), want %v", codes.Code(resp.GetStatus().GetCode()), resp.GetStatus().GetMessage(), c.code)
			}
			if c.code != codes.OK {
				if got := int32(resp.GetDeniedResponse().GetStatus().GetCode()); got != c.status {
					t.Fatalf("HTTP status %d, want %d", got, c.status)
				}
				return
			}
			got := map[string]string{}
			for _, h := range resp.GetOkResponse().GetHeaders() {
				got[h.GetHeader().GetKey()] = h.GetHeader().GetValue()
				if h.GetAppendAction() != corev3.HeaderValueOption_OVERWRITE_IF_EXISTS_OR_ADD {
					t.Fatalf("header %s appends", h.GetHeader().GetKey())
				}
			}
			for k, v := range c.headers {
				if got[k] != v {
					t.Fatalf("headers %v, want %s=%s", got, k, v)
				}
			}
		})
	}
	mu.Lock()
	defer mu.Unlock()
	if len(denied) != 6 || denied[0].PolicyVersion != 7 || denied[0].Decision.Custom[0].Query != "data.microservices.authz.allow" || len(denied[0].Decision.Custom[0].InputSHA256) != 64 {
		t.Fatalf("recorded denials: %d %+v", len(denied), denied)
	}
}

// TestCheckFailsClosed: no policy loaded, and a provider whose
// evaluation fails, deny.
func TestCheckFailsClosed(t *testing.T) {
	var b policy.Bundle
	b.Add("m.rego", []byte("package m\nimport rego.v1\nallow := true if input.request.method == \"GET\"\nallow := false if input.request.path == \"/\"\n"))
	b.Add("p.yaml", []byte(`apiVersion: moatless.io/v1
kind: RegoProvider
metadata: {name: m}
spec: {query: data.m.allow}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: x, namespace: prod}
spec: {action: CUSTOM, provider: {name: m}, rules: [{}]}
`))
	conflicting, err := b.Compile(policy.Options{})
	if err != nil {
		t.Fatal(err)
	}
	for name, set := range map[string]*policy.Set{"no_policy": nil, "evaluation_error": conflicting} {
		t.Run(name, func(t *testing.T) {
			s, _ := New(Config{Policy: func() (*policy.Set, uint64) { return set, 1 }, Destination: policy.Destination{Namespace: "prod"}, Logger: quiet()})
			resp, err := s.Check(context.Background(), check("GET", "/", nil, "app=x", time.Now()))
			if err != nil || codes.Code(resp.GetStatus().GetCode()) != codes.PermissionDenied {
				t.Fatalf("%v %v", resp, err)
			}
		})
	}
}

// TestListeners: a unix socket admits only the allowed UIDs; TCP needs
// mutual TLS, and then serves the generated client presenting a
// certificate of the CA.
func TestListeners(t *testing.T) {
	set, _ := regoSet(t)
	s, _ := New(Config{Policy: func() (*policy.Set, uint64) { return set, 1 }, Destination: policy.Destination{Namespace: "prod"}, Logger: quiet()})
	req := check("GET", "/health", nil, "app=other", time.Now())
	req.Attributes.ContextExtensions["namespace"] = "default" // no RequestAuthentication there

	other := serve(t, s, "unix:"+filepath.Join(t.TempDir(), "a.sock"), nil, []uint32{uint32(os.Geteuid()) + 1}, grpc.WithTransportCredentials(insecure.NewCredentials()))
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	if _, err := other.Check(ctx, req); err == nil {
		t.Fatal("a UID not allowed was served")
	}

	if _, _, err := Listen("127.0.0.1:0", nil, nil); err == nil || !strings.Contains(err.Error(), "mutual TLS") {
		t.Fatalf("plaintext TCP: %v", err)
	}
	ca := testpki.NewCA(t, "example.org")
	srvCert := ca.ServerCert(t, "", "127.0.0.1")
	conf := &tls.Config{Certificates: []tls.Certificate{srvCert}, ClientCAs: ca.Pool(), ClientAuth: tls.RequireAndVerifyClientCert, MinVersion: tls.VersionTLS13}
	clientCert := ca.SVID(t, "spiffe://example.org/ns/istio-system/sa/ingress", 0).TLSCertificate()
	good := serve(t, s, "127.0.0.1:0", conf, nil, grpc.WithTransportCredentials(credentials.NewTLS(&tls.Config{RootCAs: ca.Pool(), ServerName: "127.0.0.1", Certificates: []tls.Certificate{clientCert}})))
	resp, err := good.Check(context.Background(), req)
	if err != nil || codes.Code(resp.GetStatus().GetCode()) != codes.OK {
		t.Fatalf("mTLS client: %v %v", resp, err)
	}
}
