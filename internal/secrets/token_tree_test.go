package secrets

import (
	"sync"
	"testing"
	"time"

	"github.com/moatless/moatless/internal/store"
	"github.com/moatless/moatless/internal/store/storetest"
)

// TestTokenHierarchy: a token created by another token is its child, as
// in Vault ("Token Hierarchies and Orphan Tokens"): revoking the parent
// (revoke, revoke-self, revoke-accessor, its expiry) revokes the child
// and the child's children; revoke-orphan revokes the parent alone, and
// no_parent or create-orphan make a token without a parent. Every token
// was an orphan: revoking a compromised parent left what it had minted
// working.
func TestTokenHierarchy(t *testing.T) {
	storetest.Each(t, func(t *testing.T, db *store.DB) {
		ts := newTestService(t, db)
		ts.policy("creator", `path "auth/token/create*" { capabilities = ["update", "sudo"] }`)
		alive := func(tok string) bool {
			t.Helper()
			st, _ := ts.call("GET", "auth/token/lookup-self", tok, nil)
			return st == 200
		}
		create := func(by string, body map[string]any, path ...string) (string, string, bool) {
			t.Helper()
			p := "auth/token/create"
			if len(path) > 0 {
				p = path[0]
			}
			if body == nil {
				body = map[string]any{}
			}
			if _, ok := body["policies"]; !ok {
				body["policies"] = []string{"creator"}
			}
			out := ts.must("POST", p, by, body)
			auth := out["auth"].(map[string]any)
			return authToken(t, out), auth["accessor"].(string), auth["orphan"].(bool)
		}
		for _, tc := range []struct {
			name string
			end  func(parent, parentAcc string)
			// orphaned: the parent alone ends, its children live on
			orphaned bool
		}{
			{"revoke_self", func(p, _ string) { ts.must("POST", "auth/token/revoke-self", p, nil) }, false},
			{"revoke_accessor", func(_, a string) {
				ts.must("POST", "auth/token/revoke-accessor", testAdminToken, map[string]any{"accessor": a})
			}, false},
			{"revoke", func(p, _ string) { ts.must("POST", "auth/token/revoke", testAdminToken, map[string]any{"token": p}) }, false},
			{"expiry", func(_, _ string) { ts.now = ts.now.Add(2 * time.Minute) }, false},
			{"expiry_then_tick", func(_, _ string) {
				ts.now = ts.now.Add(2 * time.Minute)
				ts.svc.Tick(t.Context())
			}, false},
			{"revoke_orphan", func(p, _ string) {
				ts.must("POST", "auth/token/revoke-orphan", testAdminToken, map[string]any{"token": p})
			}, true},
		} {
			t.Run(tc.name, func(t *testing.T) {
				out := ts.must("POST", "auth/token/create", testAdminToken, map[string]any{"policies": []string{"creator"}, "ttl": "1m", "explicit_max_ttl": "24h"})
				parent, parentAcc := authToken(t, out), out["auth"].(map[string]any)["accessor"].(string)
				child, _, orphan := create(parent, map[string]any{"ttl": "1h"})
				if orphan {
					t.Fatal("a token created by a token is an orphan")
				}
				grandchild, _, _ := create(child, nil)
				noParent, _, o1 := create(parent, map[string]any{"no_parent": true})
				createOrphan, _, o2 := create(parent, nil, "auth/token/create-orphan")
				if !o1 || !o2 {
					t.Fatalf("no_parent / create-orphan made a child: %v %v", o1, o2)
				}
				tc.end(parent, parentAcc)
				if alive(parent) {
					t.Fatal("the parent still works")
				}
				for name, tok := range map[string]string{"child": child, "grandchild": grandchild} {
					if got := alive(tok); got != tc.orphaned {
						t.Errorf("%s works=%v after the parent ended, want %v", name, got, tc.orphaned)
					}
				}
				for name, tok := range map[string]string{"no_parent": noParent, "create-orphan": createOrphan} {
					if !alive(tok) {
						t.Errorf("the orphan made with %s was revoked with the parent", name)
					}
				}
				if tc.orphaned {
					d := dataOf(ts.must("GET", "auth/token/lookup-self", child, nil))
					if d["orphan"] != true {
						t.Errorf("the child of a revoke-orphan'd parent is not an orphan now: %v", d)
					}
				}
			})
		}

		t.Run("child_never_outlives_parents_max_ttl", func(t *testing.T) {
			out := ts.must("POST", "auth/token/create", testAdminToken, map[string]any{"policies": []string{"creator"}, "ttl": "1h", "explicit_max_ttl": "2h"})
			parent := authToken(t, out)
			child, _, _ := create(parent, map[string]any{"ttl": "10h", "explicit_max_ttl": "100h"})
			d := dataOf(ts.must("GET", "auth/token/lookup-self", child, nil))
			if d["explicit_max_ttl"].(float64) > 2*3600 {
				t.Errorf("child's max TTL %v outlives its parent's 2h", d["explicit_max_ttl"])
			}
		})

		t.Run("revoke_orphan_needs_sudo", func(t *testing.T) {
			ts.policy("revoker", `path "auth/token/revoke-orphan" { capabilities = ["update"] }`)
			victim := ts.tokenWith("creator")
			r := ts.tokenWith("revoker")
			if st, out := ts.call("POST", "auth/token/revoke-orphan", r, map[string]any{"token": victim}); st != 403 {
				t.Errorf("revoke-orphan without sudo: %d %v", st, out)
			}
			if !alive(victim) {
				t.Error("a refused revoke-orphan revoked the token")
			}
		})

		// A tree is bounded as a whole: 1000 children a token and 8 deep
		// let one token with sudo on auth/token/create grow a tree of
		// 1000^8 tokens, which its revocation (or its root's expiry at
		// the maintenance pass) walks in one transaction holding the
		// database's write lock, two queries and an audit record a token.
		// The parent created every token here.
		t.Run("tree_is_bounded", func(t *testing.T) {
			defer func(n int) { maxTokenTree = n }(maxTokenTree)
			maxTokenTree = 6
			root := ts.tokenWith("creator")
			c1, c1Acc, _ := create(root, nil)
			c2, _, _ := create(root, nil)
			create(c1, nil)
			create(c1, nil)
			g3, _, _ := create(c2, nil) // 6 tokens: root, c1, c2 and three below them
			for name, by := range map[string]string{"root": root, "child": c2, "grandchild": g3} {
				if st, out := ts.call("POST", "auth/token/create", by, map[string]any{"policies": []string{"creator"}}); st != 400 {
					t.Errorf("a 7th token in the tree, created by the %s: %d %v", name, st, out)
				}
			}
			// An orphan starts a tree of its own.
			if _, _, orphan := create(g3, map[string]any{"no_parent": true}); !orphan {
				t.Error("no_parent made a child")
			}
			// Revoking a branch makes room again.
			ts.must("POST", "auth/token/revoke-accessor", testAdminToken, map[string]any{"accessor": c1Acc})
			if alive(c1) {
				t.Fatal("c1 still works")
			}
			create(g3, nil)
		})

		t.Run("depth_is_bounded", func(t *testing.T) {
			tok := ts.tokenWith("creator")
			for i := 1; i <= 8; i++ { // maxTokenDepth
				tok, _, _ = create(tok, nil)
			}
			if st, out := ts.call("POST", "auth/token/create", tok, map[string]any{"policies": []string{"creator"}}); st != 400 {
				t.Errorf("a token 9 deep: %d %v", st, out)
			}
		})
	})
}

