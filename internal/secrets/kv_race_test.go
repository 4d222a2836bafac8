package secrets

import (
	"context"
	"database/sql"
	"testing"

	"github.com/moatless/moatless/internal/audit"
	"github.com/moatless/moatless/internal/store"
	"github.com/moatless/moatless/internal/store/storetest"
)

func TestMain(m *testing.M) { storetest.Main(m) }

type discardAudit struct{}

func (discardAudit) Append(context.Context, audit.Event) error               { return nil }
func (discardAudit) AppendTx(context.Context, *sql.Tx, ...audit.Event) error { return nil }

// TestKVWriteRechecksExistenceInItsTransaction: whether a KV write needs
// create or update is decided by whether the secret exists. That was read
// before the write's transaction; another writer may create or delete the
// secret in between. A token that may only create (write-once secrets)
// must not overwrite a secret created meanwhile, and one that may only
// update must not create one deleted meanwhile.
func TestKVWriteRechecksExistenceInItsTransaction(t *testing.T) {
	storetest.Each(t, testKVWriteRechecks)
}

func testKVWriteRechecks(t *testing.T, db *store.DB) {
	const adminToken = testAdminToken
	ts := newTestService(t, db)
	call := func(method, path, token string, body any) (int, map[string]any) {
		t.Helper()
		return ts.call(method, path, token, body)
	}
	tokenWith := func(name, path, caps string) string {
		t.Helper()
		if st, out := call("PUT", "sys/policies/acl/"+name, adminToken, map[string]any{"policy": `path "` + path + `" { capabilities = ` + caps + ` }`}); st/100 != 2 {
			t.Fatalf("policy %s: %d %v", name, st, out)
		}
		st, out := call("POST", "auth/token/create", adminToken, map[string]any{"policies": []string{name}})
		auth, _ := out["auth"].(map[string]any)
		tok, _ := auth["client_token"].(string)
		if st != 200 || tok == "" {
			t.Fatalf("token for %s: %d %v", name, st, out)
		}
		return tok
	}
	createOnly := tokenWith("write-once", "secret/data/*", `["create"]`)
	updateOnly := tokenWith("rotate-only", "secret/data/*", `["update"]`)
	metaCreateOnly := tokenWith("meta-once", "secret/metadata/*", `["create"]`)
	roleMaker := tokenWith("role-maker", "auth/approle/role/*", `["create"]`)
	t.Cleanup(func() { writeChecked = func() {} })
	between := func(fn func()) {
		writeChecked = func() {
			writeChecked = func() {}
			fn()
		}
	}
	value := func(path string) any {
		t.Helper()
		st, out := call("GET", "secret/data/"+path, adminToken, nil)
		if st == 404 {
			return nil
		}
		d, _ := out["data"].(map[string]any)
		inner, _ := d["data"].(map[string]any)
		return inner["v"]
	}

	t.Run("create_only_after_another_created", func(t *testing.T) {
		between(func() {
			if st, out := call("PUT", "secret/data/db-password", adminToken, map[string]any{"data": map[string]any{"v": "the owner's"}}); st != 200 {
				t.Fatalf("concurrent create: %d %v", st, out)
			}
		})
		if st, out := call("PUT", "secret/data/db-password", createOnly, map[string]any{"data": map[string]any{"v": "the intruder's"}}); st != 403 {
			t.Errorf("create-only write over a secret created meanwhile: %d %v, want 403", st, out)
		}
		if v := value("db-password"); v != "the owner's" {
			t.Fatalf("the secret now reads %v", v)
		}
	})
	t.Run("update_only_after_another_deleted", func(t *testing.T) {
		if st, out := call("PUT", "secret/data/api-key", adminToken, map[string]any{"data": map[string]any{"v": "one"}}); st != 200 {
			t.Fatalf("create: %d %v", st, out)
		}
		between(func() {
			if st, out := call("DELETE", "secret/metadata/api-key", adminToken, nil); st/100 != 2 {
				t.Fatalf("concurrent delete: %d %v", st, out)
			}
		})
		if st, out := call("PUT", "secret/data/api-key", updateOnly, map[string]any{"data": map[string]any{"v": "two"}}); st != 403 {
			t.Errorf("update-only write to a secret deleted meanwhile: %d %v, want 403", st, out)
		}
		if v := value("api-key"); v != nil {
			t.Fatalf("the deleted secret was created again: %v", v)
		}
	})
	t.Run("metadata_create_only_after_another_created", func(t *testing.T) {
		between(func() {
			if st, out := call("POST", "secret/metadata/signing", adminToken, map[string]any{"cas_required": true, "max_versions": 10}); st/100 != 2 {
				t.Fatalf("concurrent create: %d %v", st, out)
			}
		})
		if st, out := call("POST", "secret/metadata/signing", metaCreateOnly, map[string]any{"cas_required": false, "max_versions": 1}); st != 403 {
			t.Errorf("create-only metadata write over metadata created meanwhile: %d %v, want 403", st, out)
		}
		st, out := call("GET", "secret/metadata/signing", adminToken, nil)
		d, _ := out["data"].(map[string]any)
		if st != 200 || d["cas_required"] != true || d["max_versions"] != 10.0 {
			t.Fatalf("metadata now %d %v", st, d)
		}
	})
	t.Run("approle_create_only_after_another_created", func(t *testing.T) {
		between(func() {
			if st, out := call("POST", "auth/approle/role/deploy", adminToken, map[string]any{"token_policies": []string{"rotate-only"}}); st/100 != 2 {
				t.Fatalf("concurrent create: %d %v", st, out)
			}
		})
		if st, out := call("POST", "auth/approle/role/deploy", roleMaker, map[string]any{"token_policies": []string{"write-once", "meta-once"}}); st != 403 {
			t.Errorf("create-only role write over a role created meanwhile: %d %v, want 403", st, out)
		}
		st, out := call("GET", "auth/approle/role/deploy", adminToken, nil)
		d, _ := out["data"].(map[string]any)
		if p, _ := d["token_policies"].([]any); st != 200 || len(p) != 1 || p[0] != "rotate-only" {
			t.Fatalf("the role now reads %d %v", st, d)
		}
	})
	t.Run("no_race_unchanged", func(t *testing.T) {
		if st, out := call("PUT", "secret/data/fresh", createOnly, map[string]any{"data": map[string]any{"v": "1"}}); st != 200 {
			t.Fatalf("create-only create: %d %v", st, out)
		}
		if st, _ := call("PUT", "secret/data/fresh", createOnly, map[string]any{"data": map[string]any{"v": "2"}}); st != 403 {
			t.Fatalf("create-only overwrite: %d, want 403", st)
		}
		if st, out := call("PUT", "secret/data/fresh", updateOnly, map[string]any{"data": map[string]any{"v": "3"}}); st != 200 {
			t.Fatalf("update-only update: %d %v", st, out)
		}
		if v := value("fresh"); v != "3" {
			t.Fatalf("reads %v", v)
		}
	})
}
