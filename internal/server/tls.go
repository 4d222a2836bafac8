package server

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"database/sql"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"

	"github.com/moatless/moatless/internal/ca"
	"github.com/moatless/moatless/internal/store"
	"github.com/moatless/moatless/internal/tlsconf"
	"github.com/moatless/moatless/internal/wire"
)

// serverCert is the server's own TLS certificate and when to renew it.
type serverCert struct {
	tls     *tls.Certificate
	renewAt time.Time
}

// serverNames are the DNS names and IPs the server's certificate carries:
// the listen host, loopback names when it listens on loopback or on every
// interface (plus the host name then), and the configured extra names.
func (s *Server) serverNames() ([]string, []net.IP) {
	var dns []string
	var ips []net.IP
	seen := map[string]bool{}
	add := func(n string) {
		if n == "" || seen[n] {
			return
		}
		seen[n] = true
		if ip := net.ParseIP(n); ip != nil {
			ips = append(ips, ip)
		} else {
			dns = append(dns, n)
		}
	}
	host, _, _ := net.SplitHostPort(s.cfg.Listen)
	ip := net.ParseIP(host)
	switch {
	case host == "" || (ip != nil && ip.IsUnspecified()):
		add("localhost")
		add("127.0.0.1")
		add("::1")
		if h, err := os.Hostname(); err == nil {
			add(h)
		}
	case host == "localhost" || (ip != nil && ip.IsLoopback()):
		add("localhost")
		add("127.0.0.1")
		add("::1")
		add(host)
	default:
		add(host)
	}
	for _, n := range s.cfg.ServerNames {
		add(n)
	}
	return dns, ips
}

// renewServerCert issues a new server certificate for a key generated
// here, and swaps it in atomically; on failure the old one stays.
func (s *Server) renewServerCert(ctx context.Context) error {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return fmt.Errorf("server: generate server key: %w", err)
	}
	dns, ips := s.serverNames()
	iss, err := s.ca.SignServerCert(key.Public(), s.id, dns, ips, s.cfg.ServerCertTTL.Std())
	if err != nil {
		return fmt.Errorf("server: issue server certificate: %w", err)
	}
	now := s.now()
	err = s.db.Tx(ctx, func(tx *sql.Tx) error {
		return s.db.InsertSVIDs(ctx, tx, store.IssuedSVID{Serial: iss.Serial, SPIFFEID: s.id.String(), Kind: store.SVIDKindServer,
			IssuedTo: s.id.String(), NotAfter: iss.NotAfter, IssuedAt: now})
	})
	if err != nil {
		return fmt.Errorf("server: record server certificate: %w", err)
	}
	c := &tls.Certificate{PrivateKey: key, Leaf: iss.Chain[0]}
	for _, x := range iss.Chain {
		c.Certificate = append(c.Certificate, x.Raw)
	}
	leaf := iss.Chain[0]
	s.cert.Store(&serverCert{tls: c, renewAt: leaf.NotBefore.Add(leaf.NotAfter.Sub(leaf.NotBefore) / 2)})
	s.metrics.svids.WithLabelValues(store.SVIDKindServer).Inc()
	s.log.Info("issued server certificate", "serial", iss.Serial, "not_after", iss.NotAfter, "dns", dns, "ips", ips)
	return nil
}

// tlsConfig serves the current server certificate and asks for (does not
// require) a client certificate: attestation, health and metrics have
// none; everything else checks the caller's SVID per request.
//
// TLS 1.3 only: under TLS 1.2 the client's certificate crosses the
// network in the clear, so anyone on the path would read every agent's,
// sidecar's and admin's SPIFFE ID off their handshakes. Every client of
// this listener speaks TLS 1.3: the agent, the join-mode sidecar and
// gateway, the CLI (Go's crypto/tls), go-spiffe, curl and browsers on
// the dashboard, Vault clients on the secrets API (Go; hvac through
// OpenSSL 1.1.1 or later).
func (s *Server) tlsConfig() *tls.Config {
	return tlsconf.Server(&tls.Config{
		MinVersion: tls.VersionTLS13,
		NextProtos: []string{"h2", "http/1.1"},
		GetCertificate: func(*tls.ClientHelloInfo) (*tls.Certificate, error) {
			return s.cert.Load().tls, nil
		},
		ClientAuth:       tls.RequestClientCert,
		VerifyConnection: s.verifyConnection,
	})
}

// verifyConnection verifies a presented client certificate as an
// X509-SVID of our trust domain against the current bundle (which spans CA
// rotations). A connection without one is allowed; its requests are
// anonymous.
func (s *Server) verifyConnection(cs tls.ConnectionState) error {
	if len(cs.PeerCertificates) == 0 {
		return nil
	}
	id, _, err := x509svid.Verify(cs.PeerCertificates, s.ca.Bundle(), x509svid.WithTime(s.now()))
	if err != nil {
		s.metrics.tlsFailures.Inc()
		return fmt.Errorf("client certificate is not a valid X509-SVID of %s: %w", s.td, err)
	}
	if id.TrustDomain() != s.td {
		return fmt.Errorf("client SPIFFE ID %s is not in trust domain %s", id, s.td)
	}
	return nil
}

// signerRevoked reports whether the CA authority that signed c's
// certificate was revoked after c connected.
func (s *Server) signerRevoked(c *caller) bool {
	_, st, ok := s.ca.IssuerState(c.leaf)
	return ok && st == ca.StateRevoked
}

// caller is an authenticated mTLS peer.
type caller struct {
	id     spiffeid.ID
	leaf   *x509.Certificate
	serial string
}

