package token_test

import (
	"net/url"
	"sync"
	"testing"

	"github.com/moatless/moatless/internal/store"
	"github.com/moatless/moatless/internal/store/storetest"
	"github.com/moatless/moatless/internal/token"
)

// exchangeClients creates frontend (client_credentials tokens for
// orders) and orders (which exchanges them for payments).
func exchangeClients(h *harness) (fe, ord *token.ClientAnswer) {
	fe = h.createClient(token.ClientRequest{Name: "frontend", ClientSpec: token.ClientSpec{
		GrantTypes: []string{"client_credentials"}, Audiences: []string{"orders"}}})
	ord = h.createClient(token.ClientRequest{Name: "orders", ClientSpec: token.ClientSpec{
		GrantTypes: []string{token.GrantTokenExchange}, ExchangeAudiences: []string{"payments"}}})
	return fe, ord
}

// Revoking a token revokes every token exchanged from it, transitively,
// through the same revoked list the sidecars watch: a client_credentials
// token has no login to end, so before this the exchanged tokens lived
// out their 5 minutes. Each case revokes one link of the chain
// frontend → orders → payments → ledger and checks who is refused.
func TestRevokingATokenRevokesItsExchanges(t *testing.T) {
	storetest.Each(t, func(t *testing.T, db *store.DB) {
		h := newHarness(t, db)
		fe, ord := exchangeClients(h)
		pay := h.createClient(token.ClientRequest{Name: "payments", ClientSpec: token.ClientSpec{
			GrantTypes: []string{token.GrantTokenExchange}, ExchangeAudiences: []string{"ledger"}}})
		rs := h.createClient(token.ClientRequest{Name: "rs", ClientSpec: token.ClientSpec{GrantTypes: []string{"client_credentials"}}})
		exchange := func(subject, client, secret, aud string) string {
			t.Helper()
			status, body := h.post(nil, "/oauth2/token", url.Values{"grant_type": {token.GrantTokenExchange},
				"subject_token": {subject}, "subject_token_type": {token.TokenTypeAccess}, "audience": {aud}}, client, secret)
			if status != 200 {
				t.Fatalf("exchange by %s: %d %v", client, status, body)
			}
			return body["access_token"].(string)
		}
		active := func(raw string) bool { t.Helper(); return h.introspectActive(raw, "rs", rs.Secret) }
		for _, tc := range []struct {
			name   string
			revoke int    // index in the chain
			by     string // "client": RFC 7009 by its client; "jti": admin by ID
		}{
			{"client_revokes_root", 0, "client"},
			{"admin_revokes_root_by_jti", 0, "jti"},
			{"admin_revokes_middle", 1, "jti"},
			{"client_revokes_middle", 1, "client"},
		} {
			t.Run(tc.name, func(t *testing.T) {
				chain := []string{h.ccToken("frontend", fe.Secret)}
				chain = append(chain, exchange(chain[0], "orders", ord.Secret, "payments"))
				chain = append(chain, exchange(chain[1], "payments", pay.Secret, "ledger"))
				// A sibling exchanged from the root is a descendant too.
				sibling := exchange(chain[0], "orders", ord.Secret, "payments")
				secrets := map[string]string{"frontend": fe.Secret, "orders": ord.Secret, "payments": pay.Secret}
				target := chain[tc.revoke]
				c := claims(t, target)
				switch tc.by {
				case "client":
					owner := c["client_id"].(string)
					if status, body := h.post(nil, "/oauth2/revoke", url.Values{"token": {target}}, owner, secrets[owner]); status != 200 {
						t.Fatalf("revoke: %d %v", status, body)
					}
				case "jti":
					if code := h.admin("POST", "tokens/revoke", token.RevokeRequest{JTI: c["jti"].(string)}, nil); code != 204 {
						t.Fatalf("admin revoke: %d", code)
					}
				}
				for i, raw := range chain {
					jti := claims(t, raw)["jti"].(string)
					want := i < tc.revoke // only ancestors stay active
					if got := active(raw); got != want {
						t.Errorf("chain[%d] active=%v after revoking chain[%d], want %v", i, got, tc.revoke, want)
					}
					if !want && !h.wasRevoked(jti) {
						t.Errorf("chain[%d] never reached OnRevoke (the sidecars' list)", i)
					}
				}
				if got, want := active(sibling), tc.revoke != 0; got != want {
					t.Errorf("sibling active=%v, want %v", got, want)
				}
				// Nothing new is exchanged from a revoked link.
				status, body := h.post(nil, "/oauth2/token", url.Values{"grant_type": {token.GrantTokenExchange},
					"subject_token": {chain[2]}, "subject_token_type": {token.TokenTypeAccess}, "audience": {"ledger"}}, "payments", pay.Secret)
				if status != 400 || body["error"] != "invalid_request" {
					t.Fatalf("exchange from a revoked token: %d %v", status, body)
				}
			})
		}
	})
}

