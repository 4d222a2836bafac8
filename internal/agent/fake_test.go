package agent

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"io"
	"log"
	"math/big"
	"net/http"
	"net/http/httptest"
	"net/url"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"

	"github.com/moatless/moatless/internal/testpki"
	"github.com/moatless/moatless/internal/wire"
)

// fakeServer implements the agent API of wire.go with testpki, enough to
// drive the agent in unit tests. The e2e tests use the real server.
type fakeServer struct {
	t      testing.TB
	ca     *testpki.CA
	jwtKey *ecdsa.PrivateKey
	srv    *httptest.Server
	cert   atomic.Pointer[tls.Certificate]

	mu        sync.Mutex
	tokens    map[string]string // join token → SPIFFE ID
	jwtStatus int               // when not 0, every JWT-SVID request gets it
	nodeTTL   time.Duration
	entries   []wire.Entry
	rev       wire.Revocations
	version   uint64
	changed   chan struct{}
	acks      []wire.Ack
	signCalls int
	jwtCalls  int
	renews    int
	watches   int
	serial    atomic.Int64
	// tamper, when set, rewrites signed SVIDs (to test the agent's checks).
	tamper func(*wire.X509SVID)
	// signGate, when set, holds every X509 sign request until it is
	// closed.
	signGate chan struct{}
	// issuer, when set, signs SVIDs instead of ca (a CA key rotation).
	issuer atomic.Pointer[testpki.CA]
	// authorities, when set, are the bundle's X.509 authorities instead
	// of ca alone; tainted its TaintedX509Authorities. clientCAs are
	// more CAs whose SVIDs the fake accepts as clients.
	authorities []*testpki.CA
	tainted     []string
	clientCAs   []*testpki.CA
	// jwtTainted marks the JWT key tainted in the bundle; jwtRemoved
	// leaves it out.
	jwtTainted, jwtRemoved bool
	// signing is the X509 sign requests being served, maxSigning the
	// most at once.
	signing, maxSigning int
	// bundleSeq is the bundle's sequence number: push bumps it when the
	// bundle's trust material changed, as the real CA does.
	bundleSeq uint64
	// lagging, when set, is the bundle the watch stream and attestation
	// send instead of the current one: a replica that has not caught up.
	lagging *wire.Bundle
}

func newFakeServer(t *testing.T) *fakeServer { return newFakeServerTB(t) }

func newFakeServerTB(t testing.TB) *fakeServer {
	t.Helper()
	f := &fakeServer{t: t, ca: testpki.NewCA(t, "example.org"), tokens: map[string]string{}, nodeTTL: time.Hour, changed: make(chan struct{}), version: 1, bundleSeq: 1}
	var err error
	if f.jwtKey, err = ecdsa.GenerateKey(elliptic.P256(), rand.Reader); err != nil {
		t.Fatal(err)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("POST "+wire.PathAttest, f.attest)
	mux.HandleFunc("POST "+wire.PathRenew, f.renew)
	mux.HandleFunc("POST "+wire.PathSignX509, f.signX509)
	mux.HandleFunc("POST "+wire.PathSignJWT, f.signJWT)
	mux.HandleFunc("GET "+wire.PathWatch, f.watch)
	mux.HandleFunc("POST "+wire.PathAck, f.ack)
	f.srv = httptest.NewUnstartedServer(mux)
	f.srv.EnableHTTP2 = true
	f.setServerID(fakeServerID)
	// Per handshake, so setServerID takes effect at once (GetCertificate
	// alone is not asked when the client sends no SNI, as for an IP).
	f.srv.TLS = &tls.Config{GetConfigForClient: func(*tls.ClientHelloInfo) (*tls.Config, error) {
		pool := f.ca.Pool()
		f.mu.Lock()
		for _, ca := range f.clientCAs {
			pool.AddCert(ca.Cert)
		}
		f.mu.Unlock()
		return &tls.Config{
			Certificates: []tls.Certificate{*f.cert.Load()},
			ClientAuth:   tls.VerifyClientCertIfGiven,
			ClientCAs:    pool,
			NextProtos:   []string{"h2", "http/1.1"},
		}, nil
	}}
	// Handshakes the node refuses are what some tests are about.
	f.srv.Config.ErrorLog = log.New(io.Discard, "", 0)
	f.srv.StartTLS()
	t.Cleanup(f.srv.Close)
	return f
}

// fakeServerID is the SPIFFE ID the real server's certificate carries.
const fakeServerID = "spiffe://example.org/moatless/server"

// fakeServerName is a DNS name the fake server's certificate carries
// besides 127.0.0.1.
const fakeServerName = "moatless-server.test"

// setServerID makes the fake present a certificate from its CA for
// 127.0.0.1 and fakeServerName with id as its URI SAN ("" for none) from
// the next handshake on.
func (f *fakeServer) setServerID(id string) {
	c := f.ca.ServerCert(f.t, id, "127.0.0.1", fakeServerName)
	f.cert.Store(&c)
}

func (f *fakeServer) addr() string { return f.srv.Listener.Addr().String() }

func (f *fakeServer) bundle() wire.Bundle {
	pub, _ := x509.MarshalPKIXPublicKey(f.jwtKey.Public())
	b := wire.Bundle{TrustDomain: "example.org", X509Authorities: [][]byte{f.ca.Cert.Raw},
		JWTAuthorities: []wire.JWTAuthority{{KeyID: "k1", PublicKey: pub, Tainted: f.jwtTainted}}, SequenceNumber: f.bundleSeq,
		TaintedX509Authorities: f.tainted}
	if f.authorities != nil {
		b.X509Authorities = nil
		for _, ca := range f.authorities {
			b.X509Authorities = append(b.X509Authorities, ca.Cert.Raw)
		}
	}
	if f.jwtRemoved {
		b.JWTAuthorities = nil
	}
	return b
}

func writeErr(w http.ResponseWriter, code int, msg string) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	json.NewEncoder(w).Encode(map[string][]string{"errors": {msg}})
}

