package agent

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"github.com/spiffe/go-spiffe/v2/workloadapi"

	"github.com/moatless/moatless/internal/testpki"
	"github.com/moatless/moatless/internal/wire"
)

// holds reports whether bundle b holds ca's certificate.
func holds(b *wire.Bundle, ca *testpki.CA) bool {
	for _, der := range b.X509Authorities {
		if bytes.Equal(der, ca.Cert.Raw) {
			return true
		}
	}
	return false
}

// waitApplied waits until n applied the fake's current version.
func waitApplied(ctx context.Context, t *testing.T, f *fakeServer, n *Node) {
	t.Helper()
	f.mu.Lock()
	v := f.version
	f.mu.Unlock()
	for n.Version() < v {
		select {
		case <-ctx.Done():
			t.Fatalf("version %d not applied (at %d)", v, n.Version())
		case <-time.After(2 * time.Millisecond):
		}
	}
}

// refusedBundles is the agent's moatless_agent_bundle_refused_total by
// reason.
func refusedBundles(t *testing.T, a *Agent) map[string]float64 {
	t.Helper()
	mfs, err := a.reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]float64{}
	for _, mf := range mfs {
		if mf.GetName() != "moatless_agent_bundle_refused_total" {
			continue
		}
		for _, m := range mf.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == "reason" {
					out[l.GetValue()] = m.GetCounter().GetValue()
				}
			}
		}
	}
	return out
}

// TestAgentRefusesBundleFromLaggingReplica: after authority a was
// revoked (bundle sequence 2 without it), a replica that has not caught
// up sends the bundle of sequence 1, which still holds a, and then one of
// sequence 2 that holds it too (a forked history). The agent keeps the
// bundle it holds, counts both refusals, applies the rest of those
// updates (a new entry, whose SVID it serves) and its go-spiffe client
// never gets a back.
func TestAgentRefusesBundleFromLaggingReplica(t *testing.T) {
	r := startOnA(t)
	f, a, b, ctx := r.f, r.a, r.b, r.ctx
	node := r.af.a.Node()
	td := spiffeid.RequireTrustDomainFromString("example.org")
	r.rotateToB(t)
	f.push(func() { f.authorities = []*testpki.CA{b} }) // ca revoke a
	waitApplied(ctx, t, f, node)
	held := node.Bundle()
	if held.SequenceNumber != 2 || holds(held, a) {
		t.Fatalf("after the revoke the node holds sequence %d, with a: %v", held.SequenceNumber, holds(held, a))
	}
	r.until(t, "/web re-issued by b", func(m map[string]*x509svid.SVID) bool {
		s := m["spiffe://example.org/web"]
		return s != nil && signedBy(s, b)
	})

	for _, tc := range []struct {
		name  string
		seq   uint64
		entry string
	}{
		{"older", 1, "spiffe://example.org/db"},
		{"forked", 2, "spiffe://example.org/cache"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f.push(func() {
				stale := f.bundle()
				stale.X509Authorities = [][]byte{a.Cert.Raw, b.Cert.Raw}
				stale.SequenceNumber = tc.seq
				f.lagging = &stale
				f.entries = append(f.entries, uidEntry("e-"+tc.name, tc.entry, time.Hour))
			})
			waitApplied(ctx, t, f, node)
			if got := node.Bundle(); got.SequenceNumber != 2 || holds(got, a) {
				t.Fatalf("the node took the %s bundle: sequence %d, with the revoked authority: %v", tc.name, got.SequenceNumber, holds(got, a))
			}
			// The workload API serves the new entry's SVID, with the
			// bundle held: every update the client gets leaves a out.
			for {
				var u *workloadapi.X509Context
				select {
				case u = <-r.w.updates:
				case err := <-r.w.errs:
					t.Fatalf("watch error: %v", err)
				case <-ctx.Done():
					t.Fatalf("no SVID for %s", tc.entry)
				}
				if bundle, _ := u.Bundles.GetX509BundleForTrustDomain(td); bundle.HasX509Authority(a.Cert) {
					t.Fatal("the go-spiffe client got the revoked authority back")
				}
				if svidsByID(u)[tc.entry] != nil {
					break
				}
			}
		})
	}
	if got := refusedBundles(t, r.af.a); got["older"] < 1 || got["forked"] < 1 {
		t.Fatalf("moatless_agent_bundle_refused_total = %v, want older and forked counted", got)
	}
}

