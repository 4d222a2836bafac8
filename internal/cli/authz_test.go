package cli

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/moatless/moatless/internal/authn"
	"github.com/moatless/moatless/internal/policy"
	"github.com/moatless/moatless/internal/policy/policytest"
)

// TestAuthzPreparesEveryDestinationsJWTRules: "moatless authz" prepared
// the verifier with the JWT rules of the default destination only, so a
// route naming another workload (context_extensions) had its key set
// unfetched at start and dropped at every reload: its tokens were refused
// (keys_unavailable) until the refresher fetched the keys again. The
// verifier here is never started, so only Prepare fetches keys.
func TestAuthzPreparesEveryDestinationsJWTRules(t *testing.T) {
	type issuer struct {
		url  string
		sign func(map[string]any) string
	}
	newIssuer := func() issuer {
		jwks, sign := policytest.Issuer(t)
		srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { io.WriteString(w, jwks) }))
		t.Cleanup(srv.Close)
		return issuer{srv.URL, sign}
	}
	prod, shop := newIssuer(), newIssuer()
	dir := t.TempDir()
	write := func(gen int) {
		doc := ""
		for _, d := range []struct {
			ns string
			is issuer
		}{{"prod", prod}, {"shop", shop}} {
			doc += fmt.Sprintf("---\napiVersion: security.istio.io/v1\nkind: RequestAuthentication\nmetadata: {name: jwt, namespace: %s, labels: {gen: \"%d\"}}\nspec:\n  jwtRules:\n  - issuer: %s\n    jwksUri: %s/jwks\n", d.ns, gen, d.is.url, d.is.url)
		}
		if err := os.WriteFile(filepath.Join(dir, "ra.yaml"), []byte(doc), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	write(1)
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	verifier := authn.NewVerifier(authn.Options{Logger: log})
	defer verifier.Close()
	p := &filePolicy{e: &Env{}, files: []string{dir}, log: log, verifier: verifier, dst: policy.Destination{Namespace: "prod"}}
	ctx := context.Background()

	check := func(t *testing.T) {
		set, _ := p.current()
		for _, tc := range []struct {
			name string
			ns   string
			is   issuer
		}{
			{"default_destination", "prod", prod},
			{"destination_named_by_the_route", "shop", shop},
		} {
			t.Run(tc.name, func(t *testing.T) {
				tok := tc.is.sign(map[string]any{"iss": tc.is.url, "sub": "alice", "exp": time.Now().Add(time.Hour).Unix()})
				req := &policy.Request{Headers: http.Header{"Authorization": {"Bearer " + tok}}}
				auth, err := verifier.Verify(set.JWTRules(policy.Destination{Namespace: tc.ns}), req)
				if err != nil || auth == nil {
					t.Fatalf("token refused: %v", err)
				}
			})
		}
	}
	if err := p.load(ctx, true); err != nil {
		t.Fatal(err)
	}
	t.Run("at_start", check)
	write(2)
	for range 2 { // a change applies once two reads agree
		if err := p.load(ctx, false); err != nil {
			t.Fatal(err)
		}
	}
	if p.version.Load() != 2 {
		t.Fatalf("policy version %d after the reload, want 2", p.version.Load())
	}
	t.Run("after_a_reload", check)
}

// TestAuthzRevocationsFile: "moatless authz" had no revocation list, so a
// workload or token revoked on the server was still allowed through
// Envoy. --revocations FILE puts a sidecar's revocation list in force,
// re-read on change; a missing file at start is refused (a mistyped path
// must not read as "nothing revoked") and a malformed one keeps the list
// in force.
func TestAuthzRevocationsFile(t *testing.T) {
	jwks, sign := policytest.Issuer(t)
	const iss = "https://issuer.test"
	dir, err := os.MkdirTemp("", "az") // a unix socket path is short
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	pol := filepath.Join(dir, "pol")
	if err := os.Mkdir(pol, 0o700); err != nil {
		t.Fatal(err)
	}
	docs := fmt.Sprintf(`apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {name: jwt, namespace: prod}
spec:
  jwtRules:
  - issuer: %s
    jwks: '%s'
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: allow, namespace: prod}
spec:
  rules: [{}]
`, iss, jwks)
	if err := os.WriteFile(filepath.Join(pol, "p.yaml"), []byte(docs), 0o600); err != nil {
		t.Fatal(err)
	}
	revFile := filepath.Join(dir, "revocations.json")
	writeRevs := func(s string) {
		if err := os.WriteFile(revFile, []byte(s), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	sock := filepath.Join(dir, "authz.sock")
	args := []string{"authz", "-f", pol, "--listen", "unix:" + sock, "--admin", "off", "--reload-interval", "20ms", "--revocations", revFile}

	t.Run("missing_file_refused_at_start", func(t *testing.T) {
		var stderr bytes.Buffer
		if code := Main(context.Background(), args, nil, io.Discard, &stderr); code != ExitUsage || !strings.Contains(stderr.String(), "for an empty list write {}") {
			t.Fatalf("exit %d, stderr %s", code, stderr.String())
		}
	})
	t.Run("malformed_file_refused_at_start", func(t *testing.T) {
		writeRevs(`{"spiffe_ids": ["not an id"]}`)
		var stderr bytes.Buffer
		if code := Main(context.Background(), args, nil, io.Discard, &stderr); code != ExitUsage || !strings.Contains(stderr.String(), "spiffe_ids") {
			t.Fatalf("exit %d, stderr %s", code, stderr.String())
		}
	})

	const revokedCaller = "spiffe://example.org/ns/prod/sa/revoked"
	writeRevs(`{"spiffe_ids": ["` + revokedCaller + `"]}`)
	ctx, cancel := context.WithCancel(context.Background())
	var stderr syncBuffer
	done := make(chan int)
	go func() { done <- Main(ctx, args, nil, io.Discard, &stderr) }()
	t.Cleanup(func() {
		cancel()
		if code := <-done; code != ExitOK {
			t.Errorf("authz exited %d:\n%s", code, stderr.String())
		}
	})
	conn, err := grpc.NewClient("unix:"+sock, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	client := authv3.NewAuthorizationClient(conn)
	check := func(t *testing.T, caller, token string) (codes.Code, string) {
		t.Helper()
		cr := &authv3.CheckRequest{Attributes: &authv3.AttributeContext{
			Source: &authv3.AttributeContext_Peer{Principal: caller},
			Request: &authv3.AttributeContext_Request{Http: &authv3.AttributeContext_HttpRequest{
				Method: "GET", Path: "/", Host: "web", Headers: map[string]string{"authorization": "Bearer " + token}}},
			ContextExtensions: map[string]string{"namespace": "prod"},
		}}
		cctx, ccancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer ccancel()
		resp, err := client.Check(cctx, cr, grpc.WaitForReady(true))
		if err != nil {
			t.Fatalf("check: %v\n%s", err, stderr.String())
		}
		return codes.Code(resp.GetStatus().GetCode()), resp.GetStatus().GetMessage()
	}
	token := func(sub, jti string) string {
		return sign(map[string]any{"iss": iss, "sub": sub, "jti": jti, "exp": time.Now().Add(time.Hour).Unix()})
	}
	const caller = "spiffe://example.org/ns/prod/sa/caller"
	// until polls a check until it answers want: a reload lands within a
	// few --reload-interval ticks.
	until := func(t *testing.T, want codes.Code, caller, tok string) string {
		t.Helper()
		deadline := time.Now().Add(10 * time.Second)
		for {
			got, msg := check(t, caller, tok)
			if got == want {
				return msg
			}
			if time.Now().After(deadline) {
				t.Fatalf("got %v (%s), want %v", got, msg, want)
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
	tests := []struct {
		name    string
		revs    string // written before the check; "" keeps the file
		caller  string
		token   string
		want    codes.Code
		wantMsg string
	}{
		{"revoked_source_denied_from_start", "", revokedCaller, token("alice", "j1"), codes.PermissionDenied, "revoked"},
		{"others_allowed", "", caller, token("alice", "j1"), codes.OK, ""},
		{"revoked_token_id_refused_after_a_change", `{"token_ids": [{"jti": "j1", "expires_at": "2099-01-01T00:00:00Z"}]}`, caller, token("alice", "j1"), codes.Unauthenticated, ""},
		{"lifted_source_allowed_again", "", revokedCaller, token("alice", "j2"), codes.OK, ""},
		{"token_of_a_revoked_workload_refused", `{"spiffe_ids": ["spiffe://example.org/ns/prod/sa/robot"]}`, caller, token("spiffe://example.org/ns/prod/sa/robot", "j3"), codes.Unauthenticated, "revoked"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if tc.revs != "" {
				writeRevs(tc.revs)
			}
			if msg := until(t, tc.want, tc.caller, tc.token); !strings.Contains(msg, tc.wantMsg) {
				t.Fatalf("message %q, want it to say %q", msg, tc.wantMsg)
			}
		})
	}
	t.Run("malformed_file_keeps_the_list", func(t *testing.T) {
		writeRevs(`{"spiffe_ids": [`)
		deadline := time.Now().Add(10 * time.Second)
		for !strings.Contains(stderr.String(), "reload failed") {
			if time.Now().After(deadline) {
				t.Fatalf("the malformed file was not reported:\n%s", stderr.String())
			}
			time.Sleep(10 * time.Millisecond)
		}
		if got, msg := check(t, caller, token("spiffe://example.org/ns/prod/sa/robot", "j4")); got != codes.Unauthenticated {
			t.Fatalf("after a malformed file: %v (%s), want the revocation in force", got, msg)
		}
	})
}

// syncBuffer is a bytes.Buffer safe for a writer and a reader goroutine.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// TestAuthzRefusesStandardInput: "moatless authz -f -" read the policies
// from standard input at start and again at every reload, where it was
// empty: two empty reads agreed, an empty policy set was put in force and
// every request was allowed (no ALLOW policy applies), a DENY policy
// dropped a few seconds after start.
func TestAuthzRefusesStandardInput(t *testing.T) {
	deny := "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: deny, namespace: prod}\nspec: {action: DENY, rules: [{}]}\n"
	dir, err := os.MkdirTemp("", "az")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	// Bounded: a server that starts (the parent) serves until ctx ends.
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	var stderr bytes.Buffer
	code := Main(ctx, []string{"authz", "-f", "-", "--listen", "unix:" + filepath.Join(dir, "s"), "--admin", "off"}, strings.NewReader(deny), io.Discard, &stderr)
	if code != ExitUsage || !strings.Contains(stderr.String(), "standard input cannot be re-read") {
		t.Fatalf("exit %d, stderr %s", code, stderr.String())
	}
}
