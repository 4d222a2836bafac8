package gateway

import (
	"bufio"
	"crypto/tls"
	"io"
	"net/http"
	"net/http/httptrace"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/moatless/moatless/internal/config"
	"github.com/moatless/moatless/internal/proxy/proxytest"
	"github.com/moatless/moatless/internal/testpki"
	"github.com/moatless/moatless/internal/wire"
)

// uploadAfterAnswer posts size bytes to path on a fresh HTTP/1.1
// connection as a client that sends its whole body before it reads
// anything: the head and 1,000 bytes first (with Expect: 100-continue
// when expect, as curl does, which then sends the body after a second
// without a 100), then, once the answer is in the access log, the rest in
// 16 KiB writes pause apart; then it reads the answer, which must be want
// with a body starting with wantBody and say Connection: close. A write
// that fails (the connection reset after the answer) or an answer lost
// fails the test. A body of at most 4 KiB is sent whole with the head
// (the gateway may read it whole before forwarding: the WAF inspects
// it), and its answer may keep the connection.
func uploadAfterAnswer(t *testing.T, tg *testGateway, path string, size int, expect bool, pause time.Duration, want int, wantBody string) {
	t.Helper()
	c, err := tls.Dial("tcp", tg.addr, &tls.Config{RootCAs: tg.ca.Pool(), ServerName: "localhost", NextProtos: []string{"http/1.1"}})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	logged := `"status":` + strconv.Itoa(want) + `,`
	answered := strings.Count(tg.access.String(), logged)
	head := "POST " + path + " HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/octet-stream\r\nContent-Length: " + strconv.Itoa(size) + "\r\n"
	if expect {
		head += "Expect: 100-continue\r\n"
	}
	first := 1000
	if size <= 4<<10 {
		first = size
	}
	if _, err := io.WriteString(c, head+"\r\n"+strings.Repeat("a", first)); err != nil {
		t.Fatal(err)
	}
	// The request was answered (its access log line is written as the
	// answer goes out) before the client sends the rest.
	deadline := time.Now().Add(5 * time.Second)
	for strings.Count(tg.access.String(), logged) == answered {
		if time.Now().After(deadline) {
			t.Fatalf("no %d logged within 5 s while the client withholds %d bytes", want, size-first)
		}
		time.Sleep(5 * time.Millisecond)
	}
	c.SetDeadline(time.Now().Add(10 * time.Second))
	chunk := []byte(strings.Repeat("b", 16<<10))
	for left := size - first; left > 0; left -= len(chunk) {
		time.Sleep(pause) // the client's pace, not a wait for the gateway
		if _, err := c.Write(chunk[:min(left, len(chunk))]); err != nil {
			// Within the lingering bounds the upload is read, not reset
			// (a client such as curl then reports the failed send, not
			// the answer).
			t.Fatalf("write after the answer, %d bytes left: %v", left, err)
		}
	}
	br := bufio.NewReader(c)
	resp, err := http.ReadResponse(br, nil)
	for err == nil && resp.StatusCode == http.StatusContinue {
		resp, err = http.ReadResponse(br, nil)
	}
	if err != nil {
		t.Fatalf("the answer was lost: %v", err)
	}
	b, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != want || !strings.HasPrefix(string(b), wantBody) || first < size && !resp.Close {
		t.Fatalf("answer %d close=%v %q: %v; want %d %q and close", resp.StatusCode, resp.Close, b, err, want, wantBody)
	}
}

