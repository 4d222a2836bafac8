package ca

import (
	"bytes"
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"log/slog"
	"net/url"
	"sync"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// memStore is an in-memory StateStore. saveErr, when set, makes
// SaveCAState fail (the fault tests need); saves counts successful saves.
type memStore struct {
	mu      sync.Mutex
	blob    []byte
	saves   int
	loadErr error
	saveErr error
}

func (m *memStore) LoadCAState(context.Context) ([]byte, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.loadErr != nil {
		return nil, m.loadErr
	}
	if m.blob == nil {
		return nil, ErrNoState
	}
	return append([]byte(nil), m.blob...), nil
}

func (m *memStore) SaveCAState(_ context.Context, b []byte) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.saveErr != nil {
		return m.saveErr
	}
	m.blob = append([]byte(nil), b...)
	m.saves++
	return nil
}

func (m *memStore) snapshot() ([]byte, int) {
	m.mu.Lock()
	defer m.mu.Unlock()
	return append([]byte(nil), m.blob...), m.saves
}

func (m *memStore) setSaveErr(err error) {
	m.mu.Lock()
	m.saveErr = err
	m.mu.Unlock()
}

// fakeClock is a clock tests move by hand.
type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func newClock(t time.Time) *fakeClock { return &fakeClock{t: t} }

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *fakeClock) Set(t time.Time) {
	c.mu.Lock()
	c.t = t
	c.mu.Unlock()
}

func (c *fakeClock) Advance(d time.Duration) { c.Set(c.Now().Add(d)) }

var (
	testTD  = spiffeid.RequireTrustDomainFromString("example.org")
	testKEK = bytes.Repeat([]byte{0x42}, KEKSize)
	testID  = spiffeid.RequireFromString("spiffe://example.org/ns/default/sa/web")
)

type env struct {
	ca    *CA
	store *memStore
	clock *fakeClock
	opts  Options
	logs  *bytes.Buffer
}

// newEnv opens a CA on a fresh store with a fake clock at real now (so
// go-spiffe's JWT validation, which reads the real clock, agrees). mod
// adjusts the options.
func newEnv(t testing.TB, mod func(*Options)) *env {
	t.Helper()
	e := &env{store: &memStore{}, clock: newClock(time.Now().Truncate(time.Second)), logs: &bytes.Buffer{}}
	e.opts = Options{
		TrustDomain: testTD,
		State:       e.store,
		KEK:         testKEK,
		Now:         e.clock.Now,
		Logger:      slog.New(slog.NewJSONHandler(&syncWriter{w: e.logs}, &slog.HandlerOptions{Level: slog.LevelDebug})),
	}
	if mod != nil {
		mod(&e.opts)
	}
	var err error
	e.ca, err = Open(context.Background(), e.opts)
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	return e
}

// reopen opens a second CA on the same store and options, as a restarted
// server would.
func (e *env) reopen(t testing.TB) *CA {
	t.Helper()
	c, err := Open(context.Background(), e.opts)
	if err != nil {
		t.Fatalf("reopen: %v", err)
	}
	return c
}

type syncWriter struct {
	mu sync.Mutex
	w  *bytes.Buffer
}

func (s *syncWriter) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.w.Write(p)
}

func newP256(t testing.TB) *ecdsa.PrivateKey {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// csrFor makes a DER CSR signed by key; tmpl may be nil.
func csrFor(t testing.TB, key crypto.Signer, tmpl *x509.CertificateRequest) []byte {
	t.Helper()
	if tmpl == nil {
		tmpl = &x509.CertificateRequest{Subject: pkix.Name{CommonName: "workload"}}
	}
	der, err := x509.CreateCertificateRequest(rand.Reader, tmpl, key)
	if err != nil {
		t.Fatal(err)
	}
	return der
}

func mustURL(t testing.TB, s string) *url.URL {
	t.Helper()
	u, err := url.Parse(s)
	if err != nil {
		t.Fatal(err)
	}
	return u
}

func mustSign(t testing.TB, c *CA, id spiffeid.ID, ttl time.Duration) *Issued {
	t.Helper()
	is, err := c.SignX509SVID(csrFor(t, newP256(t), nil), id, ttl)
	if err != nil {
		t.Fatalf("SignX509SVID: %v", err)
	}
	return is
}

func statesOf(st []Authority, kind AuthorityKind) []AuthorityState {
	var out []AuthorityState
	for _, a := range st {
		if a.Kind == kind {
			out = append(out, a.State)
		}
	}
	return out
}

func activeID(t testing.TB, c *CA, kind AuthorityKind) string {
	t.Helper()
	for _, a := range c.Status() {
		if a.Kind == kind && a.State == StateActive {
			return a.ID
		}
	}
	t.Fatalf("no active %s authority", kind)
	return ""
}

func isErr(err, target error) bool { return errors.Is(err, target) }
