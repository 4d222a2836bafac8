package proxy

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/trace"

	"github.com/moatless/moatless/internal/authn"
	"github.com/moatless/moatless/internal/policy"
	"github.com/moatless/moatless/internal/telemetry"
	"github.com/moatless/moatless/internal/wire"
)

// cannedTransport answers every request without I/O, so the benchmark
// measures the sidecar's own request path.
type cannedTransport struct{ body string }

func (c cannedTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	if r.Body != nil {
		io.Copy(io.Discard, r.Body)
		r.Body.Close()
	}
	return &http.Response{
		StatusCode:    200,
		Header:        http.Header{"Content-Type": {"text/plain"}},
		Body:          io.NopCloser(strings.NewReader(c.body)),
		ContentLength: int64(len(c.body)),
		Request:       r,
	}, nil
}

// discardWriter is a ResponseWriter that keeps nothing.
type discardWriter struct{ h http.Header }

func (d *discardWriter) Header() http.Header         { return d.h }
func (d *discardWriter) Write(b []byte) (int, error) { return len(b), nil }
func (d *discardWriter) WriteHeader(int)             {}

// BenchmarkInboundRequestPath measures one request through the inbound
// handler (XFCC strip, policy evaluation, decision metrics, header
// rewrite, forward, body copy) with the network replaced by a canned
// answer. allocs/op is the sidecar's own per-request allocation.
func BenchmarkInboundRequestPath(b *testing.B) { benchmarkInbound(b, false, nil) }

// BenchmarkInboundRequestPathRecord is BenchmarkInboundRequestPath with
// the traffic record off and on: the difference is what recording one
// request costs the sidecar (one map update and a path template), without
// the network's noise. A request through a pair is recorded twice
// (outbound and inbound); docs/benchmarks.md relates twice the
// difference to BenchmarkPair's cpu-ns/op.
func BenchmarkInboundRequestPathRecord(b *testing.B) {
	b.Run("records_off", func(b *testing.B) { benchmarkInbound(b, false, nil) })
	b.Run("records_on", func(b *testing.B) { benchmarkInbound(b, true, nil) })
}

// BenchmarkInboundRequestPathTraced is BenchmarkInboundRequestPath with
// every request sampled into a span (recorded by the OTel SDK, not
// exported): the price of tracing at 100% sampling, before export.
func BenchmarkInboundRequestPathTraced(b *testing.B) {
	tp := sdktrace.NewTracerProvider(sdktrace.WithSampler(sdktrace.AlwaysSample()))
	b.Cleanup(func() { tp.Shutdown(context.Background()) })
	benchmarkInbound(b, false, tp.Tracer("bench"))
}

// BenchmarkInboundRequestPathTracedRisk is BenchmarkInboundRequestPathTraced
// with the largest risk section the server sends (wire.MaxRiskScores
// identities, the caller among them): the span's risk score attribute is
// one atomic load and one map lookup.
func BenchmarkInboundRequestPathTracedRisk(b *testing.B) {
	tp := sdktrace.NewTracerProvider(sdktrace.WithSampler(sdktrace.AlwaysSample()))
	b.Cleanup(func() { tp.Shutdown(context.Background()) })
	risk := &telemetry.RiskScores{}
	scores := make([]wire.RiskScore, wire.MaxRiskScores)
	for i := range scores {
		scores[i] = wire.RiskScore{SPIFFEID: fmt.Sprintf("spiffe://example.org/ns/prod/sa/s%d", i), Score: 0.5}
	}
	scores[0].SPIFFEID = frontendID
	risk.Set(wire.RiskScores{Scores: scores})
	benchmarkInbound(b, false, tp.Tracer("bench"), func(c *Config) { c.Risk = risk })
}

