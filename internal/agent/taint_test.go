package agent

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/big"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/jwtsvid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"github.com/spiffe/go-spiffe/v2/workloadapi"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/moatless/moatless/internal/testpki"
	"github.com/moatless/moatless/internal/wire"
	"github.com/moatless/moatless/internal/workload"
)

// signedBy reports whether ca signed the leaf of s.
func signedBy(s *x509svid.SVID, ca *testpki.CA) bool {
	return bytes.Equal(s.Certificates[0].AuthorityKeyId, ca.Cert.SubjectKeyId)
}

// svidsByID is the SVIDs of an X.509 context by SPIFFE ID.
func svidsByID(c *workloadapi.X509Context) map[string]*x509svid.SVID {
	m := map[string]*x509svid.SVID{}
	for _, s := range c.SVIDs {
		m[s.ID.String()] = s
	}
	return m
}

// rotatedFixture is an agent serving /web signed by CA a and /db signed
// by CA b, both in the bundle, watched by an unchanged go-spiffe client;
// the node's own SVID is signed by a.
type rotatedFixture struct {
	f      *fakeServer
	af     *agentFixture
	a, b   *testpki.CA
	ctx    context.Context
	w      x509Watcher
	before map[string]*x509svid.SVID
}

func newRotatedFixture(t *testing.T) *rotatedFixture {
	t.Helper()
	r := startOnA(t)
	f := r.f
	r.rotateToB(t)
	f.push(func() { f.entries = append(f.entries, uidEntry("e2", "spiffe://example.org/db", time.Hour)) })
	r.before = r.until(t, "/db signed by b", func(m map[string]*x509svid.SVID) bool {
		s := m["spiffe://example.org/db"]
		return s != nil && signedBy(s, r.b) && m["spiffe://example.org/web"] != nil
	})
	if !signedBy(r.af.a.Node().SVID(), r.a) {
		t.Fatal("the node SVID is not signed by a")
	}
	return r
}

// startOnA starts an agent serving /web signed by CA a, with a and b in
// the bundle, watched by an unchanged go-spiffe client.
func startOnA(t *testing.T) *rotatedFixture {
	t.Helper()
	f := newFakeServer(t)
	f.tokens["t"] = nodeID
	a, b := f.ca, testpki.NewCA(t, "example.org")
	f.authorities = []*testpki.CA{a, b}
	f.clientCAs = []*testpki.CA{b}
	f.entries = []wire.Entry{uidEntry("e1", "spiffe://example.org/web", time.Hour)}
	af := startAgent(t, f, "t", "")
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	r := &rotatedFixture{f: f, af: af, a: a, b: b, ctx: ctx, w: x509Watcher{make(chan *workloadapi.X509Context, 64), make(chan error, 16)}}
	go client(t, af.sock).WatchX509Context(ctx, r.w)
	r.until(t, "/web signed by a", func(m map[string]*x509svid.SVID) bool {
		s := m["spiffe://example.org/web"]
		return s != nil && signedBy(s, a)
	})
	return r
}

// rotateToB makes the server sign new SVIDs, and its own certificate,
// with b: the CA key rotated.
func (r *rotatedFixture) rotateToB(t *testing.T) {
	r.f.issuer.Store(r.b)
	c := r.b.ServerCert(t, fakeServerID, "127.0.0.1", fakeServerName)
	r.f.cert.Store(&c)
}

// onlyWebReissued waits for the go-spiffe client to receive /web signed
// by b, logs how long that took since start, and checks that /db (signed
// by b already) was not re-issued.
func (r *rotatedFixture) onlyWebReissued(t *testing.T, start time.Time, what string) {
	t.Helper()
	after := r.until(t, "/web re-issued by b", func(m map[string]*x509svid.SVID) bool {
		s := m["spiffe://example.org/web"]
		return s != nil && signedBy(s, r.b)
	})
	t.Logf("%s and pushed to the go-spiffe client in %s", what, time.Since(start).Round(time.Microsecond))
	if got, want := after["spiffe://example.org/db"].Certificates[0].SerialNumber, r.before["spiffe://example.org/db"].Certificates[0].SerialNumber; got.Cmp(want) != 0 {
		t.Fatal("the SVID signed by b was re-issued too")
	}
}

