package ca

import (
	"bytes"
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

// swapStore adds the StateSwapper capability to memStore. beforeSwap, when
// set, runs once at the start of the next SwapCAState, outside the lock:
// the tests use it to let another replica write in between.
type swapStore struct {
	*memStore
	hookMu     sync.Mutex
	beforeSwap func()
}

func (s *swapStore) SwapCAState(ctx context.Context, old, sealed []byte) error {
	s.hookMu.Lock()
	hook := s.beforeSwap
	s.beforeSwap = nil
	s.hookMu.Unlock()
	if hook != nil {
		hook()
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if !bytes.Equal(s.blob, old) {
		return fmt.Errorf("swap: %w", ErrStateConflict)
	}
	s.blob = append([]byte(nil), sealed...)
	s.saves++
	return nil
}

// plainStore hides memStore's type so the CA sees only the two methods.
type plainStore struct{ m *memStore }

func (p plainStore) LoadCAState(ctx context.Context) ([]byte, error) { return p.m.LoadCAState(ctx) }
func (p plainStore) SaveCAState(ctx context.Context, b []byte) error { return p.m.SaveCAState(ctx, b) }

// stateStores are the two kinds of StateStore a replica test runs on.
var stateStores = []struct {
	name  string
	store func(*memStore) StateStore
}{
	{"with_compare_and_swap", func(m *memStore) StateStore { return &swapStore{memStore: m} }},
	{"plain_store", func(m *memStore) StateStore { return plainStore{m} }},
}

// Two server replicas on one store follow one rotation: a step taken by
// one is adopted by the other at its next Tick, never duplicated.
func TestReplicasFollowOneRotation(t *testing.T) {
	for _, tc := range stateStores {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t, nil)
			e.opts.State = tc.store(e.store)
			a := e.reopen(t)
			b := e.reopen(t)
			ctx := context.Background()
			e.clock.Advance(12 * time.Hour)
			if changed, err := a.Tick(ctx); err != nil || !changed {
				t.Fatalf("A.Tick = %v, %v", changed, err)
			}
			_, saves := e.store.snapshot()
			if changed, err := b.Tick(ctx); err != nil || !changed {
				t.Fatalf("B.Tick = %v, %v; want it to adopt A's step and report the bundle change", changed, err)
			}
			if _, n := e.store.snapshot(); n != saves {
				t.Errorf("B saved a step A had already taken")
			}
			if diff := cmp.Diff(a.Status(), b.Status(), statusCmp); diff != "" {
				t.Errorf("replicas disagree (-A +B):\n%s", diff)
			}
			if !a.Bundle().Equal(b.Bundle()) {
				t.Errorf("replicas publish different bundles")
			}
			// B activates; A adopts and signs with the new key too.
			e.clock.Advance(8 * time.Hour)
			if _, err := b.Tick(ctx); err != nil {
				t.Fatal(err)
			}
			if changed, err := a.Tick(ctx); err != nil || changed {
				t.Fatalf("A.Tick after B's activation = %v, %v; want no bundle change", changed, err)
			}
			want := activeID(t, b, KindX509)
			if got := hex.EncodeToString(mustSign(t, a, testID, 0).Chain[0].AuthorityKeyId); got != want {
				t.Errorf("A signs with %s, want the activated %s", got, want)
			}
		})
	}
}

// With compare-and-swap, a replica that loses a race changes nothing and
// adopts the winner's state at its next Tick.
func TestReplicaLosesRace(t *testing.T) {
	e := newEnv(t, nil)
	store := &swapStore{memStore: e.store}
	e.opts.State = store
	a, b := e.reopen(t), e.reopen(t)
	ctx := context.Background()
	e.clock.Advance(12 * time.Hour)
	before := b.Status()
	store.beforeSwap = func() {
		if _, err := a.Tick(ctx); err != nil {
			t.Errorf("A.Tick: %v", err)
		}
	}
	if _, err := b.Tick(ctx); !errors.Is(err, ErrStateConflict) {
		t.Fatalf("B.Tick = %v, want ErrStateConflict", err)
	}
	if diff := cmp.Diff(before, b.Status(), statusCmp); diff != "" {
		t.Errorf("the losing replica changed:\n%s", diff)
	}
	if changed, err := b.Tick(ctx); err != nil || !changed {
		t.Fatalf("B.Tick after losing = %v, %v; want it to adopt A's state", changed, err)
	}
	if diff := cmp.Diff(a.Status(), b.Status(), statusCmp); diff != "" {
		t.Errorf("replicas disagree (-A +B):\n%s", diff)
	}
	if n := len(b.Status()); n != 4 {
		t.Errorf("%d authorities, want 4 (one prepared of each kind, not two)", n)
	}
}