func benchmarkInbound(b *testing.B, records bool, tracer trace.Tracer, opts ...func(*Config)) {
	cfg := Config{
		Identity:   &NodeIdentity{},
		Namespace:  "prod",
		Inbound:    []Inbound{{Name: "in", Listen: "127.0.0.1:0", App: "127.0.0.1:8080"}},
		Authorizer: allowPrincipals(policy.ModeStrict, "example.org/ns/prod/sa/frontend"),
		Logger:     discardLogger(),
		Tracer:     tracer,
	}
	for _, o := range opts {
		o(&cfg)
	}
	s, err := New(cfg)
	if err != nil {
		b.Fatal(err)
	}
	if records {
		rec, err := NewRecorder(RecorderConfig{Send: func(context.Context, *wire.RecordReport) error { return nil }, Logger: discardLogger()})
		if err != nil {
			b.Fatal(err)
		}
		s.rec, s.dec.rec = rec, rec
		ctx, cancel := context.WithCancel(context.Background())
		go rec.Run(ctx)
		b.Cleanup(cancel)
	}
	ib := s.inbound[0]
	ib.fwd.rt = cannedTransport{body: "hello"}
	info := &connInfo{peer: frontendID, principal: "example.org/ns/prod/sa/frontend", xfcc: []string{"By=" + ordersID + ";Hash=00;URI=" + frontendID}}
	ctx := context.WithValue(context.Background(), connInfoKey{}, info)
	tmpl := httptest.NewRequestWithContext(ctx, "GET", "/api/orders/42", nil)
	w := &discardWriter{h: make(http.Header, 4)}
	b.ReportAllocs()
	b.ResetTimer()
	cpu0 := cpuTime()
	defer func() { b.ReportMetric(float64(cpuTime()-cpu0)/float64(b.N), "cpu-ns/op") }()
	for b.Loop() {
		// The request as the server would hand it over: 3 allocations
		// (request, URL, header map) belong to this loop, not the sidecar.
		r := *tmpl
		u := *tmpl.URL
		r.URL = &u
		r.Header = http.Header{"User-Agent": {"bench"}}
		clear(w.h)
		ib.ServeHTTP(w, &r)
	}
}

// BenchmarkPair measures a request from a keep-alive HTTP/1.1 client
// through outbound sidecar → mTLS HTTP/2 → inbound sidecar → app, all in
// this process on loopback. ns/op is the whole system's CPU over
// GOMAXPROCS; compare runs, not absolute values.
func BenchmarkPair(b *testing.B) {
	b.Run("h2_between_sidecars", func(b *testing.B) { benchmarkPair(b, false, true) })
	b.Run("http1_between_sidecars", func(b *testing.B) { benchmarkPair(b, true, true) })
}

// BenchmarkPairTrafficRecord is BenchmarkPair with the traffic record off
// and on, in one binary: compare cpu-ns/op of records_off and records_on
// over interleaved runs (-count) for the record's cost per request (the
// issue's budget: 5%).
func BenchmarkPairTrafficRecord(b *testing.B) {
	for _, proto := range []string{"h2", "http1"} {
		for _, on := range []bool{false, true} {
			name := proto + "/records_off"
			if on {
				name = proto + "/records_on"
			}
			b.Run(name, func(b *testing.B) { benchmarkPair(b, proto == "http1", on) })
		}
	}
}

func benchmarkPair(b *testing.B, http1, records bool) {
	l := listen(b)
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, "hello")
	})}
	go srv.Serve(l)
	b.Cleanup(func() { srv.Close() })
	p := newPairHTTP1(b, allowPrincipals(policy.ModeStrict, "example.org/ns/prod/sa/frontend"), l.Addr().String(), HTTP, http1)
	// Both sidecars record traffic, as in join mode: the per-request
	// cost of the record is part of the pair's.
	for _, s := range []*Sidecar{p.client, p.server} {
		if !records {
			break
		}
		rec, err := NewRecorder(RecorderConfig{Send: func(context.Context, *wire.RecordReport) error { return nil }, Logger: discardLogger()})
		if err != nil {
			b.Fatal(err)
		}
		s.rec, s.dec.rec = rec, rec
		ctx, cancel := context.WithCancel(context.Background())
		go rec.Run(ctx)
		b.Cleanup(cancel)
	}
	tr := &http.Transport{MaxIdleConnsPerHost: 64}
	c := &http.Client{Transport: tr}
	b.Cleanup(tr.CloseIdleConnections)
	b.ReportAllocs()
	b.ResetTimer()
	cpu0 := cpuTime()
	defer func() { b.ReportMetric(float64(cpuTime()-cpu0)/float64(b.N), "cpu-ns/op") }()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			resp, err := c.Get(p.outboundURL + "/api/orders/42")
			if err != nil {
				b.Error(err)
				return
			}
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
		}
	})
}

