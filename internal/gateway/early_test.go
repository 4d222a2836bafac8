package gateway

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"io"
	"net"
	"net/http"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/moatless/moatless/internal/config"
	"github.com/moatless/moatless/internal/proxy/proxytest"
	"github.com/moatless/moatless/internal/testpki"
)

// An upstream that answers before it has read the request body (a 413 or
// 401 from the head, or an answer and a close) gets that answer relayed
// at once, whether the client sends the rest of its body slowly, withholds
// it, or waits for 100 Continue (which it then never gets: the upstream
// did not ask for the body), on both HTTP/1.1 server paths and
// on HTTP/2. On HTTP/1.1 the client connection closes after the answer
// (its unread body would otherwise be read as the next request); on
// HTTP/2 only the stream ends. The upstream stays usable, nothing is left
// running, and the traffic record counts only the body bytes forwarded.
func TestEarlyUpstreamAnswer(t *testing.T) {
	ca := testpki.NewCA(t, td)
	up := startUpstream(t, ca, ordersID, proxytest.EarlyApp(t))
	const declared = 1 << 20 // the body the client announces
	const sent = 1000        // what it sends before waiting
	// answerWithin bounds the wait for the answer: far below every
	// timeout of the gateway (the read timeout is 60 s), so that an
	// answer that only comes when one fires fails.
	const answerWithin = 5 * time.Second
	cases := []struct {
		name     string
		fast     bool // the HTTP/1.1 fast path, else net/http's server
		h2       bool // an HTTP/2 client
		path     string
		expect   bool // Expect: 100-continue, nothing of the body sent
		want     int
		wantBody string
	}{
		{name: "h1_fast_413", fast: true, path: "/orders/early/413", want: 413, wantBody: "upload refused"},
		{name: "h1_fast_close", fast: true, path: "/orders/early/close", want: 401, wantBody: "nope"},
		{name: "h1_fast_expect_continue", fast: true, path: "/orders/early/413", expect: true, want: 413, wantBody: "upload refused"},
		{name: "h1_nethttp_413", path: "/orders/early/413", want: 413, wantBody: "upload refused"},
		{name: "h1_nethttp_close", path: "/orders/early/close", want: 401, wantBody: "nope"},
		{name: "h1_nethttp_expect_continue", path: "/orders/early/413", expect: true, want: 413, wantBody: "upload refused"},
		{name: "h1_fast_expect_continue_full_duplex", fast: true, path: "/orders/early/now", expect: true, want: 413, wantBody: "upload refused"},
		{name: "h1_nethttp_expect_continue_close", path: "/orders/early/close", expect: true, want: 401, wantBody: "nope"},
		{name: "h2_413", h2: true, path: "/orders/early/413", want: 413, wantBody: "upload refused"},
		{name: "h2_close", h2: true, path: "/orders/early/close", want: 401, wantBody: "nope"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			el := newEdgeLog(t)
			tg := startGatewayWith(t, ca, up, func(c *config.Gateway) { c.DisableHTTP1FastPath = !tc.fast },
				func(o *Options) { o.Recorder = el.rec })
			h2 := h2Client(tg)
			defer h2.CloseIdleConnections()
			// Requests that complete, a small body and one streamed
			// (on the upstream's HTTP/1.1 and HTTP/2 connections), from
			// both clients: the upstream connections exist, and the
			// baseline counts their goroutines.
			healthy := func() {
				t.Helper()
				for _, c := range []*http.Client{tg.client, h2} {
					for _, n := range []int{5, 200 << 10} {
						resp, err := c.Post(tg.url("/orders/echo"), "text/plain", strings.NewReader(strings.Repeat("h", n)))
						if err != nil {
							t.Fatalf("request after the early answer: %v", err)
						}
						b, _ := io.ReadAll(resp.Body)
						resp.Body.Close()
						if resp.StatusCode != 200 || string(b) != strconv.Itoa(n) {
							t.Fatalf("request after the early answer: %d %q", resp.StatusCode, b)
						}
					}
					c.CloseIdleConnections()
				}
			}
			healthy()
			base := runtime.NumGoroutine()

			if tc.h2 {
				earlyH2(t, h2, tg.url(tc.path), declared, sent, answerWithin, tc.want, tc.wantBody)
			} else {
				earlyH1(t, tg, tc.path, tc.expect, declared, sent, answerWithin, tc.want, tc.wantBody)
			}

			// The upstream (one HTTP/2 connection the gateway shares)
			// still serves; then every goroutine the request started ends.
			healthy()
			deadline := time.Now().Add(answerWithin)
			for n := runtime.NumGoroutine(); n > base; n = runtime.NumGoroutine() {
				if time.Now().After(deadline) {
					buf := make([]byte, 1<<20)
					t.Fatalf("%d goroutines, %d before the early answer:\n%s", n, base, buf[:runtime.Stack(buf, true)])
				}
				time.Sleep(10 * time.Millisecond)
			}

			// The access log has the early answer's status; the traffic
			// record counts only the body bytes that reached the upstream.
			if !strings.Contains(tg.access.String(), `"path":"`+tc.path+`","proto":`) ||
				!strings.Contains(tg.access.String(), `"status":`+strconv.Itoa(tc.want)+`,`) {
				t.Errorf("access log has no %d line for %s:\n%s", tc.want, tc.path, tg.access.String())
			}
			edges := el.take(t)
			found := false
			for _, e := range edges {
				if e.Method == "POST" && e.Status == tc.want/100 && strings.HasPrefix(e.Path, "/orders/early") {
					found = true
					// What the client sent after the answer may be read as
					// body before the gateway stops reading it.
					if e.ReqBytes > sent+uint64(len(pipelined)) {
						t.Errorf("traffic record: %d request bytes forwarded, the client sent %d", e.ReqBytes, sent+len(pipelined))
					}
				}
			}
			if !found {
				t.Errorf("no traffic record of the early answer: %+v", edges)
			}
		})
	}
}