// Exchanges racing the revocation of their subject token: each either
// is refused or gives a token the revocation lists too (on PostgreSQL an
// exchange and the revocation lock the subject token's row).
func TestExchangeRacingRevocation(t *testing.T) {
	storetest.Each(t, func(t *testing.T, db *store.DB) {
		h := newHarness(t, db)
		fe, ord := exchangeClients(h)
		root := h.ccToken("frontend", fe.Secret)
		const n = 16
		got := make(chan string, n)
		var wg sync.WaitGroup
		for range n {
			wg.Add(1)
			go func() {
				defer wg.Done()
				status, body := h.post(nil, "/oauth2/token", url.Values{"grant_type": {token.GrantTokenExchange},
					"subject_token": {root}, "subject_token_type": {token.TokenTypeAccess}, "audience": {"payments"}}, "orders", ord.Secret)
				if status == 200 {
					got <- body["access_token"].(string)
				} else if status != 400 {
					t.Errorf("exchange: %d %v", status, body)
				}
			}()
		}
		if status, body := h.post(nil, "/oauth2/revoke", url.Values{"token": {root}}, "frontend", fe.Secret); status != 200 {
			t.Fatalf("revoke: %d %v", status, body)
		}
		wg.Wait()
		close(got)
		for raw := range got {
			if jti := claims(t, raw)["jti"].(string); !h.wasRevoked(jti) {
				t.Errorf("token %s exchanged from a revoked token lives on", jti)
			}
		}
	})
}

// The tokens exchanged from one token, and from those, transitively, are
// bounded as a whole: a client with the exchange grant could exchange
// one token (or its own exchanged tokens, over and over) 100,000 times
// in its 5 minutes, and the revocation of that token then listed all of
// them in one transaction holding SQLite's write lock (3.5 s and 205 MB
// for 100,000 measured at the store) and sent every one to every
// sidecar. Beyond the bound an exchange is refused; a fresh token starts
// a tree of its own, and the revocation still reaches every token of a
// full tree. The parent exchanged without bound (the 4th exchange here
// succeeded).
func TestExchangesOfATokenAreBounded(t *testing.T) {
	defer token.SetMaxExchangeTree(3)()
	storetest.Each(t, func(t *testing.T, db *store.DB) {
		h := newHarness(t, db)
		fe, ord := exchangeClients(h)
		pay := h.createClient(token.ClientRequest{Name: "payments", ClientSpec: token.ClientSpec{
			GrantTypes: []string{token.GrantTokenExchange}, ExchangeAudiences: []string{"ledger"}}})
		exchange := func(subject, client, secret, aud string) (int, map[string]any) {
			t.Helper()
			return h.post(nil, "/oauth2/token", url.Values{"grant_type": {token.GrantTokenExchange},
				"subject_token": {subject}, "subject_token_type": {token.TokenTypeAccess}, "audience": {aud}}, client, secret)
		}
		must := func(subject, client, secret, aud string) string {
			t.Helper()
			status, body := exchange(subject, client, secret, aud)
			if status != 200 {
				t.Fatalf("exchange by %s: %d %v", client, status, body)
			}
			return body["access_token"].(string)
		}
		root := h.ccToken("frontend", fe.Secret)
		a := must(root, "orders", ord.Secret, "payments")
		b := must(root, "orders", ord.Secret, "payments")
		c := must(a, "payments", pay.Secret, "ledger") // 3 tokens in root's tree
		for name, try := range map[string]func() (int, map[string]any){
			"from the root":       func() (int, map[string]any) { return exchange(root, "orders", ord.Secret, "payments") },
			"from a child":        func() (int, map[string]any) { return exchange(b, "payments", pay.Secret, "ledger") },
			"from the grandchild": func() (int, map[string]any) { return exchange(c, "payments", pay.Secret, "ledger") },
		} {
			if status, body := try(); status != 400 || body["error"] != "invalid_request" {
				t.Errorf("a 4th token in the tree, exchanged %s: %d %v", name, status, body)
			}
		}
		must(h.ccToken("frontend", fe.Secret), "orders", ord.Secret, "payments")
		if status, body := h.post(nil, "/oauth2/revoke", url.Values{"token": {root}}, "frontend", fe.Secret); status != 200 {
			t.Fatalf("revoke: %d %v", status, body)
		}
		for i, raw := range []string{root, a, b, c} {
			if jti := claims(t, raw)["jti"].(string); !h.wasRevoked(jti) {
				t.Errorf("token %d of the full tree never reached OnRevoke", i)
			}
		}
	})
}
