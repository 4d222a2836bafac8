package gateway

import (
	"bufio"
	"bytes"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"net/url"
	"os"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/moatless/moatless/internal/config"
	"github.com/moatless/moatless/internal/testpki"
)

// ids are what differs between two gateways answering the same request:
// request IDs, the gateway SVID's hash in the upstream's XFCC.
var ids = regexp.MustCompile(`[0-9a-f]{32,64}`)

// dateField is an answer's Date field, which differs between two runs.
var dateField = regexp.MustCompile(`(?m)^Date: [^\r\n]*\r\n`)

// TestFastPathSameAsNetHTTP is the HTTP/1.1 fast path's differential
// test: the same bytes, benign and hostile (the smuggling and desync
// patterns, the issue-7 header and path attacks, limits, CORS, the WAF),
// sent to a gateway on the fast path and to one on net/http's server in
// front of the same upstream sidecar and echo app give the same statuses,
// headers (but Date), bodies (request IDs aside; the echo app's body is
// the request the upstream saw), the same access-log lines, and close the
// connection at the same point.
func TestFastPathSameAsNetHTTP(t *testing.T) {
	// Every request's connection is watched for the client going away
	// (TestFastPathClientGoneCancels): what it reads must change nothing.
	old := fastWatchAfter
	fastWatchAfter = 0
	t.Cleanup(func() { fastWatchAfter = old })
	ca := testpki.NewCA(t, td)
	up := startUpstream(t, ca, ordersID, echoApp(t))
	edit := func(fast bool) func(c *config.Gateway) {
		return func(c *config.Gateway) {
			c.DisableHTTP1FastPath = !fast
			c.Limits.MaxBodyBytes = 4096
			c.Limits.MaxHeaderBytes = 8192
			c.Limits.MaxURIBytes = 2048
			c.Routes[0].CORS = &config.GatewayCORS{Origins: []string{"https://app.example.com"}}
			c.Routes = append(c.Routes, config.GatewayRoute{Name: "waf", PathPrefix: "/orders/waf", Upgrades: []string{},
				Upstreams: c.Routes[0].Upstreams, SPIFFEID: ordersID, WAF: &config.GatewayRouteWAF{Enabled: true}})
		}
	}
	fast := startGatewayWith(t, ca, up, edit(true))
	slow := startGatewayWith(t, ca, up, edit(false))

	const (
		get  = "GET /orders/1 HTTP/1.1\r\nHost: localhost\r\n\r\n"
		last = "GET /orders/last HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
		post = "POST /orders HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
		clTE = post + "Content-Length: 6\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nG"
		json = `{"id":1,"items":[{"sku":"a","qty":2}]}`
	)
	big := strings.Repeat("a", 3000)
	tests := []struct{ name, raw string }{
		{"get", get + last},
		{"post_json", post + fmt.Sprintf("Content-Length: %d\r\n\r\n%s", len(json), json) + last},
		{"pipelined", get + get + get + last},
		// The answer's header map is the connection's: nothing of one
		// answer (the app's Etag, CORS grants) may reach the next.
		{"no_field_carried_to_the_next_answer", "GET /orders/status/201 HTTP/1.1\r\nHost: localhost\r\nOrigin: https://app.example.com\r\n\r\n" + get +
			"OPTIONS /orders/1 HTTP/1.1\r\nHost: localhost\r\nOrigin: https://app.example.com\r\nAccess-Control-Request-Method: POST\r\n\r\n" + get + last},
		{"head", "HEAD /orders/1 HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"},
		{"head_denied", "HEAD /admin HTTP/1.1\r\nHost: localhost\r\n\r\n" + last},
		{"status_without_text", "GET /orders/status/299 HTTP/1.1\r\nHost: localhost\r\n\r\n" + last},
		{"status_no_content", "GET /orders/status/204 HTTP/1.1\r\nHost: localhost\r\n\r\n" + last},
		{"status_not_modified", "GET /orders/status/304 HTTP/1.1\r\nHost: localhost\r\nIf-None-Match: \"v1\"\r\n\r\n" + last},
		{"status_upstream_error", "GET /orders/status/503 HTTP/1.1\r\nHost: localhost\r\n\r\n" + last},
		{"connection_close", "GET /orders/1 HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n" + get},
		{"get_with_body", "GET /orders/1 HTTP/1.1\r\nHost: localhost\r\nContent-Length: 5\r\n\r\nhello" + last},
		{"empty_line_after_post", post + "Content-Length: 2\r\n\r\n{}\r\n" + last},
		{"unknown_method", "FOO /orders/1 HTTP/1.1\r\nHost: localhost\r\n\r\n" + last},
		{"trace", "TRACE /orders/1 HTTP/1.1\r\nHost: localhost\r\n\r\n" + last},
		{"delete_denied", "DELETE /orders/1 HTTP/1.1\r\nHost: localhost\r\n\r\n" + last},
		{"denied_with_unread_body", "DELETE /orders/1 HTTP/1.1\r\nHost: localhost\r\nContent-Length: 5\r\n\r\nhello" + last},
		{"not_allowed_path", "GET /admin HTTP/1.1\r\nHost: localhost\r\n\r\n" + last},
		{"dot_segments", "GET /public/../admin HTTP/1.1\r\nHost: localhost\r\n\r\n" + last},
		{"encoded_dot_segments", "GET /public/%2e%2e/admin HTTP/1.1\r\nHost: localhost\r\n\r\n" + last},
		{"encoded_slash", "GET /orders%2F..%2Fadmin HTTP/1.1\r\nHost: localhost\r\n\r\n" + last},
		{"double_slash", "GET //admin HTTP/1.1\r\nHost: localhost\r\n\r\n" + last},
		{"fragment", "GET /orders/1#frag HTTP/1.1\r\nHost: localhost\r\n\r\n" + last},
		{"absolute_form", "GET http://localhost/orders/1 HTTP/1.1\r\nHost: localhost\r\n\r\n" + last},
		{"method_override_query", "GET /orders/1?a=1&_method=DELETE HTTP/1.1\r\nHost: localhost\r\n\r\n" + last},
		{"method_override_header", "GET /orders/1 HTTP/1.1\r\nHost: localhost\r\nX-HTTP-Method-Override: DELETE\r\n\r\n" + last},
		{"spoofed_identity_headers", "GET /orders/1 HTTP/1.1\r\nHost: localhost\r\nX-Forwarded-For: 203.0.113.9\r\nX-Forwarded-Client-Cert: By=spiffe://x\r\n" +
			"X-Moatless-Identity: admin\r\nX_Forwarded_For: 1.2.3.4\r\nX-Real-IP: 1.2.3.4\r\nX-Request-Id: mine\r\nForwarded: for=1.2.3.4\r\nX-Original-URL: /admin\r\n\r\n" + last},
		{"connection_nomination", "GET /orders/1 HTTP/1.1\r\nHost: localhost\r\nConnection: X-Forwarded-For, X-Custom\r\nX-Custom: a\r\n\r\n" + last},
		{"duplicate_and_lower_case_fields", "GET /orders/1 HTTP/1.1\r\nhost: localhost\r\nx-a: 1\r\nX-A: 2\r\nPragma: no-cache\r\n\r\n" + last},
		{"host_malformed", "GET /orders/1 HTTP/1.1\r\nHost: api..example.com\r\n\r\n" + last},
		{"host_with_port", "GET /orders/1 HTTP/1.1\r\nHost: localhost:8443\r\n\r\n" + last},
		{"uri_too_long", "GET /orders/" + strings.Repeat("x", 2100) + " HTTP/1.1\r\nHost: localhost\r\n\r\n" + last},
		{"header_too_large", "GET /orders/1 HTTP/1.1\r\nHost: localhost\r\nX-Big: " + strings.Repeat("b", 9000) + "\r\n\r\n" + last},
		{"header_over_twice_the_limit", "GET /orders/1 HTTP/1.1\r\nHost: localhost\r\nX-Big: " + strings.Repeat("b", 22000) + "\r\n\r\n" + last},
		{"body_too_large", post + "Content-Length: 5000\r\n\r\n" + strings.Repeat("x", 5000) + last},
		{"large_answer_is_chunked", "GET /orders/1 HTTP/1.1\r\nHost: localhost\r\nX-Pad: " + big + "\r\n\r\n" + last},
		{"cors_preflight", "OPTIONS /orders/1 HTTP/1.1\r\nHost: localhost\r\nOrigin: https://app.example.com\r\nAccess-Control-Request-Method: POST\r\n\r\n" + last},
		{"cors_preflight_refused", "OPTIONS /orders/1 HTTP/1.1\r\nHost: localhost\r\nOrigin: https://evil.example\r\nAccess-Control-Request-Method: POST\r\n\r\n" + last},
		{"cors_simple", "GET /orders/1 HTTP/1.1\r\nHost: localhost\r\nOrigin: https://app.example.com\r\n\r\n" + last},
		{"waf_blocks", "GET /orders/waf/1?id=1%27%20OR%20%271%27%3D%271 HTTP/1.1\r\nHost: localhost\r\n\r\n" + last},
		{"waf_passes", "GET /orders/waf/1?id=42 HTTP/1.1\r\nHost: localhost\r\n\r\n" + last},
		{"websocket_upgrade_on_waf_route_dropped", "GET /orders/waf/ws HTTP/1.1\r\nHost: localhost\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n" + last},
		// Handed to net/http's server, through the framing guard.
		{"cl_te", clTE + get},
		{"cl_te_after_keep_alive", get + clTE + get},
		{"te_cl", post + "Transfer-Encoding: chunked\r\nContent-Length: 4\r\n\r\n5c\r\nGET /admin HTTP/1.1\r\nHost: localhost\r\n\r\n0\r\n\r\n" + get},
		{"te_te_xchunked", post + "Transfer-Encoding: xchunked\r\n\r\n0\r\n\r\n" + get},
		{"duplicate_cl", post + "Content-Length: 2\r\nContent-Length: 2\r\n\r\n{}" + get},
		{"obs_fold", "GET /orders/1 HTTP/1.1\r\nHost: localhost\r\nX-A: a\r\n X-User: admin\r\n\r\n" + get},
		{"bare_lf", "GET /orders/1 HTTP/1.1\nHost: localhost\n\n" + get},
		{"whitespace_before_colon", "GET /orders/1 HTTP/1.1\r\nHost: localhost\r\nX-A : a\r\n\r\n" + get},
		{"nul_in_value", "GET /orders/1 HTTP/1.1\r\nHost: localhost\r\nX-A: a\x00b\r\n\r\n" + get},
		{"control_byte_in_target", "GET /orders/1\x01 HTTP/1.1\r\nHost: localhost\r\n\r\n" + get},
		{"bad_percent_escape", "GET /orders/%zz HTTP/1.1\r\nHost: localhost\r\n\r\n" + get},
		{"no_host", "GET /orders/1 HTTP/1.1\r\n\r\n" + get},
		{"chunked", post + "Transfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n" + get},
		{"bad_chunk", post + "Transfer-Encoding: chunked\r\n\r\nzz\r\n{}\r\n0\r\n\r\n" + get},
		{"options_asterisk", "OPTIONS * HTTP/1.1\r\nHost: localhost\r\n\r\n" + clTE + get},
		{"http10", "GET /orders/1 HTTP/1.0\r\nHost: localhost\r\n\r\n"},
		{"http10_keep_alive", "GET /orders/1 HTTP/1.0\r\nHost: localhost\r\nConnection: keep-alive\r\n\r\n" + last},
		{"expect_continue", post + "Content-Length: 2\r\nExpect: 100-continue\r\n\r\n{}" + last},
		{"connect", "CONNECT localhost:443 HTTP/1.1\r\nHost: localhost:443\r\n\r\n" + last},
		{"pipelined_after_short_body", post + "Content-Length: 3\r\n\r\nhello world\r\n\r\n"},
		{"after_a_handoff_the_connection_closes", "GET /orders/1 HTTP/1.0\r\nHost: localhost\r\nConnection: keep-alive\r\n\r\n" + get + last},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got := differential(t, fast, tc.raw)
			want := differential(t, slow, tc.raw)
			if got != want {
				t.Errorf("fast path:\n%s\nnet/http:\n%s", got, want)
			}
			// Equal is not enough where net/http's server would answer
			// on its own: the gateway answers, with its headers.
			if tc.name == "te_te_xchunked" {
				if strings.Count(got, "HTTP/1.1 ") != 1 || !strings.Contains(got, "\nHTTP/1.1 400 Bad Request\r\n") || !strings.HasPrefix(got, "close=true ") {
					t.Errorf("want one 400 that closes the connection:\n%s", got)
				}
				for _, k := range securityHeaderNames {
					if !strings.Contains(got, "\n"+k+": ") {
						t.Errorf("the answer lacks %s:\n%s", k, got)
					}
				}
			}
		})
	}
}

