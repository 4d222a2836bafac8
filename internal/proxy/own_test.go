package proxy

import (
	"bufio"
	"crypto/tls"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/moatless/moatless/internal/policy"
	"github.com/moatless/moatless/internal/proxy/proxytest"
	"github.com/moatless/moatless/internal/testpki"
	"github.com/moatless/moatless/internal/wire"
)

// The sidecar's own answer to a request whose body it has not read — the
// inbound's policy denial (DELETE is denied here), the outbound's refusal
// of a target policy cannot decide — goes out at once while the client
// withholds the rest of its body, whatever is still to come of it, or
// waits for 100 Continue, on both server paths; it says Connection: close and the connection
// closes after it, so that the rest of the announced body is never read
// as a request.
func TestOwnAnswerNotHeld(t *testing.T) {
	forServerPaths(t, func(t *testing.T, sp serverPath) {
		p := newPairWith(t, allowPrincipals(policy.ModeStrict, "example.org/ns/prod/sa/frontend"), proxytest.EarlyApp(t), HTTP, false, sp.edit)
		conf := p.frontendHTTP1(t)
		dials := []struct {
			name, line string
			want       int
			dial       func() (net.Conn, error)
		}{
			{"outbound_undecidable", "POST /a/..%2F..%2Fb HTTP/1.1", 400, func() (net.Conn, error) {
				return net.Dial("tcp", strings.TrimPrefix(p.outboundURL, "http://"))
			}},
			{"inbound_denied", "DELETE /orders/1 HTTP/1.1", 403, func() (net.Conn, error) { return tls.Dial("tcp", p.inboundAddr, conf) }},
		}
		for _, d := range dials {
			for _, size := range []int{1 << 10, 60 << 10, 100 << 10, 255 << 10, 1 << 20, -(1 << 10)} {
				// A negative size: Expect: 100-continue, nothing of the
				// body sent.
				name, head, body := d.name+"_"+strconv.Itoa(size>>10)+"KiB", "", strings.Repeat("a", 512)
				if size < 0 {
					size, name, head, body = -size, d.name+"_expect_continue", "Expect: 100-continue\r\n", ""
				}
				t.Run(name, func(t *testing.T) {
					c, err := d.dial()
					if err != nil {
						t.Fatal(err)
					}
					defer c.Close()
					io.WriteString(c, d.line+"\r\nHost: orders\r\n"+head+"Content-Length: "+strconv.Itoa(size)+"\r\n\r\n"+body)
					// Far below the sidecar's timeouts: an answer that
					// waits for one fails.
					c.SetReadDeadline(time.Now().Add(5 * time.Second))
					br := bufio.NewReader(c)
					resp, err := http.ReadResponse(br, nil)
					if err != nil {
						t.Fatalf("no answer: %v", err)
					}
					io.ReadAll(resp.Body)
					if resp.StatusCode != d.want || !resp.Close {
						t.Fatalf("answer %d close=%v, want %d and Connection: close", resp.StatusCode, resp.Close, d.want)
					}
					closedAfterAnswer(t, c, br)
				})
			}
		}
	})
}