// TestNodeRestartKeepsBundleSequence: a node restarted from its data
// directory refuses a lagging replica's older bundle too: the sequence of
// the bundle it held is persisted with it.
func TestNodeRestartKeepsBundleSequence(t *testing.T) {
	f := newFakeServer(t)
	f.tokens["t"] = nodeID
	a, b := f.ca, testpki.NewCA(t, "example.org")
	f.authorities = []*testpki.CA{a, b}
	dir := t.TempDir()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()

	n1, err := NewNode(f.nodeConfig(t, "t", dir))
	if err != nil {
		t.Fatal(err)
	}
	if err := n1.Attest(ctx); err != nil {
		t.Fatal(err)
	}
	rctx, rcancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- n1.Run(rctx) }()
	waitApplied(ctx, t, f, n1)
	f.push(func() { f.authorities = []*testpki.CA{a} }) // ca revoke b
	waitApplied(ctx, t, f, n1)
	rcancel()
	<-done
	n1.Close()
	raw, err := os.ReadFile(filepath.Join(dir, bundleFile))
	if err != nil {
		t.Fatal(err)
	}
	var saved wire.Bundle
	if err := json.Unmarshal(raw, &saved); err != nil || saved.SequenceNumber != 2 || holds(&saved, b) {
		t.Fatalf("saved bundle: sequence %d, with b: %v (%v)", saved.SequenceNumber, holds(&saved, b), err)
	}

	f.push(func() {
		stale := f.bundle()
		stale.X509Authorities = [][]byte{a.Cert.Raw, b.Cert.Raw}
		stale.SequenceNumber = 1
		f.lagging = &stale
	})
	n2, err := NewNode(f.nodeConfig(t, "", dir))
	if err != nil {
		t.Fatal(err)
	}
	if err := n2.Attest(ctx); err != nil {
		t.Fatal(err)
	}
	ctx2, cancel2 := context.WithCancel(ctx)
	done2 := make(chan error, 1)
	go func() { done2 <- n2.Run(ctx2) }()
	defer func() { cancel2(); <-done2; n2.Close() }()
	waitApplied(ctx, t, f, n2)
	if got := n2.Bundle(); got.SequenceNumber != 2 || holds(got, b) {
		t.Fatalf("after a restart the node took the older bundle: sequence %d, with the revoked authority: %v", got.SequenceNumber, holds(got, b))
	}
}

// TestNodeReattestKeepsBundleSequence: a node whose saved SVID expired
// (it was down longer than its TTL) attests again with a join token and
// the attesting replica lags: the bundle of the data directory, newer,
// stays held. Only removing the saved state (or state from another server
// or trust domain) lets an attestation take a lower sequence number.
func TestNodeReattestKeepsBundleSequence(t *testing.T) {
	f := newFakeServer(t)
	f.tokens["t"] = nodeID
	a, b := f.ca, testpki.NewCA(t, "example.org")
	f.authorities = []*testpki.CA{a, b}
	dir := t.TempDir()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	n1, err := NewNode(f.nodeConfig(t, "t", dir))
	if err != nil {
		t.Fatal(err)
	}
	if err := n1.Attest(ctx); err != nil {
		t.Fatal(err)
	}
	f.push(func() { f.authorities = []*testpki.CA{a} }) // ca revoke b
	rctx, rcancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- n1.Run(rctx) }()
	waitApplied(ctx, t, f, n1)
	rcancel()
	<-done
	n1.Close()

	f.push(func() {
		stale := f.bundle()
		stale.X509Authorities = [][]byte{a.Cert.Raw, b.Cert.Raw}
		stale.SequenceNumber = 1
		f.lagging = &stale
		f.tokens["t2"] = nodeID
		f.nodeTTL = 3 * time.Hour
	})
	cfg := f.nodeConfig(t, "t2", dir)
	cfg.Now = func() time.Time { return time.Now().Add(2 * time.Hour) } // the saved SVID (1h) expired
	n2, err := NewNode(cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer n2.Close()
	if err := n2.Attest(ctx); err != nil {
		t.Fatal(err)
	}
	if got := n2.Bundle(); got.SequenceNumber != 2 || holds(got, b) {
		t.Fatalf("the attestation took the older bundle: sequence %d, with the revoked authority: %v", got.SequenceNumber, holds(got, b))
	}

	// Without the saved state, the attestation's bundle is taken.
	dir2 := t.TempDir()
	f.push(func() { f.tokens["t3"] = nodeID })
	n3, err := NewNode(f.nodeConfig(t, "t3", dir2))
	if err != nil {
		t.Fatal(err)
	}
	defer n3.Close()
	if err := n3.Attest(ctx); err != nil {
		t.Fatal(err)
	}
	if got := n3.Bundle(); got.SequenceNumber != 1 {
		t.Fatalf("a node with no saved state holds sequence %d, want the attestation's 1", got.SequenceNumber)
	}
}

