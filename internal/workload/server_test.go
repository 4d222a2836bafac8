package workload

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"
	"github.com/spiffe/go-spiffe/v2/bundle/jwtbundle"
	"github.com/spiffe/go-spiffe/v2/proto/spiffe/workload"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/jwtsvid"
	"github.com/spiffe/go-spiffe/v2/workloadapi"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/moatless/moatless/internal/attest"
	"github.com/moatless/moatless/internal/testpki"
	"github.com/moatless/moatless/internal/wire"
)

const td = "example.org"

// fixture is a Workload API server on a socket in a temp dir, serving a
// Publisher the test controls, attesting callers with the real unix
// attestor (so the test process is the workload).
type fixture struct {
	t      testing.TB
	ca     *testpki.CA
	jwtKey *ecdsa.PrivateKey
	pub    Publisher
	sock   string
	srv    *Server
	served sync.Map // kind → count

	mu       sync.Mutex
	jwtCalls int
	jwtErr   error
}

func (f *fixture) State() (*State, <-chan struct{}) { return f.pub.State() }

func (f *fixture) JWTSVID(_ context.Context, id *Identity, aud []string) (string, error) {
	f.mu.Lock()
	f.jwtCalls++
	err := f.jwtErr
	f.mu.Unlock()
	if err != nil {
		return "", err
	}
	return f.signJWT(id.SPIFFEID.String(), aud, time.Now().Add(5*time.Minute)), nil
}

func (f *fixture) signJWT(sub string, aud []string, exp time.Time) string {
	signer, err := jose.NewSigner(jose.SigningKey{Algorithm: jose.ES256, Key: jose.JSONWebKey{Key: f.jwtKey, KeyID: "k1"}}, (&jose.SignerOptions{}).WithType("JWT"))
	if err != nil {
		f.t.Fatal(err)
	}
	tok, err := jwt.Signed(signer).Claims(jwt.Claims{Subject: sub, Audience: aud, Expiry: jwt.NewNumericDate(exp), IssuedAt: jwt.NewNumericDate(time.Now())}).Serialize()
	if err != nil {
		f.t.Fatal(err)
	}
	return tok
}

func newFixture(t testing.TB) *fixture { return newFixtureWith(t, nil) }

// newFixtureWith is newFixture with the server's Config changed by edit.
func newFixtureWith(t testing.TB, edit func(*Config)) *fixture {
	t.Helper()
	f := &fixture{t: t, ca: testpki.NewCA(t, td)}
	var err error
	if f.jwtKey, err = ecdsa.GenerateKey(elliptic.P256(), rand.Reader); err != nil {
		t.Fatal(err)
	}
	// Unix socket paths are limited to 108 bytes; t.TempDir can be long.
	dir, err := os.MkdirTemp("", "wl")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	f.sock = filepath.Join(dir, "sub", "agent.sock")
	cfg := Config{
		SocketPath: f.sock,
		Source:     f,
		Attestor:   attest.NewUnix(attest.UnixConfig{SkipNames: true}),
		OnServe: func(kind string) {
			v, _ := f.served.LoadOrStore(kind, new(int))
			f.mu.Lock()
			*v.(*int)++
			f.mu.Unlock()
		},
	}
	if edit != nil {
		edit(&cfg)
	}
	f.srv, err = New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- f.srv.Serve(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Serve: %v", err)
		}
	})
	select {
	case <-f.srv.Ready():
	case err := <-done:
		t.Fatalf("Serve: %v", err)
	}
	return f
}

func uidSelector() wire.Selector {
	return wire.Selector{Type: "unix", Value: "uid:" + strconv.Itoa(os.Geteuid())}
}

// identity makes an entry for id with selectors and a fresh SVID.
func (f *fixture) identity(id string, ttl time.Duration, sels ...wire.Selector) *Identity {
	s := f.ca.SVID(f.t, id, ttl)
	keyDER, err := x509.MarshalPKCS8PrivateKey(s.Key)
	if err != nil {
		f.t.Fatal(err)
	}
	return &Identity{
		EntryID: "e-" + id, SPIFFEID: s.ID, Selectors: sels,
		X509: &X509SVID{Chain: s.Chain, ChainDER: s.Chain[0].Raw, KeyDER: keyDER, Serial: s.Chain[0].SerialNumber.Text(16), ExpiresAt: s.Chain[0].NotAfter},
	}
}