// A denied request whose body was sent whole keeps its connection on
// both server paths (the sidecar reads what is already there), and the
// next request on it is served; except a body over fastMaxBody on the
// fast path, which hands such a request to net/http's server and closes
// the connection after it, as it always has.
func TestDeniedWholeBodyKeepsConnection(t *testing.T) {
	forServerPaths(t, func(t *testing.T, sp serverPath) {
		p := newPairWith(t, allowPrincipals(policy.ModeStrict, "example.org/ns/prod/sa/frontend"), proxytest.EarlyApp(t), HTTP, false, sp.edit)
		conf := p.frontendHTTP1(t)
		for _, size := range []int{1, 1 << 10, 60 << 10, 100 << 10} {
			t.Run(strconv.Itoa(size), func(t *testing.T) {
				c, err := tls.Dial("tcp", p.inboundAddr, conf)
				if err != nil {
					t.Fatal(err)
				}
				defer c.Close()
				c.SetDeadline(time.Now().Add(10 * time.Second))
				br := bufio.NewReader(c)
				io.WriteString(c, "DELETE /orders/1 HTTP/1.1\r\nHost: orders\r\nContent-Length: "+strconv.Itoa(size)+"\r\n\r\n"+strings.Repeat("a", size))
				resp, err := http.ReadResponse(br, nil)
				if err != nil {
					t.Fatal(err)
				}
				io.ReadAll(resp.Body)
				handedOff := !sp.disable && size > fastMaxBody
				if resp.StatusCode != 403 || resp.Close != handedOff {
					t.Fatalf("answer %d close=%v, want 403 close=%v", resp.StatusCode, resp.Close, handedOff)
				}
				if handedOff {
					return
				}
				io.WriteString(c, "POST /echo HTTP/1.1\r\nHost: orders\r\nContent-Length: 3\r\n\r\nabc")
				resp, err = http.ReadResponse(br, nil)
				if err != nil {
					t.Fatalf("the next request on the connection: %v", err)
				}
				b, _ := io.ReadAll(resp.Body)
				if resp.StatusCode != 200 || string(b) != "3" {
					t.Fatalf("the next request on the connection: %d %q", resp.StatusCode, b)
				}
			})
		}
	})
}

// The traffic records of both sidecars count the request body bytes
// read, not the Content-Length announced: a request the app answers
// before reading its 1 MiB body, and one the inbound denies, each sent
// 1,000 bytes of it; a request read whole counts its body, also when the
// app fails midway through its answer (the forward aborted). Before, the
// first two records said 1,048,576, and an aborted forward's 0 on
// net/http's server.
func TestRecordCountsBodyBytesRead(t *testing.T) {
	forServerPaths(t, func(t *testing.T, sp serverPath) {
		ca := testpki.NewCA(t, "example.org")
		var in, out reports
		inRec := newTestRecorder(t, &in, RecorderConfig{Namespace: "prod", Ports: []int{8080}})
		outRec := newTestRecorder(t, &out, RecorderConfig{})
		inL := listen(t)
		startSidecar(t, Config{
			Identity: newStaticIdentity(ca, ca.SVID(t, ordersID, 0)), Namespace: "prod",
			Inbound:              []Inbound{{Name: "in", Listener: inL, App: proxytest.EarlyApp(t), Port: 8080}},
			Authorizer:           allowPrincipals(policy.ModeStrict, "example.org/ns/prod/sa/frontend"),
			Recorder:             inRec,
			DisableHTTP1FastPath: sp.disable,
		})
		outL := listen(t)
		startSidecar(t, Config{
			Identity:             newStaticIdentity(ca, ca.SVID(t, frontendID, 0)),
			Outbound:             []Outbound{{Name: "out", Listener: outL, Upstream: inL.Addr().String(), ID: spiffeid.RequireFromString(ordersID), HTTP1: true}},
			Recorder:             outRec,
			DisableHTTP1FastPath: sp.disable,
		})
		const sent = 1000
		const next = "GET /next HTTP/1.1\r\nHost: orders\r\n\r\n"
		for _, line := range []string{"POST /early HTTP/1.1", "DELETE /denied HTTP/1.1", "POST /echo HTTP/1.1", "POST /abort HTTP/1.1"} {
			c, err := net.Dial("tcp", outL.Addr().String())
			if err != nil {
				t.Fatal(err)
			}
			declared := 1 << 20
			if strings.HasPrefix(line, "POST /echo") || strings.HasPrefix(line, "POST /abort") {
				declared = sent
			}
			io.WriteString(c, line+"\r\nHost: orders\r\nContent-Length: "+strconv.Itoa(declared)+"\r\n\r\n"+strings.Repeat("a", sent))
			c.SetReadDeadline(time.Now().Add(5 * time.Second))
			br := bufio.NewReader(c)
			resp, err := http.ReadResponse(br, nil)
			if err != nil {
				t.Fatalf("%s: %v", line, err)
			}
			io.ReadAll(resp.Body)
			if declared > sent {
				io.WriteString(c, next) // read as body, if at all
				io.ReadAll(br)
			}
			c.Close()
		}
		for _, side := range []struct {
			name string
			r    *reports
			rec  *Recorder
		}{{"inbound", &in, inRec}, {"outbound", &out, outRec}} {
			// A request is counted once its answer is written: the
			// client may have read it first. Poll for the four.
			edges := side.r.edges(t, side.rec)
			for deadline := time.Now().Add(5 * time.Second); countPaths(edges, "/early", "/denied", "/echo", "/abort") < 4 && time.Now().Before(deadline); {
				time.Sleep(10 * time.Millisecond)
				edges = side.r.edges(t, side.rec)
			}
			seen := 0
			for k, e := range edges {
				switch e.Path {
				case "/early", "/denied":
					seen++
					if e.ReqBytes > sent+uint64(len(next)) {
						t.Errorf("%s record %q: %d request bytes, the client sent %d", side.name, k, e.ReqBytes, sent+len(next))
					}
				case "/echo", "/abort":
					seen++
					if e.ReqBytes != sent {
						t.Errorf("%s record %q: %d request bytes, want %d", side.name, k, e.ReqBytes, sent)
					}
				}
			}
			if seen != 4 {
				t.Errorf("%s records: %d of 4 requests: %v", side.name, seen, edges)
			}
		}
	})
}

