package proxy

import (
	"context"
	"crypto/tls"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/trace"

	"github.com/moatless/moatless/internal/policy"
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
func BenchmarkInboundRequestPath(b *testing.B) { benchmarkInbound(b, nil) }

// BenchmarkInboundRequestPathTraced is BenchmarkInboundRequestPath with
// every request sampled into a span (recorded by the OTel SDK, not
// exported): the price of tracing at 100% sampling, before export.
func BenchmarkInboundRequestPathTraced(b *testing.B) {
	tp := sdktrace.NewTracerProvider(sdktrace.WithSampler(sdktrace.AlwaysSample()))
	b.Cleanup(func() { tp.Shutdown(context.Background()) })
	benchmarkInbound(b, tp.Tracer("bench"))
}

func benchmarkInbound(b *testing.B, tracer trace.Tracer) {
	s, err := New(Config{
		Identity:   &NodeIdentity{},
		Namespace:  "prod",
		Inbound:    []Inbound{{Name: "in", Listen: "127.0.0.1:0", App: "127.0.0.1:8080"}},
		Authorizer: allowPrincipals(policy.ModeStrict, "example.org/ns/prod/sa/frontend"),
		Logger:     discardLogger(),
		Tracer:     tracer,
	})
	if err != nil {
		b.Fatal(err)
	}
	ib := s.inbound[0]
	ib.fwd.rt = cannedTransport{body: "hello"}
	info := &connInfo{peer: frontendID, principal: "example.org/ns/prod/sa/frontend", xfcc: []string{"By=" + ordersID + ";Hash=00;URI=" + frontendID}}
	ctx := context.WithValue(context.Background(), connInfoKey{}, info)
	tmpl := httptest.NewRequestWithContext(ctx, "GET", "/api/orders/42", nil)
	w := &discardWriter{h: make(http.Header, 4)}
	b.ReportAllocs()
	b.ResetTimer()
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
	b.Run("h2_between_sidecars", func(b *testing.B) { benchmarkPair(b, false) })
	b.Run("http1_between_sidecars", func(b *testing.B) { benchmarkPair(b, true) })
}

func benchmarkPair(b *testing.B, http1 bool) {
	l := listen(b)
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, "hello")
	})}
	go srv.Serve(l)
	b.Cleanup(func() { srv.Close() })
	p := newPairHTTP1(b, allowPrincipals(policy.ModeStrict, "example.org/ns/prod/sa/frontend"), l.Addr().String(), HTTP, http1)
	tr := &http.Transport{MaxIdleConnsPerHost: 64}
	c := &http.Client{Transport: tr}
	b.Cleanup(tr.CloseIdleConnections)
	b.ReportAllocs()
	b.ResetTimer()
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
