package proxy

import (
	"bufio"
	"bytes"
	"crypto/tls"
	"errors"
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
)

// frontendHTTP1 is the TLS config of a client of p's inbound that is
// frontend (which p's policy allows) speaking HTTP/1.1.
func (p *pair) frontendHTTP1(t testing.TB) *tls.Config {
	src := newStaticIdentity(p.ca, p.ca.SVID(t, frontendID, 0))
	ti := &tlsIdentity{src: src, now: time.Now, revoked: func() *revocationSet { return nil }}
	return ti.clientConfig(spiffeid.RequireFromString(ordersID), "", []string{"http/1.1"})
}

// sideDial dials one side of a pair as an HTTP/1.1 client.
type sideDial struct {
	name string
	dial func() (net.Conn, error)
}

// http1Sides dials p's outbound (plain HTTP, as the local app) and its
// inbound (mTLS with conf, as a peer).
func (p *pair) http1Sides(conf *tls.Config) []sideDial {
	return []sideDial{
		{"outbound", func() (net.Conn, error) { return net.Dial("tcp", strings.TrimPrefix(p.outboundURL, "http://")) }},
		{"inbound", func() (net.Conn, error) { return tls.Dial("tcp", p.inboundAddr, conf) }},
	}
}

// closedAfterAnswer sends c, after an answer that said Connection:
// close, what looks like the next request, and fails unless the
// connection (read through br) closes without answering it: the rest of
// an announced body must never be read as a request.
func closedAfterAnswer(t *testing.T, c net.Conn, br *bufio.Reader) {
	t.Helper()
	io.WriteString(c, "GET /next HTTP/1.1\r\nHost: orders\r\n\r\n")
	rest, err := io.ReadAll(br)
	var ne net.Error
	if len(rest) > 0 || errors.As(err, &ne) && ne.Timeout() {
		t.Fatalf("after the answer: %q, %v; want the connection closed", rest, err)
	}
}

// A sidecar relays an app's early answer (before it read the body) at
// once, on its outbound (plain HTTP/1.1 from the local app) and its
// inbound (mTLS HTTP/1.1), on both server paths, while the client
// withholds the rest of a body too large for the fast path to read
// whole; the connection then closes, so that the rest of the body is
// never read as a request, and the pair still serves.
func TestEarlyAnswerNotHeld(t *testing.T) {
	forServerPaths(t, func(t *testing.T, sp serverPath) {
		p := newPairWith(t, allowPrincipals(policy.ModeStrict, "example.org/ns/prod/sa/frontend"), proxytest.EarlyApp(t), HTTP, false, sp.edit)
		conf := p.frontendHTTP1(t)
		dials := p.http1Sides(conf)
		for _, d := range dials {
			t.Run(d.name, func(t *testing.T) {
				c, err := d.dial()
				if err != nil {
					t.Fatal(err)
				}
				defer c.Close()
				io.WriteString(c, "POST /early HTTP/1.1\r\nHost: orders\r\nContent-Length: 1048576\r\n\r\n"+strings.Repeat("a", 1000))
				// Far below the sidecar's timeouts: an answer that waits
				// for one fails.
				c.SetReadDeadline(time.Now().Add(5 * time.Second))
				br := bufio.NewReader(c)
				resp, err := http.ReadResponse(br, nil)
				if err != nil {
					t.Fatalf("no answer: %v", err)
				}
				b, _ := io.ReadAll(resp.Body)
				if resp.StatusCode != 413 || string(b) != "upload refused" || !resp.Close {
					t.Fatalf("answer %d %q close=%v, want 413 %q and Connection: close", resp.StatusCode, b, resp.Close, "upload refused")
				}
				closedAfterAnswer(t, c, br)
			})
		}
		resp, err := http.Post(p.outboundURL+"/echo", "text/plain", strings.NewReader(strings.Repeat("x", 100<<10)))
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 || string(b) != strconv.Itoa(100<<10) {
			t.Fatalf("a request after the early answers: %d %q", resp.StatusCode, b)
		}
	})
}

