package proxy

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"

	"github.com/moatless/moatless/internal/policy"
	"github.com/moatless/moatless/internal/testpki"
	"github.com/moatless/moatless/internal/wire"
)

// fakeAuthz is a policy given as functions: fakes as function fields.
type fakeAuthz struct {
	mode     policy.MTLSMode
	evaluate func(req *policy.Request) policy.Decision
}

func (f *fakeAuthz) MTLSMode(policy.Destination) policy.MTLSMode { return f.mode }
func (f *fakeAuthz) Evaluate(req *policy.Request, _ policy.JWTVerifier) policy.Decision {
	return f.evaluate(req)
}

// allowPrincipals allows requests from the listed principals (Istio form,
// without "spiffe://") and denies DELETE from anyone, like a pair of
// ALLOW and DENY policies.
func allowPrincipals(mode policy.MTLSMode, principals ...string) *fakeAuthz {
	return &fakeAuthz{mode: mode, evaluate: func(req *policy.Request) policy.Decision {
		if req.Method == http.MethodDelete {
			return policy.Decision{Outcome: policy.Deny, Policy: "prod/deny-delete", Action: "DENY", Rule: 0, Reason: "matched DENY rule 0"}
		}
		for _, p := range principals {
			if req.Source.Principal == p {
				return policy.Decision{Outcome: policy.Allow, Policy: "prod/allow", Action: "ALLOW", Rule: 0}
			}
		}
		return policy.Decision{Outcome: policy.Deny, Rule: -1, Reason: "no ALLOW rule matched"}
	}}
}

// staticIdentity is an Identity whose SVID can be swapped.
type staticIdentity struct {
	svid   atomic.Pointer[x509svid.SVID]
	bundle *x509bundle.Bundle
}

func newStaticIdentity(ca *testpki.CA, s *testpki.SVID) *staticIdentity {
	id := &staticIdentity{bundle: ca.Bundle()}
	id.svid.Store(s.X509SVID())
	return id
}

func (s *staticIdentity) GetX509SVID() (*x509svid.SVID, error) { return s.svid.Load(), nil }
func (s *staticIdentity) GetX509BundleForTrustDomain(td spiffeid.TrustDomain) (*x509bundle.Bundle, error) {
	if td != s.bundle.TrustDomain() {
		return nil, fmt.Errorf("no bundle for %s", td)
	}
	return s.bundle, nil
}

func listen(t testing.TB) net.Listener {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	return l
}

// serveRaw runs handle, on its own goroutine, for every connection to a
// new loopback listener until the test ends; handle closes the conn.
func serveRaw(t testing.TB, handle func(c net.Conn)) net.Listener {
	t.Helper()
	l := listen(t)
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go handle(c)
		}
	}()
	t.Cleanup(func() { l.Close() })
	return l
}

func startSidecar(t testing.TB, cfg Config) *Sidecar {
	t.Helper()
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	s, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	serveSidecar(t, s)
	return s
}

// serveSidecar runs s.Serve until the test ends.
func serveSidecar(t testing.TB, s *Sidecar) {
	t.Helper()
	errc := make(chan error, 1)
	go func() { errc <- s.Serve(context.Background()) }()
	t.Cleanup(func() {
		s.Close()
		if err := <-errc; err != nil && !errors.Is(err, ErrClosed) {
			t.Errorf("Serve: %v", err)
		}
	})
}

// echoApp answers with what it saw: method, path and the XFCC header.
func echoApp(t testing.TB) string {
	t.Helper()
	l := listen(t)
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("X-App", "echo")
		fmt.Fprintf(w, "%s %s xfcc=%q", r.Method, r.URL.RequestURI(), r.Header.Get(xfccHeader))
	})}
	go srv.Serve(l)
	t.Cleanup(func() { srv.Close() })
	return l.Addr().String()
}

// serverPath is one of the two ways a sidecar serves HTTP/1.1: the fast
// path (the default) or net/http's server (DisableHTTP1FastPath). Tests
// of what reaches the app run on both.
type serverPath struct {
	name    string
	disable bool
}