// BenchmarkUpstreamConnection prices what HTTP/2 between sidecars saves: a
// request from the outbound's TLS configuration to an inbound sidecar (and
// its app) on a pooled keep-alive connection, on a new connection resuming
// a TLS session, and on a new connection with a full handshake. ns/op is
// the CPU of both sidecars over GOMAXPROCS; compare the three.
func BenchmarkUpstreamConnection(b *testing.B) {
	l := listen(b)
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, "hello")
	})}
	go srv.Serve(l)
	b.Cleanup(func() { srv.Close() })
	p := newPair(b, allowPrincipals(policy.ModeStrict, "example.org/ns/prod/sa/frontend"), l.Addr().String(), HTTP)
	resumed := p.client.tls.clientConfig(spiffeid.RequireFromString(ordersID), "", []string{"http/1.1"})
	full := resumed.Clone()
	full.ClientSessionCache = nil
	for _, bc := range []struct {
		name      string
		conf      *tls.Config
		keepAlive bool
	}{
		{"pooled", resumed, true},
		{"new_conn_resumed", resumed, false},
		{"new_conn_full_handshake", full, false},
	} {
		b.Run(bc.name, func(b *testing.B) {
			tr := &http.Transport{TLSClientConfig: bc.conf, DisableKeepAlives: !bc.keepAlive}
			b.Cleanup(tr.CloseIdleConnections)
			c := &http.Client{Transport: tr}
			get := func() {
				resp, err := c.Get("https://" + p.inboundAddr + "/api/orders/42")
				if err != nil {
					b.Fatal(err)
				}
				io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				if want := bc.conf.ClientSessionCache != nil; !bc.keepAlive && resp.TLS.DidResume != want {
					b.Fatalf("session resumed: %v, want %v", resp.TLS.DidResume, want)
				}
			}
			get() // a session to resume, a pooled connection
			b.ResetTimer()
			for b.Loop() {
				get()
			}
		})
	}
}

// cpuTime is the process's user and system CPU time: on the shared build
// machine wall-clock ns/op mostly measures waiting for a core, while CPU
// time over requests is the steadier cost.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// rawHelloApp answers every request on a connection with a fixed 200
// "hello", reading requests by their head only (no bodies): an app that
// costs next to nothing, so a benchmark measures the sidecars.
func rawHelloApp(b *testing.B) string {
	const answer = "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 6\r\n\r\nhello\n"
	return serveRaw(b, func(c net.Conn) {
		defer c.Close()
		buf := make([]byte, 8<<10)
		n := 0
		for {
			m, err := c.Read(buf[n:])
			if err != nil {
				return
			}
			n += m
			for {
				i := bytes.Index(buf[:n], []byte("\r\n\r\n"))
				if i < 0 {
					break
				}
				n = copy(buf, buf[i+4:n])
				if _, err := io.WriteString(c, answer); err != nil {
					return
				}
			}
		}
	}).Addr().String()
}

