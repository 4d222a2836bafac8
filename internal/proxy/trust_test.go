package proxy

import (
	"bufio"
	"crypto/tls"
	"io"
	"net"
	"net/http"
	"sync/atomic"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"

	"github.com/moatless/moatless/internal/policy"
	"github.com/moatless/moatless/internal/proxy/proxytest"
	"github.com/moatless/moatless/internal/testpki"
	"github.com/moatless/moatless/internal/wire"
)

// joinedIdentity is the identity of a sidecar that is its own agent
// (NodeIdentity) holding svid, with a bundle of cas.
func joinedIdentity(t testing.TB, svid *testpki.SVID, cas ...*testpki.CA) *NodeIdentity {
	t.Helper()
	s := svid.X509SVID()
	n := &NodeIdentity{SVID: func() *x509svid.SVID { return s }}
	setAuthorities(t, n, cas...)
	return n
}

// setAuthorities puts a bundle of cas in force in n, as the watch stream
// does when the server pushes one.
func setAuthorities(t testing.TB, n *NodeIdentity, cas ...*testpki.CA) {
	t.Helper()
	b := wire.Bundle{TrustDomain: "example.org"}
	for _, ca := range cas {
		b.X509Authorities = append(b.X509Authorities, ca.Cert.Raw)
	}
	if err := n.SetBundle(b); err != nil {
		t.Fatal(err)
	}
}

// tcpEcho is an app that echoes every byte back.
func tcpEcho(t testing.TB) string {
	l := serveRaw(t, func(c net.Conn) { io.Copy(c, c); c.Close() })
	return l.Addr().String()
}

// echoes writes a line on c and reads it back.
func echoes(c net.Conn, r *bufio.Reader) error {
	c.SetDeadline(time.Now().Add(5 * time.Second))
	defer c.SetDeadline(time.Time{})
	if _, err := io.WriteString(c, "ping\n"); err != nil {
		return err
	}
	_, err := r.ReadString('\n')
	return err
}

// inboundEcho runs a sidecar with identity id and one raw TCP inbound
// listener, which frontend may call, in front of an echo app.
func inboundEcho(t *testing.T, id Identity) (*Sidecar, net.Listener) {
	t.Helper()
	inL := listen(t)
	s := startSidecar(t, Config{Identity: id, Namespace: "prod",
		Inbound:    []Inbound{{Name: "in", Listener: inL, App: tcpEcho(t), Protocol: TCP}},
		Authorizer: allowPrincipals(policy.ModeStrict, "example.org/ns/prod/sa/frontend")})
	return s, inL
}

// dialEcho connects to l and checks that a line comes back: over mTLS as
// frontend with an SVID signed by signer, verifying orders against
// bundle's authority, or in plaintext when signer is nil. The
// connection is closed when the test ends.
func dialEcho(t *testing.T, l net.Listener, bundle, signer *testpki.CA) (net.Conn, *bufio.Reader) {
	t.Helper()
	var c net.Conn
	var err error
	if signer == nil {
		c, err = net.Dial("tcp", l.Addr().String())
	} else {
		ti := &tlsIdentity{src: newStaticIdentity(bundle, signer.SVID(t, frontendID, 0)), now: time.Now, revoked: func() *revocationSet { return nil }}
		c, err = tls.Dial("tcp", l.Addr().String(), ti.clientConfig(spiffeid.RequireFromString(ordersID), "", nil))
	}
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	r := bufio.NewReader(c)
	if err := echoes(c, r); err != nil {
		t.Fatal(err)
	}
	return c, r
}

// closedWithin reports how long it took the peer to close c, failing the
// test when it is still open after 5 s.
func closedWithin(t *testing.T, c net.Conn, r *bufio.Reader, start time.Time) time.Duration {
	t.Helper()
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := r.ReadByte(); err == nil || isTimeout(err) {
		t.Fatalf("connection still open: %v", err)
	}
	return time.Since(start)
}

func isTimeout(err error) bool {
	ne, ok := err.(net.Error)
	return ok && ne.Timeout()
}

