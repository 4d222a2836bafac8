package proxy

import (
	"bufio"
	"crypto/tls"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"

	"github.com/moatless/moatless/internal/testpki"
	"github.com/moatless/moatless/internal/wire"
)

func bundleOf(seq uint64, cas ...*testpki.CA) wire.Bundle {
	b := wire.Bundle{TrustDomain: "example.org", SequenceNumber: seq}
	for _, ca := range cas {
		b.X509Authorities = append(b.X509Authorities, ca.Cert.Raw)
	}
	return b
}

// TestNodeIdentityBundleNeverGoesBack: a joined sidecar holding the
// bundle of sequence 2, from which authority a was revoked, refuses a
// bundle that brings a back with a lower sequence number (a lagging
// replica), an unsequenced one, or one of the same sequence number (a
// forked history): each returns ErrBundleNotNewer, the held bundle stays
// in force and a caller whose SVID a signed is still refused at the
// handshake. A higher sequence number is taken.
func TestNodeIdentityBundleNeverGoesBack(t *testing.T) {
	a, b, c := testpki.NewCA(t, "example.org"), testpki.NewCA(t, "example.org"), testpki.NewCA(t, "example.org")
	s := b.SVID(t, ordersID, 0).X509SVID()
	id := &NodeIdentity{SVID: func() *x509svid.SVID { return s }}
	if err := id.SetBundle(bundleOf(2, b)); err != nil {
		t.Fatal(err)
	}
	<-id.Updated()
	_, inL := inboundEcho(t, id)
	td := spiffeid.RequireTrustDomainFromString("example.org")
	refusedFromA := func() bool {
		ti := &tlsIdentity{src: newStaticIdentity(b, a.SVID(t, frontendID, 0)), now: time.Now, revoked: func() *revocationSet { return nil }}
		conn, err := tls.Dial("tcp", inL.Addr().String(), ti.clientConfig(spiffeid.RequireFromString(ordersID), "", nil))
		if err != nil {
			return true
		}
		defer conn.Close()
		return echoes(conn, bufio.NewReader(conn)) != nil
	}
	if !refusedFromA() {
		t.Fatal("a caller of the revoked authority was let in before any stale bundle")
	}
	for _, tc := range []struct {
		name string
		b    wire.Bundle
	}{
		{"older", bundleOf(1, a, b)},
		{"unsequenced", bundleOf(0, a, b)},
		{"forked", bundleOf(2, a, b)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if err := id.SetBundle(tc.b); !errors.Is(err, ErrBundleNotNewer) {
				t.Fatalf("SetBundle: %v, want ErrBundleNotNewer", err)
			}
			select {
			case <-id.Updated():
				t.Fatal("a refused bundle was announced")
			default:
			}
			held, err := id.GetX509BundleForTrustDomain(td)
			if err != nil || held.HasX509Authority(a.Cert) {
				t.Fatalf("the held bundle took the revoked authority back (%v)", err)
			}
			if !refusedFromA() {
				t.Fatal("a caller of the revoked authority was let in")
			}
		})
	}
	if err := id.SetBundle(bundleOf(2, b)); err != nil {
		t.Fatalf("the held bundle again: %v", err)
	}
	if err := id.SetBundle(bundleOf(3, b, c)); err != nil {
		t.Fatalf("a newer bundle: %v", err)
	}
	if held, _ := id.GetX509BundleForTrustDomain(td); !held.HasX509Authority(c.Cert) {
		t.Fatal("the newer bundle is not in force")
	}
}

// TestBundleRefusalsCounted: every bundle a joined sidecar refuses (a
// lagging replica's older one, a forked one, an invalid one) is counted
// in moatless_sidecar_bundle_refusals_total by reason, so that a replica
// that keeps pushing a stale bundle is an alert rather than a log line per
// push; a bundle taken is not counted. A sidecar whose identity refuses no
// bundles (files) exports no such series. Fails on the parent (no series).
func TestBundleRefusalsCounted(t *testing.T) {
	a, b := testpki.NewCA(t, "example.org"), testpki.NewCA(t, "example.org")
	s := b.SVID(t, ordersID, 0).X509SVID()
	id := &NodeIdentity{SVID: func() *x509svid.SVID { return s }}
	reg := prometheus.NewRegistry()
	if _, err := New(Config{Identity: id, Namespace: "prod", Registerer: reg, Logger: discardLogger(), Inbound: []Inbound{{Listen: "127.0.0.1:0", App: "127.0.0.1:1"}}}); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		b    wire.Bundle
		ok   bool
	}{
		{"first", bundleOf(2, b), true},
		{"older", bundleOf(1, a, b), false},
		{"unsequenced", bundleOf(0, a, b), false},
		{"forked", bundleOf(2, a, b), false},
		{"no_authority", bundleOf(3), false},
		{"bad_authority", wire.Bundle{TrustDomain: "example.org", SequenceNumber: 3, X509Authorities: [][]byte{{1, 2, 3}}}, false},
		{"same", bundleOf(2, b), true},
		{"newer", bundleOf(3, b), true},
	} {
		if err := id.SetBundle(tc.b); (err == nil) != tc.ok {
			t.Fatalf("%s: SetBundle: %v", tc.name, err)
		}
	}
	want := `
# HELP moatless_sidecar_bundle_refusals_total Trust bundles from the server refused, the one in force kept, by reason: older (a lower sequence number), forked (the same sequence number, other authorities), invalid.
# TYPE moatless_sidecar_bundle_refusals_total counter
moatless_sidecar_bundle_refusals_total{reason="forked"} 1
moatless_sidecar_bundle_refusals_total{reason="invalid"} 2
moatless_sidecar_bundle_refusals_total{reason="older"} 2
`
	if err := testutil.GatherAndCompare(reg, strings.NewReader(want), "moatless_sidecar_bundle_refusals_total"); err != nil {
		t.Fatal(err)
	}

	files := prometheus.NewRegistry()
	if _, err := New(Config{Identity: newStaticIdentity(b, b.SVID(t, ordersID, 0)), Namespace: "prod", Registerer: files, Logger: discardLogger(), Inbound: []Inbound{{Listen: "127.0.0.1:0", App: "127.0.0.1:1"}}}); err != nil {
		t.Fatal(err)
	}
	if n, err := testutil.GatherAndCount(files, "moatless_sidecar_bundle_refusals_total"); err != nil || n != 0 {
		t.Fatalf("an identity that refuses no bundles exports %d series (%v)", n, err)
	}
}