// After an app's early answer (before it read the body) the sidecar goes
// on reading what the client still sends of that body, on its outbound
// and its inbound and on both server paths, as after its own answers
// (TestOwnAnswerLingers): a client that reads the answer and then sends
// the rest of its body, at once or slowly, has every write accepted and
// then sees the connection end. Before, net/http's server stopped
// reading, waited 500 ms and closed, and the kernel reset the connection
// over the unread bytes.
func TestEarlyAnswerLingers(t *testing.T) {
	forServerPaths(t, func(t *testing.T, sp serverPath) {
		p := newPairWith(t, allowPrincipals(policy.ModeStrict, "example.org/ns/prod/sa/frontend"), proxytest.EarlyApp(t), HTTP, false, sp.edit)
		conf := p.frontendHTTP1(t)
		dials := p.http1Sides(conf)
		answers := []struct {
			path, name string
			want       int
		}{{"/early/now", "413", 413}, {"/early/close", "close", 401}}
		uploads := []struct {
			size  int
			pause time.Duration // between 16 KiB writes: a slow uploader still sending after 500 ms
		}{{100 << 10, 0}, {1 << 20, 0}, {1 << 20, 15 * time.Millisecond}}
		for _, d := range dials {
			for _, a := range answers {
				for _, u := range uploads {
					name := d.name + "_" + a.name + "_" + strconv.Itoa(u.size>>10) + "KiB"
					if u.pause > 0 {
						name += "_slow"
					}
					t.Run(name, func(t *testing.T) {
						c, err := d.dial()
						if err != nil {
							t.Fatal(err)
						}
						defer c.Close()
						c.SetDeadline(time.Now().Add(10 * time.Second))
						io.WriteString(c, "POST "+a.path+" HTTP/1.1\r\nHost: orders\r\nContent-Length: "+strconv.Itoa(u.size)+"\r\n\r\n"+strings.Repeat("a", 1000))
						br := bufio.NewReader(c)
						resp, err := http.ReadResponse(br, nil)
						if err != nil {
							t.Fatalf("no answer: %v", err)
						}
						io.ReadAll(resp.Body)
						if resp.StatusCode != a.want || !resp.Close {
							t.Fatalf("answer %d close=%v, want %d and Connection: close", resp.StatusCode, resp.Close, a.want)
						}
						chunk := []byte(strings.Repeat("b", 16<<10))
						for left := u.size - 1000; left > 0; left -= len(chunk) {
							time.Sleep(u.pause) // the client's pace
							if _, err := c.Write(chunk[:min(left, len(chunk))]); err != nil {
								t.Fatalf("write after the answer, %d bytes left: %v", left, err)
							}
						}
						if rest, err := io.ReadAll(br); len(rest) > 0 || err != nil {
							t.Fatalf("after the answer: %q, %v; want the connection closed", rest, err)
						}
					})
				}
			}
		}
	})
}