// TestRevokedAuthorityClosesLiveInbound: when CA authority a leaves the
// sidecar's bundle, its live inbound connection from a caller whose SVID
// a signed is closed; one from a caller signed by b, still in the
// bundle, stays up and keeps working.
func TestRevokedAuthorityClosesLiveInbound(t *testing.T) {
	a, b := testpki.NewCA(t, "example.org"), testpki.NewCA(t, "example.org")
	id := joinedIdentity(t, b.SVID(t, ordersID, 0), a, b)
	s, inL := inboundEcho(t, id)
	fromA, rA := dialEcho(t, inL, b, a)
	fromB, rB := dialEcho(t, inL, b, b)
	if n := s.LiveConnections(); n != 2 {
		t.Fatalf("%d live connections, want 2", n)
	}
	if n := s.tls.pending.Load(); n != 0 {
		t.Fatalf("%d handshake notes left behind by registered connections", n)
	}
	start := time.Now()
	setAuthorities(t, id, b) // ca revoke a
	t.Logf("revoked authority: live inbound connection closed %s after the bundle update", closedWithin(t, fromA, rA, start).Round(time.Microsecond))
	if err := echoes(fromB, rB); err != nil {
		t.Fatalf("the connection chained to the remaining authority was cut: %v", err)
	}
	if n := s.LiveConnections(); n != 1 {
		t.Fatalf("%d live connections, want 1", n)
	}
}

// TestRevokedAuthorityClosesLiveOutbound: when CA authority a leaves the
// bundle of a sidecar, its live outbound connection to an upstream whose
// SVID a signed is closed (raw TCP streams and pooled HTTP/2 and
// HTTP/1.1 connections alike) and calls to that upstream fail from then
// on; the connection to an upstream signed by b stays up.
func TestRevokedAuthorityClosesLiveOutbound(t *testing.T) {
	for _, tc := range []struct {
		name  string
		proto Protocol
		http1 bool
	}{{"tcp", TCP, false}, {"http2", HTTP, false}, {"http1", HTTP, true}} {
		t.Run(tc.name, func(t *testing.T) {
			a, b := testpki.NewCA(t, "example.org"), testpki.NewCA(t, "example.org")
			app := echoApp(t)
			if tc.proto == TCP {
				app = tcpEcho(t)
			}
			upstream := func(signer *testpki.CA) (*Sidecar, string) {
				l := listen(t)
				s := startSidecar(t, Config{Identity: joinedIdentity(t, signer.SVID(t, ordersID, 0), a, b), Namespace: "prod",
					Inbound:    []Inbound{{Name: "in", Listener: l, App: app, Protocol: tc.proto}},
					Authorizer: allowPrincipals(policy.ModeStrict, "example.org/ns/prod/sa/frontend")})
				return s, l.Addr().String()
			}
			upA, addrA := upstream(a)
			upB, addrB := upstream(b)
			id := joinedIdentity(t, b.SVID(t, frontendID, 0), a, b)
			outA, outB := listen(t), listen(t)
			orders := spiffeid.RequireFromString(ordersID)
			client := startSidecar(t, Config{Identity: id, Outbound: []Outbound{
				{Name: "to-a", Listener: outA, Upstream: addrA, ID: orders, Protocol: tc.proto, HTTP1: tc.http1},
				{Name: "to-b", Listener: outB, Upstream: addrB, ID: orders, Protocol: tc.proto, HTTP1: tc.http1},
			}})
			start := time.Now()
			if tc.proto == TCP {
				toA, rA := dialEcho(t, outA, nil, nil)
				toB, rB := dialEcho(t, outB, nil, nil)
				start = time.Now()
				setAuthorities(t, id, b) // ca revoke a
				t.Logf("revoked authority: live outbound stream closed %s after the bundle update", closedWithin(t, toA, rA, start).Round(time.Microsecond))
				if err := echoes(toB, rB); err != nil {
					t.Fatalf("the stream to the upstream of the remaining authority was cut: %v", err)
				}
				if n := client.liveOut.len(); n != 1 {
					t.Fatalf("%d outbound connections tracked, want 1", n)
				}
				toB.Close()
				proxytest.Within(t, "the closed outbound stream forgotten", func() bool { return client.liveOut.len() == 0 })
				return
			}
			c := &http.Client{Transport: &http.Transport{}}
			t.Cleanup(c.CloseIdleConnections)
			call := func(l net.Listener) int {
				resp, err := c.Get("http://" + l.Addr().String() + "/")
				if err != nil {
					t.Fatal(err)
				}
				io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				return resp.StatusCode
			}
			if call(outA) != 200 || call(outB) != 200 {
				t.Fatal("calls through the outbound listeners failed before the revoke")
			}
			if upA.LiveConnections() != 1 || upB.LiveConnections() != 1 {
				t.Fatalf("upstreams hold %d and %d connections, want 1 each", upA.LiveConnections(), upB.LiveConnections())
			}
			start = time.Now()
			setAuthorities(t, id, b) // ca revoke a
			proxytest.Within(t, "the pooled connection to the upstream signed by the revoked authority closed", func() bool { return upA.LiveConnections() == 0 })
			t.Logf("revoked authority: pooled outbound connection closed %s after the bundle update", time.Since(start).Round(time.Microsecond))
			if code := call(outA); code == 200 {
				t.Fatal("a call reached the upstream signed by the revoked authority")
			}
			if code := call(outB); code != 200 || upB.LiveConnections() != 1 {
				t.Fatalf("the upstream of the remaining authority: %d, %d connections", code, upB.LiveConnections())
			}
		})
	}
}

