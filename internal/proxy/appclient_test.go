package proxy

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// rawApp is an HTTP/1.1 app written by hand so a test controls exactly
// when it closes connections. closeAfter closes each connection after
// that many answers, without announcing it (as an app whose keep-alive
// timeout fired would).
func rawApp(t *testing.T, closeAfter int) (addr string, conns *atomic.Int64) {
	t.Helper()
	conns = new(atomic.Int64)
	l := serveRaw(t, func(c net.Conn) {
		conns.Add(1)
		defer c.Close()
		br := bufio.NewReader(c)
		for i := 0; i < closeAfter; i++ {
			req, err := http.ReadRequest(br)
			if err != nil {
				return
			}
			b, _ := io.ReadAll(req.Body)
			body := fmt.Sprintf("%s %s %d %s", req.Method, req.URL.Path, len(b), req.Header.Get("X-Test"))
			fmt.Fprintf(c, "HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s", len(body), body)
		}
	})
	return l.Addr().String(), conns
}

func newAppClient(addr string) *appClient {
	d := &net.Dialer{}
	dial := func(ctx context.Context) (net.Conn, error) { return d.DialContext(ctx, "tcp", addr) }
	return &appClient{
		dial: dial,
		// The fallback dials the same fixed address, never a name.
		fallback:    &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) { return dial(ctx) }},
		maxIdle:     4,
		idleTimeout: time.Minute,
		now:         time.Now,
	}
}

func doApp(t *testing.T, a *appClient, method, body string, hdr map[string]string) (string, error) {
	t.Helper()
	var rb io.Reader
	if body != "" {
		rb = strings.NewReader(body)
	}
	req, _ := http.NewRequest(method, "http://app/p", rb)
	for k, v := range hdr {
		req.Header[k] = []string{v}
	}
	resp, err := a.RoundTrip(req)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return string(b), err
}

