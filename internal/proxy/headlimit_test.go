package proxy

import (
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/moatless/moatless/internal/policy"
)

// hostileHeadApp answers by path: /line with a field line that never
// ends, /fields with 100 KiB of short fields, /continue with endless
// 100 Continue answers, /allowed with 24 KiB of fields and a 200 KiB
// body (under the head bound; the body is not bounded by it). After what
// it sent it waits for the proxy to give up. seen counts the requests
// it got by path.
func hostileHeadApp(t testing.TB) (addr string, seen func(path string) int) {
	t.Helper()
	var mu sync.Mutex
	count := map[string]int{}
	seen = func(path string) int { mu.Lock(); defer mu.Unlock(); return count[path] }
	return serveAnswers(t, func(req *http.Request) string {
		io.Copy(io.Discard, req.Body)
		mu.Lock()
		count[req.URL.Path]++
		mu.Unlock()
		var w strings.Builder
		switch req.URL.Path {
		case "/line":
			w.WriteString("HTTP/1.1 200 OK\r\nX-Endless: ")
			for range 1 << 10 {
				w.WriteString(strings.Repeat("a", 1<<10))
			}
		case "/fields":
			w.WriteString("HTTP/1.1 200 OK\r\n")
			for i := range 100 << 10 / 32 {
				fmt.Fprintf(&w, "X-F%05d: %21d\r\n", i, i)
			}
		case "/continue":
			for range 1 << 14 {
				w.WriteString("HTTP/1.1 100 Continue\r\n\r\n")
			}
		case "/allowed":
			w.WriteString("HTTP/1.1 200 OK\r\nContent-Length: 204800\r\n")
			for i := range 24 << 10 / 32 {
				fmt.Fprintf(&w, "X-F%05d: %21d\r\n", i, i)
			}
			w.WriteString("\r\n")
			w.WriteString(strings.Repeat("b", 200<<10))
		}
		// An unfinished answer leaves serveAnswers reading the
		// connection until the proxy gives up and closes it.
		return w.String()
	}).Addr().String(), seen
}

// An app (or an upstream: the same client code) cannot grow a sidecar's
// memory without bound with an answer whose head never ends: the head
// and any 1xx answers before it are bounded by maxResponseHeadBytes, and
// the caller gets 503 (upstream failure before headers) at once instead of a sidecar reading for as long
// as the app sends. An answer under the bound still passes whole, its
// body unbounded by it. Both server paths (the fast path relays through
// its own reader, net/http's through the lean client), and the outbound
// on HTTP/1.1 (the lean client towards the inbound) and HTTP/2. A GET
// whose answer broke the bound on a reused connection is not sent to
// the app again (it answered; retrying would repeat the request).
func TestResponseHeadBounded(t *testing.T) {
	forServerPaths(t, func(t *testing.T, sp serverPath) {
		for _, http1 := range []bool{true, false} {
			t.Run(fmt.Sprintf("http1_between_sidecars_%v", http1), func(t *testing.T) {
				app, seen := hostileHeadApp(t)
				p := newPairWith(t, allowPrincipals(policy.ModeStrict, "example.org/ns/prod/sa/frontend"), app, HTTP, http1, sp.edit)
				c := &http.Client{Timeout: 10 * time.Second}
				allowed := func() {
					t.Helper()
					resp, err := c.Get(p.outboundURL + "/allowed")
					if err != nil {
						t.Fatal(err)
					}
					b, _ := io.ReadAll(resp.Body)
					resp.Body.Close()
					if resp.StatusCode != 200 || len(b) != 200<<10 || resp.Header.Get("X-F00767") == "" {
						t.Fatalf("/allowed: %d, %d bytes, last field %q", resp.StatusCode, len(b), resp.Header.Get("X-F00767"))
					}
				}
				for _, path := range []string{"/line", "/fields", "/continue"} {
					allowed() // the hostile answer then comes on a reused connection
					resp, err := c.Get(p.outboundURL + path)
					if err != nil {
						t.Fatalf("%s: %v (the sidecar kept reading the head)", path, err)
					}
					io.Copy(io.Discard, resp.Body)
					resp.Body.Close()
					if resp.StatusCode != http.StatusServiceUnavailable {
						t.Fatalf("%s: %d, want 503", path, resp.StatusCode)
					}
					if n := seen(path); n != 1 {
						t.Fatalf("%s reached the app %d times, want 1", path, n)
					}
				}
				allowed()
			})
		}
	})
}

// headLimit ends reads once its bound is used up and reads on without
// one when left is negative.
func TestHeadLimit(t *testing.T) {
	l := &headLimit{r: strings.NewReader(strings.Repeat("x", 100)), left: 10}
	b, err := io.ReadAll(l)
	if len(b) != 10 || !errors.Is(err, errResponseHeadTooLarge) {
		t.Fatalf("bounded: %d bytes, %v", len(b), err)
	}
	l.left = -1
	if b, err = io.ReadAll(l); len(b) != 90 || err != nil {
		t.Fatalf("unbounded: %d bytes, %v", len(b), err)
	}
}
