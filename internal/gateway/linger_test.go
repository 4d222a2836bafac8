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

	"github.com/moatless/moatless/internal/config"
	"github.com/moatless/moatless/internal/proxy/proxytest"
	"github.com/moatless/moatless/internal/testpki"
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