// Replicas starting together on an empty store end up with one CA.
func TestReplicasFirstStartRace(t *testing.T) {
	m := &memStore{}
	store := &swapStore{memStore: m}
	clock := newClock(time.Now())
	o := Options{TrustDomain: testTD, State: store, KEK: testKEK, Now: clock.Now}
	var a *CA
	store.beforeSwap = func() {
		var err error
		if a, err = Open(context.Background(), o); err != nil {
			t.Errorf("Open A: %v", err)
		}
	}
	b, err := Open(context.Background(), o)
	if err != nil {
		t.Fatalf("Open B: %v", err)
	}
	if diff := cmp.Diff(a.Status(), b.Status(), statusCmp); diff != "" {
		t.Errorf("replicas disagree (-A +B):\n%s", diff)
	}
	if _, n := m.snapshot(); n != 1 {
		t.Errorf("%d saves, want 1", n)
	}
}

// Someone who can write the store but has no KEK cannot forge a state, but
// can put back an older sealed blob (a backup, or one copied before an
// admin rotation): it unseals, so a replica would adopt it and go back to
// the authorities of then, undoing a rotation done after a key was
// exposed. With compare-and-swap saves the bundle sequence never goes
// down on its own, so a replica refuses a state older than its own, keeps
// signing with what it has, and says why; the restored blob stays stored
// (the server cannot tell a deliberate restore from an attack) and a
// restart adopts it.
func TestReplicaRefusesRolledBackState(t *testing.T) {
	m := &memStore{}
	e := newEnv(t, func(o *Options) { o.State = &swapStore{memStore: m} })
	old, _ := m.snapshot()
	if err := e.ca.Rotate(context.Background()); err != nil {
		t.Fatal(err)
	}
	seq, _ := e.ca.Bundle().SequenceNumber()
	e.clock.Advance(DefaultActivationDelay)
	tick(t, e, false)
	active := activeX509ID(t, e.ca)

	m.mu.Lock()
	m.blob = old
	m.mu.Unlock()
	for name, step := range map[string]func() (bool, error){
		"tick": func() (bool, error) { return e.ca.Tick(context.Background()) },
		"sync": func() (bool, error) { return e.ca.Sync(context.Background()) },
	} {
		changed, err := step()
		if err == nil || !strings.Contains(err.Error(), "older") {
			t.Errorf("%s after the store was rolled back = %v, want an error saying the state is older", name, err)
		}
		if changed {
			t.Errorf("%s reported a bundle change", name)
		}
	}
	if got, _ := e.ca.Bundle().SequenceNumber(); got != seq {
		t.Errorf("bundle sequence %d, want %d still", got, seq)
	}
	if got := activeX509ID(t, e.ca); got != active {
		t.Errorf("active X.509 authority %s, want %s still", got, active)
	}
	if is := mustSign(t, e.ca, testID, 0); hex.EncodeToString(is.Chain[0].AuthorityKeyId) != active {
		t.Errorf("signed with %x, want the authority of before the rollback", is.Chain[0].AuthorityKeyId)
	}
}

func activeX509ID(t *testing.T, c *CA) string {
	t.Helper()
	for _, a := range c.Status() {
		if a.Kind == KindX509 && a.State == StateActive {
			return a.ID
		}
	}
	t.Fatal("no active X.509 authority")
	return ""
}
