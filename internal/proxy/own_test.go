package proxy

import (
	"bufio"
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
)

// The sidecar's own answer to a request whose body it has not read — the
// inbound's policy denial (DELETE is denied here), the outbound's refusal
// of a target policy cannot decide — goes out at once while the client
// withholds the rest of its body, whatever is still to come of it, on
// both server paths; it says Connection: close and the connection
// closes after it, so that the rest of the announced body is never read
// as a request.
func TestOwnAnswerNotHeld(t *testing.T) {
	forServerPaths(t, func(t *testing.T, sp serverPath) {
		p := newPairWith(t, allowPrincipals(policy.ModeStrict, "example.org/ns/prod/sa/frontend"), earlyAnswerApp(t), HTTP, false, sp.edit)
		src := newStaticIdentity(p.ca, p.ca.SVID(t, frontendID, 0))
		ti := &tlsIdentity{src: src, now: time.Now, revoked: func() *revocationSet { return nil }}
		conf := ti.clientConfig(spiffeid.RequireFromString(ordersID), "", []string{"http/1.1"})
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
			for _, size := range []int{1 << 10, 60 << 10, 100 << 10, 255 << 10, 1 << 20} {
				t.Run(d.name+"_"+strconv.Itoa(size>>10)+"KiB", func(t *testing.T) {
					c, err := d.dial()
					if err != nil {
						t.Fatal(err)
					}
					defer c.Close()
					io.WriteString(c, d.line+"\r\nHost: orders\r\nContent-Length: "+strconv.Itoa(size)+"\r\n\r\n"+strings.Repeat("a", 512))
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
					io.WriteString(c, "GET /next HTTP/1.1\r\nHost: orders\r\n\r\n")
					rest, err := io.ReadAll(br)
					var ne net.Error
					if len(rest) > 0 || errors.As(err, &ne) && ne.Timeout() {
						t.Fatalf("after the answer: %q, %v; want the connection closed", rest, err)
					}
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
		p := newPairWith(t, allowPrincipals(policy.ModeStrict, "example.org/ns/prod/sa/frontend"), earlyAnswerApp(t), HTTP, false, sp.edit)
		src := newStaticIdentity(p.ca, p.ca.SVID(t, frontendID, 0))
		ti := &tlsIdentity{src: src, now: time.Now, revoked: func() *revocationSet { return nil }}
		conf := ti.clientConfig(spiffeid.RequireFromString(ordersID), "", []string{"http/1.1"})
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