// A request that expects 100 Continue is answered by the app: the
// sidecars pass the expectation on (over HTTP/1.1 between them, as Go's
// HTTP/2 server keeps it to itself) and read the caller's body only once
// the app asked for it, so an app that refuses the upload from its head
// has its answer relayed at once, no 100 Continue before it, and the
// caller never sends the body; the connection then closes. An app that
// wants the body sends 100 Continue, relayed to the caller, then answers
// once it has it. On the outbound and the inbound, both server paths, a
// body the lean app client would have read whole and one it would not.
// Before, each sidecar read the body at once: the caller got 100 Continue
// from the sidecar, sent its body, and the app got it with no
// expectation.
func TestExpectContinueRelayed(t *testing.T) {
	forServerPaths(t, func(t *testing.T, sp serverPath) {
		p := newPairWith(t, allowPrincipals(policy.ModeStrict, "example.org/ns/prod/sa/frontend"), proxytest.EarlyApp(t), HTTP, false, sp.edit)
		conf := p.frontendHTTP1(t)
		cases := []struct {
			name, path string
			want       int
			wantBody   string // "": the body's length
		}{
			{"refused_full_duplex", "/early/now", 413, "upload refused"},
			{"refused", "/early/413", 413, "upload refused"},
			{"refused_and_closed", "/early/close", 401, "nope"},
			{"wanted", "/echo", 200, ""},
		}
		for _, d := range p.http1Sides(conf) {
			for _, tc := range cases {
				for _, size := range []int{1 << 10, 1 << 20} {
					// The expectation is a case-insensitive token (RFC
					// 9110 section 10.1.1): the larger upload spells it
					// as some clients do, and must be relayed the same.
					expect := "100-continue"
					if size > 1<<10 {
						expect = "100-Continue"
					}
					t.Run(d.name+"_"+tc.name+"_"+strconv.Itoa(size>>10)+"KiB", func(t *testing.T) {
						c, err := d.dial()
						if err != nil {
							t.Fatal(err)
						}
						defer c.Close()
						// Far below the sidecars' timeouts, and above the
						// 1 s a hop waits for 100 Continue before it sends
						// the body anyway.
						c.SetDeadline(time.Now().Add(5 * time.Second))
						io.WriteString(c, "POST "+tc.path+" HTTP/1.1\r\nHost: orders\r\nExpect: "+expect+"\r\nContent-Length: "+strconv.Itoa(size)+"\r\n\r\n")
						br := bufio.NewReader(c)
						start := time.Now()
						resp, err := http.ReadResponse(br, nil)
						if err != nil {
							t.Fatalf("no answer: %v", err)
						}
						if tc.wantBody == "" {
							if resp.StatusCode != 100 {
								t.Fatalf("answer %d before the body was sent, want 100 Continue from the app", resp.StatusCode)
							}
							c.Write(bytes.Repeat([]byte("a"), size))
							if resp, err = http.ReadResponse(br, nil); err != nil {
								t.Fatalf("no answer after the body: %v", err)
							}
							b, _ := io.ReadAll(resp.Body)
							if resp.StatusCode != tc.want || string(b) != strconv.Itoa(size) {
								t.Fatalf("answer %d %q, want %d %q", resp.StatusCode, b, tc.want, strconv.Itoa(size))
							}
							return
						}
						b, _ := io.ReadAll(resp.Body)
						if d := time.Since(start); resp.StatusCode != tc.want || string(b) != tc.wantBody || !resp.Close || d > expectContinueTimeout/2 {
							t.Fatalf("answer %d %q close=%v after %v, want %d %q and Connection: close at once (no body sent)", resp.StatusCode, b, resp.Close, d, tc.want, tc.wantBody)
						}
						closedAfterAnswer(t, c, br)
					})
				}
			}
		}
	})
}

// A Go app that refuses an upload from its head in full duplex and
// keeps the connection (/early/keep) has its next request served, on
// both server paths: it gets the expectation, so it is never sent the
// body. Before, the sidecars sent the body at once, the app's server
// read it after the handler and then panicked (golang/go#68560),
// dropping the connection the sidecar had kept for the next request,
// which got a 503.
func TestExpectContinueAppKeepsConnection(t *testing.T) {
	forServerPaths(t, func(t *testing.T, sp serverPath) {
		p := newPairWith(t, allowPrincipals(policy.ModeStrict, "example.org/ns/prod/sa/frontend"), proxytest.EarlyApp(t), HTTP, false, sp.edit)
		tr := &http.Transport{ExpectContinueTimeout: 5 * time.Second}
		defer tr.CloseIdleConnections()
		c := &http.Client{Transport: tr, Timeout: 10 * time.Second}
		for i := range 3 {
			req, _ := http.NewRequest("POST", p.outboundURL+"/early/keep", strings.NewReader(strings.Repeat("a", 1<<10)))
			req.Header.Set("Expect", "100-continue")
			resp, err := c.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != 413 {
				t.Fatalf("%d: %d, want the app's 413", i, resp.StatusCode)
			}
			resp, err = c.Post(p.outboundURL+"/echo", "text/plain", strings.NewReader("next"))
			if err != nil {
				t.Fatal(err)
			}
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != 200 || string(b) != "4" {
				t.Fatalf("%d: the request after the early answer: %d %q", i, resp.StatusCode, b)
			}
		}
	})
}