// differential sends raw on a new HTTP/1.1 connection to tg and returns
// what came back and what the access log said, without what differs
// between two gateways (Date, request IDs, durations, times).
func differential(t *testing.T, tg *testGateway, raw string) string {
	t.Helper()
	before := len(tg.access.String())
	c, err := tls.Dial("tcp", tg.addr, &tls.Config{RootCAs: tg.ca.Pool(), ServerName: "localhost", NextProtos: []string{"http/1.1"}})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.WriteString(c, raw); err != nil {
		t.Fatal(err)
	}
	// Everything the gateway sends until it closes (or the deadline),
	// then parsed: each answer's head is compared as raw bytes, so the
	// order of its fields counts (net/http writes them sorted, then
	// Date, Content-Length, Content-Type, Connection, Transfer-Encoding).
	all, err := io.ReadAll(c)
	open := errors.Is(err, os.ErrDeadlineExceeded)
	var b strings.Builder
	src := bytes.NewReader(all)
	br := bufio.NewReader(src)
	for {
		from := len(all) - src.Len() - br.Buffered()
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			break
		}
		head := string(all[from : len(all)-src.Len()-br.Buffered()])
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		fmt.Fprintf(&b, "close=%v length=%d te=%v\n", resp.Close, resp.ContentLength, resp.TransferEncoding)
		b.WriteString(ids.ReplaceAllString(dateField.ReplaceAllString(head, "Date: (date)\r\n"), "ID"))
		for k, v := range resp.Trailer {
			fmt.Fprintf(&b, "trailer %s: %s\n", k, v)
		}
		fmt.Fprintf(&b, "\n%s\n", ids.ReplaceAllString(string(body), "ID"))
	}
	if open {
		b.WriteString("(connection left open)\n")
	}
	// The access log's lines for these requests: the gateway writes each
	// before its answer's last byte reaches the client (or after it has
	// closed the connection), so wait for them a little.
	want := strings.Count(b.String(), "HTTP/1.")
	var lines []string
	for deadline := time.Now().Add(2 * time.Second); ; {
		lines = strings.Split(strings.TrimSpace(tg.access.String()[before:]), "\n")
		if len(lines) >= want || time.Now().After(deadline) {
			break
		}
		time.Sleep(5 * time.Millisecond)
	}
	for _, l := range lines {
		var m map[string]any
		if json.Unmarshal([]byte(l), &m) != nil {
			continue
		}
		delete(m, "time")
		delete(m, "request_id")
		delete(m, "duration_ms")
		j, _ := json.Marshal(m)
		fmt.Fprintf(&b, "access: %s\n", j)
	}
	return b.String()
}