var serverPaths = []serverPath{{"fast", false}, {"nethttp", true}}

// edit sets the path in a sidecar's config.
func (sp serverPath) edit(c *Config) { c.DisableHTTP1FastPath = sp.disable }

// forServerPaths runs test once per server path, as subtests.
func forServerPaths(t *testing.T, test func(t *testing.T, sp serverPath)) {
	for _, sp := range serverPaths {
		t.Run(sp.name, func(t *testing.T) { test(t, sp) })
	}
}

// pair is two sidecars: a client side (outbound) and a server side
// (inbound in front of an app).
type pair struct {
	ca          *testpki.CA
	client      *Sidecar
	server      *Sidecar
	outboundURL string
	inboundAddr string
	serverID    *staticIdentity
}

const (
	frontendID = "spiffe://example.org/ns/prod/sa/frontend"
	ordersID   = "spiffe://example.org/ns/prod/sa/orders"
)

func newPair(t testing.TB, authz Authorizer, appAddr string, proto Protocol) *pair {
	t.Helper()
	return newPairHTTP1(t, authz, appAddr, proto, false)
}

// newPairHTTP1 is newPair with the outbound's HTTP1 option set as given.
func newPairHTTP1(t testing.TB, authz Authorizer, appAddr string, proto Protocol, http1 bool) *pair {
	t.Helper()
	return newPairWith(t, authz, appAddr, proto, http1, nil)
}

// newPairWith is newPairHTTP1 with both sidecars' configs passed through
// edit (when not nil) before they start.
func newPairWith(t testing.TB, authz Authorizer, appAddr string, proto Protocol, http1 bool, edit func(*Config)) *pair {
	t.Helper()
	if edit == nil {
		edit = func(*Config) {}
	}
	ca := testpki.NewCA(t, "example.org")
	p := &pair{ca: ca}
	p.serverID = newStaticIdentity(ca, ca.SVID(t, ordersID, 0))
	inL := listen(t)
	p.inboundAddr = inL.Addr().String()
	sc := Config{
		Identity:   p.serverID,
		Namespace:  "prod",
		Inbound:    []Inbound{{Name: "in", Listener: inL, App: appAddr, Protocol: proto}},
		Authorizer: authz,
	}
	edit(&sc)
	p.server = startSidecar(t, sc)
	outL := listen(t)
	p.outboundURL = "http://" + outL.Addr().String()
	cc := Config{
		Identity: newStaticIdentity(ca, ca.SVID(t, frontendID, 0)),
		Outbound: []Outbound{{Name: "out", Listener: outL, Upstream: p.inboundAddr, ID: spiffeid.RequireFromString(ordersID), Protocol: proto, HTTP1: http1}},
	}
	edit(&cc)
	p.client = startSidecar(t, cc)
	return p
}

func get(t testing.TB, c *http.Client, method, url string) (int, string) {
	t.Helper()
	req, _ := http.NewRequest(method, url, nil)
	req.Header.Set(xfccHeader, "By=spiffe://evil;URI=spiffe://example.org/ns/prod/sa/admin")
	resp, err := c.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, url, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

func TestInboundDecisions(t *testing.T) {
	app := echoApp(t)
	p := newPair(t, allowPrincipals(policy.ModeStrict, "example.org/ns/prod/sa/frontend"), app, HTTP)
	c := &http.Client{}
	tests := []struct {
		name     string
		method   string
		path     string
		wantCode int
		wantBody string
	}{
		{"allowed_get_reaches_app_with_verified_xfcc", "GET", "/api/orders?x=1", 200, `GET /api/orders?x=1 xfcc="By=spiffe://example.org/ns/prod/sa/orders;Hash=`},
		{"xfcc_names_the_real_caller", "GET", "/", 200, `;URI=spiffe://example.org/ns/prod/sa/frontend"`},
		{"deny_rule_is_403_rbac", "DELETE", "/api/orders/1", 403, "RBAC: access denied"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			code, body := get(t, c, tc.method, p.outboundURL+tc.path)
			if code != tc.wantCode || !strings.Contains(body, tc.wantBody) {
				t.Fatalf("got %d %q, want %d containing %q", code, body, tc.wantCode, tc.wantBody)
			}
		})
	}
}