// An HTTP/2 caller (h2c, on the outbound) that expects 100 Continue gets
// it from the outbound as soon as the request is forwarded: Go's HTTP/2
// server keeps the expectation to itself and answers it when the body is
// first read, so it cannot be passed on. An app's early answer still
// comes at once, ends the stream, and the next request is served. (An
// app that answers and closes at once, /early/close, is left out: the
// inbound's transport, still writing the body, may see the reset first
// and answer 503; that race is not the expectation's.)
func TestExpectContinueH2C(t *testing.T) {
	p := newPairWith(t, allowPrincipals(policy.ModeStrict, "example.org/ns/prod/sa/frontend"), proxytest.EarlyApp(t), HTTP, false, nil)
	tr := &http.Transport{Protocols: new(http.Protocols), ExpectContinueTimeout: 5 * time.Second}
	tr.Protocols.SetUnencryptedHTTP2(true)
	defer tr.CloseIdleConnections()
	c := &http.Client{Transport: tr, Timeout: 10 * time.Second}
	for _, path := range []string{"/early/now", "/early/413"} {
		for _, size := range []int{1 << 10, 1 << 20} {
			req, _ := http.NewRequest("POST", p.outboundURL+path, bytes.NewReader(make([]byte, size)))
			req.Header.Set("Expect", "100-continue")
			resp, err := c.Do(req)
			if err != nil {
				t.Fatalf("%s %d: %v", path, size, err)
			}
			io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != 413 {
				t.Fatalf("%s %d: %d, want the app's answer", path, size, resp.StatusCode)
			}
			resp, err = c.Post(p.outboundURL+"/echo", "text/plain", strings.NewReader("next"))
			if err != nil {
				t.Fatalf("after %s %d: %v", path, size, err)
			}
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != 200 || string(b) != "4" {
				t.Fatalf("after %s %d: %d %q", path, size, resp.StatusCode, b)
			}
		}
	}
}

// The sidecar's own answer to a request it could not forward — the app
// closed the connection after reading 16 KiB of the body — comes before
// the body was read to its end, and ends as an app's early answer does,
// on both server paths: Connection: close, then a lingering close, so
// that a caller sending its whole body before it reads has every write
// accepted and reads the 503 (unless the whole body was read before the
// app failed: the connection then stays). Before, net/http's server
// closed the connection over the unread body after an answer that said
// it stays, and the caller's writes failed with a reset.
func TestUnforwardedAnswerLingers(t *testing.T) {
	forServerPaths(t, func(t *testing.T, sp serverPath) {
		p := newPairWith(t, allowPrincipals(policy.ModeStrict, "example.org/ns/prod/sa/frontend"), proxytest.EarlyApp(t), HTTP, false, sp.edit)
		conf := p.frontendHTTP1(t)
		for _, size := range []int{1 << 20, 4 << 20} {
			t.Run(strconv.Itoa(size>>10)+"KiB", func(t *testing.T) {
				c, err := tls.Dial("tcp", p.inboundAddr, conf)
				if err != nil {
					t.Fatal(err)
				}
				defer c.Close()
				c.SetDeadline(time.Now().Add(10 * time.Second))
				wrote := make(chan error, 1)
				go func() {
					_, err := io.WriteString(c, "POST /drop HTTP/1.1\r\nHost: orders\r\nContent-Length: "+strconv.Itoa(size)+"\r\n\r\n"+strings.Repeat("a", size))
					wrote <- err
				}()
				br := bufio.NewReader(c)
				resp, err := http.ReadResponse(br, nil)
				if err != nil {
					t.Fatalf("no answer: %v (write: %v)", err, <-wrote)
				}
				io.ReadAll(resp.Body)
				if resp.StatusCode != 503 {
					t.Fatalf("answer %d, want 503", resp.StatusCode)
				}
				if err := <-wrote; err != nil {
					t.Fatalf("writing the body: %v", err)
				}
				if resp.Close {
					if rest, err := io.ReadAll(br); len(rest) > 0 || err != nil {
						t.Fatalf("after the answer: %q, %v; want the connection closed", rest, err)
					}
					return
				}
				// The sidecar read the whole body before the app failed
				// (it fit in the socket buffers): the connection stays.
				io.WriteString(c, "POST /echo HTTP/1.1\r\nHost: orders\r\nContent-Length: 3\r\n\r\nabc")
				next, err := http.ReadResponse(br, nil)
				if err != nil {
					t.Fatalf("the answer said the connection stays; the next request: %v", err)
				}
				if b, _ := io.ReadAll(next.Body); next.StatusCode != 200 || string(b) != "3" {
					t.Fatalf("the next request: %d %q", next.StatusCode, b)
				}
			})
		}
	})
}

