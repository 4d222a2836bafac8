package ca

import (
	"bytes"
	"context"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/svid/jwtsvid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
)

// fleet is a CA whose authorities of kind are in every state: revoked (V),
// tainted (T), retired (R), active (A) and prepared (P), reached with the
// operator's steps alone.
type fleet struct {
	V, T, R, A, P string
}

// mustStep(t, what)(step(...)) fails the test when the step does.
func mustStep(t *testing.T, what string) func(Authority, bool, error) Authority {
	return func(a Authority, _ bool, err error) Authority {
		t.Helper()
		if err != nil {
			t.Fatalf("%s: %v", what, err)
		}
		return a
	}
}

func newFleet(t *testing.T, e *env, kind AuthorityKind) fleet {
	t.Helper()
	ctx := context.Background()
	var ids []string
	ids = append(ids, idsIn(e.ca, kind, StateActive)...)
	for range 3 {
		e.clock.Advance(time.Minute)
		p := mustStep(t, "prepare")(e.ca.Prepare(ctx, kind))
		if p.State != StatePrepared || p.Kind != kind {
			t.Fatalf("Prepare returned %+v", p)
		}
		a := mustStep(t, "activate")(e.ca.Activate(ctx, kind, ""))
		if a.ID != p.ID || a.State != StateActive {
			t.Fatalf("Activate returned %s %s, want %s active", a.ID, a.State, p.ID)
		}
		ids = append(ids, a.ID)
	}
	f := fleet{V: ids[0], T: ids[1], R: ids[2], A: ids[3]}
	mustStep(t, "taint V")(e.ca.Taint(ctx, kind, f.V))
	mustStep(t, "revoke V")(e.ca.Revoke(ctx, kind, f.V))
	mustStep(t, "taint T")(e.ca.Taint(ctx, "", f.T))
	f.P = mustStep(t, "prepare")(e.ca.Prepare(ctx, kind)).ID
	for id, want := range map[string]AuthorityState{f.V: StateRevoked, f.T: StateTainted, f.R: StateRetired, f.A: StateActive, f.P: StatePrepared} {
		if got := stateOf(e.ca, id); got != want {
			t.Fatalf("fixture: %s is %q, want %q", id, got, want)
		}
	}
	return f
}

func stateOf(c *CA, id string) AuthorityState {
	for _, a := range c.Status() {
		if a.ID == id {
			return a.State
		}
	}
	return ""
}