func (f *fixture) publish(seq uint64, revoked []string, ids ...*Identity) {
	f.t.Helper()
	jb := jwtbundle.FromJWTAuthorities(f.ca.TrustDomain, nil)
	jb.AddJWTAuthority("k1", f.jwtKey.Public())
	rv := map[string]struct{}{}
	for _, r := range revoked {
		rv[r] = struct{}{}
	}
	st, err := NewState(f.ca.TrustDomain, seq, []*x509.Certificate{f.ca.Cert}, jb, ids, rv)
	if err != nil {
		f.t.Fatal(err)
	}
	f.pub.Publish(st)
}

func (f *fixture) client(t testing.TB) *workloadapi.Client {
	t.Helper()
	c, err := workloadapi.New(context.Background(), workloadapi.WithAddr("unix://"+f.sock))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// raw is a gRPC client with full control of the metadata.
func (f *fixture) raw(t testing.TB) workload.SpiffeWorkloadAPIClient {
	t.Helper()
	conn, err := grpc.NewClient("unix://"+f.sock, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return workload.NewSpiffeWorkloadAPIClient(conn)
}

func withHeader(ctx context.Context) context.Context {
	return metadata.AppendToOutgoingContext(ctx, SecurityHeader, "true")
}

func ctxT(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func TestFetchX509SVIDWithGoSPIFFE(t *testing.T) {
	f := newFixture(t)
	mine := f.identity("spiffe://example.org/ns/a/sa/web", time.Hour, uidSelector())
	other := f.identity("spiffe://example.org/ns/a/sa/db", time.Hour, wire.Selector{Type: "unix", Value: "uid:4242424"})
	f.publish(1, nil, mine, other)

	x509ctx, err := f.client(t).FetchX509Context(ctxT(t))
	if err != nil {
		t.Fatal(err)
	}
	if len(x509ctx.SVIDs) != 1 {
		t.Fatalf("got %d SVIDs, want only the matching one", len(x509ctx.SVIDs))
	}
	got := x509ctx.SVIDs[0]
	if got.ID != mine.SPIFFEID || got.Certificates[0].SerialNumber.Text(16) != mine.X509.Serial {
		t.Fatalf("got %s serial %x, want %s", got.ID, got.Certificates[0].SerialNumber, mine.SPIFFEID)
	}
	// The key belongs to the certificate and the chain verifies against
	// the bundle that came with it.
	if !got.PrivateKey.Public().(*ecdsa.PublicKey).Equal(got.Certificates[0].PublicKey) {
		t.Fatal("private key does not match the certificate")
	}
	b, err := x509ctx.Bundles.GetX509BundleForTrustDomain(f.ca.TrustDomain)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	for _, c := range b.X509Authorities() {
		pool.AddCert(c)
	}
	if _, err := got.Certificates[0].Verify(x509.VerifyOptions{Roots: pool, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}}); err != nil {
		t.Fatalf("SVID does not verify against the served bundle: %v", err)
	}
}

func TestCallerErrors(t *testing.T) {
	f := newFixture(t)
	f.publish(1, nil,
		f.identity("spiffe://example.org/other", time.Hour, wire.Selector{Type: "unix", Value: "uid:4242424"}),
		f.identity("spiffe://example.org/revoked", time.Hour, uidSelector()),
		f.identity("spiffe://example.org/nosel", time.Hour),
	)
	// The caller's only entry is revoked; the one without selectors must
	// never match anybody.
	f.publish(2, []string{"spiffe://example.org/revoked"}, f.pub.cur.Identities...)
	c := f.raw(t)
	tests := []struct {
		name string
		ctx  func(context.Context) context.Context
		call func(ctx context.Context) error
		want codes.Code
	}{
		{"x509_no_header", func(c context.Context) context.Context { return c }, func(ctx context.Context) error {
			s, err := c.FetchX509SVID(ctx, &workload.X509SVIDRequest{})
			if err != nil {
				return err
			}
			_, err = s.Recv()
			return err
		}, codes.InvalidArgument},
		{"x509_header_false", func(c context.Context) context.Context {
			return metadata.AppendToOutgoingContext(c, SecurityHeader, "false")
		}, func(ctx context.Context) error {
			s, _ := c.FetchX509SVID(ctx, &workload.X509SVIDRequest{})
			_, err := s.Recv()
			return err
		}, codes.InvalidArgument},
		{"x509_no_matching_entry", withHeader, func(ctx context.Context) error {
			s, _ := c.FetchX509SVID(ctx, &workload.X509SVIDRequest{})
			_, err := s.Recv()
			return err
		}, codes.PermissionDenied},
		{"x509_bundles_no_entry", withHeader, func(ctx context.Context) error {
			s, _ := c.FetchX509Bundles(ctx, &workload.X509BundlesRequest{})
			_, err := s.Recv()
			return err
		}, codes.PermissionDenied},
		{"jwt_bundles_no_header", func(c context.Context) context.Context { return c }, func(ctx context.Context) error {
			s, _ := c.FetchJWTBundles(ctx, &workload.JWTBundlesRequest{})
			_, err := s.Recv()
			return err
		}, codes.InvalidArgument},
		{"jwt_bundles_no_entry", withHeader, func(ctx context.Context) error {
			s, _ := c.FetchJWTBundles(ctx, &workload.JWTBundlesRequest{})
			_, err := s.Recv()
			return err
		}, codes.PermissionDenied},
		{"jwt_svid_no_header", func(c context.Context) context.Context { return c }, func(ctx context.Context) error {
			_, err := c.FetchJWTSVID(ctx, &workload.JWTSVIDRequest{Audience: []string{"a"}})
			return err
		}, codes.InvalidArgument},
		{"jwt_svid_no_audience", withHeader, func(ctx context.Context) error {
			_, err := c.FetchJWTSVID(ctx, &workload.JWTSVIDRequest{})
			return err
		}, codes.InvalidArgument},
		{"jwt_svid_empty_audience", withHeader, func(ctx context.Context) error {
			_, err := c.FetchJWTSVID(ctx, &workload.JWTSVIDRequest{Audience: []string{""}})
			return err
		}, codes.InvalidArgument},
		{"jwt_svid_bad_spiffe_id", withHeader, func(ctx context.Context) error {
			_, err := c.FetchJWTSVID(ctx, &workload.JWTSVIDRequest{Audience: []string{"a"}, SpiffeId: "spiffe://Bad/x"})
			return err
		}, codes.InvalidArgument},
		{"jwt_svid_no_entry", withHeader, func(ctx context.Context) error {
			_, err := c.FetchJWTSVID(ctx, &workload.JWTSVIDRequest{Audience: []string{"a"}})
			return err
		}, codes.PermissionDenied},
		{"validate_no_header", func(c context.Context) context.Context { return c }, func(ctx context.Context) error {
			_, err := c.ValidateJWTSVID(ctx, &workload.ValidateJWTSVIDRequest{Audience: "a", Svid: "x"})
			return err
		}, codes.InvalidArgument},
		{"validate_no_audience", withHeader, func(ctx context.Context) error {
			_, err := c.ValidateJWTSVID(ctx, &workload.ValidateJWTSVIDRequest{Svid: "x"})
			return err
		}, codes.InvalidArgument},
		{"validate_no_svid", withHeader, func(ctx context.Context) error {
			_, err := c.ValidateJWTSVID(ctx, &workload.ValidateJWTSVIDRequest{Audience: "a"})
			return err
		}, codes.InvalidArgument},
		{"validate_garbage", withHeader, func(ctx context.Context) error {
			_, err := c.ValidateJWTSVID(ctx, &workload.ValidateJWTSVIDRequest{Audience: "a", Svid: "not.a.jwt"})
			return err
		}, codes.InvalidArgument},
		{"request_too_large", withHeader, func(ctx context.Context) error {
			_, err := c.ValidateJWTSVID(ctx, &workload.ValidateJWTSVIDRequest{Audience: "a", Svid: string(make([]byte, MaxRequestSize+1))})
			return err
		}, codes.ResourceExhausted},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.call(tt.ctx(ctxT(t)))
			if status.Code(err) != tt.want {
				t.Fatalf("got %v, want code %v", err, tt.want)
			}
		})
	}
}

