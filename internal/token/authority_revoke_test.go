package token_test

import (
	"encoding/hex"
	"net/url"
	"sync"
	"testing"
	"time"

	"github.com/moatless/moatless/internal/store"
	"github.com/moatless/moatless/internal/store/storetest"
	"github.com/moatless/moatless/internal/token"
)

// revokedAuthorities is Config.RevokedAuthorities for tests: what
// `moatless ca revoke` adds to on the server.
type revokedAuthorities struct {
	mu  sync.Mutex
	ids []string
}

func (r *revokedAuthorities) list() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]string(nil), r.ids...)
}

func (r *revokedAuthorities) add(id string) {
	r.mu.Lock()
	r.ids = append(r.ids, id)
	r.mu.Unlock()
}

// TestRevokedCAAuthorityEndsItsTokens: a token issued on the strength of
// a CA key (exchanged from a JWT-SVID that key signed, or issued to a
// tls_client_auth client whose X509-SVID it issued) is revoked with the
// key, and so is what was exchanged from it: introspection says
// inactive, OnRevoke sends it to the sidecars, a further exchange is
// refused. Before, such tokens stayed valid until their own expiry after
// `moatless ca revoke`. Tokens that relied on another key stay valid.
func TestRevokedCAAuthorityEndsItsTokens(t *testing.T) {
	storetest.Each(t, func(t *testing.T, db *store.DB) {
		minter := newMinter(t) // its key ID is "svid-key"
		var revoked revokedAuthorities
		h := newHarness(t, db, func(c *token.Config) {
			c.JWTBundles = jwtBundleSource{minter.bundle}
			c.RevokedAuthorities = revoked.list
		})
		x509Authority := hex.EncodeToString(h.ca.Cert.SubjectKeyId)
		if x509Authority == "" {
			t.Fatal("the test CA has no subject key ID")
		}
		h.createClient(token.ClientRequest{Name: "orders", ClientSpec: token.ClientSpec{
			GrantTypes: []string{token.GrantTokenExchange, "client_credentials"}, SPIFFEID: ordersID,
			ExchangeAudiences: []string{"payments"}, Audiences: []string{"payments"}}})
		pay := h.createClient(token.ClientRequest{Name: "payments", ClientSpec: token.ClientSpec{
			GrantTypes: []string{token.GrantTokenExchange}, ExchangeAudiences: []string{"ledger"}}})
		plain := h.createClient(token.ClientRequest{Name: "plain", ClientSpec: token.ClientSpec{GrantTypes: []string{"client_credentials"}}})
		rs := h.createClient(token.ClientRequest{Name: "rs", ClientSpec: token.ClientSpec{GrantTypes: []string{"client_credentials"}}})
		ordersCert := h.ca.SVID(t, ordersID, time.Hour).TLSCertificate()
		ordersTLS := h.tlsClient(&ordersCert)

		active := func(raw string) bool { t.Helper(); return h.introspectActive(raw, "rs", rs.Secret) }
		fromSVID := func() string {
			t.Helper()
			status, out := h.post(ordersTLS, "/oauth2/token", url.Values{"grant_type": {token.GrantTokenExchange}, "client_id": {"orders"},
				"subject_token": {minter.mint(t, ordersID, []string{h.issuer}, nil)}, "subject_token_type": {token.TokenTypeJWT}, "audience": {"payments"}}, "", "")
			if status != 200 {
				t.Fatalf("exchange of a JWT-SVID: %d %v", status, out)
			}
			return out["access_token"].(string)
		}
		mtlsCC := func() string {
			t.Helper()
			status, out := h.post(ordersTLS, "/oauth2/token", url.Values{"grant_type": {"client_credentials"}, "client_id": {"orders"}}, "", "")
			if status != 200 {
				t.Fatalf("client_credentials over mTLS: %d %v", status, out)
			}
			return out["access_token"].(string)
		}
		exchangeOn := func(subject string) (int, map[string]any) {
			return h.post(nil, "/oauth2/token", url.Values{"grant_type": {token.GrantTokenExchange},
				"subject_token": {subject}, "subject_token_type": {token.TokenTypeAccess}, "audience": {"ledger"}}, "payments", pay.Secret)
		}
		for _, tc := range []struct {
			name      string
			authority string
			mint      func() string
			// sweep: how the revocation reaches the tokens.
			sweep string
		}{
			{"jwt_svid_exchange", "svid-key", fromSVID, "bundle_change"},
			{"jwt_svid_exchange_at_tick", "svid-key", fromSVID, "tick"},
			{"tls_client_auth", x509Authority, mtlsCC, "bundle_change"},
		} {
			t.Run(tc.name, func(t *testing.T) {
				revoked.mu.Lock()
				revoked.ids = nil
				revoked.mu.Unlock()
				tok := tc.mint()
				status, child := exchangeOn(tok)
				if status != 200 {
					t.Fatalf("exchange of the token: %d %v", status, child)
				}
				grandchild := child["access_token"].(string)
				other := h.ccToken("plain", plain.Secret)
				if !active(tok) || !active(grandchild) {
					t.Fatal("tokens inactive before the revocation")
				}
				revoked.add(tc.authority)
				var err error
				if tc.sweep == "tick" {
					err = h.svc.Tick(t.Context())
				} else {
					err = h.svc.RevokeAuthorityTokens(t.Context())
				}
				if err != nil {
					t.Fatal(err)
				}
				for name, raw := range map[string]string{"token": tok, "token exchanged from it": grandchild} {
					if active(raw) {
						t.Errorf("%s is active after its CA authority %s was revoked", name, tc.authority)
					}
					if !h.wasRevoked(claims(t, raw)["jti"].(string)) {
						t.Errorf("%s was not announced to OnRevoke (the sidecars' revoked list)", name)
					}
				}
				if status, out := exchangeOn(tok); status != 400 {
					t.Errorf("exchange of the revoked token: %d %v, want 400", status, out["error"])
				}
				if !active(other) {
					t.Error("a token of a client secret was revoked with the CA authority")
				}
				// Tokens minted from then on with the revoked authority
				// (the bundle still held it on this replica: a revocation
				// racing the issuance) are refused.
				if tc.name != "jwt_svid_exchange_at_tick" {
					return
				}
				status, out := h.post(ordersTLS, "/oauth2/token", url.Values{"grant_type": {token.GrantTokenExchange}, "client_id": {"orders"},
					"subject_token": {minter.mint(t, ordersID, []string{h.issuer}, nil)}, "subject_token_type": {token.TokenTypeJWT}, "audience": {"payments"}}, "", "")
				if status != 400 || out["error"] != "invalid_grant" || out["access_token"] != nil {
					t.Errorf("exchange of a JWT-SVID of a revoked key that raced the revocation: %d %v, want 400 invalid_grant", status, out["error"])
				}
			})
		}
	})
}
