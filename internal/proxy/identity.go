package proxy

import (
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"

	"github.com/moatless/moatless/internal/tlsconf"
)

// Identity is where the sidecar gets its own X509-SVID and the trust
// bundles it verifies peers against. It is read on every handshake, so an
// implementation must be safe for concurrent use and cheap: return the same
// *x509svid.SVID pointer until it changes (the sidecar caches the derived
// tls.Certificate by pointer).
//
// go-spiffe's *workloadapi.X509Source implements it (any SPIFFE Workload API:
// ours or SPIRE's), as do *FileSource (standalone PEM files) and the
// join-token client.
type Identity interface {
	x509svid.Source
	x509bundle.Source
}

// ErrNoIdentity is returned while an Identity has no SVID to offer.
var ErrNoIdentity = errors.New("proxy: no X509-SVID available")

// FileSource is an Identity read from PEM files: the SVID's certificate
// chain (leaf first), its private key (PKCS#8, or SEC 1 / PKCS#1) and the
// trust bundle of the SVID's trust domain. Reload re-reads them; a reload
// that fails for any reason (a file missing, half written, a key that does
// not match the certificate, a bundle without certificates) keeps the
// previous identity in force and returns the error, so rewriting the files
// in any order never leaves the sidecar without credentials.
//
// FileSource is safe for concurrent use. Its zero value is not usable: call
// NewFileSource.
type FileSource struct {
	certFile, keyFile, bundleFile string

	mu      sync.Mutex // serializes Reload
	state   atomic.Pointer[fileState]
	updated updateSignal
}

// Updated is sent on after each Reload that put new files in force (one
// pending send at most; one reader: the sidecar or gateway using it).
func (f *FileSource) Updated() <-chan struct{} { return f.updated.c() }

type fileState struct {
	raw    [3][]byte // cert, key, bundle as read: change detection
	svid   *x509svid.SVID
	bundle *x509bundle.Bundle
}

// NewFileSource loads the three files once and fails if they do not form a
// valid X509-SVID with a bundle for its trust domain.
func NewFileSource(certFile, keyFile, bundleFile string) (*FileSource, error) {
	if certFile == "" || keyFile == "" || bundleFile == "" {
		return nil, errors.New("proxy: file identity needs a certificate, a key and a bundle file")
	}
	f := &FileSource{certFile: certFile, keyFile: keyFile, bundleFile: bundleFile}
	if _, err := f.Reload(); err != nil {
		return nil, err
	}
	return f, nil
}

// Reload re-reads the files and swaps the identity in atomically when they
// changed and are valid. changed reports whether a new identity is now in
// force. On error the old identity stays.
func (f *FileSource) Reload() (changed bool, err error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	var raw [3][]byte
	for i, p := range []string{f.certFile, f.keyFile, f.bundleFile} {
		b, err := readLimited(p, maxPEMFile)
		if err != nil {
			return false, fmt.Errorf("proxy: read identity file: %w", err)
		}
		raw[i] = b
	}
	old := f.state.Load()
	if old != nil && bytes.Equal(old.raw[0], raw[0]) && bytes.Equal(old.raw[1], raw[1]) && bytes.Equal(old.raw[2], raw[2]) {
		return false, nil
	}
	svid, err := x509svid.Parse(raw[0], raw[1])
	if err != nil {
		return false, fmt.Errorf("proxy: %s and %s: %w", f.certFile, f.keyFile, err)
	}
	if leaf := svid.Certificates[0]; !time.Now().Before(leaf.NotAfter) {
		// Every peer would refuse it; keeping the previous one (if any)
		// at least fails no worse, and the error says what to fix.
		return false, fmt.Errorf("proxy: %s: certificate expired at %s", f.certFile, leaf.NotAfter.UTC().Format(time.RFC3339))
	}
	bundle, err := x509bundle.Parse(svid.ID.TrustDomain(), raw[2])
	if err != nil {
		return false, fmt.Errorf("proxy: bundle %s: %w", f.bundleFile, err)
	}
	if bundle.Empty() {
		return false, fmt.Errorf("proxy: bundle %s holds no certificate", f.bundleFile)
	}
	f.state.Store(&fileState{raw: raw, svid: svid, bundle: bundle})
	f.updated.notify()
	return true, nil
}