// pipelined is what a client sends after the answer: in its announced
// body, but shaped like a request.
const pipelined = "GET /orders/echo HTTP/1.1\r\nHost: localhost\r\n\r\n"

// h2Client speaks HTTP/2 to the gateway.
func h2Client(tg *testGateway) *http.Client {
	return &http.Client{Transport: &http.Transport{
		TLSClientConfig:   &tls.Config{RootCAs: tg.ca.Pool(), ServerName: "localhost", NextProtos: []string{"h2"}},
		ForceAttemptHTTP2: true,
	}, Timeout: 10 * time.Second}
}

// earlyH1 announces a body of declared bytes on a fresh HTTP/1.1
// connection, sends sent of them (none after Expect: 100-continue) and
// waits: the answer (its body starting with wantBody) must come within
// answerWithin, say Connection: close,
// and the connection must then close, also when the client goes on
// sending what looks like a pipelined request.
func earlyH1(t *testing.T, tg *testGateway, path string, expect bool, declared, sent int, answerWithin time.Duration, want int, wantBody string) {
	t.Helper()
	c, err := tls.Dial("tcp", tg.addr, &tls.Config{RootCAs: tg.ca.Pool(), ServerName: "localhost", NextProtos: []string{"http/1.1"}})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	head := "POST " + path + " HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/octet-stream\r\nContent-Length: " + strconv.Itoa(declared) + "\r\n"
	if expect {
		head += "Expect: 100-continue\r\n"
	}
	msg := head + "\r\n"
	if !expect {
		msg += strings.Repeat("a", sent)
	}
	if _, err := io.WriteString(c, msg); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	c.SetReadDeadline(start.Add(answerWithin))
	br := bufio.NewReader(c)
	var resp *http.Response
	for {
		resp, err = http.ReadResponse(br, nil)
		if err != nil {
			t.Fatalf("no answer within %v: %v", answerWithin, err)
		}
		if resp.StatusCode >= 200 {
			break
		}
		if expect {
			// The expectation reaches the app (over HTTP/1.1 to the
			// upstream sidecar), which refuses from the head: nothing
			// may ask for the body first.
			t.Fatalf("%d before the answer: the client was asked for a body the upstream does not want", resp.StatusCode)
		}
		resp.Body.Close()
	}
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("answer body: %v", err)
	}
	t.Logf("answer after %v", time.Since(start))
	if resp.StatusCode != want || !strings.HasPrefix(string(b), wantBody) {
		t.Fatalf("answer %d %q, want %d %q", resp.StatusCode, b, want, wantBody)
	}
	if !resp.Close {
		t.Errorf("the answer to a request whose body was not read does not say Connection: close: %v", resp.Header)
	}
	// The rest of the "body" is a request: it must never be answered.
	io.WriteString(c, pipelined)
	c.SetReadDeadline(time.Now().Add(answerWithin))
	rest, err := io.ReadAll(br)
	if len(rest) > 0 {
		t.Fatalf("bytes after the answer (the unread body read as a request?): %q", rest)
	}
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		t.Fatalf("the connection stayed open after the answer to a request whose body was not read")
	}
}