func decode(w http.ResponseWriter, r *http.Request, v any) bool {
	if err := json.NewDecoder(http.MaxBytesReader(w, r.Body, wire.MaxBodySize)).Decode(v); err != nil {
		writeErr(w, 400, err.Error())
		return false
	}
	return true
}

// caller is the SPIFFE ID of the mTLS client, or "".
func caller(r *http.Request) string {
	if r.TLS == nil || len(r.TLS.PeerCertificates) == 0 || len(r.TLS.PeerCertificates[0].URIs) == 0 {
		return ""
	}
	return r.TLS.PeerCertificates[0].URIs[0].String()
}

func (f *fakeServer) sign(csrDER []byte, id string, ttl time.Duration) (wire.X509SVID, error) {
	csr, err := x509.ParseCertificateRequest(csrDER)
	if err != nil {
		return wire.X509SVID{}, err
	}
	if err := csr.CheckSignature(); err != nil {
		return wire.X509SVID{}, err
	}
	u, _ := url.Parse(id)
	ca := f.ca
	if i := f.issuer.Load(); i != nil {
		ca = i
	}
	serial := f.serial.Add(1) // renew signs outside f.mu
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(now.UnixNano() + serial), NotBefore: now.Add(-time.Second), NotAfter: now.Add(ttl),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		BasicConstraintsValid: true, URIs: []*url.URL{u},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.Cert, csr.PublicKey, ca.Key)
	if err != nil {
		return wire.X509SVID{}, err
	}
	return wire.X509SVID{SPIFFEID: id, CertChain: [][]byte{der}, Serial: fmt.Sprintf("%x", tmpl.SerialNumber), ExpiresAt: tmpl.NotAfter}, nil
}

func (f *fakeServer) attest(w http.ResponseWriter, r *http.Request) {
	var req wire.AttestRequest
	if !decode(w, r, &req) {
		return
	}
	f.mu.Lock()
	id, ok := f.tokens[req.JoinToken]
	delete(f.tokens, req.JoinToken)
	ttl := f.nodeTTL
	f.mu.Unlock()
	if !ok {
		writeErr(w, 401, "join token unknown, used or expired")
		return
	}
	svid, err := f.sign(req.CSR, id, ttl)
	if err != nil {
		writeErr(w, 400, err.Error())
		return
	}
	f.mu.Lock()
	b := f.bundle()
	if f.lagging != nil {
		b = *f.lagging
	}
	f.mu.Unlock()
	json.NewEncoder(w).Encode(wire.AttestResponse{SVID: svid, Bundle: b})
}

func (f *fakeServer) renew(w http.ResponseWriter, r *http.Request) {
	id := caller(r)
	if id == "" {
		writeErr(w, 401, "client certificate required")
		return
	}
	var req wire.RenewRequest
	if !decode(w, r, &req) {
		return
	}
	f.mu.Lock()
	f.renews++
	ttl := f.nodeTTL
	f.mu.Unlock()
	svid, err := f.sign(req.CSR, id, ttl)
	if err != nil {
		writeErr(w, 400, err.Error())
		return
	}
	json.NewEncoder(w).Encode(wire.X509SVIDResponse{SVID: svid})
}