func TestInboundCallerWithOtherIdentityDenied(t *testing.T) {
	app := echoApp(t)
	p := newPair(t, allowPrincipals(policy.ModeStrict, "example.org/ns/prod/sa/checkout"), app, HTTP)
	code, body := get(t, &http.Client{}, "GET", p.outboundURL+"/")
	if code != 403 || body != "RBAC: access denied" {
		t.Fatalf("got %d %q, want 403 RBAC: access denied", code, body)
	}
}

func TestDenyBodyNamesPolicyWhenAllowed(t *testing.T) {
	ca := testpki.NewCA(t, "example.org")
	inL := listen(t)
	startSidecar(t, Config{
		Identity: newStaticIdentity(ca, ca.SVID(t, ordersID, 0)), Namespace: "prod",
		Inbound:         []Inbound{{Listener: inL, App: echoApp(t)}},
		Authorizer:      allowPrincipals(policy.ModeStrict),
		DenyNamesPolicy: true,
	})
	c := mtlsClient(t, ca, frontendID, ordersID)
	code, body := get(t, c, "DELETE", "https://"+inL.Addr().String()+"/")
	if code != 403 || body != "RBAC: access denied by prod/deny-delete" {
		t.Fatalf("got %d %q", code, body)
	}
}

// mtlsClient is a plain Go client with an SVID, talking straight to an
// inbound listener.
func mtlsClient(t testing.TB, ca *testpki.CA, id, want string) *http.Client {
	t.Helper()
	src := newStaticIdentity(ca, ca.SVID(t, id, 0))
	ti := &tlsIdentity{src: src, now: time.Now, revoked: func() *revocationSet { return nil }}
	conf := ti.clientConfig(spiffeid.RequireFromString(want), "", nil)
	tr := &http.Transport{TLSClientConfig: conf, ForceAttemptHTTP2: true}
	t.Cleanup(tr.CloseIdleConnections)
	return &http.Client{Transport: tr}
}

// clientPath is one way an mTLS client's requests are served by an
// inbound listener: HTTP/2 (net/http's server), or HTTP/1.1 on either
// server path.
type clientPath struct {
	name   string
	server serverPath
	client func(t testing.TB, ca *testpki.CA, id, want string) *http.Client
}

var clientPaths = []clientPath{
	{"h2", serverPaths[0], mtlsClient},
	{"http1_fast", serverPaths[0], mtlsClientHTTP1},
	{"http1_nethttp", serverPaths[1], mtlsClientHTTP1},
}

// mtlsClientHTTP1 is mtlsClient speaking HTTP/1.1 (ALPN http/1.1).
func mtlsClientHTTP1(t testing.TB, ca *testpki.CA, id, want string) *http.Client {
	t.Helper()
	src := newStaticIdentity(ca, ca.SVID(t, id, 0))
	ti := &tlsIdentity{src: src, now: time.Now, revoked: func() *revocationSet { return nil }}
	tr := &http.Transport{TLSClientConfig: ti.clientConfig(spiffeid.RequireFromString(want), "", []string{"http/1.1"})}
	t.Cleanup(tr.CloseIdleConnections)
	return &http.Client{Transport: tr}
}

