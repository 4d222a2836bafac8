package server

import (
	"bytes"
	"context"
	"encoding/json"
	"log/slog"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/moatless/moatless/internal/ca"
)

// memCAState is a CA state store in memory.
type memCAState struct {
	mu sync.Mutex
	b  []byte
}

func (m *memCAState) LoadCAState(context.Context) ([]byte, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.b == nil {
		return nil, ca.ErrNoState
	}
	return bytes.Clone(m.b), nil
}

func (m *memCAState) SaveCAState(_ context.Context, b []byte) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.b = bytes.Clone(b)
	return nil
}

// TestWireBundleIsOneSnapshot: wireBundle read the bundle and the
// authorities' states in two calls, so a CA step between them gave a
// bundle of one sequence number with the taint marks (and expiries) of
// the next state: a revoked JWT authority went out untainted under the
// sequence in which it was tainted. The watch streams cache the wire
// bundle by sequence number, so that mix could be what every agent got.
// Every wire bundle of one sequence number must be the same.
func TestWireBundleIsOneSnapshot(t *testing.T) {
	ctx := context.Background()
	c, err := ca.Open(ctx, ca.Options{TrustDomain: spiffeid.RequireTrustDomainFromString("example.org"), State: &memCAState{}, KEK: bytes.Repeat([]byte{7}, ca.KEKSize)})
	if err != nil {
		t.Fatal(err)
	}
	s := &Server{ca: c, td: c.TrustDomain(), log: slog.New(slog.DiscardHandler)}
	var done atomic.Bool
	var wg sync.WaitGroup
	seen := sync.Map{} // sequence number → encoded wire bundle
	var mixed atomic.Int64
	var reads atomic.Int64
	for range 2 {
		wg.Go(func() {
			for !done.Load() {
				b := s.wireBundle()
				enc, _ := json.Marshal(b)
				reads.Add(1)
				if prev, loaded := seen.LoadOrStore(b.SequenceNumber, enc); loaded && !bytes.Equal(prev.([]byte), enc) {
					if mixed.Add(1) == 1 {
						t.Errorf("two wire bundles of sequence %d differ:\n%s\n%s", b.SequenceNumber, prev, enc)
					}
				}
			}
		})
	}
	// Cycles of the operator's steps on the JWT authority (cheap keys):
	// prepare, activate, taint and revoke the retired one.
	for range 50 {
		old := ""
		for _, a := range c.Status() {
			if a.Kind == ca.KindJWT && a.State == ca.StateActive {
				old = a.ID
			}
		}
		steps := []func() error{
			func() error { _, _, err := c.Prepare(ctx, ca.KindJWT); return err },
			func() error { _, _, err := c.Activate(ctx, ca.KindJWT, ""); return err },
			func() error { _, _, err := c.Taint(ctx, ca.KindJWT, old); return err },
			func() error { _, _, err := c.Revoke(ctx, ca.KindJWT, old); return err },
		}
		for _, step := range steps {
			if err := step(); err != nil {
				t.Fatal(err)
			}
		}
		if mixed.Load() > 0 {
			break
		}
	}
	done.Store(true)
	wg.Wait()
	t.Logf("%d wire bundles read, %d mixed", reads.Load(), mixed.Load())
}