// BenchmarkPairRaw is BenchmarkPair with a hand-written keep-alive client
// and app that cost next to nothing, over HTTP/1.1 between the sidecars,
// with the fast path and with net/http's server (nethttp): cpu-ns/op is
// then mostly the two sidecars' CPU per request. Each of the parallel
// goroutines (-cpu × 8) keeps one connection.
func BenchmarkPairRaw(b *testing.B) {
	for _, bc := range []struct {
		name    string
		disable bool
	}{{"fast", false}, {"nethttp", true}} {
		b.Run(bc.name, func(b *testing.B) {
			app := rawHelloApp(b)
			p := newPairWith(b, allowPrincipals(policy.ModeStrict, "example.org/ns/prod/sa/frontend"), app, HTTP, true, func(c *Config) { c.DisableHTTP1FastPath = bc.disable })
			benchRawClient(b, p, "GET /api/orders/42 HTTP/1.1\r\nHost: orders\r\nUser-Agent: bench\r\n\r\n")
		})
	}
}

// BenchmarkPairRawJWT prices a request token on a cache hit: the pair of
// BenchmarkPairRaw (fast path) with the real policy engine and JWT
// verifier under one RequestAuthentication and one AuthorizationPolicy
// (principals, methods, paths), once with requests carrying no token and
// once with every request carrying the same valid ES256 token, verified
// once and then found in the verifier's cache. The difference in
// cpu-ns/op between the two is what the token costs the pair per request
// (its bytes through both sidecars, the cache lookup, the live-request
// registration for revocation).
func BenchmarkPairRawJWT(b *testing.B) {
	jwks, tok := benchToken(b)
	forTokenVariants(b, tok, func(b *testing.B, auth string) {
		set := compileSet(b, jwtBenchPolicies(jwks))
		v := authn.NewVerifier(authn.Options{Logger: discardLogger()})
		b.Cleanup(func() { v.Close() })
		p := newPairWith(b, set, rawHelloApp(b), HTTP, true, func(c *Config) { c.Verifier = v })
		benchRawClient(b, p, "GET /api/orders/42 HTTP/1.1\r\nHost: orders\r\nUser-Agent: bench\r\n"+auth+"\r\n")
	})
}

// benchToken is a JWKS and a valid ES256 token it verifies (iss
// https://issuer.example, sub alice, a jti, an hour to live).
func benchToken(b *testing.B) (jwks, tok string) {
	jwks, token := newTestIssuer(b)
	return jwks, token(map[string]any{"iss": "https://issuer.example", "sub": "alice", "exp": time.Now().Add(time.Hour).Unix(), "jti": "bench-1"})
}

// jwtBenchPolicies: one RequestAuthentication trusting jwks and an ALLOW
// with principals, methods and paths, as in bench/run.sh.
func jwtBenchPolicies(jwks string) string {
	return fmt.Sprintf(`apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {name: jwt, namespace: prod}
spec:
  jwtRules: [{issuer: "https://issuer.example", jwks: '%s'}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: orders, namespace: prod}
spec:
  action: ALLOW
  rules:
  - from: [{source: {principals: ["example.org/ns/prod/sa/frontend"]}}]
    to: [{operation: {methods: ["GET", "HEAD"], paths: ["/", "/api/*"]}}]
`, jwks)
}

// BenchmarkInboundFastJWT prices a request token on a cache hit where
// the token is handled, without sockets or TLS: the inbound fast path's
// real serve loop (parse the head, decide with the real policy engine and
// verifier, compose the app's head, relay the answer) over in-memory
// connections, with the same policies as BenchmarkPairRawJWT. The
// difference in cpu-ns/op between jwt_cache_hit and no_token is the
// token's price on the inbound sidecar; the outbound one only carries its
// bytes.
func BenchmarkInboundFastJWT(b *testing.B) {
	jwks, tok := benchToken(b)
	forTokenVariants(b, tok, func(b *testing.B, auth string) {
		v := authn.NewVerifier(authn.Options{Logger: discardLogger()})
		b.Cleanup(func() { v.Close() })
		s, err := New(Config{
			Identity:   &NodeIdentity{},
			Namespace:  "prod",
			Inbound:    []Inbound{{Name: "in", Listen: "127.0.0.1:0", App: "127.0.0.1:8080"}},
			Authorizer: compileSet(b, jwtBenchPolicies(jwks)),
			Verifier:   v,
			Logger:     discardLogger(),
		})
		if err != nil {
			b.Fatal(err)
		}
		ib := s.inbound[0]
		info := &connInfo{peer: frontendID, principal: "example.org/ns/prod/sa/frontend", own: "example.org/ns/prod/sa/orders",
			xfcc: []string{"By=" + ordersID + ";Hash=00;URI=" + frontendID}}
		benchFastServe(b, s, ib.app, auth, func(fc *fastConn) fastOutcome { return ib.fastRequest(fc, info, ib.app) })
	})
}