func TestAttestationFailureIsDenied(t *testing.T) {
	f := newFixture(t)
	f.publish(1, nil, f.identity("spiffe://example.org/web", time.Hour, uidSelector()))
	var fails int
	f.srv.cfg.Attestor = attest.AttestorFunc(func(context.Context, attest.Peer) ([]wire.Selector, error) {
		return nil, attest.ErrProcessGone
	})
	f.srv.cfg.OnAttestFailure = func() { fails++ }
	_, err := f.raw(t).FetchJWTSVID(withHeader(ctxT(t)), &workload.JWTSVIDRequest{Audience: []string{"a"}})
	if status.Code(err) != codes.PermissionDenied || fails != 1 {
		t.Fatalf("got %v after %d failures, want PermissionDenied after 1", err, fails)
	}
}

// TestX509StreamRotationAndRevocation is the stream contract: a new answer
// at once on rotation, and the stream ends with PermissionDenied when the
// caller's last identity is revoked.
func TestX509StreamRotationAndRevocation(t *testing.T) {
	f := newFixture(t)
	first := f.identity("spiffe://example.org/web", time.Hour, uidSelector())
	f.publish(1, nil, first)

	updates := make(chan *workloadapi.X509Context, 8)
	errs := make(chan error, 8)
	ctx, cancel := context.WithCancel(ctxT(t))
	defer cancel()
	done := make(chan error, 1)
	go func() {
		done <- f.client(t).WatchX509Context(ctx, watcher{updates, errs})
	}()
	next := func() *workloadapi.X509Context {
		t.Helper()
		select {
		case u := <-updates:
			return u
		case <-ctx.Done():
			t.Fatal("no update before the deadline")
		}
		return nil
	}
	if u := next(); u.DefaultSVID().Certificates[0].SerialNumber.Text(16) != first.X509.Serial {
		t.Fatal("first update does not carry the first SVID")
	}
	// Publishing an unrelated change sends nothing; a rotation sends at once.
	f.publish(1, nil, first, f.identity("spiffe://example.org/other", time.Hour, wire.Selector{Type: "unix", Value: "uid:4242424"}))
	rotated := f.identity("spiffe://example.org/web", time.Hour, uidSelector())
	f.publish(1, nil, rotated)
	if u := next(); u.DefaultSVID().Certificates[0].SerialNumber.Text(16) != rotated.X509.Serial {
		t.Fatal("rotation not streamed")
	}
	f.publish(2, []string{"spiffe://example.org/web"}, rotated)
	select {
	case err := <-errs:
		if status.Code(err) != codes.PermissionDenied {
			t.Fatalf("after revocation: %v, want PermissionDenied", err)
		}
	case u := <-updates:
		t.Fatalf("revoked SVID still streamed: %v", u.DefaultSVID().ID)
	case <-ctx.Done():
		t.Fatal("revocation did not end the stream")
	}
}

