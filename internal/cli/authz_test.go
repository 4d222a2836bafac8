package cli

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"testing"
	"time"

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