// An expectation reaches the app only as the sidecar's own server read
// it, through real sidecars on the outbound and the inbound, both server
// paths. One read two ways is refused with 417 (the client retries
// without it): two Expect fields, which net/http's server reads as the
// first and RFC 9110 section 5.3 as one list, and an Expect that
// Connection names (end to end, yet taken back from all but the first
// hop). An HTTP/1.0 client's expectation is ignored (RFC 9110 section
// 10.1.1), so the app, reached over HTTP/1.1, gets none; a value that
// net/http reads as 100-continue reaches the app as exactly that; a
// request without a body expects nothing. Before, all of these reached
// the app as sent.
func TestExpectReadOneWay(t *testing.T) {
	forServerPaths(t, func(t *testing.T, sp serverPath) {
		p := newPairWith(t, allowPrincipals(policy.ModeStrict, "example.org/ns/prod/sa/frontend"), proxytest.EarlyApp(t), HTTP, false, sp.edit)
		conf := p.frontendHTTP1(t)
		cases := []struct {
			name, head string
			body       string // sent with the head; "" waits for 100 Continue first
			want       int
			wantBody   string
		}{
			{"two_fields", "POST /expect HTTP/1.1\r\nHost: orders\r\nExpect: 100-continue\r\nExpect: 100-continue\r\nContent-Length: 5\r\n", "", 417, ""},
			{"empty_field_then_continue", "POST /expect HTTP/1.1\r\nHost: orders\r\nExpect: \r\nExpect: 100-continue\r\nContent-Length: 5\r\n", "", 417, ""},
			{"continue_then_other", "POST /expect HTTP/1.1\r\nHost: orders\r\nExpect: 100-continue\r\nExpect: x\r\nContent-Length: 5\r\n", "", 417, ""},
			{"named_by_connection", "POST /expect HTTP/1.1\r\nHost: orders\r\nConnection: Expect\r\nExpect: 100-continue\r\nContent-Length: 5\r\n", "", 417, ""},
			{"http10_ignored", "POST /expect HTTP/1.0\r\nHost: orders\r\nExpect: 100-continue\r\nContent-Length: 5\r\n", "hello", 200, `expect=[] n=5`},
			{"continue_among_others", "POST /expect HTTP/1.1\r\nHost: orders\r\nExpect: x 100-continue\r\nContent-Length: 5\r\n", "", 200, `expect=["100-continue"] n=5`},
			{"no_body", "GET /expect HTTP/1.1\r\nHost: orders\r\nExpect: 100-continue\r\n", "-", 200, `expect=[] n=0`},
		}
		for _, d := range p.http1Sides(conf) {
			for _, tc := range cases {
				t.Run(d.name+"_"+tc.name, func(t *testing.T) {
					c, err := d.dial()
					if err != nil {
						t.Fatal(err)
					}
					defer c.Close()
					c.SetDeadline(time.Now().Add(5 * time.Second))
					body := tc.body
					if body == "-" {
						body = ""
					}
					io.WriteString(c, tc.head+"\r\n"+body)
					br := bufio.NewReader(c)
					resp, err := http.ReadResponse(br, nil)
					if err != nil {
						t.Fatalf("no answer: %v", err)
					}
					if resp.StatusCode == 100 && tc.body == "" && tc.want == 200 {
						io.WriteString(c, "hello")
						if resp, err = http.ReadResponse(br, nil); err != nil {
							t.Fatalf("no answer after the body: %v", err)
						}
					}
					b, _ := io.ReadAll(resp.Body)
					if resp.StatusCode != tc.want || tc.wantBody != "" && string(b) != tc.wantBody {
						t.Fatalf("answer %d %q, want %d %q", resp.StatusCode, b, tc.want, tc.wantBody)
					}
					if tc.want == 417 {
						if !resp.Close {
							t.Fatal("a refused expectation leaves the connection open")
						}
						closedAfterAnswer(t, c, br)
					}
				})
			}
		}
	})
}
