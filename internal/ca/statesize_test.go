package ca

import (
	"bytes"
	"context"
	"crypto/x509"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
)

// orgRoots is org's root and n more roots, as an upstream bundle that
// carries an organisation's whole root set.
func orgRoots(t *testing.T, org *orgPKI, now time.Time, n int) []*x509.Certificate {
	t.Helper()
	roots := []*x509.Certificate{org.root}
	k := newP256(t)
	for range n {
		roots = append(roots, makeCert(t, certSpec{cn: "Another Root of the Organisation", ca: true, notBefore: now.Add(-time.Hour), notAfter: now.Add(1000 * 24 * time.Hour), keyUsage: x509.KeyUsageCertSign}, k))
	}
	return roots
}

// TestLargeUpstreamBundleSurvivesRotations: every X.509 authority an
// upstream CA signs holds the upstream roots, and the sealed state held
// them once per authority: with a 260 KB bundle (600 roots) the state
// passed its 1 MiB limit at the first prepare after the active one, so
// no successor could be saved, by the operator or by the rotation
// schedule, and the CA would have run out of an active authority at the
// current one's NotAfter. Each distinct bundle is now stored once; many
// operator cycles and scheduled rotations are saved and read back.
func TestLargeUpstreamBundleSurvivesRotations(t *testing.T) {
	now := time.Now().Truncate(time.Second)
	org := newOrgPKI(t, now, 300*24*time.Hour)
	roots := orgRoots(t, org, now, 600)
	up, err := NewUpstream([]*x509.Certificate{org.inter}, org.interKey, roots)
	if err != nil {
		t.Fatal(err)
	}
	e := newEnv(t, func(o *Options) { o.Upstream = up })
	ctx := context.Background()
	for i := range 10 {
		if _, _, err := e.ca.Prepare(ctx, KindX509); err != nil {
			t.Fatalf("prepare %d: %v", i, err)
		}
		if _, _, err := e.ca.Activate(ctx, KindX509, ""); err != nil {
			t.Fatalf("activate %d: %v", i, err)
		}
	}
	blob, _ := e.store.snapshot()
	t.Logf("%d X.509 authorities, %d upstream roots: sealed state %d bytes (limit %d)", len(statesOf(e.ca.Status(), KindX509)), len(roots), len(blob), maxSealedSize)
	checkPersisted(t, e)
	// The rotation schedule, over several CA lifetimes.
	for range 8 {
		e.clock.Advance(DefaultCATTL / 2)
		if _, err := e.ca.Tick(ctx); err != nil {
			t.Fatalf("Tick at %v: %v", e.clock.Now(), err)
		}
	}
	re := e.reopen(t)
	if n := len(re.Bundle().X509Authorities()); n != len(roots) {
		t.Fatalf("the reopened bundle has %d X.509 authorities, want the %d upstream roots", n, len(roots))
	}
	is := mustSign(t, re, testID, 0)
	if _, _, err := x509svid.Verify(is.Chain, re.Bundle(), x509svid.WithTime(e.clock.Now())); err != nil {
		t.Fatalf("an SVID of the reopened CA: %v", err)
	}
	checkPersisted(t, e)
}

// A small state is written as before (each record with its roots), so
// replicas of an older build read it; roots_of that names no earlier
// authority with roots is refused.
func TestStateRootsOf(t *testing.T) {
	now := time.Now().Truncate(time.Second)
	org := newOrgPKI(t, now, 300*24*time.Hour)
	up, err := NewUpstream([]*x509.Certificate{org.inter}, org.interKey, []*x509.Certificate{org.root})
	if err != nil {
		t.Fatal(err)
	}
	e := newEnv(t, func(o *Options) { o.Upstream = up })
	if _, _, err := e.ca.Prepare(context.Background(), KindX509); err != nil {
		t.Fatal(err)
	}
	blob, _ := e.store.snapshot()
	plain, err := unseal(testKEK, blob)
	if err != nil {
		t.Fatal(err)
	}
	if bytes.Contains(plain, []byte("roots_of")) {
		t.Fatal("a small state was written with roots_of")
	}
	st, err := decodeState(plain, testTD)
	if err != nil {
		t.Fatal(err)
	}
	first, second := st.X509[0].ID, st.X509[1].ID
	for _, tc := range []struct {
		name string
		edit func(st *state)
		want string
	}{
		{"roots_of_unknown", func(st *state) { st.X509[1].Roots, st.X509[1].RootsOf = nil, "00ff" }, "names no earlier"},
		{"roots_of_later", func(st *state) { st.X509[0].Roots, st.X509[0].RootsOf = nil, second }, "names no earlier"},
		{"roots_of_itself", func(st *state) { st.X509[1].Roots, st.X509[1].RootsOf = nil, second }, "names no earlier"},
		{"roots_and_roots_of", func(st *state) { st.X509[1].RootsOf = first }, "both roots and roots_of"},
		{"roots_of_on_jwt", func(st *state) { st.JWT[0].RootsOf = first }, "JWT authority with X.509 fields"},
		{"roots_of_first", func(st *state) { st.X509[1].Roots, st.X509[1].RootsOf = nil, first }, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			st, err := decodeState(plain, testTD)
			if err != nil {
				t.Fatal(err)
			}
			tc.edit(st)
			b, err := jsonMarshal(st)
			if err != nil {
				t.Fatal(err)
			}
			got, err := decodeState(b, testTD)
			switch {
			case tc.want == "" && err != nil:
				t.Fatalf("refused: %v", err)
			case tc.want == "":
				if len(got.X509[1].Roots) != 1 || got.X509[1].RootsOf != "" {
					t.Fatalf("roots_of not expanded: %d roots, roots_of %q", len(got.X509[1].Roots), got.X509[1].RootsOf)
				}
			case err == nil || !strings.Contains(err.Error(), tc.want):
				t.Fatalf("got %v, want an error containing %q", err, tc.want)
			}
		})
	}
}

// An upstream bundle too large for the sealed state is refused at Open,
// saying why, instead of a first save failing with a size.
func TestUpstreamBundleTooLargeRefused(t *testing.T) {
	now := time.Now().Truncate(time.Second)
	org := newOrgPKI(t, now, 300*24*time.Hour)
	up, err := NewUpstream([]*x509.Certificate{org.inter}, org.interKey, orgRoots(t, org, now, 800))
	if err != nil {
		t.Fatal(err)
	}
	st := &memStore{}
	_, err = Open(context.Background(), Options{TrustDomain: testTD, State: st, KEK: testKEK, Upstream: up})
	if err == nil || !strings.Contains(err.Error(), "upstream bundle") {
		t.Fatalf("Open: %v", err)
	}
	if b, _ := st.snapshot(); b != nil {
		t.Fatal("a state was saved")
	}
}

func jsonMarshal(st *state) ([]byte, error) { return json.Marshal(st) }
