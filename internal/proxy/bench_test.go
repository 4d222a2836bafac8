package proxy

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

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
func BenchmarkInboundRequestPath(b *testing.B) {
	s, err := New(Config{
		Identity:   &NodeIdentity{},
		Namespace:  "prod",
		Inbound:    []Inbound{{Name: "in", Listen: "127.0.0.1:0", App: "127.0.0.1:8080"}},
		Authorizer: allowPrincipals(policy.ModeStrict, "example.org/ns/prod/sa/frontend"),
		Logger:     discardLogger(),
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
				req := []byte("GET /api/orders/42 HTTP/1.1\r\nHost: orders\r\nUser-Agent: bench\r\n\r\n")
				for pb.Next() {
					if _, err := c.Write(req); err != nil {
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
				}
			})
			b.StopTimer()
			b.ReportMetric(float64(cpuTime()-cpu0)/float64(b.N), "cpu-ns/op")
		})
	}
}
