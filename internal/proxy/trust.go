package proxy

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
)

// A CA authority revoked by the control plane (`moatless ca revoke`,
// SPIRE's localauthority revoke) leaves the trust bundle. New handshakes
// verify against the bundle in force and so refuse a peer chained to it;
// this file makes the connections already open follow: every live mTLS
// connection, inbound and outbound, is tracked under the authority its
// peer's chain was signed under (liveAuthority), and when the bundle
// changes, those whose authority left it are verified again and closed
// when they no longer verify. A tainted authority is still in the
// bundle: connections chained to it stay up (their peer is about to
// rotate).

// maxPendingAuthorities bounds tlsIdentity.verified: a peer that passes
// verification and then fails the handshake leaves its entry behind.
const maxPendingAuthorities = 4096

// authorityOfChain is the key a connection whose peer's verified chain
// (leaf first, ending at a root of the bundle) is tracked under: the
// trust domain and the root's subject key ID.
func authorityOfChain(td spiffeid.TrustDomain, verified []*x509.Certificate) liveKey {
	root := verified[len(verified)-1]
	return liveKey{liveAuthority, td.Name() + "/" + hex.EncodeToString(root.SubjectKeyId)}
}

// noteAuthority keeps the authority the handshake verified leaf up to,
// for the connection's registration (authorityOf).
func (t *tlsIdentity) noteAuthority(leaf *x509.Certificate, k liveKey) {
	if t.pending.Add(1) > maxPendingAuthorities {
		t.verified.Clear()
		t.pending.Store(1)
	}
	t.verified.Store(leaf, k)
}

// authorityOf is the authority a handshake's peer chain (as the
// connection state has it) was verified up to. It is the root the
// verification itself chained to, never read off the presented chain: a
// peer may present certificates that verification did not use. When the
// handshake's note is gone, the chain is verified again.
func (t *tlsIdentity) authorityOf(chain []*x509.Certificate) liveKey {
	if len(chain) == 0 {
		return liveKey{liveAuthority, ""}
	}
	if v, ok := t.verified.LoadAndDelete(chain[0]); ok {
		t.pending.Add(-1)
		return v.(liveKey)
	}
	id, chains, err := x509svid.Verify(chain, t.src, x509svid.WithTime(t.now()))
	if err != nil || len(chains) == 0 {
		return liveKey{liveAuthority, ""} // verified again at every bundle change
	}
	return authorityOfChain(id.TrustDomain(), chains[0])
}

// addPeer registers close under keys and auth, the authority the peer's
// chain was verified up to (tlsIdentity.authorityOf); chain is kept to
// verify the connection again when that authority leaves the bundle.
func (t *tracker) addPeer(close func(), chain []*x509.Certificate, auth liveKey, keys ...liveKey) *tracked {
	e := &tracked{close: close, chain: chain}
	e.keys = append(append(e.keyBuf[:0], keys...), auth)
	t.insert(e)
	return e
}

// recheck closes and forgets every tracked connection whose peer's chain
// no longer verifies against the bundles of src at now, and returns how
// many. Only connections whose authority is missing from its trust
// domain's bundle are verified again: the rest depend on nothing that
// changed. before, when non-nil, is told the count before anything is
// closed.
func (t *tracker) recheck(src x509bundle.Source, now time.Time, before func(n int)) int {
	present := map[string]bool{} // authority key value → still in its bundle
	inBundle := func(v string) bool {
		if ok, seen := present[v]; seen {
			return ok
		}
		ok := authorityInBundle(src, v)
		present[v] = ok
		return ok
	}
	var suspects []*tracked
	t.mu.Lock()
	for k, set := range t.byKey {
		if k.kind == liveAuthority && !inBundle(k.v) {
			suspects = set.appendTo(suspects)
		}
	}
	t.mu.Unlock()
	// Verified outside the lock: a signature check per suspect.
	victims := suspects[:0]
	for _, e := range suspects {
		if !chainVerifies(e.chain, src, now) {
			victims = append(victims, e)
		}
	}
	n := 0
	t.mu.Lock()
	for _, e := range victims {
		if t.removeLocked(e) {
			victims[n] = e
			n++
		}
	}
	t.mu.Unlock()
	victims = victims[:n]
	if before != nil && n > 0 {
		before(n)
	}
	for _, e := range victims {
		e.once.Do(e.close)
	}
	return n
}