// countPaths counts the edges of the given paths.
func countPaths(edges map[string]wire.EdgeRecord, paths ...string) int {
	n := 0
	for _, e := range edges {
		for _, p := range paths {
			if e.Path == p {
				n++
			}
		}
	}
	return n
}

// After its own answer to a request whose body it did not read, the
// sidecar goes on reading what the client still sends of that body (a
// lingering close) instead of closing with unread data, which the kernel
// answers with an RST: a client that reads the answer and then sends the
// rest of its 1 MiB body has every write accepted, and then sees the
// connection end.
func TestOwnAnswerLingers(t *testing.T) {
	forServerPaths(t, func(t *testing.T, sp serverPath) {
		p := newPairWith(t, allowPrincipals(policy.ModeStrict, "example.org/ns/prod/sa/frontend"), proxytest.EarlyApp(t), HTTP, false, sp.edit)
		conf := p.frontendHTTP1(t)
		for _, size := range []int{60 << 10, 1 << 20} {
			t.Run(strconv.Itoa(size>>10)+"KiB", func(t *testing.T) {
				c, err := tls.Dial("tcp", p.inboundAddr, conf)
				if err != nil {
					t.Fatal(err)
				}
				defer c.Close()
				c.SetDeadline(time.Now().Add(10 * time.Second))
				io.WriteString(c, "DELETE /orders/1 HTTP/1.1\r\nHost: orders\r\nContent-Length: "+strconv.Itoa(size)+"\r\n\r\n"+strings.Repeat("a", 1000))
				br := bufio.NewReader(c)
				resp, err := http.ReadResponse(br, nil)
				if err != nil {
					t.Fatalf("no answer: %v", err)
				}
				io.ReadAll(resp.Body)
				if resp.StatusCode != 403 || !resp.Close {
					t.Fatalf("answer %d close=%v, want 403 and Connection: close", resp.StatusCode, resp.Close)
				}
				chunk := []byte(strings.Repeat("b", 16<<10))
				for left := size - 1000; left > 0; left -= len(chunk) {
					if _, err := c.Write(chunk[:min(left, len(chunk))]); err != nil {
						t.Fatalf("write after the answer, %d bytes left: %v", left, err)
					}
				}
				if rest, err := io.ReadAll(br); len(rest) > 0 || err != nil {
					t.Fatalf("after the answer: %q, %v; want the connection closed", rest, err)
				}
			})
		}
	})
}