// Every operator step on an authority in every state: the allowed ones
// take effect (and bump the bundle sequence when the bundle changes), the
// refused ones return the documented error and change nothing, stored or
// in memory.
func TestOperatorStepsTable(t *testing.T) {
	ctx := context.Background()
	for _, kind := range []AuthorityKind{KindX509, KindJWT} {
		other := KindJWT
		if kind == KindJWT {
			other = KindX509
		}
		for _, tc := range []struct {
			name string
			step func(c *CA, f fleet) (Authority, bool, error)
			// id and state after an allowed step; err for a refused one
			id      func(f fleet) string
			state   AuthorityState
			bundle  bool // the bundle changes
			err     error
			errText string
		}{
			{name: "prepare/with_one_prepared", step: func(c *CA, f fleet) (Authority, bool, error) { return c.Prepare(ctx, kind) }, err: ErrAuthorityState, errText: "already prepared"},
			{name: "prepare/bad_kind", step: func(c *CA, f fleet) (Authority, bool, error) { return c.Prepare(ctx, "x509 ") }, err: ErrInvalidRequest, errText: "authority kind"},
			{name: "activate/prepared", step: func(c *CA, f fleet) (Authority, bool, error) { return c.Activate(ctx, kind, "") }, id: func(f fleet) string { return f.P }, state: StateActive},
			{name: "activate/prepared_by_id", step: func(c *CA, f fleet) (Authority, bool, error) { return c.Activate(ctx, kind, f.P) }, id: func(f fleet) string { return f.P }, state: StateActive},
			{name: "activate/active", step: func(c *CA, f fleet) (Authority, bool, error) { return c.Activate(ctx, kind, f.A) }, err: ErrAuthorityState, errText: "is active; only a prepared"},
			{name: "activate/retired", step: func(c *CA, f fleet) (Authority, bool, error) { return c.Activate(ctx, kind, f.R) }, err: ErrAuthorityState, errText: "is retired"},
			{name: "activate/tainted", step: func(c *CA, f fleet) (Authority, bool, error) { return c.Activate(ctx, kind, f.T) }, err: ErrAuthorityState, errText: "is tainted"},
			{name: "activate/revoked", step: func(c *CA, f fleet) (Authority, bool, error) { return c.Activate(ctx, kind, f.V) }, err: ErrAuthorityState, errText: "was revoked"},
			{name: "activate/unknown", step: func(c *CA, f fleet) (Authority, bool, error) { return c.Activate(ctx, kind, "00") }, err: ErrUnknownAuthority},
			{name: "activate/other_kind", step: func(c *CA, f fleet) (Authority, bool, error) { return c.Activate(ctx, other, f.P) }, err: ErrUnknownAuthority},
			{name: "taint/retired", step: func(c *CA, f fleet) (Authority, bool, error) { return c.Taint(ctx, kind, f.R) }, id: func(f fleet) string { return f.R }, state: StateTainted, bundle: true},
			{name: "taint/retired_kind_inferred", step: func(c *CA, f fleet) (Authority, bool, error) { return c.Taint(ctx, "", f.R) }, id: func(f fleet) string { return f.R }, state: StateTainted, bundle: true},
			{name: "taint/active", step: func(c *CA, f fleet) (Authority, bool, error) { return c.Taint(ctx, kind, f.A) }, err: ErrAuthorityState, errText: "is active and signs"},
			{name: "taint/prepared", step: func(c *CA, f fleet) (Authority, bool, error) { return c.Taint(ctx, kind, f.P) }, err: ErrAuthorityState, errText: "prepared and has signed nothing"},
			{name: "taint/tainted", step: func(c *CA, f fleet) (Authority, bool, error) { return c.Taint(ctx, kind, f.T) }, err: ErrAuthorityState, errText: "already tainted"},
			{name: "taint/revoked", step: func(c *CA, f fleet) (Authority, bool, error) { return c.Taint(ctx, kind, f.V) }, err: ErrAuthorityState, errText: "was revoked"},
			{name: "taint/unknown", step: func(c *CA, f fleet) (Authority, bool, error) { return c.Taint(ctx, "", "nope") }, err: ErrUnknownAuthority},
			{name: "taint/other_kind", step: func(c *CA, f fleet) (Authority, bool, error) { return c.Taint(ctx, other, f.R) }, err: ErrUnknownAuthority},
			{name: "taint/bad_kind", step: func(c *CA, f fleet) (Authority, bool, error) { return c.Taint(ctx, "X509", f.R) }, err: ErrInvalidRequest},
			{name: "taint/empty_id", step: func(c *CA, f fleet) (Authority, bool, error) { return c.Taint(ctx, kind, "") }, err: ErrInvalidRequest},
			{name: "revoke/tainted", step: func(c *CA, f fleet) (Authority, bool, error) { return c.Revoke(ctx, kind, f.T) }, id: func(f fleet) string { return f.T }, state: StateRevoked, bundle: true},
			{name: "revoke/tainted_kind_inferred", step: func(c *CA, f fleet) (Authority, bool, error) { return c.Revoke(ctx, "", f.T) }, id: func(f fleet) string { return f.T }, state: StateRevoked, bundle: true},
			{name: "revoke/retired", step: func(c *CA, f fleet) (Authority, bool, error) { return c.Revoke(ctx, kind, f.R) }, err: ErrAuthorityState, errText: "only a tainted authority can be revoked"},
			{name: "revoke/active", step: func(c *CA, f fleet) (Authority, bool, error) { return c.Revoke(ctx, kind, f.A) }, err: ErrAuthorityState, errText: "is active"},
			{name: "revoke/prepared", step: func(c *CA, f fleet) (Authority, bool, error) { return c.Revoke(ctx, kind, f.P) }, err: ErrAuthorityState, errText: "is prepared"},
			{name: "revoke/revoked", step: func(c *CA, f fleet) (Authority, bool, error) { return c.Revoke(ctx, kind, f.V) }, err: ErrAuthorityState, errText: "already revoked"},
			{name: "revoke/unknown", step: func(c *CA, f fleet) (Authority, bool, error) { return c.Revoke(ctx, kind, "nope") }, err: ErrUnknownAuthority},
			{name: "revoke/other_kind", step: func(c *CA, f fleet) (Authority, bool, error) { return c.Revoke(ctx, other, f.T) }, err: ErrUnknownAuthority},
		} {
			t.Run(string(kind)+"/"+tc.name, func(t *testing.T) {
				e := newEnv(t, nil)
				f := newFleet(t, e, kind)
				blob, saves := e.store.snapshot()
				before := e.ca.Status()
				seq, _ := e.ca.Bundle().SequenceNumber()

				a, changed, err := tc.step(e.ca, f)
				gotSeq, _ := e.ca.Bundle().SequenceNumber()
				if tc.err != nil {
					if !errors.Is(err, tc.err) || !strings.Contains(err.Error(), tc.errText) {
						t.Fatalf("err = %v, want %v containing %q", err, tc.err, tc.errText)
					}
					after, afterSaves := e.store.snapshot()
					if !bytes.Equal(after, blob) || afterSaves != saves {
						t.Error("a refused step saved a state")
					}
					if changed || gotSeq != seq || !slices.EqualFunc(before, e.ca.Status(), func(x, y Authority) bool { return x.ID == y.ID && x.State == y.State }) {
						t.Error("a refused step changed the CA")
					}
					return
				}
				if err != nil {
					t.Fatalf("err = %v", err)
				}
				id := tc.id(f)
				if a.ID != id || a.State != tc.state || stateOf(e.ca, id) != tc.state {
					t.Errorf("returned %s %s, status says %s; want %s %s", a.ID, a.State, stateOf(e.ca, id), id, tc.state)
				}
				if changed != tc.bundle || (gotSeq == seq+1) != tc.bundle {
					t.Errorf("changed = %v, sequence %d -> %d; want a bundle change: %v", changed, seq, gotSeq, tc.bundle)
				}
				if tc.state == StateActive && stateOf(e.ca, f.A) != StateRetired {
					t.Errorf("the previously active %s is %s, want retired", f.A, stateOf(e.ca, f.A))
				}
				// The step is in the store: a restarted server sees it.
				if got := stateOf(e.reopen(t), id); got != tc.state {
					t.Errorf("after a restart %s is %s, want %s", id, got, tc.state)
				}
			})
		}
	}
}