func TestPeerAuthenticationModes(t *testing.T) {
	ca := testpki.NewCA(t, "example.org")
	app := echoApp(t)
	allowAll := func(mode policy.MTLSMode) *fakeAuthz {
		return &fakeAuthz{mode: mode, evaluate: func(*policy.Request) policy.Decision {
			return policy.Decision{Outcome: policy.Allow, Rule: -1}
		}}
	}
	tests := []struct {
		name          string
		authz         Authorizer
		wantPlaintext bool
		wantMTLS      bool
		wantPlainXFCC string
	}{
		{"strict_refuses_plaintext", allowAll(policy.ModeStrict), false, true, ""},
		{"permissive_accepts_both_on_one_port", allowAll(policy.ModePermissive), true, true, `xfcc=""`},
		{"unset_is_permissive", allowAll(policy.ModeUnset), true, true, `xfcc=""`},
		{"disable_takes_plaintext_only", allowAll(policy.ModeDisable), true, false, `xfcc=""`},
		{"no_policy_is_strict_and_denies", nil, false, false, ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			inL := listen(t)
			startSidecar(t, Config{
				Identity: newStaticIdentity(ca, ca.SVID(t, ordersID, 0)), Namespace: "prod",
				Inbound:    []Inbound{{Listener: inL, App: app}},
				Authorizer: tc.authz,
			})
			addr := inL.Addr().String()
			// Plaintext: a forged XFCC must not reach the app.
			resp, err := http.Get("http://" + addr + "/p")
			if tc.wantPlaintext {
				if err != nil {
					t.Fatalf("plaintext refused: %v", err)
				}
				b, _ := io.ReadAll(resp.Body)
				resp.Body.Close()
				if resp.StatusCode != 200 || !strings.Contains(string(b), tc.wantPlainXFCC) {
					t.Fatalf("plaintext: %d %q", resp.StatusCode, b)
				}
			} else if err == nil {
				resp.Body.Close()
				t.Fatalf("plaintext accepted: %d", resp.StatusCode)
			}
			c := mtlsClient(t, ca, frontendID, ordersID)
			resp, err = c.Get("https://" + addr + "/m")
			gotOK := err == nil && resp.StatusCode == 200
			if err == nil {
				resp.Body.Close()
			}
			if gotOK != tc.wantMTLS {
				t.Fatalf("mTLS ok=%v (err %v), want %v", gotOK, err, tc.wantMTLS)
			}
		})
	}
}

func TestOutboundRefusesUpstreamWithWrongID(t *testing.T) {
	app := echoApp(t)
	ca := testpki.NewCA(t, "example.org")
	inL := listen(t)
	startSidecar(t, Config{
		Identity: newStaticIdentity(ca, ca.SVID(t, "spiffe://example.org/ns/prod/sa/impostor", 0)), Namespace: "prod",
		Inbound:    []Inbound{{Listener: inL, App: app}},
		Authorizer: allowPrincipals(policy.ModeStrict, "example.org/ns/prod/sa/frontend"),
	})
	outL := listen(t)
	startSidecar(t, Config{
		Identity: newStaticIdentity(ca, ca.SVID(t, frontendID, 0)),
		Outbound: []Outbound{{Listener: outL, Upstream: inL.Addr().String(), ID: spiffeid.RequireFromString(ordersID)}},
	})
	code, body := get(t, &http.Client{}, "GET", "http://"+outL.Addr().String()+"/")
	if code != 503 || !strings.Contains(body, "upstream SPIFFE ID is not "+ordersID) {
		t.Fatalf("got %d %q", code, body)
	}
}

func TestUntrustedCallerRefused(t *testing.T) {
	app := echoApp(t)
	p := newPair(t, allowPrincipals(policy.ModeStrict, "example.org/ns/prod/sa/frontend"), app, HTTP)
	other := testpki.NewCA(t, "example.org") // same trust domain name, other keys
	c := mtlsClient(t, other, frontendID, ordersID)
	c.Transport.(*http.Transport).TLSClientConfig.VerifyConnection = nil // it cannot verify the server either
	if resp, err := c.Get("https://" + p.inboundAddr + "/"); err == nil {
		resp.Body.Close()
		t.Fatalf("caller with an SVID from another CA got %d", resp.StatusCode)
	}
}