// TestFastPathShutdownDrains: Shutdown closes an idle fast path
// connection at once and lets a request in flight finish, answered with
// Connection: close, as net/http's server does its connections.
func TestFastPathShutdownDrains(t *testing.T) {
	tg := startGateway(t, func(c *config.Gateway) { c.DisableHTTP1FastPath = false })
	dial := func() *tls.Conn {
		c, err := tls.Dial("tcp", tg.addr, &tls.Config{RootCAs: tg.ca.Pool(), ServerName: "localhost", NextProtos: []string{"http/1.1"}})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		c.SetDeadline(time.Now().Add(5 * time.Second))
		return c
	}
	// waitFor polls until the gateway has n fast connections, idle of
	// them waiting for a request.
	waitFor := func(n, idle int) {
		t.Helper()
		for deadline := time.Now().Add(3 * time.Second); ; {
			tg.g.fast.mu.Lock()
			got, gotIdle := len(tg.g.fast.m), 0
			for _, i := range tg.g.fast.m {
				if i {
					gotIdle++
				}
			}
			tg.g.fast.mu.Unlock()
			if got == n && gotIdle == idle {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("%d fast connections, %d idle; want %d and %d", got, gotIdle, n, idle)
			}
			time.Sleep(5 * time.Millisecond)
		}
	}
	idle := dial()
	io.WriteString(idle, "GET /orders/1 HTTP/1.1\r\nHost: localhost\r\n\r\n")
	ir := bufio.NewReader(idle)
	if resp, err := http.ReadResponse(ir, nil); err != nil || resp.StatusCode != 200 {
		t.Fatalf("first request: %v %v", resp, err)
	} else {
		io.Copy(io.Discard, resp.Body)
	}
	waitFor(1, 1)
	// The busy connection's request is in the handler, its body half sent.
	busy := dial()
	waitFor(2, 2)
	io.WriteString(busy, "POST /orders HTTP/1.1\r\nHost: localhost\r\nContent-Type: text/plain\r\nContent-Length: 10\r\n\r\nhello")
	waitFor(2, 1)
	tg.stop() // Serve shuts down, as on SIGTERM
	if _, err := ir.ReadByte(); err != io.EOF {
		t.Errorf("idle connection: read %v, want EOF", err)
	}
	io.WriteString(busy, "world")
	resp, err := http.ReadResponse(bufio.NewReader(busy), nil)
	if err != nil {
		t.Fatalf("request in flight: %v", err)
	}
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != 200 || !resp.Close || !strings.Contains(string(body), `"body":"helloworld"`) {
		t.Errorf("request in flight: %d close=%v %s", resp.StatusCode, resp.Close, body)
	}
	select {
	case <-tg.done:
	case <-time.After(5 * time.Second):
		t.Error("Serve did not return after the request in flight")
	}
}