// An emergency activation signs at once with the new authority.
func TestActivateSignsAtOnce(t *testing.T) {
	ctx := context.Background()
	e := newEnv(t, nil)
	old := activeX509ID(t, e.ca)
	p := mustStep(t, "prepare x509")(e.ca.Prepare(ctx, KindX509))
	if got := activeX509ID(t, e.ca); got != old {
		t.Fatalf("prepare changed the active authority to %s", got)
	}
	mustStep(t, "activate")(e.ca.Activate(ctx, KindX509, p.ID))
	if is := mustSign(t, e.ca, testID, 0); hex.EncodeToString(is.Chain[0].AuthorityKeyId) != p.ID {
		t.Errorf("signed by %x, want the activated %s", is.Chain[0].AuthorityKeyId, p.ID)
	}
	j := mustStep(t, "prepare jwt")(e.ca.Prepare(ctx, KindJWT))
	mustStep(t, "activate jwt")(e.ca.Activate(ctx, KindJWT, ""))
	tok, _, err := e.ca.SignJWTSVID(testID, []string{"a"}, 0)
	if err != nil {
		t.Fatal(err)
	}
	if kid := decodeJWTPart(t, tok, 0)["kid"]; kid != j.ID {
		t.Errorf("JWT-SVID signed with kid %v, want %s", kid, j.ID)
	}
	// The schedule goes on from there: no second activation at the
	// prepared authority's original time.
	e.clock.Advance(DefaultActivationDelay)
	tick(t, e, false)
	if got := activeX509ID(t, e.ca); got != p.ID {
		t.Errorf("after the original activation time the active authority is %s, want %s", got, p.ID)
	}
}