func TestRevocationClosesLiveConnections(t *testing.T) {
	app := echoApp(t)
	p := newPair(t, allowPrincipals(policy.ModeStrict, "example.org/ns/prod/sa/frontend"), app, TCP)
	// Raw TCP through the pair: the connection stays open until closed.
	ca := p.ca
	addr := p.inboundAddr
	dialer := &tls.Dialer{Config: (&tlsIdentity{src: newStaticIdentity(ca, ca.SVID(t, frontendID, 0)), now: time.Now, revoked: func() *revocationSet { return nil }}).clientConfig(spiffeid.RequireFromString(ordersID), "", nil)}
	conn, err := dialer.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	fmt.Fprintf(conn, "GET / HTTP/1.1\r\nHost: x\r\n\r\n")
	br := bufio.NewReader(conn)
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatal(err)
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if n := p.server.LiveConnections(); n != 1 {
		t.Fatalf("live connections %d, want 1", n)
	}
	if n := p.server.SetRevocations(&wire.Revocations{SPIFFEIDs: []string{frontendID}}); n != 1 {
		t.Fatalf("closed %d, want 1", n)
	}
	conn.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := br.ReadByte(); err == nil || errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("connection still open after revocation: %v", err)
	}
	if _, err := dialer.Dial("tcp", addr); err == nil {
		// TLS 1.3 reports a client-cert rejection on first read.
		t.Log("dial succeeded; the server refuses on first read")
	}
}

// TestRevocationClosesLiveHTTPConnections: revoking the caller's SPIFFE ID
// closes its HTTP/1.1 keep-alive connections on either server path, idle
// or in the middle of a request the app has not answered yet (the app's
// exchange is failed too, not waited for).
func TestRevocationClosesLiveHTTPConnections(t *testing.T) {
	forServerPaths(t, testRevocationClosesLiveHTTPConnections)
}

func testRevocationClosesLiveHTTPConnections(t *testing.T, sp serverPath) {
	release := make(chan struct{})
	t.Cleanup(func() { close(release) })
	arrived, abandoned := make(chan struct{}, 1), make(chan struct{}, 1)
	l := listen(t)
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/slow" {
			arrived <- struct{}{}
			select {
			case <-release:
			case <-r.Context().Done():
				abandoned <- struct{}{}
			}
		}
		io.WriteString(w, "ok")
	})}
	go srv.Serve(l)
	t.Cleanup(func() { srv.Close() })
	p := newPairWith(t, allowPrincipals(policy.ModeStrict, "example.org/ns/prod/sa/frontend"), l.Addr().String(), HTTP, true, sp.edit)
	dial := func() (net.Conn, *bufio.Reader) {
		ti := &tlsIdentity{src: newStaticIdentity(p.ca, p.ca.SVID(t, frontendID, 0)), now: time.Now, revoked: func() *revocationSet { return nil }}
		c, err := tls.Dial("tcp", p.inboundAddr, ti.clientConfig(spiffeid.RequireFromString(ordersID), "", []string{"http/1.1"}))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		c.SetDeadline(time.Now().Add(10 * time.Second))
		return c, bufio.NewReader(c)
	}
	closed := func(c net.Conn, br *bufio.Reader) {
		t.Helper()
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		if _, err := br.ReadByte(); err == nil || errors.Is(err, os.ErrDeadlineExceeded) {
			t.Fatalf("connection still open after revocation: %v", err)
		}
	}
	idle, idleR := dial()
	io.WriteString(idle, "GET /x HTTP/1.1\r\nHost: orders\r\n\r\n")
	resp, err := http.ReadResponse(idleR, nil)
	if err != nil {
		t.Fatal(err)
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	busy, busyR := dial()
	io.WriteString(busy, "GET /slow HTTP/1.1\r\nHost: orders\r\n\r\n")
	<-arrived
	if n := p.server.SetRevocations(&wire.Revocations{SPIFFEIDs: []string{frontendID}}); n != 2 {
		t.Fatalf("closed %d, want 2", n)
	}
	closed(idle, idleR)
	closed(busy, busyR)
	select {
	case <-abandoned:
	case <-time.After(5 * time.Second):
		t.Fatal("the app's connection for the revoked request is still open")
	}
}

func discardLogger() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