func TestExpiredSVIDIsNotServed(t *testing.T) {
	f := newFixture(t)
	now := time.Now()
	f.srv.now = func() time.Time { return now.Add(2 * time.Hour) }
	f.publish(1, nil, f.identity("spiffe://example.org/web", time.Hour, uidSelector()))
	s, err := f.raw(t).FetchX509SVID(withHeader(ctxT(t)), &workload.X509SVIDRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.Recv(); status.Code(err) != codes.PermissionDenied {
		t.Fatalf("expired SVID: got %v, want PermissionDenied", err)
	}
}

type watcher struct {
	updates chan *workloadapi.X509Context
	errs    chan error
}

func (w watcher) OnX509ContextUpdate(c *workloadapi.X509Context) { w.updates <- c }
func (w watcher) OnX509ContextWatchError(err error) {
	select {
	case w.errs <- err:
	default:
	}
}

func TestBundlesWithGoSPIFFE(t *testing.T) {
	f := newFixture(t)
	f.publish(1, nil, f.identity("spiffe://example.org/web", time.Hour, uidSelector()))
	c := f.client(t)
	xb, err := c.FetchX509Bundles(ctxT(t))
	if err != nil {
		t.Fatal(err)
	}
	b, err := xb.GetX509BundleForTrustDomain(f.ca.TrustDomain)
	if err != nil || len(b.X509Authorities()) != 1 || !b.X509Authorities()[0].Equal(f.ca.Cert) {
		t.Fatalf("X.509 bundle: %v %v", b, err)
	}
	jb, err := c.FetchJWTBundles(ctxT(t))
	if err != nil {
		t.Fatal(err)
	}
	j, err := jb.GetJWTBundleForTrustDomain(f.ca.TrustDomain)
	if err != nil || !j.HasJWTAuthority("k1") {
		t.Fatalf("JWT bundle: %v %v", j, err)
	}
}

func TestJWTSVIDFetchAndValidate(t *testing.T) {
	f := newFixture(t)
	web := f.identity("spiffe://example.org/web", time.Hour, uidSelector())
	f.publish(1, nil, web, f.identity("spiffe://example.org/api", time.Hour, uidSelector()))
	c := f.client(t)

	svids, err := c.FetchJWTSVIDs(ctxT(t), jwtsvid.Params{Audience: "aud1"})
	if err != nil {
		t.Fatal(err)
	}
	if len(svids) != 2 {
		t.Fatalf("got %d JWT-SVIDs, want one per matching entry", len(svids))
	}
	one, err := c.FetchJWTSVID(ctxT(t), jwtsvid.Params{Audience: "aud1", ExtraAudiences: []string{"aud2"}, Subject: web.SPIFFEID})
	if err != nil {
		t.Fatal(err)
	}
	if one.ID != web.SPIFFEID {
		t.Fatalf("asked for %s, got %s", web.SPIFFEID, one.ID)
	}
	// The requested SPIFFE ID must be one the caller is entitled to.
	_, err = c.FetchJWTSVID(ctxT(t), jwtsvid.Params{Audience: "a", Subject: spiffeid.RequireFromString("spiffe://example.org/not-mine")})
	if status.Code(err) != codes.PermissionDenied {
		t.Fatalf("foreign SPIFFE ID: got %v, want PermissionDenied", err)
	}

	got, err := c.ValidateJWTSVID(ctxT(t), one.Marshal(), "aud2")
	if err != nil {
		t.Fatal(err)
	}
	if got.ID != web.SPIFFEID || got.Claims["sub"] != web.SPIFFEID.String() {
		t.Fatalf("validated %s with claims %v", got.ID, got.Claims)
	}

	other := ecdsaKey(t)
	tests := []struct {
		name, token, aud, why string
	}{
		{"wrong_audience", one.Marshal(), "aud3", "expected audience"},
		{"expired", f.signJWT(web.SPIFFEID.String(), []string{"a"}, time.Now().Add(-time.Minute)), "a", "expired"},
		{"unknown_key", signWith(t, other, "k1", web.SPIFFEID.String()), "a", "cryptographic"},
		{"other_trust_domain", f.signJWT("spiffe://evil.org/web", []string{"a"}, time.Now().Add(time.Minute)), "a", "no bundle"},
		{"not_a_spiffe_id", f.signJWT("web", []string{"a"}, time.Now().Add(time.Minute)), "a", "subject"},
		// Forged tokens an attacker can make without the key: alg none,
		// and HS256 keyed with the trust domain's public key (what a
		// verifier that takes the algorithm from the token would check);
		// and a correctly signed token that never expires.
		{"alg_none", rawJWT(t, map[string]any{"alg": "none", "kid": "k1", "typ": "JWT"}, web.SPIFFEID.String(), nil), "a", "unable to parse"},
		{"hs256_keyed_with_the_public_key", rawJWT(t, map[string]any{"alg": "HS256", "kid": "k1", "typ": "JWT"}, web.SPIFFEID.String(),
			func(in []byte) []byte {
				pub, _ := x509.MarshalPKIXPublicKey(f.jwtKey.Public())
				m := hmac.New(sha256.New, pub)
				m.Write(in)
				return m.Sum(nil)
			}), "a", "unable to parse"},
		{"no_expiry", rawJWT(t, map[string]any{"alg": "ES256", "kid": "k1", "typ": "JWT"}, web.SPIFFEID.String(), func(in []byte) []byte {
			return es256(t, f.jwtKey, in)
		}), "a", "missing exp"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := c.ValidateJWTSVID(ctxT(t), tt.token, tt.aud)
			if status.Code(err) != codes.InvalidArgument || !strings.Contains(err.Error(), tt.why) {
				t.Fatalf("got %v, want InvalidArgument saying %q", err, tt.why)
			}
		})
	}
	t.Run("revoked", func(t *testing.T) {
		f.publish(2, []string{web.SPIFFEID.String()}, f.pub.cur.Identities...)
		if _, err := c.ValidateJWTSVID(ctxT(t), one.Marshal(), "aud1"); status.Code(err) != codes.InvalidArgument {
			t.Fatalf("revoked SPIFFE ID validated: %v", err)
		}
	})
	t.Run("source_unavailable", func(t *testing.T) {
		f.mu.Lock()
		f.jwtErr = errors.New("server down")
		f.mu.Unlock()
		_, err := c.FetchJWTSVID(ctxT(t), jwtsvid.Params{Audience: "a"})
		if status.Code(err) != codes.Unavailable {
			t.Fatalf("got %v, want Unavailable", err)
		}
	})
}