// nodeRenewed waits until the node SVID is signed by b.
func (r *rotatedFixture) nodeRenewed(t *testing.T) {
	t.Helper()
	for !signedBy(r.af.a.Node().SVID(), r.b) {
		select {
		case <-r.ctx.Done():
			t.Fatal("the node SVID signed by a was not renewed")
		case <-time.After(5 * time.Millisecond):
		}
	}
}

// until waits for a Workload API update for which ok holds and returns
// its SVIDs.
func (r *rotatedFixture) until(t *testing.T, what string, ok func(map[string]*x509svid.SVID) bool) map[string]*x509svid.SVID {
	t.Helper()
	for {
		select {
		case u := <-r.w.updates:
			if m := svidsByID(u); ok(m) {
				return m
			}
		case err := <-r.w.errs:
			if status.Code(err) != codes.PermissionDenied {
				t.Fatalf("watch error: %v", err)
			}
		case <-r.ctx.Done():
			t.Fatalf("no update with %s", what)
		}
	}
}

// TestAgentReplacesSVIDsOfTaintedAuthority: a bundle naming authority a
// tainted makes the agent replace, at once, the workload SVID and the
// node SVID signed by a, and only those; the go-spiffe client receives
// the new one on its stream.
func TestAgentReplacesSVIDsOfTaintedAuthority(t *testing.T) {
	r := newRotatedFixture(t)
	f := r.f
	sign0, _, renews0, _ := f.counts()
	start := time.Now()
	f.push(func() { f.tainted = []string{hex.EncodeToString(r.a.Cert.SubjectKeyId)} })
	r.onlyWebReissued(t, start, "tainted authority: workload SVID re-issued")
	// Only the tainted authority's SVID was asked for: one sign call.
	sign1, _, _, _ := f.counts()
	if sign1-sign0 != 1 {
		t.Fatalf("%d sign calls for one tainted SVID, want 1", sign1-sign0)
	}
	// The node SVID is renewed too, long before half life.
	r.nodeRenewed(t)
	if _, _, renews1, _ := f.counts(); renews1-renews0 != 1 {
		t.Fatalf("%d node renewals, want 1", renews1-renews0)
	}
	// Another update that still names a tainted does not re-issue again.
	f.push(func() { f.entries = append(f.entries, uidEntry("e3", "spiffe://example.org/cache", time.Hour)) })
	r.until(t, "/cache", func(m map[string]*x509svid.SVID) bool { return m["spiffe://example.org/cache"] != nil })
	if sign2, _, renews2, _ := f.counts(); sign2-sign1 != 1 || renews2-renews0 != 1 {
		t.Fatalf("after the taint was handled: %d more sign calls (want 1, for /cache), %d node renewals (want 1)", sign2-sign1, renews2-renews0)
	}
}

// TestServerStillSigningUnderTaintedAuthorityIsNoLoop: a server that
// keeps signing under the tainted authority a (misconfigured, or an older
// replica) gets one re-issue of each SVID a signed and one node renewal
// after the taint, not a loop: what it signed after the taint is served
// (and logged), and later bundles that still name a tainted re-issue
// nothing more.
func TestServerStillSigningUnderTaintedAuthorityIsNoLoop(t *testing.T) {
	r := startOnA(t)
	f := r.f
	sign0, _, renews0, _ := f.counts()
	st, _ := r.af.a.Cache().State()
	var serial0 *big.Int
	for _, id := range st.Identities {
		if id.X509 != nil && id.SPIFFEID.String() == "spiffe://example.org/web" {
			serial0 = id.X509.Chain[0].SerialNumber
		}
	}
	if serial0 == nil {
		t.Fatal("/web is not served")
	}
	f.push(func() { f.tainted = []string{hex.EncodeToString(r.a.Cert.SubjectKeyId)} })
	r.until(t, "/web re-issued, by a again", func(m map[string]*x509svid.SVID) bool {
		s := m["spiffe://example.org/web"]
		return s != nil && signedBy(s, r.a) && s.Certificates[0].SerialNumber.Cmp(serial0) != 0
	})
	for {
		if _, _, renews, _ := f.counts(); renews-renews0 == 1 {
			break
		}
		select {
		case <-r.ctx.Done():
			t.Fatal("the node SVID was not renewed after the taint")
		case <-time.After(5 * time.Millisecond):
		}
	}
	for i := range 3 {
		e := uidEntry(fmt.Sprintf("x%d", i), fmt.Sprintf("spiffe://example.org/x%d", i), time.Hour)
		f.push(func() { f.entries = append(f.entries, e) })
		r.until(t, e.SPIFFEID, func(m map[string]*x509svid.SVID) bool { return m[e.SPIFFEID] != nil })
	}
	if sign, _, renews, _ := f.counts(); sign-sign0 != 1+3 || renews-renews0 != 1 {
		t.Fatalf("after the taint: %d sign calls (want 1 re-issue and 3 new entries), %d node renewals (want 1)", sign-sign0, renews-renews0)
	}
}