// TestClosedConnectionsAreForgotten: connections that end (HTTP/1.1,
// HTTP/2, raw TCP) leave the revocation tracker, so it does not grow.
func TestClosedConnectionsAreForgotten(t *testing.T) {
	app := echoApp(t)
	for _, h2 := range []bool{false, true} {
		t.Run(fmt.Sprintf("h2_%v", h2), func(t *testing.T) {
			p := newPair(t, allowPrincipals(policy.ModeStrict, "example.org/ns/prod/sa/frontend"), app, HTTP)
			c := mtlsClient(t, p.ca, frontendID, ordersID)
			tr := c.Transport.(*http.Transport)
			if !h2 {
				tr.TLSClientConfig.NextProtos = []string{"http/1.1"}
				tr.ForceAttemptHTTP2 = false
			}
			for range 3 {
				resp, err := c.Get("https://" + p.inboundAddr + "/")
				if err != nil {
					t.Fatal(err)
				}
				io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				if got := resp.ProtoMajor == 2; got != h2 {
					t.Fatalf("proto %s", resp.Proto)
				}
			}
			if n := p.server.LiveConnections(); n != 1 {
				t.Fatalf("live %d, want 1", n)
			}
			tr.CloseIdleConnections()
			deadline := time.Now().Add(5 * time.Second)
			for p.server.LiveConnections() != 0 {
				if time.Now().After(deadline) {
					t.Fatalf("closed connection still tracked: %d", p.server.LiveConnections())
				}
				time.Sleep(5 * time.Millisecond)
			}
		})
	}
}

