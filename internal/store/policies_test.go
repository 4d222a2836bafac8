package store_test

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"testing"

	"github.com/moatless/moatless/internal/store"
	"github.com/moatless/moatless/internal/store/storetest"
)

func TestPolicyVersions(t *testing.T) {
	storetest.Each(t, func(t *testing.T, db *store.DB) {
		ctx := context.Background()
		ref := func(name string) store.PolicyRef {
			return store.PolicyRef{Kind: "AuthorizationPolicy", Namespace: "prod", Name: name}
		}
		w := func(name, raw string) store.PolicyWrite {
			var r json.RawMessage
			if raw != "" {
				r = json.RawMessage(raw)
			}
			return store.PolicyWrite{PolicyRef: ref(name), Raw: r}
		}
		write := func(action string, ws ...store.PolicyWrite) (store.PolicyVersion, error) {
			var pv store.PolicyVersion
			err := db.Tx(ctx, func(tx *sql.Tx) error {
				var err error
				pv, err = db.WritePolicies(ctx, tx, "admin", action, 0, ws, t0)
				return err
			})
			return pv, err
		}
		v1, err := write("apply", w("a", `{"a":1}`), w("b", `{"b":1}`))
		if err != nil || v1.Version != 1 || len(v1.Changes) != 2 || v1.Documents != 2 {
			t.Fatalf("v1: %+v %v", v1, err)
		}
		// Re-applying the same content is not a new version.
		same, err := write("apply", w("a", `{"a":1}`))
		if err != nil || same.Version != 1 || len(same.Changes) != 0 {
			t.Fatalf("no-op apply: %+v %v", same, err)
		}
		v2, err := write("apply", w("a", `{"a":2}`), w("c", `{"c":1}`))
		if err != nil || v2.Version != 2 || v2.Changes[0].Op != "update" || v2.Changes[1].Op != "create" {
			t.Fatalf("v2: %+v %v", v2, err)
		}
		v3, err := write("delete", w("b", ""))
		if err != nil || v3.Version != 3 || v3.Documents != 2 || v3.Changes[0].Op != "delete" {
			t.Fatalf("v3: %+v %v", v3, err)
		}
		if _, err := write("delete", w("b", "")); !errors.Is(err, store.ErrNotFound) {
			t.Fatalf("delete twice: %v", err)
		}
		_, set1, err := db.PolicySet(ctx, db.SQL(), 1)
		if err != nil || len(set1) != 2 || string(set1[0].Raw) != `{"a":1}` || set1[1].Name != "b" {
			t.Fatalf("set at 1: %+v %v", set1, err)
		}
		cur, set, _ := db.PolicySet(ctx, db.SQL(), 0)
		if cur != 3 || len(set) != 2 || string(set[0].Raw) != `{"a":2}` || set[1].Name != "c" {
			t.Fatalf("current set: %d %+v", cur, set)
		}
		if _, _, err := db.PolicySet(ctx, db.SQL(), 9); !errors.Is(err, store.ErrNotFound) {
			t.Fatalf("future version: %v", err)
		}
		h, err := db.PolicyHistory(ctx, 0, 10)
		if err != nil || len(h) != 3 || h[0].Version != 3 || h[2].Changes[0].Name != "a" {
			t.Fatalf("history: %+v %v", h, err)
		}
		vs, _ := db.Versions(ctx)
		if vs.Sections[store.SectionPolicies] == 0 {
			t.Fatal("policy changes did not bump the policies section")
		}
	})
}