// TestTaintedAuthorityKeepsConnections: a bundle that still holds
// authority a (tainted, not revoked) closes nothing.
func TestTaintedAuthorityKeepsConnections(t *testing.T) {
	a, b := testpki.NewCA(t, "example.org"), testpki.NewCA(t, "example.org")
	id := joinedIdentity(t, b.SVID(t, ordersID, 0), a, b)
	s, inL := inboundEcho(t, id)
	c, r := dialEcho(t, inL, b, a)
	err := id.SetBundle(wire.Bundle{TrustDomain: "example.org", X509Authorities: [][]byte{a.Cert.Raw, b.Cert.Raw},
		TaintedX509Authorities: []string{skiHex(a.Cert.SubjectKeyId)}})
	if err != nil {
		t.Fatal(err)
	}
	if n := s.RecheckTrust(); n != 0 {
		t.Fatalf("closed %d connections of a tainted, still trusted authority", n)
	}
	if err := echoes(c, r); err != nil {
		t.Fatalf("connection of a tainted authority cut: %v", err)
	}
}

func skiHex(b []byte) string {
	const digits = "0123456789abcdef"
	out := make([]byte, 0, 2*len(b))
	for _, x := range b {
		out = append(out, digits[x>>4], digits[x&15])
	}
	return string(out)
}

// TestRevokedAuthorityNotHiddenByExtraCertificates: a peer whose SVID the
// revoked authority a signed cannot keep its connection by appending a
// certificate of the remaining authority b to the chain it presents
// (unused by verification, but the last certificate, whose issuer a
// tracker reading the presented chain would take for the peer's
// authority): the authority is the one verification chained to.
func TestRevokedAuthorityNotHiddenByExtraCertificates(t *testing.T) {
	a, b := testpki.NewCA(t, "example.org"), testpki.NewCA(t, "example.org")
	id := joinedIdentity(t, b.SVID(t, ordersID, 0), a, b)
	_, inL := inboundEcho(t, id)
	peer := a.SVID(t, frontendID, 0)
	peer.Chain = append(peer.Chain, b.SVID(t, "spiffe://example.org/decoy", 0).Chain[0])
	ti := &tlsIdentity{src: newStaticIdentity(b, peer), now: time.Now, revoked: func() *revocationSet { return nil }}
	c, err := tls.Dial("tcp", inL.Addr().String(), ti.clientConfig(spiffeid.RequireFromString(ordersID), "", nil))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	r := bufio.NewReader(c)
	if err := echoes(c, r); err != nil {
		t.Fatalf("the padded chain was refused at the handshake (%v): nothing to test", err)
	}
	start := time.Now()
	setAuthorities(t, id, b) // ca revoke a
	closedWithin(t, c, r, start)
}

// TestRecheckDoesNotCloseForExpiry: a connection whose authority must be
// verified again (one the tracker cannot find in the bundle by key) is
// closed only if its chain no longer leads to the bundle, not because
// the peer's SVID expired while it was open.
func TestRecheckDoesNotCloseForExpiry(t *testing.T) {
	a, b := testpki.NewCA(t, "example.org"), testpki.NewCA(t, "example.org")
	peer := a.SVID(t, frontendID, time.Minute)
	later := peer.Chain[0].NotAfter.Add(time.Hour)
	for _, tc := range []struct {
		name   string
		bundle *testpki.CA
		closed int
	}{{"chain_leads_to_bundle", a, 0}, {"authority_gone", b, 1}} {
		t.Run(tc.name, func(t *testing.T) {
			tr := newTracker()
			closed := 0
			tr.addPeer(func() { closed++ }, peer.Chain, liveKey{liveAuthority, "example.org/"})
			if n := tr.recheck(newStaticIdentity(tc.bundle, peer), later, nil); n != tc.closed || closed != tc.closed {
				t.Fatalf("closed %d (%d calls), want %d", n, closed, tc.closed)
			}
		})
	}
}