// TestServeDrainsOnCancel: when Serve's context ends, listeners stop
// accepting but a request in flight completes.
func TestServeDrainsOnCancel(t *testing.T) {
	release := make(chan struct{})
	entered := make(chan struct{}, 1)
	l := listen(t)
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		entered <- struct{}{}
		<-release
		io.WriteString(w, "finished")
	})}
	go srv.Serve(l)
	t.Cleanup(func() { srv.Close() })

	ca := testpki.NewCA(t, "example.org")
	inL := listen(t)
	s, err := New(Config{
		Identity: newStaticIdentity(ca, ca.SVID(t, ordersID, 0)), Namespace: "prod",
		Inbound:      []Inbound{{Listener: inL, App: l.Addr().String()}},
		Authorizer:   allowPrincipals(policy.ModeStrict, "example.org/ns/prod/sa/frontend"),
		Logger:       discardLogger(),
		DrainTimeout: time.Minute,
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	served := make(chan error, 1)
	go func() { served <- s.Serve(ctx) }()

	c := mtlsClient(t, ca, frontendID, ordersID)
	got := make(chan string, 1)
	go func() {
		resp, err := c.Get("https://" + inL.Addr().String() + "/slow")
		if err != nil {
			got <- err.Error()
			return
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		got <- string(b)
	}()
	<-entered
	cancel()
	// New connections are refused once the listener is closed.
	deadline := time.Now().Add(5 * time.Second)
	for {
		conn, err := net.Dial("tcp", inL.Addr().String())
		if err != nil {
			break
		}
		conn.Close()
		if time.Now().After(deadline) {
			t.Fatal("listener still accepting while draining")
		}
		time.Sleep(5 * time.Millisecond)
	}
	close(release)
	if body := <-got; body != "finished" {
		t.Fatalf("in-flight request got %q", body)
	}
	if err := <-served; !errors.Is(err, context.Canceled) {
		t.Fatalf("Serve returned %v", err)
	}
}

func TestInboundConnectionLimit(t *testing.T) {
	ca := testpki.NewCA(t, "example.org")
	inL := listen(t)
	s := startSidecar(t, Config{
		Identity: newStaticIdentity(ca, ca.SVID(t, ordersID, 0)), Namespace: "prod",
		Inbound:        []Inbound{{Listener: inL, App: echoApp(t)}},
		Authorizer:     allowPrincipals(policy.ModeStrict, "example.org/ns/prod/sa/frontend"),
		MaxConnections: 2,
	})
	c := mtlsClient(t, ca, frontendID, ordersID)
	tr := c.Transport.(*http.Transport)
	tr.TLSClientConfig.NextProtos = []string{"http/1.1"}
	tr.ForceAttemptHTTP2 = false
	// Two idle keep-alive connections hold both slots.
	var held []net.Conn
	for range 2 {
		conn, err := tls.Dial("tcp", inL.Addr().String(), tr.TLSClientConfig)
		if err != nil {
			t.Fatal(err)
		}
		held = append(held, conn)
	}
	waitFor := func(cond func() bool) {
		deadline := time.Now().Add(5 * time.Second)
		for !cond() {
			if time.Now().After(deadline) {
				t.Fatal("timed out")
			}
			time.Sleep(5 * time.Millisecond)
		}
	}
	waitFor(func() bool { return s.LiveConnections() == 2 })
	if _, err := c.Get("https://" + inL.Addr().String() + "/"); err == nil {
		t.Fatal("third connection accepted past the limit")
	}
	held[0].Close()
	waitFor(func() bool { return s.LiveConnections() == 1 })
	resp, err := c.Get("https://" + inL.Addr().String() + "/")
	if err != nil {
		t.Fatalf("a freed slot is usable again: %v", err)
	}
	resp.Body.Close()
	held[1].Close()
}

// TestForwardErrorsDoNotLogTheQuery: a failed forward is logged without
// the query string, where a token may travel.
func TestForwardErrorsDoNotLogTheQuery(t *testing.T) {
	dead := listen(t)
	deadAddr := dead.Addr().String()
	dead.Close() // nothing listens: every forward fails
	var logs syncBuf
	ca := testpki.NewCA(t, "example.org")
	inL := listen(t)
	startSidecar(t, Config{
		Identity: newStaticIdentity(ca, ca.SVID(t, ordersID, 0)), Namespace: "prod",
		Inbound:    []Inbound{{Listener: inL, App: deadAddr}},
		Authorizer: allowPrincipals(policy.ModeStrict, "example.org/ns/prod/sa/frontend"),
		Logger:     slog.New(slog.NewJSONHandler(&logs, nil)),
	})
	c := mtlsClient(t, ca, frontendID, ordersID)
	code, body := get(t, c, "GET", "https://"+inL.Addr().String()+"/api?access_token=secret-token-value")
	if code != 503 || body != "upstream connect error or disconnect/reset before headers" {
		t.Fatalf("got %d %q", code, body)
	}
	if out := logs.String(); !strings.Contains(out, "forward failed") || strings.Contains(out, "secret-token-value") {
		t.Fatalf("log:\n%s", out)
	}
}

type syncBuf struct {
	mu sync.Mutex
	b  strings.Builder
}

func (s *syncBuf) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuf) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// TestReadyOnlyWhileAccepting: Ready (the admin /readyz) says ready only
// once Serve has bound every listener and until a drain begins. Before,
// it said ready as soon as an SVID and a policy were loaded, while Serve
// could still be probing the caller lookup before binding: a readiness
// probe then sent traffic to a port that refused it.
func TestReadyOnlyWhileAccepting(t *testing.T) {
	ca := testpki.NewCA(t, "example.org")
	s, err := New(Config{
		Identity:   newStaticIdentity(ca, ca.SVID(t, ordersID, 0)),
		Namespace:  "prod",
		Inbound:    []Inbound{{Name: "in", Listener: listen(t), App: "127.0.0.1:1"}},
		Outbound:   []Outbound{{Name: "out", Listener: listen(t), Upstream: "127.0.0.1:1", ID: spiffeid.RequireFromString(frontendID)}},
		Authorizer: allowPrincipals(policy.ModeStrict, "example.org/ns/prod/sa/frontend"),
		Logger:     discardLogger(),
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Ready(); err == nil {
		t.Fatal("ready before Serve")
	}
	serveSidecar(t, s)
	deadline := time.Now().Add(10 * time.Second)
	for s.Ready() != nil {
		if time.Now().After(deadline) {
			t.Fatalf("not ready while serving: %v", s.Ready())
		}
		time.Sleep(5 * time.Millisecond)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	s.Shutdown(ctx)
	if err := s.Ready(); err == nil {
		t.Fatal("ready after Shutdown")
	}
}