// What a revoked authority signed is trusted nowhere: not by the bundle
// (X509-SVIDs and JWT-SVIDs), not by Signed, and IssuerState says so.
// Tainting alone keeps it trusted.
func TestRevokedAuthorityIsNotTrusted(t *testing.T) {
	ctx := context.Background()
	e := newEnv(t, nil)
	oldX, oldJ := activeX509ID(t, e.ca), idsIn(e.ca, KindJWT, StateActive)[0]
	svid := mustSign(t, e.ca, testID, 0)
	tok, _, err := e.ca.SignJWTSVID(testID, []string{"a"}, 0)
	if err != nil {
		t.Fatal(err)
	}
	for _, k := range []AuthorityKind{KindX509, KindJWT} {
		mustStep(t, "prepare")(e.ca.Prepare(ctx, k))
		mustStep(t, "activate")(e.ca.Activate(ctx, k, ""))
	}
	check := func(stage string, wantTrusted bool, wantState AuthorityState) {
		t.Helper()
		_, _, err := x509svid.Verify(svid.Chain, e.ca.Bundle(), x509svid.WithTime(e.clock.Now()))
		if (err == nil) != wantTrusted {
			t.Errorf("%s: X509-SVID of the old authority verifies: %v, want %v", stage, err == nil, wantTrusted)
		}
		if e.ca.Signed(svid.Chain[0]) != wantTrusted {
			t.Errorf("%s: Signed = %v, want %v", stage, !wantTrusted, wantTrusted)
		}
		_, err = jwtsvid.ParseAndValidate(tok, e.ca.Bundle(), []string{"a"})
		if (err == nil) != wantTrusted {
			t.Errorf("%s: JWT-SVID of the old key validates: %v, want %v", stage, err == nil, wantTrusted)
		}
		if id, st, ok := e.ca.IssuerState(svid.Chain[0]); !ok || id != oldX || st != wantState {
			t.Errorf("%s: IssuerState = %s %s %v, want %s %s", stage, id, st, ok, oldX, wantState)
		}
	}
	check("retired", true, StateRetired)
	for _, id := range []string{oldX, oldJ} {
		mustStep(t, "taint")(e.ca.Taint(ctx, "", id))
	}
	check("tainted", true, StateTainted)
	for _, id := range []string{oldX, oldJ} {
		mustStep(t, "revoke")(e.ca.Revoke(ctx, "", id))
	}
	check("revoked", false, StateRevoked)
	if got := e.ca.RevokedIDs(); !slices.Equal(got, sorted(oldX, oldJ)) {
		t.Errorf("RevokedIDs = %v, want %v", got, sorted(oldX, oldJ))
	}
	// A restarted server still does not trust them.
	e.ca = e.reopen(t)
	check("revoked, after a restart", false, StateRevoked)
	// At its NotAfter the record goes, as the key would have.
	var notAfter time.Time
	for _, a := range e.ca.Status() {
		if a.ID == oldX {
			notAfter = a.NotAfter
		}
	}
	e.clock.Set(notAfter)
	if _, err := e.ca.Tick(ctx); err != nil {
		t.Fatal(err)
	}
	if got := stateOf(e.ca, oldX); got != "" {
		t.Errorf("after its NotAfter the revoked authority is still listed as %q", got)
	}
}