// TestFastPathClientGoneCancels: a client that goes away while its
// request waits on the upstream cancels the request, on the fast path as
// on net/http's server (its access line says 499 before the app's /slow
// would have answered, 5 s later), and a request that outlives the watch
// on a connection that stays keeps working, pipelined bytes included.
func TestFastPathClientGoneCancels(t *testing.T) {
	old := fastWatchAfter
	fastWatchAfter = 0
	t.Cleanup(func() { fastWatchAfter = old })
	for _, fast := range []bool{true, false} {
		t.Run(fmt.Sprintf("fast_%v", fast), func(t *testing.T) {
			tg := startGateway(t, func(c *config.Gateway) { c.DisableHTTP1FastPath = !fast })
			c, err := tls.Dial("tcp", tg.addr, &tls.Config{RootCAs: tg.ca.Pool(), ServerName: "localhost", NextProtos: []string{"http/1.1"}})
			if err != nil {
				t.Fatal(err)
			}
			io.WriteString(c, "GET /slow HTTP/1.1\r\nHost: localhost\r\n\r\n")
			// The request is in the handler once the upstream has it:
			// poll the app's side through the gateway's open request.
			for deadline := time.Now().Add(3 * time.Second); time.Now().Before(deadline); time.Sleep(5 * time.Millisecond) {
				if fast {
					tg.g.fast.mu.Lock()
					busy := 0
					for _, idle := range tg.g.fast.m {
						if !idle {
							busy++
						}
					}
					tg.g.fast.mu.Unlock()
					if busy == 1 {
						break
					}
				} else if tg.g.conns.open() == 1 {
					break
				}
			}
			closeAndWait499(t, tg, c)

			// A kept-alive connection whose first request outlives the
			// watch serves the next one, sent before the first's answer.
			c2, err := tls.Dial("tcp", tg.addr, &tls.Config{RootCAs: tg.ca.Pool(), ServerName: "localhost", NextProtos: []string{"http/1.1"}})
			if err != nil {
				t.Fatal(err)
			}
			defer c2.Close()
			c2.SetDeadline(time.Now().Add(5 * time.Second))
			io.WriteString(c2, "POST /orders HTTP/1.1\r\nHost: localhost\r\nContent-Type: text/plain\r\nContent-Length: 2\r\n\r\nhi")
			io.WriteString(c2, "GET /orders/2 HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
			got, err := exchangeAll(c2)
			if err != nil || got != "200 200" {
				t.Errorf("keep-alive after a watched request: %q %v", got, err)
			}
		})
	}
}

// TestFastPathClientGoneAfterSlowBody: a request whose body is still
// coming in when the watch is due is watched once the body is read (the
// body's own reads notice the client going away until then), so a
// client that uploads slowly and then leaves still cancels it.
func TestFastPathClientGoneAfterSlowBody(t *testing.T) {
	old := fastWatchAfter
	fastWatchAfter = 0
	t.Cleanup(func() { fastWatchAfter = old })
	tg := startGateway(t, func(c *config.Gateway) { c.DisableHTTP1FastPath = false })
	c, err := tls.Dial("tcp", tg.addr, &tls.Config{RootCAs: tg.ca.Pool(), ServerName: "localhost", NextProtos: []string{"http/1.1"}})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	// left is what is still to come of the body of the one busy request:
	// -1 while there is none, -2 while a read of it blocks (holding the
	// body's lock).
	left := func() int64 {
		tg.g.fast.mu.Lock()
		defer tg.g.fast.mu.Unlock()
		for fc, idle := range tg.g.fast.m {
			if !idle {
				if !fc.body.mu.TryLock() {
					return -2
				}
				defer fc.body.mu.Unlock()
				return fc.body.left
			}
		}
		return -1
	}
	waitLeft := func(want func(int64) bool, what string) {
		t.Helper()
		for deadline := time.Now().Add(3 * time.Second); ; time.Sleep(5 * time.Millisecond) {
			if want(left()) {
				return
			}
			if time.Now().After(deadline) {
				c.SetReadDeadline(time.Now().Add(time.Second))
				b, _ := io.ReadAll(c)
				t.Fatalf("request never %s (left %d): %q\n%s", what, left(), b, tg.access.String())
			}
		}
	}
	io.WriteString(c, "POST /slow HTTP/1.1\r\nHost: localhost\r\nContent-Type: text/plain\r\nContent-Length: 10\r\n\r\nhello")
	waitLeft(func(n int64) bool { return n > 0 || n == -2 }, "reached the handler")
	io.WriteString(c, "world")
	waitLeft(func(n int64) bool { return n == 0 }, "read its body")
	closeAndWait499(t, tg, c)
}

// closeAndWait499 closes the client's connection c and waits for the
// access log to say 499 (the request cancelled), well before the app's
// /slow would have answered.
func closeAndWait499(t *testing.T, tg *testGateway, c net.Conn) {
	t.Helper()
	start := time.Now()
	c.Close()
	for deadline := time.Now().Add(4 * time.Second); ; time.Sleep(5 * time.Millisecond) {
		if strings.Contains(tg.access.String(), `"status":499`) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no 499 access line %v after the client left: %s", time.Since(start), tg.access.String())
		}
	}
}