// racedIdentity is an Identity whose bundle changes in the middle of a
// handshake: the first bundle lookup after during is set (the
// handshake's verification) is answered with the bundle in force, then
// during runs (a bundle update and its recheck) before the handshake
// goes on. It has no Updated channel: the test runs the recheck itself,
// so no later one can hide a connection the race left open.
type racedIdentity struct {
	n      *NodeIdentity
	during atomic.Pointer[func()]
}

func (r *racedIdentity) GetX509SVID() (*x509svid.SVID, error) { return r.n.GetX509SVID() }
func (r *racedIdentity) GetX509BundleForTrustDomain(td spiffeid.TrustDomain) (*x509bundle.Bundle, error) {
	b, err := r.n.GetX509BundleForTrustDomain(td)
	if f := r.during.Swap(nil); f != nil {
		(*f)()
	}
	return b, err
}

// TestRevokeDuringHandshake: a CA authority revoked while a connection
// chained to it is between its handshake's verification (which passed
// against the old bundle) and its registration (the recheck that ran
// meanwhile did not see it) is closed all the same, inbound and
// outbound: the registration checks the bundle in force again.
func TestRevokeDuringHandshake(t *testing.T) {
	t.Run("inbound", func(t *testing.T) {
		a, b := testpki.NewCA(t, "example.org"), testpki.NewCA(t, "example.org")
		id := &racedIdentity{n: joinedIdentity(t, b.SVID(t, ordersID, 0), a, b)}
		s, inL := inboundEcho(t, id)
		revoke := func() {
			setAuthorities(t, id.n, b) // ca revoke a
			if n := s.RecheckTrust(); n != 0 {
				t.Errorf("the recheck closed %d connections, want none yet", n)
			}
		}
		id.during.Store(&revoke)
		ti := &tlsIdentity{src: newStaticIdentity(b, a.SVID(t, frontendID, 0)), now: time.Now, revoked: func() *revocationSet { return nil }}
		c, err := tls.Dial("tcp", inL.Addr().String(), ti.clientConfig(spiffeid.RequireFromString(ordersID), "", nil))
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		r := bufio.NewReader(c)
		if err := echoes(c, r); err == nil {
			t.Fatal("a connection chained to the authority revoked during its handshake is served")
		}
		if id.during.Load() != nil {
			t.Fatal("the handshake did not look the bundle up")
		}
		if n := s.LiveConnections(); n != 0 {
			t.Fatalf("%d live connections, want 0", n)
		}
	})
	t.Run("outbound", func(t *testing.T) {
		a, b := testpki.NewCA(t, "example.org"), testpki.NewCA(t, "example.org")
		upL := listen(t)
		startSidecar(t, Config{Identity: joinedIdentity(t, a.SVID(t, ordersID, 0), a, b), Namespace: "prod",
			Inbound:    []Inbound{{Name: "in", Listener: upL, App: tcpEcho(t), Protocol: TCP}},
			Authorizer: allowPrincipals(policy.ModeStrict, "example.org/ns/prod/sa/frontend")})
		id := &racedIdentity{n: joinedIdentity(t, b.SVID(t, frontendID, 0), a, b)}
		outL := listen(t)
		client := startSidecar(t, Config{Identity: id, Outbound: []Outbound{
			{Name: "out", Listener: outL, Upstream: upL.Addr().String(), ID: spiffeid.RequireFromString(ordersID), Protocol: TCP},
		}})
		revoke := func() {
			setAuthorities(t, id.n, b) // ca revoke a
			if n := client.RecheckTrust(); n != 0 {
				t.Errorf("the recheck closed %d connections, want none yet", n)
			}
		}
		id.during.Store(&revoke)
		c, err := net.Dial("tcp", outL.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		r := bufio.NewReader(c)
		if err := echoes(c, r); err == nil {
			t.Fatal("a stream to an upstream chained to the authority revoked during its handshake is served")
		}
		if id.during.Load() != nil {
			t.Fatal("the handshake did not look the bundle up")
		}
		if n := client.liveOut.len(); n != 0 {
			t.Fatalf("%d outbound connections tracked, want 0", n)
		}
	})
}