// authorityInBundle reports whether the authority of key value v (trust
// domain "/" subject key ID, hex) is in its trust domain's bundle of src.
// An unknown authority ("td/") is not.
func authorityInBundle(src x509bundle.Source, v string) bool {
	tdName, ski, cut := cutLast(v, "/")
	if !cut || ski == "" {
		return false
	}
	td, err := spiffeid.TrustDomainFromString(tdName)
	if err != nil {
		return false
	}
	b, err := src.GetX509BundleForTrustDomain(td)
	if err != nil {
		return false
	}
	for _, a := range b.X509Authorities() {
		if hexEqual(a.SubjectKeyId, ski) {
			return true
		}
	}
	return false
}

// hexEqual reports whether h is b in lower-case hex, without building it.
func hexEqual(b []byte, h string) bool {
	const digits = "0123456789abcdef"
	if len(h) != 2*len(b) {
		return false
	}
	for i, x := range b {
		if h[2*i] != digits[x>>4] || h[2*i+1] != digits[x&15] {
			return false
		}
	}
	return true
}

// chainVerifies reports whether a live connection's peer chain still
// leads to the bundles of src, not whether the peer's SVID is still
// valid: a connection outlives the SVID it was opened with, and is not
// closed for that (here or anywhere else), so an expired chain is
// verified as of its last second.
func chainVerifies(chain []*x509.Certificate, src x509bundle.Source, now time.Time) bool {
	if len(chain) > 0 && !now.Before(chain[0].NotAfter) {
		now = chain[0].NotAfter.Add(-time.Second)
	}
	_, _, err := x509svid.Verify(chain, src, x509svid.WithTime(now))
	return err == nil
}

// stillTrusted reports whether a connection just registered under auth
// (its peer's chain) is still chained to the bundle in force. A bundle
// change between the handshake's verification and the registration has
// a recheck that cannot see the connection yet; the registration comes
// first and this check after, so the connection is either swept by that
// recheck or refused here. It costs a bundle lookup while the authority
// is still in the bundle.
func (t *tlsIdentity) stillTrusted(chain []*x509.Certificate, auth liveKey) bool {
	return authorityInBundle(t.src, auth.v) || chainVerifies(chain, t.src, t.now())
}

func cutLast(s, sep string) (before, after string, found bool) {
	for i := len(s) - len(sep); i >= 0; i-- {
		if s[i:i+len(sep)] == sep {
			return s[:i], s[i+len(sep):], true
		}
	}
	return s, "", false
}

// updater is an optional capability of an Identity: a channel sent on
// (at most one pending send) whenever its SVID or bundle changed.
// go-spiffe's *workloadapi.X509Source, *NodeIdentity and *FileSource
// have it. It has one reader: the sidecar or gateway it was given to.
type updater interface {
	Updated() <-chan struct{}
}

// WatchTrust calls onChange each time id's SVID or bundle changes, until
// ctx ends or stop is closed. It returns at once when id cannot tell (no
// Updated method).
func WatchTrust(ctx context.Context, stop <-chan struct{}, id Identity, onChange func()) {
	u, ok := id.(updater)
	if !ok {
		return
	}
	ch := u.Updated()
	for {
		select {
		case <-ctx.Done():
			return
		case <-stop:
			return
		case <-ch:
			onChange()
		}
	}
}

// updateSignal is the one-slot change notification of NodeIdentity and
// FileSource. The zero value is ready to use.
type updateSignal struct {
	once sync.Once
	ch   chan struct{}
}

func (u *updateSignal) c() chan struct{} {
	u.once.Do(func() { u.ch = make(chan struct{}, 1) })
	return u.ch
}

func (u *updateSignal) notify() {
	select {
	case u.c() <- struct{}{}:
	default:
	}
}