// exchangeAll reads the statuses of the answers on c until it closes.
func exchangeAll(c *tls.Conn) (string, error) {
	br := bufio.NewReader(c)
	var got []string
	for {
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			if err == io.EOF || err == io.ErrUnexpectedEOF {
				err = nil // the connection closed
			}
			return strings.Join(got, " "), err
		}
		io.Copy(io.Discard, resp.Body)
		got = append(got, fmt.Sprint(resp.StatusCode))
	}
}

// FuzzFastWriterSameAsNetHTTP: whatever fields, status and body a
// handler writes, the fast path's answer has net/http's server's head
// byte for byte (but Date) and the same body, for a GET or a HEAD sent
// with Connection: close. Fields the gateway's handler never sets and
// the fast path deliberately frames itself (Transfer-Encoding,
// Content-Length, trailers) are left out.
func FuzzFastWriterSameAsNetHTTP(f *testing.F) {
	f.Add(200, false, "Content-Type: text/plain\nX-B: 1\nx-a: 2\n", []byte("hello"), uint8(1))
	f.Add(200, true, "X-A: 1\n", []byte("<html><body>hi"), uint8(2))
	f.Add(204, false, "Content-Type: text/plain\nEtag: \"x\"\n", []byte("no"), uint8(1))
	f.Add(304, false, "Content-Type: text/plain\nEtag: \"x\"\n", []byte(""), uint8(1))
	f.Add(299, false, "", []byte("odd status"), uint8(1))
	f.Add(503, false, "Connection: close\nRetry-After: 1\n", []byte("busy"), uint8(1))
	f.Add(200, false, "Connection: keep-alive\n", []byte("kept"), uint8(1))
	f.Add(200, false, "Date: Mon, 01 Jan 2024 00:00:00 GMT\nContent-Encoding: gzip\n", []byte("\x1f\x8b"), uint8(1))
	f.Add(200, false, "X-A: a\r\n b\nX B: bad name\nX-Empty:\n", []byte(strings.Repeat("x", 3000)), uint8(3))
	f.Add(200, true, "", []byte(strings.Repeat("y", 5000)), uint8(4))
	ca := testpki.NewCA(f, td)
	cert := ca.ServerCert(f, "", "localhost")
	var handler http.HandlerFunc
	l := listen(f)
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { handler(w, r) }),
		ErrorLog: log.New(io.Discard, "", 0)}
	go srv.Serve(l)
	f.Cleanup(func() { srv.Close() })
	f.Fuzz(func(t *testing.T, status int, head bool, fields string, body []byte, writes uint8) {
		if status < 200 || status > 999 {
			status = 200 + int(uint(status)%800)
		}
		method := http.MethodGet
		if head {
			method = http.MethodHead
		}
		var kvs [][2]string
		for _, line := range strings.Split(fields, "\n") {
			k, v, ok := strings.Cut(line, ":")
			ck := http.CanonicalHeaderKey(k)
			if !ok || ck == "Content-Length" || ck == "Transfer-Encoding" || ck == "Trailer" || strings.HasPrefix(ck, http.TrailerPrefix) {
				continue
			}
			kvs = append(kvs, [2]string{k, v})
		}
		n := int(writes%4) + 1
		handler = func(w http.ResponseWriter, r *http.Request) {
			for _, kv := range kvs {
				w.Header().Add(kv[0], kv[1])
			}
			w.WriteHeader(status)
			for i := range n {
				w.Write(body[i*len(body)/n : (i+1)*len(body)/n])
			}
		}
		req := method + " / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"

		// net/http's server.
		c, err := net.Dial("tcp", l.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		c.SetDeadline(time.Now().Add(5 * time.Second))
		io.WriteString(c, req)
		want, _ := io.ReadAll(c)
		c.Close()

		// The fast path's writer on a TLS connection over a pipe.
		cs, ss := net.Pipe()
		got := make(chan []byte, 1)
		go func() {
			cc := tls.Client(cs, &tls.Config{RootCAs: ca.Pool(), ServerName: "localhost"})
			cc.SetDeadline(time.Now().Add(5 * time.Second))
			b, _ := io.ReadAll(cc)
			cc.Close()
			got <- b
		}()
		sc := tls.Server(ss, &tls.Config{Certificates: []tls.Certificate{cert}})
		sc.SetDeadline(time.Now().Add(5 * time.Second))
		if err := sc.Handshake(); err != nil {
			t.Fatal(err)
		}
		fc := &fastConn{g: &Gateway{}, tc: sc}
		r := &http.Request{Method: method, URL: &url.URL{Path: "/"}, Proto: "HTTP/1.1", ProtoMajor: 1, ProtoMinor: 1,
			Header: http.Header{"Connection": {"close"}}, Host: "localhost", RequestURI: "/", Close: true, Body: http.NoBody}
		w := &fc.rw
		*w = fastWriter{fc: fc, req: r, cl: -1, closeAfter: true}
		handler(w, r)
		w.finish()
		sc.Close()

		gh, gb := splitAnswer(t, <-got, method)
		wh, wb := splitAnswer(t, want, method)
		if gh != wh || gb != wb {
			t.Errorf("fast path:\n%q\n%q\nnet/http:\n%q\n%q", gh, gb, wh, wb)
		}
	})
}

// splitAnswer is an HTTP/1.1 answer's head (Date's value taken out) and
// its decoded body.
func splitAnswer(t *testing.T, b []byte, method string) (head, body string) {
	t.Helper()
	i := bytes.Index(b, []byte("\r\n\r\n"))
	if i < 0 {
		t.Fatalf("no head in %q", b)
	}
	head = dateField.ReplaceAllString(string(b[:i+2]), "Date: (date)\r\n")
	resp, err := http.ReadResponse(bufio.NewReader(bytes.NewReader(b)), &http.Request{Method: method})
	if err != nil {
		// A field value no client accepts (both servers send one the
		// handler set): the rest as it came.
		return head, "(unparsed) " + string(b[i:])
	}
	rb, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("body: %v: %q", err, b)
	}
	return head, string(rb)
}