// GetX509SVID returns the SVID in force.
func (f *FileSource) GetX509SVID() (*x509svid.SVID, error) {
	s := f.state.Load()
	if s == nil {
		return nil, ErrNoIdentity
	}
	return s.svid, nil
}

// GetX509BundleForTrustDomain returns the bundle file's authorities for the
// SVID's own trust domain; any other trust domain is unknown.
func (f *FileSource) GetX509BundleForTrustDomain(td spiffeid.TrustDomain) (*x509bundle.Bundle, error) {
	s := f.state.Load()
	if s == nil {
		return nil, ErrNoIdentity
	}
	if td != s.bundle.TrustDomain() {
		return nil, fmt.Errorf("proxy: no trust bundle for trust domain %q", td)
	}
	return s.bundle, nil
}

const maxPEMFile = 1 << 20

// readLimited reads a whole file, refusing one larger than limit.
func readLimited(path string, limit int64) ([]byte, error) {
	fh, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer fh.Close()
	b, err := io.ReadAll(io.LimitReader(fh, limit+1))
	if err != nil {
		return nil, err
	}
	if int64(len(b)) > limit {
		return nil, fmt.Errorf("%s: larger than %d bytes", path, limit)
	}
	return b, nil
}

// tlsIdentity turns an Identity into crypto/tls callbacks. Every handshake
// reads the Identity anew, so a rotated SVID or bundle applies to the next
// handshake while established connections carry on untouched.
type tlsIdentity struct {
	src     Identity
	now     func() time.Time
	revoked func() *revocationSet
	// live, when set, tracks every outbound connection under its peer's
	// authority (dialTracked), so a revoked CA authority closes it; set,
	// it also makes verifyPeer note each verified peer's authority for
	// the registration of its connection (inbound ones too).
	live *tracker
	// verified holds, from verifyPeer until the connection registers
	// (authorityOf), the authority each verified peer chained to, by its
	// leaf (the *x509.Certificate the connection state hands out); pending
	// counts them, about.
	verified sync.Map
	pending  atomic.Int64

	cert atomic.Pointer[certCache]
}

type certCache struct {
	svid *x509svid.SVID
	cert tls.Certificate
}

// certificate returns the SVID in force as a tls.Certificate, converting it
// only when the source hands out a new SVID.
func (t *tlsIdentity) certificate() (*tls.Certificate, error) {
	svid, err := t.src.GetX509SVID()
	if err != nil {
		return nil, fmt.Errorf("proxy: get own X509-SVID: %w", err)
	}
	if svid == nil || len(svid.Certificates) == 0 {
		return nil, ErrNoIdentity
	}
	if c := t.cert.Load(); c != nil && c.svid == svid {
		return &c.cert, nil
	}
	c := &certCache{svid: svid, cert: tls.Certificate{PrivateKey: svid.PrivateKey, Leaf: svid.Certificates[0]}}
	for _, x := range svid.Certificates {
		c.cert.Certificate = append(c.cert.Certificate, x.Raw)
	}
	t.cert.Store(c)
	return &c.cert, nil
}

// ownID is the SPIFFE ID of the SVID in force.
func (t *tlsIdentity) ownID() (spiffeid.ID, error) {
	svid, err := t.src.GetX509SVID()
	if err != nil {
		return spiffeid.ID{}, err
	}
	if svid == nil {
		return spiffeid.ID{}, ErrNoIdentity
	}
	return svid.ID, nil
}

// Errors a peer verification can end in. The sidecar counts handshake
// failures by these.
var (
	ErrPeerUnverified = errors.New("proxy: peer X509-SVID not verified")
	ErrPeerRevoked    = errors.New("proxy: peer identity revoked")
	ErrPeerNotAllowed = errors.New("proxy: peer SPIFFE ID not the expected one")
)