// An X.509 authority below an upstream CA cannot be tainted: the bundle
// holds the upstream roots, so removing it from the bundle is impossible.
func TestTaintRefusedUnderUpstream(t *testing.T) {
	ctx := context.Background()
	org := newOrgPKI(t, time.Now(), 30*24*time.Hour)
	up, err := NewUpstream([]*x509.Certificate{org.inter}, org.interKey, []*x509.Certificate{org.root})
	if err != nil {
		t.Fatal(err)
	}
	e := newEnv(t, func(o *Options) { o.Upstream = up })
	old := activeX509ID(t, e.ca)
	mustStep(t, "prepare")(e.ca.Prepare(ctx, KindX509))
	mustStep(t, "activate")(e.ca.Activate(ctx, KindX509, ""))
	_, _, err = e.ca.Taint(ctx, KindX509, old)
	if !errors.Is(err, ErrAuthorityState) || !strings.Contains(err.Error(), "revoke it at the upstream CA") {
		t.Fatalf("taint of an upstream-signed authority: %v", err)
	}
}

// A state that holds a revoked authority again (the store restored from
// before the revocation, or the old blob written back by someone who can
// write the store but has no KEK) is refused by a running server, whatever
// its sequence, and at start by a server that was told the revoked IDs.
func TestRevokedAuthorityCannotComeBack(t *testing.T) {
	ctx := context.Background()
	for _, tc := range stateStores {
		t.Run(tc.name, func(t *testing.T) {
			m := &memStore{}
			e := newEnv(t, func(o *Options) { o.State = tc.store(m) })
			old := activeX509ID(t, e.ca)
			mustStep(t, "prepare")(e.ca.Prepare(ctx, KindX509))
			mustStep(t, "activate")(e.ca.Activate(ctx, KindX509, ""))
			mustStep(t, "taint")(e.ca.Taint(ctx, KindX509, old))
			tainted, _ := m.snapshot()
			mustStep(t, "revoke")(e.ca.Revoke(ctx, KindX509, old))
			seq, _ := e.ca.Bundle().SequenceNumber()

			m.mu.Lock()
			m.blob = tainted
			m.mu.Unlock()
			for name, step := range map[string]func() (bool, error){
				"tick": func() (bool, error) { return e.ca.Tick(ctx) },
				"sync": func() (bool, error) { return e.ca.Sync(ctx) },
				"prepare": func() (bool, error) {
					_, ch, err := e.ca.Prepare(ctx, KindJWT)
					return ch, err
				},
			} {
				changed, err := step()
				if !errors.Is(err, ErrRevokedAuthority) || changed {
					t.Errorf("%s on the restored state: changed %v, err %v; want ErrRevokedAuthority", name, changed, err)
				}
			}
			if got, _ := e.ca.Bundle().SequenceNumber(); got != seq || stateOf(e.ca, old) != StateRevoked {
				t.Errorf("the CA went back: sequence %d (want %d), %s is %s", got, seq, old, stateOf(e.ca, old))
			}
			// A restart that knows the revoked IDs refuses it too.
			opts := e.opts
			opts.RevokedAuthorities = e.ca.RevokedIDs()
			_, err := Open(ctx, opts)
			if !errors.Is(err, ErrRevokedAuthority) || !strings.Contains(err.Error(), old) {
				t.Errorf("Open of the restored state with the revoked IDs: %v, want ErrRevokedAuthority naming %s", err, old)
			}
			t.Logf("refused: %v", err)
		})
	}
}