// TestChildCreationRacingParentRevocation: children created while their
// parent is being revoked are revoked with it or refused; none is left
// working (PostgreSQL: the creation locks the parent's row, the
// revocation deletes it first).
func TestChildCreationRacingParentRevocation(t *testing.T) {
	storetest.Each(t, func(t *testing.T, db *store.DB) {
		ts := newTestService(t, db)
		ts.policy("creator", `path "auth/token/create" { capabilities = ["update", "sudo"] }`)
		parent := ts.tokenWith("creator")
		const n = 16
		kids := make(chan string, n)
		var wg sync.WaitGroup
		for range n {
			wg.Add(1)
			go func() {
				defer wg.Done()
				st, out := ts.call("POST", "auth/token/create", parent, map[string]any{"policies": []string{"creator"}})
				if st == 200 {
					auth, _ := out["auth"].(map[string]any)
					kids <- auth["client_token"].(string)
				} else if st != 403 {
					t.Errorf("create: %d %v", st, out)
				}
			}()
		}
		ts.must("POST", "auth/token/revoke", testAdminToken, map[string]any{"token": parent})
		wg.Wait()
		close(kids)
		for k := range kids {
			if st, _ := ts.call("GET", "auth/token/lookup-self", k, nil); st != 403 {
				t.Errorf("a child created during its parent's revocation works: %d", st)
			}
		}
	})
}