// BenchmarkOutboundFastJWT is BenchmarkInboundFastJWT's other half: the
// outbound fast path (parse, normalize, compose, relay) over in-memory
// connections, the upstream sidecar replaced by a canned answer (no TLS).
// The token is only carried here; the difference is its bytes.
func BenchmarkOutboundFastJWT(b *testing.B) {
	_, tok := benchToken(b)
	forTokenVariants(b, tok, func(b *testing.B, auth string) {
		s, err := New(Config{
			Identity: &NodeIdentity{},
			Outbound: []Outbound{{Name: "out", Listen: "127.0.0.1:0", Upstream: "127.0.0.1:9443", ID: spiffeid.RequireFromString(ordersID), HTTP1: true}},
			Logger:   discardLogger(),
		})
		if err != nil {
			b.Fatal(err)
		}
		ob := s.outbound[0]
		benchFastServe(b, s, ob.app, auth, func(fc *fastConn) fastOutcome { return ob.fastRequest(fc, ob.app) })
	})
}

// BenchmarkFastTraced prices tracing on the fast path: each side's real
// serve loop over in-memory connections (as BenchmarkInboundFastJWT),
// tracing off and on with every request sampled into a span (recorded by
// the OTel SDK, not exported), the caller's traceparent read and the
// app's or upstream's written. The difference per side is tracing's cost
// at 100% sampling, before export.
func BenchmarkFastTraced(b *testing.B) {
	const tp = "Traceparent: 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01\r\n"
	for _, traced := range []bool{false, true} {
		name := map[bool]string{false: "off", true: "on"}[traced]
		tracer := func(b *testing.B) trace.Tracer {
			if !traced {
				return nil
			}
			p := sdktrace.NewTracerProvider(sdktrace.WithSampler(sdktrace.AlwaysSample()))
			b.Cleanup(func() { p.Shutdown(context.Background()) })
			return p.Tracer("bench")
		}
		b.Run("inbound_"+name, func(b *testing.B) {
			s, err := New(Config{
				Identity:   &NodeIdentity{},
				Namespace:  "prod",
				Inbound:    []Inbound{{Name: "in", Listen: "127.0.0.1:0", App: "127.0.0.1:8080"}},
				Authorizer: allowPrincipals(policy.ModeStrict, "example.org/ns/prod/sa/frontend"),
				Logger:     discardLogger(),
				Tracer:     tracer(b),
			})
			if err != nil {
				b.Fatal(err)
			}
			ib := s.inbound[0]
			info := &connInfo{peer: frontendID, principal: "example.org/ns/prod/sa/frontend", own: "example.org/ns/prod/sa/orders",
				xfcc: []string{"By=" + ordersID + ";Hash=00;URI=" + frontendID}}
			benchFastServe(b, s, ib.app, tp, func(fc *fastConn) fastOutcome { return ib.fastRequest(fc, info, ib.app) })
		})
		b.Run("outbound_"+name, func(b *testing.B) {
			s, err := New(Config{
				Identity: &NodeIdentity{},
				Outbound: []Outbound{{Name: "out", Listen: "127.0.0.1:0", Upstream: "127.0.0.1:9443", ID: spiffeid.RequireFromString(ordersID), HTTP1: true}},
				Logger:   discardLogger(),
				Tracer:   tracer(b),
			})
			if err != nil {
				b.Fatal(err)
			}
			ob := s.outbound[0]
			benchFastServe(b, s, ob.app, tp, func(fc *fastConn) fastOutcome { return ob.fastRequest(fc, ob.app) })
		})
	}
}