func TestAppClient(t *testing.T) {
	t.Run("keep_alive_reuses_one_connection", func(t *testing.T) {
		addr, conns := rawApp(t, 1000)
		a := newAppClient(addr)
		defer a.CloseIdleConnections()
		for i := range 5 {
			got, err := doApp(t, a, "POST", strings.Repeat("x", i), map[string]string{"X-Test": "v"})
			if err != nil || got != fmt.Sprintf("POST /p %d v", i) {
				t.Fatalf("request %d: %q %v", i, got, err)
			}
		}
		if n := conns.Load(); n != 1 {
			t.Fatalf("%d connections, want 1", n)
		}
	})
	t.Run("connection_closed_by_app_is_noticed_before_reuse", func(t *testing.T) {
		addr, conns := rawApp(t, 1)
		a := newAppClient(addr)
		defer a.CloseIdleConnections()
		// Each request comes a second after the last: pooled connections
		// are old enough to be peeked.
		clock := time.Unix(1_000_000, 0)
		a.now = func() time.Time { clock = clock.Add(time.Second); return clock }
		for i := range 3 {
			// POST is not retried: it must never meet the dead connection.
			if got, err := doApp(t, a, "POST", "abc", nil); err != nil || got != "POST /p 3 " {
				t.Fatalf("request %d: %q %v", i, got, err)
			}
			// Let the app's close reach us before the next request.
			waitClosed(t, a)
		}
		if n := conns.Load(); n != 3 {
			t.Fatalf("%d connections, want 3", n)
		}
	})
	t.Run("idempotent_request_on_a_fresh_dead_connection_is_retried", func(t *testing.T) {
		addr, conns := rawApp(t, 1)
		a := newAppClient(addr)
		defer a.CloseIdleConnections()
		frozen := time.Unix(1_000_000, 0)
		a.now = func() time.Time { return frozen } // never old enough to peek
		for i := range 3 {
			if got, err := doApp(t, a, "GET", "", nil); err != nil || got != "GET /p 0 " {
				t.Fatalf("request %d: %q %v", i, got, err)
			}
			waitClosed(t, a)
		}
		if n := conns.Load(); n != 3 {
			t.Fatalf("%d connections, want 3", n)
		}
	})
	t.Run("header_injection_refused", func(t *testing.T) {
		addr, _ := rawApp(t, 10)
		a := newAppClient(addr)
		defer a.CloseIdleConnections()
		_, err := doApp(t, a, "GET", "", map[string]string{"X-Test": "a\r\nX-Evil: 1"})
		if err == nil || !strings.Contains(err.Error(), "invalid header") {
			t.Fatalf("got %v", err)
		}
	})
	t.Run("large_body_takes_the_standard_transport", func(t *testing.T) {
		addr, _ := rawApp(t, 10)
		a := newAppClient(addr)
		defer a.CloseIdleConnections()
		big := strings.Repeat("y", leanMaxBody+1)
		got, err := doApp(t, a, "PUT", big, nil)
		if err != nil || got != fmt.Sprintf("PUT /p %d ", len(big)) {
			t.Fatalf("got %.40q %v", got, err)
		}
	})
	t.Run("cancelled_request_unblocks", func(t *testing.T) {
		l := listen(t)
		go func() {
			c, err := l.Accept()
			if err == nil {
				defer c.Close()
				io.Copy(io.Discard, c) // never answers
			}
		}()
		cancelWhileWaiting(t, newAppClient(l.Addr().String()))
	})
	t.Run("cancelled_request_on_a_reused_connection_unblocks", func(t *testing.T) {
		// The first answer comes at once; the second never does. The
		// connection's expire, shared by both requests, must still cut
		// off the second; and the first request's cancellation (after it
		// was answered) must not touch the pooled connection.
		l := listen(t)
		go func() {
			c, err := l.Accept()
			if err != nil {
				return
			}
			defer c.Close()
			br := bufio.NewReader(c)
			if _, err := http.ReadRequest(br); err != nil {
				return
			}
			io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
			io.Copy(io.Discard, br) // never answers again
		}()
		a := newAppClient(l.Addr().String())
		defer a.CloseIdleConnections()
		ctx1, cancel1 := context.WithCancel(context.Background())
		req1, _ := http.NewRequestWithContext(ctx1, "GET", "http://app/", nil)
		resp, err := a.RoundTrip(req1)
		if err != nil {
			t.Fatal(err)
		}
		if b, err := io.ReadAll(resp.Body); err != nil || string(b) != "ok" {
			t.Fatalf("first answer: %q %v", b, err)
		}
		resp.Body.Close()
		cancel1() // after the answer: the pooled connection stays usable
		a.mu.Lock()
		pooled := len(a.idle)
		a.mu.Unlock()
		if pooled != 1 {
			t.Fatalf("%d pooled connections after the first answer, want 1", pooled)
		}
		cancelWhileWaiting(t, a)
		a.mu.Lock()
		pooled = len(a.idle)
		a.mu.Unlock()
		if pooled != 0 {
			t.Fatalf("the cut-off connection was pooled (%d idle)", pooled)
		}
	})
	t.Run("request_that_cannot_be_cancelled_reuses_its_connection", func(t *testing.T) {
		addr, conns := rawApp(t, 1000)
		a := newAppClient(addr)
		defer a.CloseIdleConnections()
		for i := range 3 {
			// context.Background: no AfterFunc registered, the connection
			// is still given back after each answer.
			if got, err := doApp(t, a, "GET", "", nil); err != nil || got != "GET /p 0 " {
				t.Fatalf("request %d: %q %v", i, got, err)
			}
		}
		if n := conns.Load(); n != 1 {
			t.Fatalf("%d connections, want 1", n)
		}
	})
}

// cancelWhileWaiting sends a GET through a to an app that never answers
// it, cancels it, and fails unless the request fails at once.
func cancelWhileWaiting(t *testing.T, a *appClient) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	req, _ := http.NewRequestWithContext(ctx, "GET", "http://app/", nil)
	errc := make(chan error, 1)
	go func() { _, err := a.RoundTrip(req); errc <- err }()
	cancel()
	select {
	case err := <-errc:
		if err == nil {
			t.Fatal("cancelled request succeeded")
		}
	case <-time.After(10 * time.Second):
		t.Fatal("cancelled request still blocked")
	}
}