// TestAgentReplacesSVIDsOfRevokedAuthority: a bundle without authority
// a reaches the go-spiffe client at once, in the very next update and
// without a stream error (which would leave go-spiffe's source on the old
// bundle, still trusting a, until it retries); the SVID signed by a is
// re-issued by b right after, the one signed by b kept.
func TestAgentReplacesSVIDsOfRevokedAuthority(t *testing.T) {
	r := newRotatedFixture(t)
	f := r.f
	start := time.Now()
	f.push(func() { f.authorities = []*testpki.CA{r.b} })
	td := spiffeid.RequireTrustDomainFromString("example.org")
	select {
	case u := <-r.w.updates:
		b, _ := u.Bundles.GetX509BundleForTrustDomain(td)
		if b.HasX509Authority(r.a.Cert) {
			t.Fatal("the next update still trusts the revoked authority")
		}
		t.Logf("revoked authority: bundle without it pushed to the go-spiffe client in %s", time.Since(start).Round(time.Microsecond))
	case err := <-r.w.errs:
		t.Fatalf("the revoke ended the client's stream: %v", err)
	case <-r.ctx.Done():
		t.Fatal("no update after the revoke")
	}
	r.onlyWebReissued(t, start, "revoked authority: workload SVID replaced")
	select {
	case err := <-r.w.errs:
		t.Fatalf("the revoke ended the client's stream: %v", err)
	default:
	}
	// From then on the Workload API serves only SVIDs that verify
	// against the bundle it serves.
	x, err := client(t, r.af.sock).FetchX509Context(r.ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range x.SVIDs {
		b, _ := x.Bundles.GetX509BundleForTrustDomain(td)
		if _, _, err := x509svid.Verify(s.Certificates, b); err != nil {
			t.Fatalf("%s served but does not verify against the served bundle: %v", s.ID, err)
		}
	}
	r.nodeRenewed(t)
}

// TestAgentForgetsJWTSVIDsOfTaintedOrRemovedKey: a cached JWT-SVID signed
// with a key the bundle marks tainted is not handed out again (the next
// fetch asks the server), and once the key is removed, ValidateJWTSVID
// refuses tokens it signed from the next call on.
func TestAgentForgetsJWTSVIDsOfTaintedOrRemovedKey(t *testing.T) {
	f, af, c, ctx := startWebAgent(t, 30*time.Second)
	fetch := func() string {
		t.Helper()
		s, err := c.FetchJWTSVID(ctx, jwtsvid.Params{Audience: "aud"})
		if err != nil {
			t.Fatal(err)
		}
		return s.Marshal()
	}
	tok := fetch()
	fetch()
	if _, jwt0, _, _ := f.counts(); jwt0 != 1 {
		t.Fatalf("%d JWT sign calls for two fetches, want 1 (cached)", jwt0)
	}
	waitApplied := func() {
		t.Helper()
		f.mu.Lock()
		version := f.version
		f.mu.Unlock()
		for af.a.Node().Version() < version {
			select {
			case <-ctx.Done():
				t.Fatal("update not applied")
			case <-time.After(2 * time.Millisecond):
			}
		}
	}
	f.push(func() { f.jwtTainted = true })
	waitApplied()
	fetch()
	if _, jwt1, _, _ := f.counts(); jwt1 != 2 {
		t.Fatalf("%d JWT sign calls: the token signed with the tainted key was served from the cache", jwt1)
	}
	if _, err := c.ValidateJWTSVID(ctx, tok, "aud"); err != nil {
		t.Fatalf("a token of a tainted (still trusted) key was refused: %v", err)
	}
	f.push(func() { f.jwtRemoved = true })
	waitApplied()
	if _, err := c.ValidateJWTSVID(ctx, tok, "aud"); err == nil {
		t.Fatal("a token signed with a removed key still validates")
	}
}

// TestTaintedAuthorityRenewalIsBatched: a taint that hits every SVID of a
// node with more than signBatch of them re-issues them all in batches of
// signBatch, one request at a time (the server's per-node X509-SVID
// budget is spent as by any renewal), not one request per SVID nor all
// at once.
func TestTaintedAuthorityRenewalIsBatched(t *testing.T) {
	if testing.Short() {
		t.Skip("signs 2,200 SVIDs")
	}
	f := newFakeServer(t)
	f.tokens["t"] = nodeID
	a, b := f.ca, testpki.NewCA(t, "example.org")
	f.authorities = []*testpki.CA{a, b}
	f.clientCAs = []*testpki.CA{b}
	const n = 2*signBatch + 100
	for i := range n {
		f.entries = append(f.entries, uidEntry(fmt.Sprintf("e%d", i), fmt.Sprintf("spiffe://example.org/w%d", i), time.Hour))
	}
	af := startAgent(t, f, "t", "")
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	signedByB := func() (int, int) {
		st, _ := af.a.Cache().State()
		byB, all := 0, 0
		for _, id := range st.Identities {
			if id.X509 != nil {
				all++
				if bytes.Equal(id.X509.Chain[0].AuthorityKeyId, b.Cert.SubjectKeyId) {
					byB++
				}
			}
		}
		return byB, all
	}
	wait := func(what string, ok func() bool) {
		t.Helper()
		for !ok() {
			select {
			case <-ctx.Done():
				t.Fatalf("waiting for %s", what)
			case <-time.After(5 * time.Millisecond):
			}
		}
	}
	wait("every SVID signed", func() bool { _, all := signedByB(); return all == n })
	sign0, _, _, _ := f.counts()
	f.issuer.Store(b)
	start := time.Now()
	f.push(func() { f.tainted = []string{hex.EncodeToString(a.Cert.SubjectKeyId)} })
	wait("every SVID re-issued by b", func() bool { byB, _ := signedByB(); return byB == n })
	t.Logf("tainted authority: %d workload SVIDs re-issued in %s", n, time.Since(start).Round(time.Millisecond))
	sign1, _, _, _ := f.counts()
	f.mu.Lock()
	most := f.maxSigning
	f.mu.Unlock()
	if calls := sign1 - sign0; calls != (n+signBatch-1)/signBatch || most != 1 {
		t.Fatalf("%d sign requests (want %d), up to %d at once (want 1)", calls, (n+signBatch-1)/signBatch, most)
	}
}

// TestNodeStopsTrustingRevokedAuthorityForServer: once the server's
// bundle drops authority a, which the node's configured trust bundle
// (--trust-bundle) holds, a server certificate signed by a is refused on
// the node's next connection: whoever holds the revoked key cannot pose
// as the server. One from the remaining authority is accepted.
func TestNodeStopsTrustingRevokedAuthorityForServer(t *testing.T) {
	f := newFakeServer(t)
	f.tokens["t"] = nodeID
	a, b := f.ca, testpki.NewCA(t, "example.org")
	f.authorities = []*testpki.CA{a, b}
	f.clientCAs = []*testpki.CA{b}
	cfg := f.nodeConfig(t, "t", "")
	if len(cfg.TrustBundle) != 1 || cfg.TrustBundle[0] != a.Cert {
		t.Fatal("the node is not configured with a")
	}
	n, err := NewNode(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if err := n.Attest(context.Background()); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	go n.Run(ctx)
	applied := func() {
		t.Helper()
		f.mu.Lock()
		v := f.version
		f.mu.Unlock()
		for n.Version() < v {
			select {
			case <-ctx.Done():
				t.Fatal("update not applied")
			case <-time.After(2 * time.Millisecond):
			}
		}
	}
	applied()
	if err := n.Renew(ctx); err != nil {
		t.Fatal(err)
	}
	f.push(func() { f.authorities = []*testpki.CA{b} }) // ca revoke a
	applied()
	// The TLS handshake refuses the server, before anything is sent.
	var cve *tls.CertificateVerificationError
	if err := n.Renew(ctx); !errors.As(err, &cve) {
		t.Fatalf("a server certificate from the revoked authority: %v, want a TLS certificate verification error", err)
	}
	c := b.ServerCert(t, fakeServerID, "127.0.0.1", fakeServerName)
	f.cert.Store(&c)
	f.issuer.Store(b)
	if err := n.Renew(ctx); err != nil {
		t.Fatalf("a server certificate from the remaining authority: %v", err)
	}
}

// TestBundleTaintedAuthorityMustBeInBundle: a bundle naming a tainted
// authority it does not hold is refused whole, like any malformed
// bundle; the case of the hex does not matter.
func TestBundleTaintedAuthorityMustBeInBundle(t *testing.T) {
	a, b := testpki.NewCA(t, "example.org"), testpki.NewCA(t, "example.org")
	ski := hex.EncodeToString(a.Cert.SubjectKeyId)
	for _, tc := range []struct {
		name    string
		tainted []string
		ok      bool
	}{
		{"none", nil, true},
		{"held", []string{ski}, true},
		{"held_upper_case", []string{strings.ToUpper(ski)}, true},
		{"not_held", []string{hex.EncodeToString(b.Cert.SubjectKeyId)}, false},
		{"empty", []string{""}, false},
		{"not_hex", []string{"zz"}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := validBundle(&wire.Bundle{TrustDomain: "example.org", X509Authorities: [][]byte{a.Cert.Raw}, TaintedX509Authorities: tc.tainted})
			if (err == nil) != tc.ok {
				t.Fatalf("validBundle: %v, want ok %v", err, tc.ok)
			}
		})
	}
}

// FuzzTokenKID: tokenKID never panics, and reads back the kid of any
// header it is given.
func FuzzTokenKID(f *testing.F) {
	for _, s := range []string{"k1", "", `"`, "a.b", "\x00"} {
		f.Add(s, "payload.sig")
	}
	f.Fuzz(func(t *testing.T, kid, rest string) {
		head, err := json.Marshal(map[string]string{"alg": "ES256", "kid": kid})
		if err != nil {
			return
		}
		tok := base64.RawURLEncoding.EncodeToString(head) + "." + rest
		if got := tokenKID(tok); got != kid && utf8.ValidString(kid) {
			t.Fatalf("tokenKID = %q, want %q", got, kid)
		}
		tokenKID(rest) // any bytes at all
	})
}

// TestRevokeKeepsTheStreamOfAWorkloadWithOneSVID: a workload whose only
// SVID the revoked authority signed keeps its stream: it gets the bundle
// without the authority in the next update, then its new SVID, never an
// error (dropping the SVID ended the stream with PermissionDenied, and
// go-spiffe's source kept trusting the revoked authority until it
// retried a second later).
func TestRevokeKeepsTheStreamOfAWorkloadWithOneSVID(t *testing.T) {
	r := startOnA(t)
	f, a, b, ctx := r.f, r.a, r.b, r.ctx
	r.rotateToB(t)
	f.push(func() { f.authorities = []*testpki.CA{b} })
	td := spiffeid.RequireTrustDomainFromString("example.org")
	for {
		select {
		case u := <-r.w.updates:
			bundle, _ := u.Bundles.GetX509BundleForTrustDomain(td)
			if bundle.HasX509Authority(a.Cert) {
				continue // an update from before the revoke
			}
			if s := svidsByID(u)["spiffe://example.org/web"]; s != nil && signedBy(s, b) {
				return
			}
		case err := <-r.w.errs:
			t.Fatalf("the revoke ended the workload's stream: %v", err)
		case <-ctx.Done():
			t.Fatal("no new SVID after the revoke")
		}
	}
}

// TestNodeRenewsWhenTaintPrecedesIt: a node whose SVID chains to an
// authority already tainted in the first bundle it holds (the taint came
// while it was down, or during its attestation) renews it at once too.
func TestNodeRenewsWhenTaintPrecedesIt(t *testing.T) {
	f := newFakeServer(t)
	f.tokens["t"] = nodeID
	a, b := f.ca, testpki.NewCA(t, "example.org")
	f.authorities = []*testpki.CA{a, b}
	f.clientCAs = []*testpki.CA{b}
	f.tainted = []string{hex.EncodeToString(a.Cert.SubjectKeyId)}
	n, err := NewNode(f.nodeConfig(t, "t", ""))
	if err != nil {
		t.Fatal(err)
	}
	if err := n.Attest(context.Background()); err != nil {
		t.Fatal(err)
	}
	if !signedBy(n.SVID(), a) {
		t.Fatal("the node SVID is not signed by a")
	}
	r := &rotatedFixture{f: f, a: a, b: b}
	r.rotateToB(t)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	go n.Run(ctx)
	for !signedBy(n.SVID(), b) {
		select {
		case <-ctx.Done():
			t.Fatal("the node SVID of an authority tainted before the node started was not renewed")
		case <-time.After(5 * time.Millisecond):
		}
	}
	if _, _, renews, _ := f.counts(); renews != 1 {
		t.Fatalf("%d renewals, want 1", renews)
	}
}

// budgetSigner answers every signing request as a server whose per-node
// signing budget is spent: 429 with Retry-After, as read from the wire.
type budgetSigner struct{ header string }

func (s budgetSigner) SignX509(context.Context, []wire.X509SVIDRequest) ([]wire.X509SVID, error) {
	rec := httptest.NewRecorder()
	rec.Header().Set("Retry-After", s.header)
	rec.WriteHeader(http.StatusTooManyRequests)
	io.WriteString(rec, `{"errors":["signing budget spent"]}`)
	return nil, readServerError(rec.Result())
}

func (s budgetSigner) SignJWT(context.Context, string, []string) (*wire.SignJWTResponse, error) {
	return nil, errors.New("no")
}

// TestSigningHonoursRetryAfter: when the server refuses a signing request
// because the node's budget is spent and says when to come back
// (Retry-After, in seconds), the next attempt waits at least that long
// (the herd of agents re-issuing after a taint does not come back every
// backoff step to be refused again), and at most a minute more than the
// backoff would, whatever the server says; a Retry-After that is not a
// number of seconds is ignored.
func TestSigningHonoursRetryAfter(t *testing.T) {
	f := newFakeServer(t)
	t0 := time.Date(2026, 12, 7, 12, 0, 0, 0, time.UTC)
	for _, tc := range []struct {
		header   string
		min, max time.Duration
	}{
		{"20", 20 * time.Second, 25 * time.Second},
		{"86400", time.Minute, 75 * time.Second},
		{"soon", 0, time.Second},
		{"-5", 0, time.Second},
		{"", 0, time.Second},
	} {
		t.Run("retry_after_"+tc.header, func(t *testing.T) {
			c := newCache(budgetSigner{tc.header}, CacheConfig{Logger: quiet(), Now: func() time.Time { return t0 }, BackoffBase: 500 * time.Millisecond, BackoffMax: 30 * time.Second})
			c.SetBundle(f.bundle())
			c.SetEntries([]wire.Entry{uidEntry("e1", "spiffe://example.org/web", time.Hour)})
			if wait := c.syncOnce(context.Background()).Sub(t0); wait < tc.min || wait > tc.max {
				t.Fatalf("next attempt in %s, want %s to %s", wait, tc.min, tc.max)
			}
		})
	}
}

// jwtSigner signs JWT-SVIDs with the fake server's JWT key, in process.
type jwtSigner struct{ f *fakeServer }

func (jwtSigner) SignX509(context.Context, []wire.X509SVIDRequest) ([]wire.X509SVID, error) {
	return nil, errors.New("no")
}

func (s jwtSigner) SignJWT(_ context.Context, entryID string, audience []string) (*wire.SignJWTResponse, error) {
	e, _ := s.f.entry(nodeID, entryID)
	signer, err := jose.NewSigner(jose.SigningKey{Algorithm: jose.ES256, Key: jose.JSONWebKey{Key: s.f.jwtKey, KeyID: "k1"}}, (&jose.SignerOptions{}).WithType("JWT"))
	if err != nil {
		return nil, err
	}
	now := time.Now()
	exp := now.Add(5 * time.Minute)
	tok, err := jwt.Signed(signer).Claims(jwt.Claims{Subject: e.SPIFFEID, Audience: audience, Expiry: jwt.NewNumericDate(exp), IssuedAt: jwt.NewNumericDate(now)}).Serialize()
	return &wire.SignJWTResponse{SPIFFEID: e.SPIFFEID, Token: tok, ExpiresAt: exp}, err
}

// TestJWTSVIDKeyRevokedDuringFetch: the JWT key is revoked (removed from
// the bundle) after the server signed a token with it and the agent
// validated it, before the token is handed out. It must not reach the
// workload (its peers already hold the bundle without the key), nor the
// cache; a key tainted in that window still hands the token out once.
func TestJWTSVIDKeyRevokedDuringFetch(t *testing.T) {
	for _, tc := range []struct {
		name    string
		change  func(f *fakeServer)
		wantErr bool
	}{
		{"removed", func(f *fakeServer) { f.jwtRemoved = true }, true},
		{"tainted", func(f *fakeServer) { f.jwtTainted = true }, false},
		{"unchanged", func(*fakeServer) {}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := newFakeServer(t)
			f.entries = []wire.Entry{uidEntry("e1", "spiffe://example.org/web", time.Hour)}
			c := newCache(jwtSigner{f}, CacheConfig{Logger: quiet()})
			c.SetBundle(f.bundle())
			c.SetEntries(f.entries)
			c.jwtChecked = func() {
				c.jwtChecked = nil
				f.mu.Lock()
				tc.change(f)
				b := f.bundle()
				b.SequenceNumber++
				f.mu.Unlock()
				c.SetBundle(b)
			}
			id := &workload.Identity{EntryID: "e1", SPIFFEID: spiffeid.RequireFromString("spiffe://example.org/web")}
			tok, err := c.JWTSVID(context.Background(), id, []string{"aud"})
			if tc.wantErr {
				if err == nil {
					t.Fatalf("a JWT-SVID signed with the key revoked meanwhile was handed out: %.20s…", tok)
				}
			} else if err != nil || tok == "" {
				t.Fatalf("JWTSVID: %v", err)
			}
			c.mu.Lock()
			cached := len(c.jwt)
			c.mu.Unlock()
			if want := map[bool]int{true: 1}[tc.name == "unchanged"]; cached != want {
				t.Fatalf("%d JWT-SVIDs cached, want %d", cached, want)
			}
		})
	}
}

