package token_test

import (
	"net/url"
	"sync"
	"testing"
	"time"

	"github.com/moatless/moatless/internal/store"
	"github.com/moatless/moatless/internal/store/storetest"
	"github.com/moatless/moatless/internal/token"
)

// TestTokensOfARevokedIdentity: with a workload's SPIFFE ID revoked
// (Config.RevokedID), a token issued to or for it — a certificate-bound
// tls_client_auth token of the client registered with that ID (whose sub
// and client_id are the client's name), one exchanged from its JWT-SVID,
// and what was exchanged from those — is inactive at introspection and
// refused as an exchange subject, and its JWT-SVIDs are not exchanged.
// Before, only sidecars refused them: a resource server that introspects
// took them as active until they expired. Lifting the revocation makes
// them valid again (a check, not a sweep); other tokens are unaffected.
func TestTokensOfARevokedIdentity(t *testing.T) {
	storetest.Each(t, func(t *testing.T, db *store.DB) {
		minter := newMinter(t)
		var mu sync.Mutex
		revoked := map[string]bool{}
		setRevoked := func(id string, on bool) {
			mu.Lock()
			revoked[id] = on
			mu.Unlock()
		}
		h := newHarness(t, db, func(c *token.Config) {
			c.JWTBundles = jwtBundleSource{minter.bundle}
			c.RevokedID = func(id string) bool {
				mu.Lock()
				defer mu.Unlock()
				return revoked[id]
			}
		})
		h.createClient(token.ClientRequest{Name: "orders", ClientSpec: token.ClientSpec{
			GrantTypes: []string{token.GrantTokenExchange, "client_credentials"}, SPIFFEID: ordersID,
			ExchangeAudiences: []string{"payments"}, Audiences: []string{"payments"}}})
		pay := h.createClient(token.ClientRequest{Name: "payments", ClientSpec: token.ClientSpec{
			GrantTypes: []string{token.GrantTokenExchange}, ExchangeAudiences: []string{"ledger"}}})
		plain := h.createClient(token.ClientRequest{Name: "plain", ClientSpec: token.ClientSpec{GrantTypes: []string{"client_credentials"}, Audiences: []string{"payments"}}})
		rs := h.createClient(token.ClientRequest{Name: "rs", ClientSpec: token.ClientSpec{GrantTypes: []string{"client_credentials"}}})
		ordersCert := h.ca.SVID(t, ordersID, time.Hour).TLSCertificate()
		ordersTLS := h.tlsClient(&ordersCert)

		active := func(raw string) bool { t.Helper(); return h.introspectActive(raw, "rs", rs.Secret) }
		exchangeSVID := func() (int, map[string]any) {
			return h.post(ordersTLS, "/oauth2/token", url.Values{"grant_type": {token.GrantTokenExchange}, "client_id": {"orders"},
				"subject_token": {minter.mint(t, ordersID, []string{h.issuer}, nil)}, "subject_token_type": {token.TokenTypeJWT}, "audience": {"payments"}}, "", "")
		}
		exchangeOn := func(subject string) (int, map[string]any) {
			return h.post(nil, "/oauth2/token", url.Values{"grant_type": {token.GrantTokenExchange},
				"subject_token": {subject}, "subject_token_type": {token.TokenTypeAccess}, "audience": {"ledger"}}, "payments", pay.Secret)
		}
		mustToken := func(what string, status int, out map[string]any) string {
			t.Helper()
			if status != 200 {
				t.Fatalf("%s: %d %v", what, status, out)
			}
			return out["access_token"].(string)
		}
		status, out := h.post(ordersTLS, "/oauth2/token", url.Values{"grant_type": {"client_credentials"}, "client_id": {"orders"}}, "", "")
		bound := mustToken("client_credentials over mTLS", status, out)
		status, out = exchangeSVID()
		fromSVID := mustToken("exchange of a JWT-SVID", status, out)
		status, out = exchangeOn(fromSVID)
		child := mustToken("exchange of that token", status, out)
		status, out = exchangeOn(bound)
		boundChild := mustToken("exchange of the tls_client_auth token", status, out)
		other := h.ccToken("plain", plain.Secret)
		status, out = exchangeOn(other)
		otherChild := mustToken("exchange of another client's token", status, out)
		tokens := map[string]string{"tls_client_auth": bound, "exchanged_from_tls_client_auth": boundChild,
			"from_jwt_svid": fromSVID, "exchanged_from_jwt_svid": child}
		for name, tok := range tokens {
			if !active(tok) {
				t.Fatalf("%s inactive before the revocation", name)
			}
		}

		setRevoked(ordersID, true)
		for name, tok := range tokens {
			if active(tok) {
				t.Errorf("%s still active at introspection after its workload's revocation", name)
			}
			if status, out := exchangeOn(tok); status == 200 {
				t.Errorf("%s exchanged after its workload's revocation: %v", name, out)
			}
		}
		if status, out := exchangeSVID(); status == 200 {
			t.Errorf("a revoked workload's JWT-SVID was exchanged: %v", out)
		}
		if !active(other) || !active(otherChild) {
			t.Error("another client's token, or one exchanged from it, went inactive")
		}

		setRevoked(ordersID, false)
		for name, tok := range tokens {
			if !active(tok) {
				t.Errorf("%s inactive after the revocation was lifted", name)
			}
		}
	})
}