// A state replayed at the same bundle sequence (before an activation,
// which does not change the bundle) is refused like an older one: it
// would make the retired authority sign again. Fails before the state had
// a generation: the replica adopted it.
func TestReplicaRefusesReplayAtSameSequence(t *testing.T) {
	ctx := context.Background()
	m := &memStore{}
	e := newEnv(t, func(o *Options) { o.State = &swapStore{memStore: m} })
	if err := e.ca.Rotate(ctx); err != nil {
		t.Fatal(err)
	}
	prepared, _ := m.snapshot()
	seq, _ := e.ca.Bundle().SequenceNumber()
	e.clock.Advance(DefaultActivationDelay)
	tick(t, e, false) // activation: same sequence
	active := activeX509ID(t, e.ca)
	if got, _ := e.ca.Bundle().SequenceNumber(); got != seq {
		t.Fatalf("an activation changed the sequence %d -> %d", seq, got)
	}
	m.mu.Lock()
	m.blob = prepared
	m.mu.Unlock()
	_, err := e.ca.Sync(ctx)
	if err == nil || !strings.Contains(err.Error(), "older") {
		t.Errorf("Sync of a replayed state at the same sequence = %v, want an error saying it is older", err)
	}
	t.Logf("refused: %v", err)
	if got := activeX509ID(t, e.ca); got != active {
		t.Errorf("active authority %s after the replay, want %s", got, active)
	}
}

// Two replicas on one store taint (then revoke) the same authority at
// once: one step is taken, the other replica checks again against the
// winner's state and says it was already done; both end with the same
// state.
func TestReplicasRaceTaintAndRevoke(t *testing.T) {
	ctx := context.Background()
	for _, kind := range []AuthorityKind{KindX509, KindJWT} {
		t.Run(string(kind), func(t *testing.T) {
			m := &memStore{}
			sw := &swapStore{memStore: m}
			e := newEnv(t, func(o *Options) { o.State = sw })
			b := e.reopen(t)
			old := idsIn(e.ca, kind, StateActive)[0]
			mustStep(t, "prepare")(e.ca.Prepare(ctx, kind))
			mustStep(t, "activate")(e.ca.Activate(ctx, kind, ""))

			for _, step := range []struct {
				name string
				do   func(c *CA) (Authority, bool, error)
				want AuthorityState
				text string
			}{
				{"taint", func(c *CA) (Authority, bool, error) { return c.Taint(ctx, kind, old) }, StateTainted, "already tainted"},
				{"revoke", func(c *CA) (Authority, bool, error) { return c.Revoke(ctx, "", old) }, StateRevoked, "already revoked"},
			} {
				// b's step runs while a's save is in flight, so a loses
				// the compare-and-swap and must check again.
				var bErr error
				sw.hookMu.Lock()
				sw.beforeSwap = func() { _, _, bErr = step.do(b) }
				sw.hookMu.Unlock()
				_, _, aErr := step.do(e.ca)
				if bErr != nil {
					t.Fatalf("%s: the winning replica: %v", step.name, bErr)
				}
				if !errors.Is(aErr, ErrAuthorityState) || !strings.Contains(aErr.Error(), step.text) {
					t.Fatalf("%s: the losing replica: %v, want %q", step.name, aErr, step.text)
				}
				for i, c := range []*CA{e.ca, b} {
					if got := stateOf(c, old); got != step.want {
						t.Errorf("%s: replica %d sees %s %s, want %s", step.name, i, old, got, step.want)
					}
				}
				sa, _ := e.ca.Bundle().SequenceNumber()
				sb, _ := b.Bundle().SequenceNumber()
				if sa != sb {
					t.Errorf("%s: replicas publish sequences %d and %d", step.name, sa, sb)
				}
			}
		})
	}
}

// Operator steps run concurrently with Tick and signing (-race).
func TestOperatorStepsConcurrent(t *testing.T) {
	ctx := context.Background()
	e := newEnv(t, nil)
	var wg sync.WaitGroup
	for i := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range 5 {
				switch i {
				case 0:
					e.ca.Prepare(ctx, KindX509)
				case 1:
					e.ca.Activate(ctx, KindX509, "")
				case 2:
					e.ca.Tick(ctx)
				case 3:
					if _, err := e.ca.SignX509SVID(csrFor(t, newP256(t), nil), testID, 0); err != nil {
						panic(fmt.Sprint(err))
					}
				}
			}
		}()
	}
	wg.Wait()
	if n := len(idsIn(e.ca, KindX509, StateActive)); n != 1 {
		t.Errorf("%d active authorities", n)
	}
}