// dialTracked dials addr with d, runs the TLS client handshake of conf
// (which verifies the peer) and, when live is not nil, registers the
// connection under its peer's SPIFFE ID, leaf serial and authority, so
// that revoking the upstream's identity (SetRevocations, tracker.sweepOut)
// or a bundle change that leaves its chain unverifiable (tracker.recheck)
// closes it. The registration ends when the connection is closed. The
// *tls.Conn is returned as such: net/http reads the negotiated protocol
// from it.
func (t *tlsIdentity) dialTracked(ctx context.Context, d *net.Dialer, addr string, conf *tls.Config) (*tls.Conn, error) {
	live := t.live
	c, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, err
	}
	raw := withRawSyscalls(c)
	if live == nil {
		tc := tls.Client(raw, conf)
		if err := tc.HandshakeContext(ctx); err != nil {
			c.Close()
			return nil, err
		}
		return tc, nil
	}
	tcn := &trackedConn{Conn: raw, live: live, id: t}
	if get := conf.GetClientCertificate; get != nil {
		// The certificate this connection presents is noted, so that
		// revoking its serial closes the connection (liveOwnSerial); a
		// resumed session presents none, and carries the serial of the
		// one its first connection presented (serialSessions).
		conf = conf.Clone()
		conf.GetClientCertificate = func(cri *tls.CertificateRequestInfo) (*tls.Certificate, error) {
			c, err := get(cri)
			if err == nil && c != nil {
				tcn.ownSerial = serialHex(c.Leaf)
			}
			return c, err
		}
		if conf.ClientSessionCache != nil {
			conf.ClientSessionCache = serialSessions{conf.ClientSessionCache, tcn}
		}
	}
	tc := tls.Client(tcn, conf)
	if err := tc.HandshakeContext(ctx); err != nil {
		c.Close()
		return nil, err
	}
	if err := tcn.register(tc); err != nil {
		tc.Close()
		return nil, err
	}
	return tc, nil
}

// serialSessions is one outbound connection's view of the client
// session cache: a session it stores carries the serial of the
// certificate the connection presented (in SessionState.Extra), and a
// session it resumes gives the connection that serial, for
// liveOwnSerial. Sessions stored by anyone else carry none.
type serialSessions struct {
	tls.ClientSessionCache
	c *trackedConn
}

// ownSerialExtra prefixes the serial in a session's Extra.
const ownSerialExtra = "moatless-own-serial:"

func (s serialSessions) Get(key string) (*tls.ClientSessionState, bool) {
	cs, ok := s.ClientSessionCache.Get(key)
	if ok && cs != nil {
		if _, st, err := cs.ResumptionState(); err == nil && st != nil {
			for _, x := range st.Extra {
				if v, found := strings.CutPrefix(string(x), ownSerialExtra); found {
					s.c.ownSerial = v
				}
			}
		}
	}
	return cs, ok
}

func (s serialSessions) Put(key string, cs *tls.ClientSessionState) {
	if cs != nil && s.c.ownSerial != "" {
		if ticket, st, err := cs.ResumptionState(); err == nil && st != nil {
			st.Extra = append(st.Extra, []byte(ownSerialExtra+s.c.ownSerial))
			if ncs, err := tls.NewResumptionState(ticket, st); err == nil {
				cs = ncs
			}
		}
	}
	s.ClientSessionCache.Put(key, cs)
}

// trackedConn is the transport under an outbound TLS connection: its
// Close ends the connection's registration in the tracker.
type trackedConn struct {
	net.Conn
	live *tracker
	id   *tlsIdentity

	// ownSerial is the serial of the certificate the handshake presented
	// (lower-case hex), "" when it presented none.
	ownSerial string

	mu     sync.Mutex
	entry  *tracked
	closed bool
}