// A client that sends its whole body before it reads anything still
// reads the upstream's early answer (a 413 from the head, an answer and
// a close), on both HTTP/1.1 server paths, whatever the body's size and
// pace and with Expect: 100-continue: the gateway closes the connection
// lingering after the answer, as after its own answers, instead of
// leaving it to net/http's server, which stops reading (the upstream no
// longer wants the body), sends FIN, waits 500 ms and closes with the
// client's bytes unread, so that the kernel resets the connection (the
// client's writes fail, and its unread answer may be dropped).
func TestEarlyUpstreamAnswerClientStillSending(t *testing.T) {
	ca := testpki.NewCA(t, td)
	up := startUpstream(t, ca, ordersID, proxytest.EarlyApp(t))
	type sizePace struct {
		size  int
		pause time.Duration
	}
	// 1 KiB is sent whole with the head; 15 ms between 16 KiB writes is a
	// slow uploader, still sending after net/http's 500 ms.
	uploads := []sizePace{{1 << 10, 0}, {100 << 10, 0}, {255 << 10, 0}, {1 << 20, 0}, {1 << 20, 15 * time.Millisecond}}
	answers := []struct {
		name, path string
		want       int
		wantBody   string
	}{
		{"413", "/orders/early/now", 413, "upload refused"}, // the upstream keeps its connection when it can
		{"close", "/orders/early/close", 401, "nope"},       // the upstream closes its connection
	}
	for _, fast := range []bool{true, false} {
		tg := startGatewayWith(t, ca, up, func(c *config.Gateway) { c.DisableHTTP1FastPath = !fast })
		for _, a := range answers {
			for _, u := range uploads {
				for _, expect := range []bool{false, true} {
					if expect && u.size <= 4<<10 {
						// Sent whole with the head: not a client waiting
						// for 100 Continue.
						continue
					}
					name := ownPath(fast) + "_" + a.name + "_" + strconv.Itoa(u.size>>10) + "KiB"
					if u.pause > 0 {
						name += "_slow"
					}
					if expect {
						name += "_expect_continue"
					}
					t.Run(name, func(t *testing.T) {
						uploadAfterAnswer(t, tg, a.path, u.size, expect, u.pause, a.want, a.wantBody)
					})
				}
			}
		}
		// The upstream still serves.
		if resp, b := tg.do(t, "POST", "/orders/echo", strings.NewReader("x"), nil); resp.StatusCode != 200 || string(b) != "1" {
			t.Fatalf("after the early answers: %d %q", resp.StatusCode, b)
		}
	}
}

// On HTTP/2 an early answer ends only its stream (RST_STREAM with
// NO_ERROR once the answer is sent), however much of the body the client
// is still sending: the answer arrives whole, and the next request goes
// on the same connection. Nothing lingers: there is no connection to
// close.
func TestEarlyUpstreamAnswerClientStillSendingH2(t *testing.T) {
	ca := testpki.NewCA(t, td)
	up := startUpstream(t, ca, ordersID, proxytest.EarlyApp(t))
	tg := startGatewayWith(t, ca, up, nil)
	h2 := h2Client(tg)
	defer h2.CloseIdleConnections()
	for _, path := range []string{"/orders/early/now", "/orders/early/close", "/private/1"} {
		for _, size := range []int{1 << 10, 255 << 10, 1 << 20} {
			t.Run(strings.TrimPrefix(strings.ReplaceAll(path, "/", "_"), "_")+"_"+strconv.Itoa(size>>10)+"KiB", func(t *testing.T) {
				// The whole body, written as fast as the stream's flow
				// control lets it, while the answer comes.
				pr, pw := io.Pipe()
				go func() {
					chunk := []byte(strings.Repeat("b", 16<<10))
					for left := size; left > 0; left -= len(chunk) {
						if _, err := pw.Write(chunk[:min(left, len(chunk))]); err != nil {
							return
						}
					}
					pw.Close()
				}()
				defer pr.Close()
				req, err := http.NewRequest("POST", tg.url(path), pr)
				if err != nil {
					t.Fatal(err)
				}
				req.ContentLength = int64(size)
				resp, err := h2.Do(req)
				if err != nil {
					t.Fatalf("no answer: %v", err)
				}
				b, err := io.ReadAll(resp.Body)
				resp.Body.Close()
				if err != nil || resp.ProtoMajor != 2 || resp.StatusCode < 400 || len(b) == 0 {
					t.Fatalf("answer %s %d %q: %v", resp.Proto, resp.StatusCode, b, err)
				}
				var reused bool
				ctx := httptrace.WithClientTrace(t.Context(), &httptrace.ClientTrace{GotConn: func(i httptrace.GotConnInfo) { reused = i.Reused }})
				next, err := http.NewRequestWithContext(ctx, "GET", tg.url("/orders/after"), nil)
				if err != nil {
					t.Fatal(err)
				}
				resp, err = h2.Do(next)
				if err != nil {
					t.Fatal(err)
				}
				resp.Body.Close()
				if resp.StatusCode != 200 || !reused {
					t.Fatalf("after the early answer: %d, connection reused %v", resp.StatusCode, reused)
				}
			})
		}
	}
}

