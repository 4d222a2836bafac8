package server

import (
	"bytes"
	"context"
	"errors"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/moatless/moatless/internal/ca"
	"github.com/moatless/moatless/internal/store"
	"github.com/moatless/moatless/internal/store/storetest"
)

// Two replicas' CAs on one store (SQLite and PostgreSQL) taint, then
// revoke, the same authority at the same moment, many times over: each
// step is taken exactly once (one replica succeeds, the other is told it
// was already done), and both end with the same state, which a restart
// reads back.
func TestCAReplicasRaceTaintRevokeOnStore(t *testing.T) {
	storetest.Each(t, func(t *testing.T, db *store.DB) {
		ctx := context.Background()
		opts := ca.Options{TrustDomain: spiffeid.RequireTrustDomainFromString("example.org"), State: caState{db}, KEK: bytes.Repeat([]byte{7}, ca.KEKSize)}
		a, err := ca.Open(ctx, opts)
		if err != nil {
			t.Fatal(err)
		}
		b, err := ca.Open(ctx, opts)
		if err != nil {
			t.Fatal(err)
		}
		for round := range 3 {
			for _, kind := range []ca.AuthorityKind{ca.KindX509, ca.KindJWT} {
				old := ""
				for _, x := range a.Status() {
					if x.Kind == kind && x.State == ca.StateActive {
						old = x.ID
					}
				}
				if _, _, err := a.Prepare(ctx, kind); err != nil {
					t.Fatal(err)
				}
				if _, _, err := b.Activate(ctx, kind, ""); err != nil {
					t.Fatal(err)
				}
				for _, step := range []struct {
					name string
					do   func(c *ca.CA) error
					want ca.AuthorityState
				}{
					{"taint", func(c *ca.CA) error { _, _, err := c.Taint(ctx, kind, old); return err }, ca.StateTainted},
					{"revoke", func(c *ca.CA) error { _, _, err := c.Revoke(ctx, "", old); return err }, ca.StateRevoked},
				} {
					errs := make([]error, 2)
					var wg sync.WaitGroup
					for i, c := range []*ca.CA{a, b} {
						wg.Add(1)
						go func() { defer wg.Done(); errs[i] = step.do(c) }()
					}
					wg.Wait()
					ok := slices.IndexFunc(errs, func(e error) bool { return e == nil })
					if ok < 0 || errs[1-ok] == nil || !errors.Is(errs[1-ok], ca.ErrAuthorityState) || !strings.Contains(errs[1-ok].Error(), "already") {
						t.Fatalf("round %d %s %s: errors %v; want one success and one %q", round, kind, step.name, errs, "already")
					}
					for i, c := range []*ca.CA{a, b} {
						if _, err := c.Sync(ctx); err != nil {
							t.Fatal(err)
						}
						if got := stateIn(c, old); got != step.want {
							t.Fatalf("round %d %s %s: replica %d sees %s, want %s", round, kind, step.name, i, got, step.want)
						}
					}
				}
			}
		}
		sa, _ := a.Bundle().SequenceNumber()
		sb, _ := b.Bundle().SequenceNumber()
		r, err := ca.Open(ctx, opts)
		if err != nil {
			t.Fatal(err)
		}
		sr, _ := r.Bundle().SequenceNumber()
		if sa != sb || sr != sa || !slices.Equal(a.RevokedIDs(), r.RevokedIDs()) || len(r.RevokedIDs()) != 6 {
			t.Errorf("sequences %d %d, restarted %d; revoked %v, restarted %v", sa, sb, sr, a.RevokedIDs(), r.RevokedIDs())
		}
	})
}

func stateIn(c *ca.CA, id string) ca.AuthorityState {
	for _, a := range c.Status() {
		if a.ID == id {
			return a.State
		}
	}
	return ""
}

// DIR/ca-revoked is strict: one authority ID a line, nothing else.
func TestParseRevokedAuthorities(t *testing.T) {
	x, j := strings.Repeat("ab", 20), strings.Repeat("A_-z", 10)+"xyw"
	for _, tc := range []struct {
		name, in string
		want     []string
		err      string
	}{
		{"empty", "", nil, ""},
		{"both", x + "\n" + j + "\n", []string{x, j}, ""},
		{"no_final_newline", x, []string{x}, ""},
		{"blank_line", x + "\n\n", nil, "line 2"},
		{"upper_hex", strings.ToUpper(x), nil, "not an authority ID"},
		{"space", x + " \n", nil, "not an authority ID"},
		{"short", x[:39], nil, "not an authority ID"},
		{"jwt_padding", j[:42] + "=", nil, "not an authority ID"},
		{"jwt_not_canonical", j[:42] + "z", nil, "not an authority ID"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := parseRevokedAuthorities([]byte(tc.in))
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("err = %v, want %q", err, tc.err)
				}
				return
			}
			if err != nil || !slices.Equal(got, tc.want) {
				t.Fatalf("= %v, %v; want %v", got, err, tc.want)
			}
		})
	}
}

func FuzzParseRevokedAuthorities(f *testing.F) {
	f.Add([]byte(strings.Repeat("ab", 20) + "\n"))
	f.Add([]byte("\n\n"))
	f.Fuzz(func(t *testing.T, b []byte) {
		ids, err := parseRevokedAuthorities(b)
		if err != nil {
			return
		}
		for _, id := range ids {
			if parseAuthorityID(id, "", true) != nil {
				t.Fatalf("accepted %q, which is not an authority ID", id)
			}
		}
	})
}
