package proxy

import (
	"bufio"
	"crypto/tls"
	"errors"
	"testing"
	"time"

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
