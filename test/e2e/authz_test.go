package e2e

import (
	"context"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
)

// envoyCheck is the CheckRequest an Envoy ingress sends for a GET of path
// with a bearer token, for a workload labelled app=documents in prod.
func envoyCheck(path, token string) *authv3.CheckRequest {
	return &authv3.CheckRequest{Attributes: &authv3.AttributeContext{
		Source: &authv3.AttributeContext_Peer{Principal: "spiffe://e2e.test/ns/istio-system/sa/ingress",
			Address: &corev3.Address{Address: &corev3.Address_SocketAddress{SocketAddress: &corev3.SocketAddress{Address: "127.0.0.1"}}}},
		Destination: &authv3.AttributeContext_Peer{
			Address: &corev3.Address{Address: &corev3.Address_SocketAddress{SocketAddress: &corev3.SocketAddress{Address: "127.0.0.1", PortSpecifier: &corev3.SocketAddress_PortValue{PortValue: 8080}}}}},
		Request: &authv3.AttributeContext_Request{Http: &authv3.AttributeContext_HttpRequest{
			Method: "GET", Path: path, Host: "documents.e2e", Headers: map[string]string{"authorization": "Bearer " + token}}},
		ContextExtensions: map[string]string{"namespace": "prod", "labels": "app=documents"},
	}}
}

func authzClient(t *testing.T, sock string) authv3.AuthorizationClient {
	t.Helper()
	conn, err := grpc.NewClient("unix:"+sock, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return authv3.NewAuthorizationClient(conn)
}

// TestAuthzExtAuthz: Envoy's ext_authz through go-control-plane's
// generated client against the real binaries — "moatless authz" over
// policy files and "moatless server --ext-authz" over the policy set in
// force — allowing the owner (with the policy's header upstream) and
// denying anyone else with the policy's 404.
func TestAuthzExtAuthz(t *testing.T) {
	jwks, token := regoIssuer(t)
	dir := ownershipPolicies(t, jwks)

	expect := func(t *testing.T, c authv3.AuthorizationClient) {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		resp, err := c.Check(ctx, envoyCheck("/documents/d1", token("alice")))
		if err != nil || codes.Code(resp.GetStatus().GetCode()) != codes.OK {
			t.Fatalf("owner: %v %v", resp, err)
		}
		owner := ""
		for _, h := range resp.GetOkResponse().GetHeaders() {
			if h.GetHeader().GetKey() == "x-document-owner" {
				owner = h.GetHeader().GetValue()
			}
		}
		if owner != "alice" {
			t.Fatalf("headers upstream: %v", resp.GetOkResponse().GetHeaders())
		}
		resp, err = c.Check(ctx, envoyCheck("/documents/d1", token("bob")))
		if err != nil || codes.Code(resp.GetStatus().GetCode()) != codes.PermissionDenied || resp.GetDeniedResponse().GetStatus().GetCode() != 404 {
			t.Fatalf("non-owner: %v %v", resp, err)
		}
	}

	t.Run("standalone", func(t *testing.T) {
		sock := filepath.Join(shortTempDir(t), "authz.sock")
		p := start(t, "authz", nil, "authz", "-f", dir, "--listen", "unix:"+sock, "--admin", freeAddr(t))
		waitFor(t, 30*time.Second, "the authz socket", func() bool {
			if p.exited() {
				t.Fatalf("authz exited:\n%s", p.out.String())
			}
			return socketAccepts(sock)
		})
		expect(t, authzClient(t, sock))
	})

	t.Run("server", func(t *testing.T) {
		sock := filepath.Join(shortTempDir(t), "authz.sock")
		pl := &plane{t: t, dataDir: t.TempDir(), addr: freeAddr(t)}
		pl.env = []string{"MOATLESS_ADDR=" + pl.addr, "MOATLESS_DATA_DIR=" + pl.dataDir, "MOATLESS_TOKEN=", "MOATLESS_CACERT="}
		pl.server = start(t, "server", pl.env, "server", "--data-dir", pl.dataDir, "--trust-domain", trustDomain, "--listen", pl.addr, "--ext-authz", "unix:"+sock)
		waitFor(t, 30*time.Second, "the server's ext_authz socket", func() bool {
			if pl.server.exited() {
				t.Fatalf("server exited:\n%s", pl.server.out.String())
			}
			_, err := os.Stat(filepath.Join(pl.dataDir, "bundle.pem"))
			return err == nil && socketAccepts(sock)
		})
		c := authzClient(t, sock)
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if resp, err := c.Check(ctx, envoyCheck("/documents/d1", token("alice"))); err != nil || codes.Code(resp.GetStatus().GetCode()) != codes.PermissionDenied {
			t.Fatalf("before any policy: %v %v", resp, err)
		}
		waitFor(t, 30*time.Second, "the admin API", func() bool {
			code, _, _ := run(t, pl.env, "", "policy", "status")
			return code == 0
		})
		pl.admin("policy", "apply", "-f", dir)
		expect(t, c)
		// The mesh's revocations reach ext_authz: Envoy accepted the
		// ingress's certificate, which it cannot know is revoked; the
		// owner's allow no longer holds for it.
		pl.admin("revoke", "--force", "--spiffe-id", "spiffe://"+trustDomain+"/ns/istio-system/sa/ingress")
		var resp *authv3.CheckResponse
		waitFor(t, 10*time.Second, "the revocation to reach ext_authz", func() bool {
			var err error
			resp, err = c.Check(ctx, envoyCheck("/documents/d1", token("alice")))
			return err == nil && codes.Code(resp.GetStatus().GetCode()) == codes.PermissionDenied
		})
		if got := resp.GetStatus().GetMessage(); !strings.Contains(got, "revoked") {
			t.Fatalf("a revoked source's denial says %q", got)
		}
	})
}

// socketAccepts reports whether a unix socket accepts connections. The
// file exists from bind(2), a moment before listen(2): a client that
// waited only for the file could be refused (seen as a flake).
func socketAccepts(sock string) bool {
	c, err := net.Dial("unix", sock)
	if err != nil {
		return false
	}
	c.Close()
	return true
}