// register tracks the connection under its (verified) peer's SPIFFE ID,
// leaf serial and authority. A revocation or block that landed between
// the handshake's check and the registration, which the sweep missed, is
// caught here: the error says so and the caller closes the connection.
func (c *trackedConn) register(tc *tls.Conn) error {
	chain := tc.ConnectionState().PeerCertificates
	keys := make([]liveKey, 0, 3)
	if c.ownSerial != "" {
		keys = append(keys, liveKey{liveOwnSerial, c.ownSerial})
	}
	peer, serial := "", ""
	if len(chain) > 0 {
		if id, err := x509svid.IDFromCert(chain[0]); err == nil {
			peer = id.String()
			keys = append(keys, idKey(peer))
		}
		if serial = serialHex(chain[0]); serial != "" {
			keys = append(keys, serialKey(serial))
		}
	}
	auth := c.id.authorityOf(chain)
	e := c.live.addPeer(func() { c.Conn.Close() }, chain, auth, keys...)
	c.mu.Lock()
	c.entry = e
	closed := c.closed
	c.mu.Unlock()
	if closed {
		c.live.remove(e)
		return nil
	}
	if !c.id.stillTrusted(chain, auth) {
		return fmt.Errorf("%w: its CA authority left the trust bundle during the handshake", ErrPeerUnverified)
	}
	rs := c.id.revoked()
	if rs.has(peer, serial) {
		return &revokedPeerError{id: peer}
	}
	if rs.has("", c.ownSerial) {
		return fmt.Errorf("proxy: this workload's certificate (serial %s) is revoked: its calls are refused", c.ownSerial)
	}
	if rs != nil && (len(rs.blocked) > 0 || len(rs.ids) > 0) {
		if own, err := c.id.ownID(); err == nil {
			if rs.has(own.String(), "") {
				return fmt.Errorf("proxy: this workload's identity %s is revoked: its calls are refused", own)
			}
			if rs.blockedPair(own.String(), peer, c.id.now()) {
				return fmt.Errorf("proxy: calls from %s to %s are blocked", own, peer)
			}
		}
	}
	return nil
}

// SyscallConn is the socket's, so that the lean client's peek at an idle
// pooled connection (connAlive) still sees it through the wrapper.
func (c *trackedConn) SyscallConn() (syscall.RawConn, error) {
	sc, ok := c.Conn.(syscall.Conn)
	if !ok {
		return nil, errors.ErrUnsupported
	}
	return sc.SyscallConn()
}

// CloseWrite half-closes the socket, when it can.
func (c *trackedConn) CloseWrite() error {
	cw, ok := c.Conn.(interface{ CloseWrite() error })
	if !ok {
		return errors.ErrUnsupported
	}
	return cw.CloseWrite()
}

func (c *trackedConn) Close() error {
	c.mu.Lock()
	e := c.entry
	c.closed = true
	c.mu.Unlock()
	c.live.remove(e)
	return c.Conn.Close()
}

// RecheckTrust closes every live mTLS connection, inbound and outbound,
// whose peer's certificate chain no longer verifies against the trust
// bundle in force: its CA authority was revoked (removed from the
// bundle). Connections chained to an authority still in the bundle,
// tainted or not, stay up. It also logs, loudly, when the sidecar's own
// SVID no longer verifies against its bundle (an SVID from files must
// then be replaced by the operator). It returns how many connections it
// closed. Serve calls it whenever the Identity reports a change (an
// Updated channel: the Workload API source, NodeIdentity, FileSource).
func (s *Sidecar) RecheckTrust() int {
	count := func(n int) { s.metrics.revokedClosed.Add(float64(n)) }
	n := s.live.recheck(s.cfg.Identity, s.cfg.Now(), count) + s.liveOut.recheck(s.cfg.Identity, s.cfg.Now(), count)
	if n > 0 {
		s.log.Warn("closed live connections whose peer's CA authority left the trust bundle", "count", n)
	}
	if svid, err := s.cfg.Identity.GetX509SVID(); err == nil && svid != nil {
		if _, _, err := x509svid.Verify(svid.Certificates, s.cfg.Identity, x509svid.WithTime(s.cfg.Now())); err != nil {
			msg := "this sidecar's own SVID no longer verifies against its trust bundle (its CA authority was revoked?): every peer refuses it until it is replaced"
			if _, files := s.cfg.Identity.(*FileSource); files {
				msg = "this sidecar's own SVID (identity: files) no longer verifies against its trust bundle (its CA authority was revoked?): every peer refuses it; the operator must replace the certificate and key files with an SVID from the current CA"
			}
			s.log.Error(msg, "spiffe_id", svid.ID.String(), "err", err)
		}
	}
	return n
}