func (f *fakeServer) entry(parent, id string) (wire.Entry, bool) {
	for _, e := range f.entries {
		if e.ID == id && e.ParentID == parent {
			return e, true
		}
	}
	return wire.Entry{}, false
}

func (f *fakeServer) signX509(w http.ResponseWriter, r *http.Request) {
	parent := caller(r)
	if parent == "" {
		writeErr(w, 401, "client certificate required")
		return
	}
	var req wire.SignX509Request
	if !decode(w, r, &req) {
		return
	}
	f.mu.Lock()
	gate := f.signGate
	f.signing++
	f.maxSigning = max(f.maxSigning, f.signing)
	f.mu.Unlock()
	if gate != nil {
		<-gate
	}
	f.mu.Lock()
	defer func() { f.signing--; f.mu.Unlock() }()
	f.signCalls++
	var resp wire.SignX509Response
	for _, q := range req.Requests {
		e, ok := f.entry(parent, q.EntryID)
		if !ok {
			writeErr(w, 403, "entry "+q.EntryID+" is not parented by the caller")
			return
		}
		svid, err := f.sign(q.CSR, e.SPIFFEID, e.X509TTL.Std())
		if err != nil {
			writeErr(w, 400, err.Error())
			return
		}
		svid.EntryID = e.ID
		if f.tamper != nil {
			f.tamper(&svid)
		}
		resp.SVIDs = append(resp.SVIDs, svid)
	}
	json.NewEncoder(w).Encode(resp)
}

func (f *fakeServer) signJWT(w http.ResponseWriter, r *http.Request) {
	parent := caller(r)
	var req wire.SignJWTRequest
	if !decode(w, r, &req) {
		return
	}
	f.mu.Lock()
	f.jwtCalls++
	e, ok := f.entry(parent, req.EntryID)
	refuse := f.jwtStatus
	f.mu.Unlock()
	if refuse != 0 {
		writeErr(w, refuse, "refused by the test")
		return
	}
	if !ok {
		writeErr(w, 403, "not your entry")
		return
	}
	signer, _ := jose.NewSigner(jose.SigningKey{Algorithm: jose.ES256, Key: jose.JSONWebKey{Key: f.jwtKey, KeyID: "k1"}}, (&jose.SignerOptions{}).WithType("JWT"))
	now := time.Now()
	exp := now.Add(5 * time.Minute)
	tok, _ := jwt.Signed(signer).Claims(jwt.Claims{Subject: e.SPIFFEID, Audience: req.Audience, Expiry: jwt.NewNumericDate(exp), IssuedAt: jwt.NewNumericDate(now)}).Serialize()
	json.NewEncoder(w).Encode(wire.SignJWTResponse{SPIFFEID: e.SPIFFEID, Token: tok, ExpiresAt: exp})
}

// push changes the server state and wakes every watch stream.
func (f *fakeServer) push(fn func()) {
	f.mu.Lock()
	before := f.bundle()
	fn()
	if after := f.bundle(); wire.CompareBundle(&before, &after) == wire.BundleForked {
		f.bundleSeq++
	}
	f.version++
	close(f.changed)
	f.changed = make(chan struct{})
	f.mu.Unlock()
}

func (f *fakeServer) watch(w http.ResponseWriter, r *http.Request) {
	if caller(r) == "" {
		writeErr(w, 401, "client certificate required")
		return
	}
	f.mu.Lock()
	f.watches++
	f.mu.Unlock()
	w.Header().Set("Content-Type", "application/x-ndjson")
	fl := w.(http.Flusher)
	enc := json.NewEncoder(w)
	for {
		f.mu.Lock()
		b := f.bundle()
		if f.lagging != nil {
			b = *f.lagging
		}
		entries := slices.Clone(f.entries)
		rev := f.rev
		u := wire.Update{Version: f.version, Bundle: &b, Entries: &entries, Revocations: &rev}
		changed := f.changed
		f.mu.Unlock()
		if err := enc.Encode(u); err != nil {
			return
		}
		fl.Flush()
		select {
		case <-r.Context().Done():
			return
		case <-changed:
		}
	}
}

func (f *fakeServer) ack(w http.ResponseWriter, r *http.Request) {
	if caller(r) == "" {
		writeErr(w, 401, "client certificate required")
		return
	}
	var a wire.Ack
	if !decode(w, r, &a) {
		return
	}
	f.mu.Lock()
	f.acks = append(f.acks, a)
	f.mu.Unlock()
	w.WriteHeader(http.StatusNoContent)
}

func (f *fakeServer) counts() (sign, jwt, renews, watches int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.signCalls, f.jwtCalls, f.renews, f.watches
}

func (f *fakeServer) trust() []*x509.Certificate { return []*x509.Certificate{f.ca.Cert} }