// TestNodeReattestAfterSVIDRemoved: the operator removed the node SVID
// from the data directory to attest again with a join token (the node was
// revoked) and left the saved bundle. Against a lagging replica the saved
// bundle, newer, stays held, as after an expired SVID. A server rebuilt
// since (a new CA, its sequence back at 1), which the trust bundle given
// now names, does not vouch for the saved bundle: its own is taken.
func TestNodeReattestAfterSVIDRemoved(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	f := newFakeServer(t)
	f.tokens["t"] = nodeID
	a, b := f.ca, testpki.NewCA(t, "example.org")
	f.authorities = []*testpki.CA{a, b}
	setup := func(t *testing.T) string {
		dir := t.TempDir()
		f.push(func() { f.lagging = nil; f.authorities = []*testpki.CA{a, b}; f.tokens["t"] = nodeID })
		n1, err := NewNode(f.nodeConfig(t, "t", dir))
		if err != nil {
			t.Fatal(err)
		}
		if err := n1.Attest(ctx); err != nil {
			t.Fatal(err)
		}
		f.push(func() { f.authorities = []*testpki.CA{a} }) // ca revoke b
		rctx, rcancel := context.WithCancel(ctx)
		done := make(chan error, 1)
		go func() { done <- n1.Run(rctx) }()
		waitApplied(ctx, t, f, n1)
		rcancel()
		<-done
		n1.Close()
		if err := os.Remove(filepath.Join(dir, nodeFile)); err != nil {
			t.Fatal(err)
		}
		return dir
	}

	t.Run("lagging_replica", func(t *testing.T) {
		dir := setup(t)
		held := f.bundle()
		f.push(func() {
			stale := f.bundle()
			stale.X509Authorities = [][]byte{a.Cert.Raw, b.Cert.Raw}
			stale.SequenceNumber = held.SequenceNumber - 1
			f.lagging = &stale
			f.tokens["t2"] = nodeID
		})
		n2, err := NewNode(f.nodeConfig(t, "t2", dir))
		if err != nil {
			t.Fatal(err)
		}
		defer n2.Close()
		if err := n2.Attest(ctx); err != nil {
			t.Fatal(err)
		}
		if got := n2.Bundle(); got.SequenceNumber != held.SequenceNumber || holds(got, b) {
			t.Fatalf("the attestation took the older bundle: sequence %d (held %d), with the revoked authority: %v", got.SequenceNumber, held.SequenceNumber, holds(got, b))
		}
	})
	t.Run("rebuilt_server", func(t *testing.T) {
		dir := setup(t)
		f2 := newFakeServer(t)
		f2.tokens["t"] = nodeID
		n2, err := NewNode(f2.nodeConfig(t, "t", dir))
		if err != nil {
			t.Fatal(err)
		}
		defer n2.Close()
		if err := n2.Attest(ctx); err != nil {
			t.Fatalf("attesting to a rebuilt server the trust bundle names: %v", err)
		}
		if got := n2.Bundle(); got.SequenceNumber != 1 || !holds(got, f2.ca) {
			t.Fatalf("the node holds sequence %d, with the rebuilt server's CA: %v", got.SequenceNumber, holds(got, f2.ca))
		}
	})
}