// TestEmptyListIsBare404: listing a folder with nothing in it is a 404
// whose errors list is empty, as Vault answers; it was [""].
func TestEmptyListIsBare404(t *testing.T) {
	storetest.Each(t, func(t *testing.T, db *store.DB) {
		ts := newTestService(t, db)
		st, out := ts.call("LIST", "secret/metadata/nothing-here", testAdminToken, nil)
		errs, ok := out["errors"].([]any)
		if st != 404 || !ok || len(errs) != 0 {
			t.Fatalf("%d %v, want 404 {\"errors\":[]}", st, out)
		}
	})
}

// TestTokenTreeBoundHoldsAgainstRacingCreates: two tokens of one tree,
// in different branches, creating a child at once when the tree is one
// token short of its bound make one token, not two. Each creation locked
// its own parent's row only, so on PostgreSQL both counted the tree
// before either had committed and both went in: as many tokens past the
// bound as there were creations racing. (SQLite's writers are serial.)
func TestTokenTreeBoundHoldsAgainstRacingCreates(t *testing.T) {
	db := storetest.Postgres(t)
	ts := newTestService(t, db)
	ts.policy("creator", `path "auth/token/create" { capabilities = ["update", "sudo"] }`)
	defer func(n int) { maxTokenTree = n }(maxTokenTree)
	maxTokenTree = 4
	create := func(by string) (int, map[string]any) {
		return ts.call("POST", "auth/token/create", by, map[string]any{"policies": []string{"creator"}})
	}
	root := ts.tokenWith("creator")
	a := authToken(t, ts.must("POST", "auth/token/create", root, map[string]any{"policies": []string{"creator"}}))
	b := authToken(t, ts.must("POST", "auth/token/create", root, map[string]any{"policies": []string{"creator"}}))
	// The tree holds root, a and b. a's creation, once it has counted the
	// tree, waits for b's to finish or to wait for a lock.
	var bStatus int
	var bOut map[string]any
	done := make(chan struct{})
	ts.svc.testTokenParentLocked = func() {
		ts.svc.testTokenParentLocked = nil
		go func() {
			defer close(done)
			bStatus, bOut = create(b)
		}()
		tick := time.NewTicker(10 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-done:
				return
			case <-tick.C:
			}
			var n int
			if err := db.SQL().QueryRowContext(t.Context(), `SELECT count(*) FROM pg_stat_activity
				WHERE datname = current_database() AND wait_event_type = 'Lock'`).Scan(&n); err != nil {
				t.Error(err)
				return
			}
			if n > 0 {
				return
			}
		}
	}
	aStatus, aOut := create(a)
	<-done
	t.Logf("a's child: %d %v; b's child: %d %v", aStatus, aOut["errors"], bStatus, bOut["errors"])
	if aStatus == 200 && bStatus == 200 {
		t.Errorf("both children were created: the tree holds 5 tokens, bound %d", maxTokenTree)
	}
	if aStatus != 200 && bStatus != 200 {
		t.Errorf("neither child was created (%d, %d): the tree had room for one", aStatus, bStatus)
	}
}