// waitClosed waits until every pooled connection reads as closed.
func waitClosed(t *testing.T, a *appClient) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		a.mu.Lock()
		dead := true
		for _, pc := range a.idle {
			if connAlive(pc.nc) {
				dead = false
			}
		}
		a.mu.Unlock()
		if dead {
			return
		}
		if time.Now().After(deadline) {
			t.Fatal("pooled connection never closed by the app")
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// The lean client keeps each body in a pooled buffer (bufPool up to 32
// KiB, largeBufPool up to leanMaxBody): one request after another, of
// sizes that take either pool and shrink and grow between them, each
// reaches the app with its own bytes and length only, and a body that
// ends short of its Content-Length fails without sending anything.
func TestAppClientPooledBodiesCarryOnlyTheirOwnBytes(t *testing.T) {
	var received atomic.Int64
	l := serveAnswers(t, func(req *http.Request) string {
		b, err := io.ReadAll(req.Body)
		if err != nil {
			return ""
		}
		received.Add(1)
		return fmt.Sprintf("HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s", len(b), b)
	})
	a := newAppClient(l.Addr().String())
	defer a.CloseIdleConnections()

	tests := []struct {
		name   string
		fill   byte
		size   int
		sendN  int  // bytes the body really has; size when 0
		failed bool // the request must fail, the app see nothing
	}{
		{name: "large_pool", fill: 'a', size: 60 << 10},
		{name: "large_pool_shorter", fill: 'b', size: 40 << 10},
		{name: "just_over_small_pool", fill: 'c', size: bufSize + 1},
		{name: "small_pool_after_large", fill: 'd', size: 100},
		{name: "exactly_small_pool", fill: 'e', size: bufSize},
		{name: "exactly_lean_max", fill: 'f', size: leanMaxBody},
		{name: "large_body_short_of_its_length", fill: 'g', size: 50 << 10, sendN: 10 << 10, failed: true},
		{name: "small_body_short_of_its_length", fill: 'h', size: 20 << 10, sendN: 1, failed: true},
		{name: "large_after_short_ones", fill: 'i', size: 50 << 10},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			sendN := tt.size
			if tt.sendN > 0 {
				sendN = tt.sendN
			}
			body := strings.Repeat(string(tt.fill), sendN)
			req, _ := http.NewRequest("POST", "http://app/p", io.NopCloser(strings.NewReader(body)))
			req.ContentLength = int64(tt.size)
			before := received.Load()
			resp, err := a.RoundTrip(req)
			if tt.failed {
				if err == nil {
					resp.Body.Close()
					t.Fatal("a body short of its Content-Length was sent")
				}
				if n := received.Load() - before; n != 0 {
					t.Fatalf("the app received %d requests", n)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			got, err := io.ReadAll(resp.Body)
			resp.Body.Close()
			if err != nil {
				t.Fatal(err)
			}
			if string(got) != body {
				t.Fatalf("the app got %d bytes (%d of them %q), want %d", len(got), strings.Count(string(got), string(tt.fill)), tt.fill, len(body))
			}
		})
	}
}

// BenchmarkAppClientBody sends POSTs through the lean client to an app on
// loopback that reads each body and answers "ok": a 1 KB body (bufPool)
// and a 40 KB one (largeBufPool). B/op is the client's and the app's
// together; the app's share does not depend on the client.
func BenchmarkAppClientBody(b *testing.B) {
	l := serveAnswers(b, func(req *http.Request) string {
		if _, err := io.Copy(io.Discard, req.Body); err != nil {
			return ""
		}
		return "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
	})
	for _, size := range []int{1 << 10, 40 << 10} {
		b.Run(fmt.Sprintf("body_%dk", size>>10), func(b *testing.B) {
			a := newAppClient(l.Addr().String())
			defer a.CloseIdleConnections()
			body := strings.NewReader(strings.Repeat("x", size))
			buf := make([]byte, 8)
			b.ReportAllocs()
			for b.Loop() {
				body.Seek(0, io.SeekStart)
				req, _ := http.NewRequest("POST", "http://app/p", io.NopCloser(body))
				req.ContentLength = int64(size)
				resp, err := a.RoundTrip(req)
				if err != nil {
					b.Fatal(err)
				}
				io.ReadFull(resp.Body, buf[:2])
				resp.Body.Close()
			}
		})
	}
}

// serveAnswers runs an HTTP/1.1 app on loopback that writes, for each
// request it reads, the whole answer answer returns (which reads the
// body); "" or a malformed request ends the connection.
func serveAnswers(t testing.TB, answer func(req *http.Request) string) net.Listener {
	return serveRaw(t, func(c net.Conn) {
		defer c.Close()
		br := bufio.NewReader(c)
		for {
			req, err := http.ReadRequest(br)
			if err != nil {
				return
			}
			a := answer(req)
			if a == "" {
				return
			}
			if _, err := io.WriteString(c, a); err != nil {
				return
			}
		}
	})
}