// limits.linger_bytes, linger_time and linger_timeout bound the
// gateway's lingering closes on both HTTP/1.1 server paths, a reload
// applies new values to the lingering closes that begin after it (one
// with a value out of range is refused and changes nothing), and
// moatless_gateway_lingering_connections and
// moatless_gateway_lingering_closes_total count them by how they ended.
// Each case's client behaves so that the defaults (2 s idle, 5 s in all,
// 10 MiB) would end its close otherwise than the setting does, and the
// bounds a case does not test are set so that a starved client (a loaded
// machine under -race) cannot meet them first: which bound ends a close
// is decided by what the client does, never by how fast it runs. (Before,
// the client_closed case ran under a 100 ms idle bound and the
// time_limit case under a 200 ms one, so a client that took longer than
// that to read its answer, close or write its next byte ended the close
// by idle_timeout; and a client that closed before a starved gateway had
// read its bytes reset the connection, read as client_closed:
// TestGatewayLingerSettings/fast failed so at load 10.)
func TestGatewayLingerSettings(t *testing.T) {
	for _, fast := range []bool{true, false} {
		t.Run(ownPath(fast), func(t *testing.T) {
			reg := prometheus.NewRegistry()
			ca := testpki.NewCA(t, td)
			tg := startGatewayWith(t, ca, startUpstream(t, ca, ordersID, echoApp(t)), func(c *config.Gateway) {
				c.DisableHTTP1FastPath = !fast
				c.Limits.MaxBodyBytes = 64 << 10
				c.Limits.LingerBytes = 128 << 10
				// Only the byte cap ends the first close.
				c.Limits.LingerTime, c.Limits.LingerTimeout = wire.Duration(time.Minute), wire.Duration(time.Minute)
			}, func(o *Options) { o.Registerer = reg })
			reload := func(edit func(l *config.GatewayLimits)) {
				t.Helper()
				c := tg.g.state.Load().cfg
				edit(&c.Limits)
				if err := tg.g.Reload(t.Context(), c); err != nil {
					t.Fatal(err)
				}
			}
			// denied sends the head of a 1 MiB POST (over the body
			// limit: 413) and 1,000 bytes of its body, reads the answer
			// and returns the connection, lingering.
			denied := func() *tls.Conn {
				t.Helper()
				c, err := tls.Dial("tcp", tg.addr, &tls.Config{RootCAs: tg.ca.Pool(), ServerName: "localhost", NextProtos: []string{"http/1.1"}})
				if err != nil {
					t.Fatal(err)
				}
				t.Cleanup(func() { c.Close() })
				c.SetDeadline(time.Now().Add(10 * time.Second))
				io.WriteString(c, "POST /private/1 HTTP/1.1\r\nHost: localhost\r\nContent-Length: 1048576\r\n\r\n"+strings.Repeat("a", 1000))
				resp, err := http.ReadResponse(bufio.NewReader(c), nil)
				if err != nil {
					t.Fatal(err)
				}
				resp.Body.Close()
				if resp.StatusCode != 413 || !resp.Close {
					t.Fatalf("answer %d close=%v, want 413 and close", resp.StatusCode, resp.Close)
				}
				return c
			}
			wantEnded := map[string]float64{}
			ended := func(end string, within time.Duration) {
				t.Helper()
				wantEnded[end]++
				pollMetrics(t, reg, within, func(m map[string]float64) bool {
					return m[`closes{end="`+end+`"}`] == wantEnded[end] && m["now"] == 0
				})
			}

			// linger_bytes: the client sends its whole 1 MiB after the
			// answer and keeps its end open; the gateway stops at 128 KiB
			// (the default would read it all, then time out idle). The
			// client closes only once the close has ended: closing with
			// the gateway's close_notify unread sends an RST, which a
			// gateway starved before it read 128 KiB takes for the
			// client's close (it did at load 20).
			c := denied()
			pollMetrics(t, reg, 5*time.Second, func(m map[string]float64) bool { return m["now"] == 1 })
			chunk := []byte(strings.Repeat("b", 16<<10))
			for i := 0; i < 64; i++ {
				if _, err := c.Write(chunk); err != nil {
					break // reset once the cap was read: expected
				}
			}
			ended("byte_limit", 10*time.Second)
			c.Close()

			// linger_time, after a reload: the client sends a byte every
			// 20 ms for up to 2 s and keeps its end open (the defaults:
			// idle_timeout 2 s after its last byte). The idle bound is the
			// total one, so that a client starved between two bytes does
			// not end it first.
			reload(func(l *config.GatewayLimits) {
				l.LingerTime, l.LingerTimeout = wire.Duration(300*time.Millisecond), wire.Duration(300*time.Millisecond)
			})
			c = denied()
			for end := time.Now().Add(2 * time.Second); time.Now().Before(end); time.Sleep(20 * time.Millisecond) {
				if _, err := c.Write([]byte("b")); err != nil {
					break
				}
			}
			ended("time_limit", 10*time.Second)
			c.Close()

			// linger_timeout: the client sends a byte every 500 ms and
			// keeps its end open; the first pause ends the close (the
			// defaults, 2 s idle, read on until 5 s: time_limit). A
			// starved client only pauses longer.
			reload(func(l *config.GatewayLimits) {
				l.LingerTime, l.LingerTimeout = wire.Duration(5*time.Second), wire.Duration(100*time.Millisecond)
			})
			c = denied()
			paced := make(chan struct{})
			stop := make(chan struct{})
			go func() {
				defer close(paced)
				for {
					select {
					case <-stop:
						return
					case <-time.After(500 * time.Millisecond): // the client's pace
					}
					if _, err := c.Write([]byte("b")); err != nil {
						return
					}
				}
			}()
			ended("idle_timeout", 10*time.Second)
			close(stop)
			<-paced
			c.Close()

			// The client closes, under bounds no starved client meets
			// first.
			reload(func(l *config.GatewayLimits) {
				l.LingerTime, l.LingerTimeout = wire.Duration(time.Minute), wire.Duration(time.Minute)
			})
			denied().Close()
			ended("client_closed", 10*time.Second)

			// A reload with a bound out of range is refused and changes
			// nothing.
			c0 := tg.g.state.Load().cfg
			bad := c0
			bad.Limits.LingerBytes = bad.Limits.MaxBodyBytes - 1
			if err := tg.g.Reload(t.Context(), bad); err == nil || !strings.Contains(err.Error(), "limits.linger_bytes") {
				t.Fatalf("reload with linger_bytes under max_body_bytes: %v", err)
			}
			if got := tg.g.state.Load().cfg.Limits; got != c0.Limits {
				t.Fatalf("a refused reload changed the limits: %+v, was %+v", got, c0.Limits)
			}
		})
	}
}