// Errors of peer authentication, mapped to 401/403 at the edge.
var (
	errNoClientCert = errors.New("this endpoint needs mutual TLS with an X509-SVID")
	errRevoked      = errors.New("the client's SPIFFE ID or certificate is revoked")
	errExpired      = errors.New("the client certificate has expired")
)

// peer returns the verified client identity of r, checking expiry and
// revocation again on every request (a keep-alive connection may outlive
// both). With errExpired or errRevoked it also returns the caller the
// certificate names (verified against the bundle at the handshake, so the
// name is authentic) for the audit record of the refusal; such a caller is
// never to be served.
func (s *Server) peer(r *http.Request) (*caller, error) {
	if r.TLS == nil || len(r.TLS.PeerCertificates) == 0 {
		return nil, errNoClientCert
	}
	leaf := r.TLS.PeerCertificates[0]
	id, err := x509svid.IDFromCert(leaf)
	if err != nil { // verified at the handshake; cannot happen
		return nil, errNoClientCert
	}
	c := &caller{id: id, leaf: leaf, serial: leaf.SerialNumber.Text(16)}
	if s.now().After(leaf.NotAfter) {
		return c, errExpired
	}
	if set := s.revs.Load(); set.revoked(c.id.String(), c.serial) {
		return c, fmt.Errorf("%w: %s", errRevoked, set.describe(c.id.String(), c.serial))
	}
	// A connection verified before its signer was revoked (keep-alive)
	// is refused from then on, as a new handshake would be.
	if s.signerRevoked(c) {
		aid, _, _ := s.ca.IssuerState(leaf)
		return c, fmt.Errorf("%w: its signing CA authority %s was revoked", errRevoked, aid)
	}
	return c, nil
}

// credentialKind returns the kind under which the server issued this very
// certificate to id ("node", "admin", ...), or "" when it did not (or the
// record is gone). Positive answers are cached by the certificate's
// SHA-256.
//
// The record is found by serial, and a serial is no secret (audit records,
// node listings, every TLS 1.2 handshake show it), so the certificate must
// also be signed by one of this server's own CA authorities (ca.Signed):
// under an upstream CA another CA below the same root could otherwise copy
// a node's or an admin's SPIFFE ID and serial and pass for them.
func (s *Server) credentialKind(ctx context.Context, c *caller) (string, error) {
	key := sha256.Sum256(c.leaf.Raw)
	if v, ok := s.credCache.Load(key); ok {
		return v.(issuedCred).kindFor(c.id.String()), nil
	}
	if !s.ca.Signed(c.leaf) {
		return "", nil
	}
	rec, err := s.db.SVID(ctx, c.serial)
	if errors.Is(err, store.ErrNotFound) {
		return "", nil
	}
	if err != nil {
		return "", err
	}
	if s.credCount.Add(1) > 100_000 { // bound the cache; it refills on demand
		s.credCache.Clear()
		s.credCount.Store(0)
	}
	ic := issuedCred{kind: rec.Kind, id: rec.SPIFFEID}
	s.credCache.Store(key, ic)
	return ic.kindFor(c.id.String()), nil
}

type issuedCred struct{ kind, id string }

func (i issuedCred) kindFor(id string) string {
	if i.id != id {
		return ""
	}
	return i.kind
}

// revocationSet is an immutable snapshot of the revocations in force, for
// per-request checks without a store round trip.
type revocationSet struct {
	version uint64
	ids     map[string]bool
	serials map[string]bool
	// section is the watch stream's revocations section, built once with
	// the snapshot and shared, read-only, by every stream that sends it.
	section *wire.Revocations
	// why holds each revoked ID's and serial's record, by ID or serial,
	// for status listings.
	why map[string]revocationWhy
}

// revocationWhy is when and why a SPIFFE ID or serial was revoked.
type revocationWhy struct {
	at     time.Time
	reason string
}

func (r *revocationSet) revoked(id, serial string) bool {
	if r == nil {
		return false
	}
	return r.ids[id] || r.serials[serial]
}

// reloadRevocations reads the revocations from the store into a new
// snapshot labelled version, the revocations section's version the caller
// read before calling (so the content is at least as new as its label).
func (s *Server) reloadRevocations(ctx context.Context, version uint64) error {
	l, err := s.db.Revocations(ctx, s.now())
	if err != nil {
		return err
	}
	toks, err := s.oauthRevokedTokens(ctx)
	if err != nil {
		return err
	}
	blocked, err := s.blockedEdges(ctx)
	if err != nil {
		return err
	}
	set := &revocationSet{version: version, ids: map[string]bool{}, serials: map[string]bool{}, section: &wire.Revocations{TokenIDs: toks, BlockedEdges: blocked},
		why: map[string]revocationWhy{}}
	for _, x := range l.IDs {
		set.ids[x.SPIFFEID] = true
		set.section.SPIFFEIDs = append(set.section.SPIFFEIDs, x.SPIFFEID)
		set.section.IDDetails = append(set.section.IDDetails, wire.RevokedIDDetail{SPIFFEID: x.SPIFFEID, RevokedAt: x.RevokedAt, Reason: x.Reason})
		set.why[x.SPIFFEID] = revocationWhy{x.RevokedAt, x.Reason}
	}
	for _, x := range l.Serials {
		set.serials[x.Serial] = true
		set.why[x.Serial] = revocationWhy{x.RevokedAt, x.Reason}
		set.section.Serials = append(set.section.Serials, wire.RevokedSerial{Serial: x.Serial, ExpiresAt: x.ExpiresAt})
	}
	if s.onRevs != nil {
		s.onRevs(set.section)
	}
	s.revs.Store(set)
	return nil
}