// TestJWTSVIDCacheBoundedInBytes: workloads asking for JWT-SVIDs with the
// largest audience sets the Workload API accepts (32 of 512 bytes), each a
// new set, within their shares, never make the cache hold more than its
// bound in bytes (maxJWTCacheBytes, 1 MiB here to keep the test short);
// what it holds is accounted exactly.
func TestJWTSVIDCacheBoundedInBytes(t *testing.T) {
	f := newFakeServer(t)
	const ids = 2
	for i := range ids {
		f.entries = append(f.entries, uidEntry(fmt.Sprintf("e%d", i), fmt.Sprintf("spiffe://example.org/w%d", i), time.Hour))
	}
	c := newCache(jwtSigner{f}, CacheConfig{Logger: quiet()})
	c.SetBundle(f.bundle())
	c.SetEntries(f.entries)
	c.jwtMaxBytes = 1 << 20
	long := strings.Repeat("a", workload.MaxAudienceLen-8)
	most := 0
	for i := range ids {
		id := &workload.Identity{EntryID: fmt.Sprintf("e%d", i), SPIFFEID: spiffeid.RequireFromString(fmt.Sprintf("spiffe://example.org/w%d", i))}
		for j := range 30 {
			aud := make([]string, workload.MaxAudiences)
			for k := range aud {
				aud[k] = fmt.Sprintf("%s%08d", long[:len(long)-1], j*workload.MaxAudiences+k)
			}
			if _, err := c.JWTSVID(context.Background(), id, aud); err != nil {
				t.Fatal(err)
			}
		}
		{
			c.mu.Lock()
			sum := 0
			for k, e := range c.jwt {
				sum += len(k) + len(e.token)
			}
			accounted := c.jwtBytes
			c.mu.Unlock()
			if sum > c.jwtMaxBytes || sum != accounted {
				t.Fatalf("the JWT-SVID cache holds %d bytes (accounted %d), at most %d", sum, accounted, c.jwtMaxBytes)
			}
			most = max(most, sum)
		}
	}
	t.Logf("the cache held at most %d bytes", most)
}
