package secrets

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"fmt"
	"net/http"
	"sync"
	"testing"
	"time"

	"github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"
	"github.com/spiffe/go-spiffe/v2/bundle/jwtbundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/moatless/moatless/internal/store"
	"github.com/moatless/moatless/internal/store/storetest"
)

// TestTokensOfARevokedCAAuthorityStop: a token obtained by JWT login with
// a JWT-SVID that a CA key signed, or by cert login with an X509-SVID a
// CA authority issued, stops working once that authority is revoked
// (`moatless ca revoke`), and so do the tokens it created; tokens of
// other authorities keep working. Before, they lived out their TTL (up
// to the SVID's NotAfter, renewable meanwhile) after the revocation.
func TestTokensOfARevokedCAAuthorityStop(t *testing.T) {
	const web = "spiffe://example.org/ns/prod/sa/web"
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	bundle := jwtbundle.New(spiffeid.RequireTrustDomainFromString("example.org"))
	if err := bundle.AddJWTAuthority("jwt-key-1", key.Public()); err != nil {
		t.Fatal(err)
	}
	signer, err := jose.NewSigner(jose.SigningKey{Algorithm: jose.ES256, Key: jose.JSONWebKey{Key: key, KeyID: "jwt-key-1"}}, (&jose.SignerOptions{}).WithType("JWT"))
	if err != nil {
		t.Fatal(err)
	}
	svid, err := jwt.Signed(signer).Claims(jwt.Claims{Subject: web, Audience: jwt.Audience{"moatless-secrets"},
		Expiry: jwt.NewNumericDate(time.Now().Add(5 * time.Minute)), IssuedAt: jwt.NewNumericDate(time.Now())}).Serialize()
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name, authority string
		login           func(ts *testService) string
	}{
		{"jwt_login", "jwt-key-1", func(ts *testService) string {
			return authToken(ts.t, ts.must("POST", "auth/jwt/login", "", map[string]any{"role": "web", "jwt": svid}))
		}},
		{"cert_login", "c59c8259ba7bdd049b291090c954e0ece6fd563b", func(ts *testService) string {
			return authToken(ts.t, ts.must("POST", "auth/cert/login", "", nil))
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			pg := storetest.PostgresPassword(t)
			storetest.Each(t, func(t *testing.T, db *store.DB) {
				var (
					mu      sync.Mutex
					revoked = map[string]bool{}
				)
				ts := newTestService(t, db, func(c *Config) {
					c.JWTBundles = bundle
					c.Peer = func(*http.Request) (*Peer, error) {
						return &Peer{SPIFFEID: web, NotAfter: time.Now().Add(time.Hour), Authority: "c59c8259ba7bdd049b291090c954e0ece6fd563b"}, nil
					}
					c.RevokedAuthorities = func() []string {
						mu.Lock()
						defer mu.Unlock()
						var ids []string
						for id := range revoked {
							ids = append(ids, id)
						}
						return ids
					}
				})
				ts.now = time.Now() // the JWT-SVID is checked against the real clock
				ts.policy("reader", `path "secret/data/*" { capabilities = ["read"] }
path "database/creds/*" { capabilities = ["read"] }
path "auth/token/create" { capabilities = ["update", "sudo"] }`)
				ts.must("PUT", "sys/policies/acl/web", testAdminToken, map[string]any{"policy": `
name: web
subjects:
  spiffe_ids: [` + web + `]
paths:
  - path: secret/data/*
    capabilities: [read]
  - path: auth/token/create*
    capabilities: [update, sudo]
  - path: database/creds/*
    capabilities: [read]
`})
				role := ts.dbRole(pg, fmt.Sprintf("carev%s%d", tc.name[:3], db.Dialect()))
				ts.must("POST", "secret/data/app", testAdminToken, map[string]any{"data": map[string]any{"k": "v"}})
				ts.must("POST", "auth/jwt/role/web", testAdminToken, map[string]any{"bound_audiences": "moatless-secrets",
					"bound_subjects": web, "token_policies": "reader"})
				tok := tc.login(ts)
				child := authToken(t, ts.must("POST", "auth/token/create", tok, map[string]any{"policies": []string{"reader"}}))
				orphan := authToken(t, ts.must("POST", "auth/token/create-orphan", tok, map[string]any{"policies": []string{"reader"}}))
				other := authToken(t, ts.must("POST", "auth/token/create", testAdminToken, map[string]any{"policies": []string{"reader"}}))
				toks := map[string]string{"login token": tok, "its child": child, "its orphan": orphan}
				for name, tk := range toks {
					if st, out := ts.call("GET", "secret/data/app", tk, nil); st != 200 {
						t.Fatalf("%s before the revocation: %d %v", name, st, out)
					}
				}
				ts.must("GET", "database/creds/"+role, child, nil)
				// Obtained over mTLS with no token: an X.509 authority's
				// lease (gone with it in cert_login, kept in jwt_login).
				direct := ts.must("GET", "database/creds/"+role, "", nil)["lease_id"].(string)
				mu.Lock()
				revoked["some-other-key"] = true
				mu.Unlock()
				if st, _ := ts.call("GET", "secret/data/app", tok, nil); st != 200 {
					t.Fatalf("the login token was refused for another authority's revocation: %d", st)
				}
				mu.Lock()
				revoked[tc.authority] = true
				mu.Unlock()
				for name, tk := range toks {
					if st, _ := ts.call("GET", "secret/data/app", tk, nil); st != 403 {
						t.Errorf("%s after CA authority %s was revoked: %d, want 403", name, tc.authority, st)
					}
					if st, _ := ts.call("POST", "auth/token/renew-self", tk, map[string]any{}); st != 403 {
						t.Errorf("%s renewed after CA authority %s was revoked: %d, want 403", name, tc.authority, st)
					}
				}
				if st, out := ts.call("GET", "secret/data/app", other, nil); st != 200 {
					t.Errorf("an admin's token after the revocation: %d %v, want 200", st, out)
				}
				// The maintenance pass revokes the tokens, and with them
				// the database user the child obtained.
				ts.svc.Tick(t.Context())
				if accs, err := db.SecretsTokensOfAuthority(t.Context(), tc.authority, 10); err != nil || len(accs) != 0 {
					t.Errorf("tokens of the revoked authority left after a maintenance pass: %v %v", accs, err)
				}
				ls, err := db.Leases(t.Context(), "database/creds/"+role+"/", "", 10)
				if err != nil {
					t.Fatal(err)
				}
				for _, l := range ls {
					if tc.name == "jwt_login" && l.ID == direct {
						continue
					}
					t.Errorf("lease %s outlives the revocation of the CA authority of its token's login or mTLS identity", l.ID)
				}
				if tc.name == "jwt_login" && len(ls) != 1 {
					t.Errorf("the lease obtained over mTLS with a certificate of another authority was revoked too: %d leases left", len(ls))
				}
				if st, out := ts.call("GET", "secret/data/app", other, nil); st != 200 {
					t.Errorf("an admin's token after the maintenance pass: %d %v, want 200", st, out)
				}
			})
		})
	}
}