// revokedPeerError is ErrPeerRevoked with the peer it refused, so the
// refusal is recorded against the identity that is still trying.
type revokedPeerError struct{ id string }

func (e *revokedPeerError) Error() string        { return ErrPeerRevoked.Error() + ": " + e.id }
func (e *revokedPeerError) Is(target error) bool { return target == ErrPeerRevoked }

// verifyPeer verifies a peer's certificate chain as an X509-SVID against the
// trust bundle of its trust domain (never by hostname), then refuses it if
// its SPIFFE ID or leaf serial is revoked, then asks authorize (may be nil).
// It runs from VerifyConnection, which crypto/tls calls on every handshake
// including resumed ones: a resumed session is re-checked against the
// current bundle and revocation list, not trusted because it once passed.
func (t *tlsIdentity) verifyPeer(certs []*x509.Certificate, authorize func(spiffeid.ID) error) (spiffeid.ID, error) {
	if len(certs) == 0 {
		return spiffeid.ID{}, fmt.Errorf("%w: no certificate presented", ErrPeerUnverified)
	}
	id, chains, err := x509svid.Verify(certs, t.src, x509svid.WithTime(t.now()))
	if err != nil {
		return id, fmt.Errorf("%w: %w", ErrPeerUnverified, err)
	}
	if rs := t.revoked(); rs.has(id.String(), serialHex(certs[0])) {
		return id, &revokedPeerError{id: id.String()}
	}
	if authorize != nil {
		if err := authorize(id); err != nil {
			return id, err
		}
	}
	if t.live != nil && len(chains) > 0 {
		t.noteAuthority(certs[0], authorityOfChain(id.TrustDomain(), chains[0]))
	}
	return id, nil
}

// serverConfig is the inbound TLS configuration: TLS 1.3 only, a client
// certificate required and verified as an X509-SVID in VerifyConnection.
// ClientAuth is RequireAnyClientCert because crypto/tls's own verification
// would check hostnames and web PKI rules; SPIFFE verification replaces it.
func (t *tlsIdentity) serverConfig(nextProtos []string) *tls.Config {
	return tlsconf.Server(&tls.Config{
		MinVersion: tls.VersionTLS13,
		ClientAuth: tls.RequireAnyClientCert,
		GetCertificate: func(*tls.ClientHelloInfo) (*tls.Certificate, error) {
			return t.certificate()
		},
		VerifyConnection: func(cs tls.ConnectionState) error {
			_, err := t.verifyPeer(cs.PeerCertificates, nil)
			return err
		},
		NextProtos: nextProtos,
		Time:       t.now,
	})
}

// clientConfig is the outbound TLS configuration for one upstream: the
// upstream must present an X509-SVID that verifies against the bundle and
// carries exactly want. InsecureSkipVerify only turns off crypto/tls's
// hostname-based verification; VerifyConnection does the SPIFFE one on
// every handshake, resumed or not. Sessions are resumed from cache.
func (t *tlsIdentity) clientConfig(want spiffeid.ID, serverName string, nextProtos []string) *tls.Config {
	authorize := func(got spiffeid.ID) error {
		if got != want {
			return fmt.Errorf("%w: upstream is %q, want %q", ErrPeerNotAllowed, got, want)
		}
		return nil
	}
	return &tls.Config{
		MinVersion:         tls.VersionTLS13,
		InsecureSkipVerify: true, //nolint:gosec // replaced by SPIFFE verification in VerifyConnection
		ServerName:         serverName,
		GetClientCertificate: func(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
			return t.certificate()
		},
		VerifyConnection: func(cs tls.ConnectionState) error {
			_, err := t.verifyPeer(cs.PeerCertificates, authorize)
			return err
		},
		ClientSessionCache: tls.NewLRUClientSessionCache(64),
		NextProtos:         nextProtos,
		Time:               t.now,
	}
}

// serialHex is the leaf serial as the wire writes it: lower-case hex.
func serialHex(c *x509.Certificate) string {
	if c == nil || c.SerialNumber == nil {
		return ""
	}
	return c.SerialNumber.Text(16)
}
