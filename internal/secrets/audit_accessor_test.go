package secrets

import (
	"strings"
	"testing"

	"github.com/moatless/moatless/internal/store"
	"github.com/moatless/moatless/internal/store/storetest"
)

// TestAuditRecordsHMACAccessors: an accessor lets whoever holds it look
// up and revoke the token (with the right policy), so audit records carry
// its HMAC under the audit key, as Vault's audit devices do by default
// (hmac_accessor=true), and sys/audit-hash computes the same HMAC of an
// accessor an operator holds. The records carried accessors in clear.
func TestAuditRecordsHMACAccessors(t *testing.T) {
	storetest.Each(t, func(t *testing.T, db *store.DB) {
		ts := newTestService(t, db)
		ts.policy("creator", `path "auth/token/create" { capabilities = ["update", "sudo"] }`)
		out := ts.must("POST", "auth/token/create", testAdminToken, map[string]any{"policies": []string{"creator"}})
		parent, parentAcc := authToken(t, out), out["auth"].(map[string]any)["accessor"].(string)
		out = ts.must("POST", "auth/token/create", parent, nil)
		childAcc := out["auth"].(map[string]any)["accessor"].(string)
		ts.must("POST", "auth/approle/role/app", testAdminToken, map[string]any{"token_ttl": "1h"})
		out = ts.must("POST", "auth/approle/role/app/secret-id", testAdminToken, nil)
		sidAcc := dataOf(out)["secret_id_accessor"].(string)
		ts.must("POST", "auth/token/revoke-self", parent, nil)

		hash := func(acc string) string {
			t.Helper()
			h, _ := dataOf(ts.must("POST", "sys/audit-hash/x", testAdminToken, map[string]any{"input": acc}))["hash"].(string)
			if !strings.HasPrefix(h, "hmac-sha256:") {
				t.Fatalf("audit-hash: %q", h)
			}
			return h
		}
		want := map[string]string{parentAcc: hash(parentAcc), childAcc: hash(childAcc), sidAcc: hash(sidAcc)}
		found := map[string]bool{}
		ts.audit.mu.Lock()
		defer ts.audit.mu.Unlock()
		for _, ev := range ts.audit.events {
			fields := map[string]string{"subject": ev.Subject}
			for k, v := range ev.Details {
				fields[k] = v
			}
			for k, v := range fields {
				for acc, h := range want {
					if strings.Contains(v, acc) {
						t.Errorf("%s record: %s carries accessor %s in clear", ev.Kind, k, acc)
					}
					if v == h {
						found[acc] = true
					}
				}
			}
		}
		for acc := range want {
			if !found[acc] {
				t.Errorf("no record carries the HMAC of accessor %s", acc)
			}
		}
	})
}