// forTokenVariants runs bench as sub-benchmarks no_token and
// jwt_cache_hit, with the Authorization field line to send ("" for none).
func forTokenVariants(b *testing.B, tok string, bench func(b *testing.B, auth string)) {
	for _, bc := range []struct {
		name, auth string
	}{{"no_token", ""}, {"jwt_cache_hit", "Authorization: Bearer " + tok + "\r\n"}} {
		b.Run(bc.name, func(b *testing.B) { bench(b, bc.auth) })
	}
}

// benchFastServe serves b.N requests (with the auth field line) on one
// in-memory fast path connection of s through handle, app answering each
// from memory, and reports the process's CPU per request as cpu-ns/op.
func benchFastServe(b *testing.B, s *Sidecar, app *appClient, auth string, handle func(*fastConn) fastOutcome) {
	if app == nil {
		b.Fatal("the fast path is off")
	}
	app.dial = func(context.Context) (net.Conn, error) {
		return &scriptConn{answer: "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 6\r\n\r\nhello\n"}, nil
	}
	c := &scriptConn{request: "GET /api/orders/42 HTTP/1.1\r\nHost: orders\r\nUser-Agent: bench\r\n" + auth + "\r\n", left: b.N}
	fc := newFastConn(s, c, func() bool { return false })
	b.ReportAllocs()
	b.ResetTimer()
	cpu0 := cpuTime()
	fc.serve(handle)
	b.StopTimer()
	b.ReportMetric(float64(cpuTime()-cpu0)/float64(b.N), "cpu-ns/op")
	fc.release()
	if c.ok != b.N {
		b.Fatalf("%d of %d answers were 200", c.ok, b.N)
	}
}

// scriptConn is an in-memory connection. As a client's, it reads request
// left times, then EOF, and counts the 200 answers written to it; as an
// app's, it answers every write with answer.
type scriptConn struct {
	request string
	left    int
	ok      int
	answer  string
	pending bool
}

func (c *scriptConn) Read(p []byte) (int, error) {
	switch {
	case c.answer != "" && c.pending:
		c.pending = false
		return copy(p, c.answer), nil
	case c.answer == "" && c.left > 0:
		c.left--
		return copy(p, c.request), nil
	}
	return 0, io.EOF
}

func (c *scriptConn) Write(p []byte) (int, error) {
	if c.answer != "" {
		c.pending = true
	} else if bytes.HasPrefix(p, []byte("HTTP/1.1 200 ")) {
		c.ok++
	}
	return len(p), nil
}

func (c *scriptConn) Close() error { return nil }
func (c *scriptConn) LocalAddr() net.Addr {
	return &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 8080}
}
func (c *scriptConn) RemoteAddr() net.Addr {
	return &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 40000}
}
func (c *scriptConn) SetDeadline(time.Time) error      { return nil }
func (c *scriptConn) SetReadDeadline(time.Time) error  { return nil }
func (c *scriptConn) SetWriteDeadline(time.Time) error { return nil }

// benchRawClient sends req over and over through p's outbound listener
// from parallel keep-alive connections, failing on any answer but 200,
// and reports the process's CPU time per request as cpu-ns/op.
func benchRawClient(b *testing.B, p *pair, req string) {
	addr := strings.TrimPrefix(p.outboundURL, "http://")
	b.SetParallelism(8)
	b.ReportAllocs()
	cpu0 := cpuTime()
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			b.Error(err)
			return
		}
		defer c.Close()
		br := bufio.NewReader(c)
		for pb.Next() {
			if _, err := io.WriteString(c, req); err != nil {
				b.Error(err)
				return
			}
			resp, err := http.ReadResponse(br, nil)
			if err != nil {
				b.Error(err)
				return
			}
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if resp.StatusCode != http.StatusOK {
				b.Errorf("status %d", resp.StatusCode)
				return
			}
		}
	})
	b.StopTimer()
	b.ReportMetric(float64(cpuTime()-cpu0)/float64(b.N), "cpu-ns/op")
}