func ecdsaKey(t *testing.T) *ecdsa.PrivateKey {
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func signWith(t *testing.T, key *ecdsa.PrivateKey, kid, sub string) string {
	signer, _ := jose.NewSigner(jose.SigningKey{Algorithm: jose.ES256, Key: jose.JSONWebKey{Key: key, KeyID: kid}}, nil)
	tok, err := jwt.Signed(signer).Claims(jwt.Claims{Subject: sub, Audience: []string{"a"}, Expiry: jwt.NewNumericDate(time.Now().Add(time.Minute))}).Serialize()
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

func TestSocketLifecycle(t *testing.T) {
	dir, err := os.MkdirTemp("", "wl")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(dir)
	newSrv := func(path string) *Server {
		s, err := New(Config{SocketPath: path, Source: pubOnly{&Publisher{}}, Attestor: attest.NewUnix(attest.UnixConfig{})})
		if err != nil {
			t.Fatal(err)
		}
		return s
	}
	run := func(s *Server) (context.CancelFunc, chan error) {
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan error, 1)
		go func() { done <- s.Serve(ctx) }()
		select {
		case <-s.Ready():
		case err := <-done:
			cancel()
			done <- err
		}
		return cancel, done
	}

	t.Run("socket_mode_and_removed_on_close", func(t *testing.T) {
		path := filepath.Join(dir, "new", "a.sock")
		s := newSrv(path)
		cancel, done := run(s)
		fi, err := os.Stat(path)
		if err != nil || fi.Mode().Perm() != 0o777 || fi.Mode().Type() != os.ModeSocket {
			t.Fatalf("socket %v %v", fi, err)
		}
		if di, _ := os.Stat(filepath.Dir(path)); di.Mode().Perm() != 0o755 {
			t.Fatalf("directory mode %v, want 0755", di.Mode().Perm())
		}
		cancel()
		if err := <-done; err != nil {
			t.Fatal(err)
		}
		if _, err := os.Lstat(path); !errors.Is(err, os.ErrNotExist) {
			t.Fatalf("socket left behind: %v", err)
		}
		if err := s.Close(); err != nil {
			t.Fatal("second Close:", err)
		}
	})
	t.Run("stale_socket_replaced", func(t *testing.T) {
		path := filepath.Join(dir, "stale.sock")
		l, err := net.Listen("unix", path)
		if err != nil {
			t.Fatal(err)
		}
		l.(*net.UnixListener).SetUnlinkOnClose(false)
		l.Close() // the file stays, nobody listens: a dead agent's socket
		cancel, done := run(newSrv(path))
		cancel()
		if err := <-done; err != nil {
			t.Fatal(err)
		}
	})
	t.Run("live_socket_refused", func(t *testing.T) {
		path := filepath.Join(dir, "live.sock")
		l, err := net.Listen("unix", path)
		if err != nil {
			t.Fatal(err)
		}
		defer l.Close()
		_, done := run(newSrv(path))
		if err := <-done; err == nil {
			t.Fatal("took over a socket another process serves")
		}
	})
	t.Run("regular_file_refused", func(t *testing.T) {
		path := filepath.Join(dir, "file")
		os.WriteFile(path, []byte("keep me"), 0o600)
		_, done := run(newSrv(path))
		if err := <-done; err == nil {
			t.Fatal("replaced a regular file")
		}
		if b, _ := os.ReadFile(path); string(b) != "keep me" {
			t.Fatal("regular file was touched")
		}
	})
}

func TestNewRequiresConfig(t *testing.T) {
	tests := []struct {
		name string
		cfg  Config
	}{
		{"no_socket", Config{Source: pubOnly{&Publisher{}}, Attestor: attest.NewUnix(attest.UnixConfig{})}},
		{"no_source", Config{SocketPath: "/x", Attestor: attest.NewUnix(attest.UnixConfig{})}},
		{"no_attestor", Config{SocketPath: "/x", Source: pubOnly{&Publisher{}}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if _, err := New(tt.cfg); err == nil {
				t.Fatal("New accepted an incomplete config")
			}
		})
	}
}

// BenchmarkFetchX509SVID measures one FetchX509SVID round trip (attest,
// match among entries, first stream message) with 300 entries registered.
func BenchmarkFetchX509SVID(b *testing.B) {
	for _, n := range []int{1, 300} {
		b.Run(fmt.Sprintf("entries_%d", n), func(b *testing.B) {
			benchFetch(b, n)
		})
	}
}

func benchFetch(b *testing.B, entries int) {
	f := newFixture(b)
	ids := []*Identity{f.identity("spiffe://example.org/me", time.Hour, uidSelector())}
	for i := 1; i < entries; i++ {
		ids = append(ids, &Identity{EntryID: strconv.Itoa(i), SPIFFEID: spiffeid.RequireFromString(fmt.Sprintf("spiffe://example.org/w/%d", i)),
			Selectors: []wire.Selector{{Type: "unix", Value: fmt.Sprintf("uid:%d", 100000+i)}}, X509: ids[0].X509})
	}
	f.publish(1, nil, ids...)
	c := f.raw(b)
	ctx := withHeader(context.Background())
	for b.Loop() {
		cctx, cancel := context.WithCancel(ctx)
		s, err := c.FetchX509SVID(cctx, &workload.X509SVIDRequest{})
		if err != nil {
			b.Fatal(err)
		}
		if _, err := s.Recv(); err != nil {
			b.Fatal(err)
		}
		cancel()
	}
}

// pubOnly is a Source with no JWT signing.
type pubOnly struct{ *Publisher }

func (pubOnly) JWTSVID(context.Context, *Identity, []string) (string, error) {
	return "", errors.New("no JWT signer")
}

// rawJWT builds a compact JWS by hand with header hdr and claims
// {sub, aud: ["a"]} (no exp), signed by sign over "header.payload"
// (nil: an empty signature).
func rawJWT(t *testing.T, hdr map[string]any, sub string, sign func([]byte) []byte) string {
	t.Helper()
	enc := func(v any) string {
		b, err := json.Marshal(v)
		if err != nil {
			t.Fatal(err)
		}
		return base64.RawURLEncoding.EncodeToString(b)
	}
	in := enc(hdr) + "." + enc(map[string]any{"sub": sub, "aud": []string{"a"}})
	var sig []byte
	if sign != nil {
		sig = sign([]byte(in))
	}
	return in + "." + base64.RawURLEncoding.EncodeToString(sig)
}

// es256 is a JWS ES256 signature (r || s, 32 bytes each) over in.
func es256(t *testing.T, key *ecdsa.PrivateKey, in []byte) []byte {
	t.Helper()
	h := sha256.Sum256(in)
	r, s, err := ecdsa.Sign(rand.Reader, key, h[:])
	if err != nil {
		t.Fatal(err)
	}
	out := make([]byte, 64)
	r.FillBytes(out[:32])
	s.FillBytes(out[32:])
	return out
}