// earlyH2 sends a request whose body (declared bytes) stalls after sent,
// on HTTP/2: the answer (its body starting with wantBody) must come
// within answerWithin. (Whether the
// stream is reset cannot be seen from a Go client: closing the answer's
// body ends the request's too.)
func earlyH2(t *testing.T, c *http.Client, url string, declared, sent int, answerWithin time.Duration, want int, wantBody string) {
	t.Helper()
	pr, pw := io.Pipe()
	defer pw.Close()
	go pw.Write(bytes.Repeat([]byte("a"), sent))
	ctx, cancel := context.WithTimeout(context.Background(), answerWithin)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, "POST", url, pr)
	if err != nil {
		t.Fatal(err)
	}
	req.ContentLength = int64(declared)
	start := time.Now()
	resp, err := c.Do(req)
	if err != nil {
		t.Fatalf("no answer within %v: %v", answerWithin, err)
	}
	b, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil {
		t.Fatalf("answer body: %v", err)
	}
	t.Logf("answer after %v (%s)", time.Since(start), resp.Proto)
	if resp.ProtoMajor != 2 {
		t.Fatalf("the client spoke %s", resp.Proto)
	}
	if resp.StatusCode != want || !strings.HasPrefix(string(b), wantBody) {
		t.Fatalf("answer %d %q, want %d %q", resp.StatusCode, b, want, wantBody)
	}
}

// The gateway's own answer to a request whose body it did not read (a
// policy denial here) goes out at once too, with the body withheld or
// after Expect: 100-continue, and the connection closes after it. On
// net/http's server it used to wait: the server reads up to 256 KiB of an
// unread body before the answer's head unless the body is its own type,
// and the gateway had put its wrappers on the server's request.
func TestGatewayAnswerUnreadBody(t *testing.T) {
	ca := testpki.NewCA(t, td)
	up := startUpstream(t, ca, ordersID, proxytest.EarlyApp(t))
	for _, fast := range []bool{true, false} {
		tg := startGatewayWith(t, ca, up, func(c *config.Gateway) { c.DisableHTTP1FastPath = !fast })
		for _, expect := range []bool{false, true} {
			name := map[bool]string{true: "fast", false: "nethttp"}[fast] + map[bool]string{true: "_expect_continue", false: "_body_withheld"}[expect]
			t.Run(name, func(t *testing.T) {
				earlyH1(t, tg, "/private/1", expect, 1<<20, 1000, 5*time.Second, http.StatusForbidden,
					`{"status":403,"error":"RBAC: access denied","request_id":"`)
			})
		}
	}
}
