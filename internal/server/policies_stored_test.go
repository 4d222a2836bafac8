package server_test

import (
	"context"
	"database/sql"
	"encoding/json"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/moatless/moatless/internal/policy"
	"github.com/moatless/moatless/internal/server"
	"github.com/moatless/moatless/internal/store"
)

// emptyFromRow is an AuthorizationPolicy row as a store may hold it from
// before empty lists were refused (a store copied from another writer, or
// edited): its rule says "from: []" literally. Istio's validation refuses
// that document, and so does our loader; in Istio's data model the empty
// list is an absent field, so read leniently it would let any source
// reach /admin.
const emptyFromRow = `{"apiVersion":"security.istio.io/v1","kind":"AuthorizationPolicy","metadata":{"name":"admin","namespace":"prod"},` +
	`"spec":{"action":"ALLOW","rules":[{"from":[],"to":[{"operation":{"paths":["/admin"]}}]}]}}`

const adminFixed = `apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: admin, namespace: prod}
spec:
  action: ALLOW
  rules:
  - from: [{source: {principals: ["example.org/ns/prod/sa/ops"]}}]
    to: [{operation: {paths: ["/admin"]}}]
`

// TestStoredEmptyFromIsRefusedAndRepairable: a stored row with "from: []"
// loads as the parser says, refused, never as any-source: the version the
// server pushes does not compile on a sidecar (which keeps what it had,
// deny by default on a fresh one). The operator can repair it: another
// change is refused (409) with an error that names the stored object and says
// what to do, and applying a corrected version of that object (or
// deleting it) works. Before, every change failed while the row was
// stored ("the stored policy set no longer validates"), so the row could
// not be replaced or removed through the API.
func TestStoredEmptyFromIsRefusedAndRepairable(t *testing.T) {
	for _, repair := range []string{"reapply", "delete"} {
		t.Run(repair, func(t *testing.T) {
			dir := t.TempDir()
			ctx := context.Background()
			db, err := store.Open(ctx, filepath.Join(dir, "moatless.db"))
			if err != nil {
				t.Fatal(err)
			}
			err = db.Tx(ctx, func(tx *sql.Tx) error {
				_, err := db.WritePolicies(ctx, tx, "old-binary", "apply", 0, []store.PolicyWrite{{
					PolicyRef: store.PolicyRef{Kind: "AuthorizationPolicy", Namespace: "prod", Name: "admin"},
					Raw:       json.RawMessage(emptyFromRow),
				}}, time.Now())
				return err
			})
			db.Close()
			if err != nil {
				t.Fatal(err)
			}
			e := start(t, dir)

			n := e.attest("spiffe://example.org/sidecar/payments")
			wctx, cancel := context.WithCancel(ctx)
			defer cancel()
			first := next(t, e.watch(wctx, n))
			if first.Policies == nil || first.Policies.Version != 1 {
				t.Fatalf("pushed policies: %+v", first.Policies)
			}
			if _, err := policy.FromWire(first.Policies, policy.Options{}); err == nil || !strings.Contains(err.Error(), "`from` must not be empty") {
				t.Fatalf("the stored row compiled on a sidecar (%v): it must be refused, not read as any source", err)
			}

			st, _, body := apply(e, allowOrders, false)
			if st != 409 || !strings.Contains(body, "AuthorizationPolicy prod/admin") || !strings.Contains(body, "re-apply a corrected version or delete it") {
				t.Fatalf("an unrelated change while the bad row is stored: %d %s", st, body)
			}

			switch repair {
			case "reapply":
				st, res, body := apply(e, adminFixed, false)
				if st != 200 || res.Version != 2 {
					t.Fatalf("re-applying the corrected object: %d %s", st, body)
				}
			case "delete":
				st, body := e.do(e.client(nil), "POST", server.PathAdminPoliciesDelete, e.token,
					server.PolicyDeleteRequest{Objects: []store.PolicyRef{{Kind: "AuthorizationPolicy", Namespace: "prod", Name: "admin"}}})
				if st != 200 {
					t.Fatalf("deleting the bad object: %d %s", st, body)
				}
			}
			var set server.PolicySetResponse
			e.admin("GET", server.PathAdminPolicies, nil, &set)
			if _, err := policy.ParseJSONDocuments(set.Documents); err != nil {
				t.Fatalf("the set after the repair: %v", err)
			}
			if st, res, body := apply(e, allowOrders, false); st != 200 || res.Version != 3 {
				t.Fatalf("a change after the repair: %d %s", st, body)
			}
		})
	}
}