// pollMetrics polls reg's lingering metrics ("now", and
// `closes{end="…"}`) until ok holds, failing after within.
func pollMetrics(t *testing.T, reg *prometheus.Registry, within time.Duration, ok func(m map[string]float64) bool) {
	t.Helper()
	deadline := time.Now().Add(within)
	for {
		mfs, err := reg.Gather()
		if err != nil {
			t.Fatal(err)
		}
		m := map[string]float64{}
		for _, mf := range mfs {
			switch mf.GetName() {
			case "moatless_gateway_lingering_connections":
				m["now"] = mf.GetMetric()[0].GetGauge().GetValue()
			case "moatless_gateway_lingering_closes_total":
				for _, x := range mf.GetMetric() {
					m[`closes{end="`+x.GetLabel()[0].GetValue()+`"}`] = x.GetCounter().GetValue()
				}
			}
		}
		if ok(m) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("lingering metrics: %v", m)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// An upstream's early answer to a body the client withholds comes at
// once on both HTTP/1.1 server paths, for bodies from 100 KiB to 1 MiB
// (smaller ones the upstream's sidecar reads whole before its app sees
// the request), with and without Expect: 100-continue, the upstream
// keeping or closing its connection; the connection then closes, and
// what the client sends next is never read as a request (earlyH1).
func TestEarlyUpstreamAnswerBodyWithheld(t *testing.T) {
	ca := testpki.NewCA(t, td)
	up := startUpstream(t, ca, ordersID, proxytest.EarlyApp(t))
	for _, fast := range []bool{true, false} {
		tg := startGatewayWith(t, ca, up, func(c *config.Gateway) { c.DisableHTTP1FastPath = !fast })
		for _, a := range []struct {
			name, path, body string
			want             int
		}{{"413", "/orders/early/now", "upload refused", 413}, {"close", "/orders/early/close", "nope", 401}} {
			for _, size := range []int{100 << 10, 255 << 10, 1 << 20} {
				for _, expect := range []bool{false, true} {
					name := ownPath(fast) + "_" + a.name + "_" + strconv.Itoa(size>>10) + "KiB" + map[bool]string{true: "_expect_continue", false: ""}[expect]
					t.Run(name, func(t *testing.T) {
						earlyH1(t, tg, a.path, expect, size, 1000, 5*time.Second, a.want, a.body)
					})
				}
			}
		}
	}
}
