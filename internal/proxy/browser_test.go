package proxy

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/moatless/moatless/internal/policy"
)

// Header sets browsers send (Chrome 131 and Firefox 133, as their network
// panels show them) for a page at https://evil.example calling the
// outbound listener, and for a page whose own name attacker.example was
// rebound to 127.0.0.1 (http://attacker.example is not a potentially
// trustworthy URL, so no Sec-Fetch-* is sent). HOST is replaced by the
// listener's address.
const (
	chromeUA  = "User-Agent: Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36\r\n"
	firefoxUA = "User-Agent: Mozilla/5.0 (X11; Linux x86_64; rv:133.0) Gecko/20100101 Firefox/133.0\r\n"
)

// TestOutboundRefusesBrowserRequests: through a real pair of sidecars on
// 127.0.0.1, on both server paths, a request a web page made — a
// cross-site fetch() (cors and no-cors), a form POST, an <img>, a
// WebSocket, or any request under a rebound name — gets 403 and never
// reaches the upstream, and is counted; what service clients send (any IP
// literal, localhost, the upstream's configured names, absolute form,
// HTTP/1.0 without Host) and a URL the user typed still go through.
func TestOutboundRefusesBrowserRequests(t *testing.T) {
	forServerPaths(t, func(t *testing.T, sp serverPath) {
		var reached atomic.Int64
		l := listen(t)
		srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			reached.Add(1)
			io.Copy(io.Discard, r.Body)
			io.WriteString(w, "secret orders")
		})}
		go srv.Serve(l)
		t.Cleanup(func() { srv.Close() })
		p := newPairWith(t, allowPrincipals(policy.ModeStrict, "example.org/ns/prod/sa/frontend"), l.Addr().String(), HTTP, false, func(c *Config) {
			sp.edit(c)
			for i := range c.Outbound {
				c.Outbound[i].Hosts = []string{"billing.internal", "*.example.internal"}
			}
		})
		addr := strings.TrimPrefix(p.outboundURL, "http://")
		_, port, _ := net.SplitHostPort(addr)
		for _, tc := range []struct {
			name, head, body string
			want             int
		}{
			{"chrome_fetch_cors", "GET /orders HTTP/1.1\r\nHost: HOST\r\nConnection: keep-alive\r\nsec-ch-ua-platform: \"Linux\"\r\n" + chromeUA + "Accept: */*\r\nOrigin: https://evil.example\r\nSec-Fetch-Site: cross-site\r\nSec-Fetch-Mode: cors\r\nSec-Fetch-Dest: empty\r\nReferer: https://evil.example/\r\nAccept-Encoding: gzip, deflate, br, zstd\r\nAccept-Language: en-US,en;q=0.9\r\n", "", http.StatusForbidden},
			{"chrome_fetch_no_cors_post", "POST /orders/delete HTTP/1.1\r\nHost: HOST\r\nConnection: keep-alive\r\nContent-Length: 6\r\n" + chromeUA + "Content-Type: text/plain;charset=UTF-8\r\nAccept: */*\r\nOrigin: https://evil.example\r\nSec-Fetch-Site: cross-site\r\nSec-Fetch-Mode: no-cors\r\nSec-Fetch-Dest: empty\r\nReferer: https://evil.example/\r\n", "id=all", http.StatusForbidden},
			{"chrome_form_post", "POST /orders/delete HTTP/1.1\r\nHost: HOST\r\nConnection: keep-alive\r\nContent-Length: 6\r\nCache-Control: max-age=0\r\nOrigin: https://evil.example\r\nContent-Type: application/x-www-form-urlencoded\r\nUpgrade-Insecure-Requests: 1\r\n" + chromeUA + "Accept: text/html,application/xhtml+xml,application/xml;q=0.9,image/avif,image/webp,*/*;q=0.8\r\nSec-Fetch-Site: cross-site\r\nSec-Fetch-Mode: navigate\r\nSec-Fetch-User: ?1\r\nSec-Fetch-Dest: document\r\nReferer: https://evil.example/\r\n", "id=all", http.StatusForbidden},
			{"chrome_img", "GET /orders/delete?id=all HTTP/1.1\r\nHost: HOST\r\nConnection: keep-alive\r\n" + chromeUA + "Accept: image/avif,image/webp,image/apng,image/svg+xml,image/*,*/*;q=0.8\r\nSec-Fetch-Site: cross-site\r\nSec-Fetch-Mode: no-cors\r\nSec-Fetch-Dest: image\r\nReferer: https://evil.example/\r\n", "", http.StatusForbidden},
			{"chrome_websocket", "GET /stream HTTP/1.1\r\nHost: HOST\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n" + chromeUA + "Origin: https://evil.example\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-Fetch-Site: cross-site\r\nSec-Fetch-Mode: websocket\r\nSec-Fetch-Dest: empty\r\n", "", http.StatusForbidden},
			{"firefox_fetch_cors", "GET /orders HTTP/1.1\r\nHost: HOST\r\n" + firefoxUA + "Accept: */*\r\nAccept-Language: en-US,en;q=0.5\r\nReferer: https://evil.example/\r\nOrigin: https://evil.example\r\nConnection: keep-alive\r\nSec-Fetch-Dest: empty\r\nSec-Fetch-Mode: cors\r\nSec-Fetch-Site: cross-site\r\n", "", http.StatusForbidden},
			{"firefox_form_post", "POST /orders/delete HTTP/1.1\r\nHost: HOST\r\n" + firefoxUA + "Accept: text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: 6\r\nOrigin: https://evil.example\r\nConnection: keep-alive\r\nReferer: https://evil.example/\r\nUpgrade-Insecure-Requests: 1\r\nSec-Fetch-Dest: document\r\nSec-Fetch-Mode: navigate\r\nSec-Fetch-Site: cross-site\r\nSec-Fetch-User: ?1\r\n", "id=all", http.StatusForbidden},
			{"firefox_img", "GET /orders/delete?id=all HTTP/1.1\r\nHost: HOST\r\n" + firefoxUA + "Accept: image/avif,image/webp,image/png,image/svg+xml,image/*;q=0.8,*/*;q=0.5\r\nReferer: https://evil.example/\r\nConnection: keep-alive\r\nSec-Fetch-Dest: image\r\nSec-Fetch-Mode: no-cors\r\nSec-Fetch-Site: cross-site\r\n", "", http.StatusForbidden},
			{"same_site_page_on_loopback", "GET /orders HTTP/1.1\r\nHost: HOST\r\n" + chromeUA + "Accept: */*\r\nSec-Fetch-Site: same-site\r\nSec-Fetch-Mode: cors\r\nSec-Fetch-Dest: empty\r\n", "", http.StatusForbidden},
			{"origin_null", "POST /orders HTTP/1.1\r\nHost: HOST\r\nContent-Length: 0\r\nOrigin: null\r\n", "", http.StatusForbidden},
			{"rebound_chrome_get", "GET /orders HTTP/1.1\r\nHost: attacker.example:PORT\r\nConnection: keep-alive\r\n" + chromeUA + "Accept: */*\r\nReferer: http://attacker.example:PORT/\r\nAccept-Encoding: gzip, deflate\r\nAccept-Language: en-US,en;q=0.9\r\n", "", http.StatusForbidden},
			{"rebound_firefox_get", "GET /orders HTTP/1.1\r\nHost: attacker.example:PORT\r\n" + firefoxUA + "Accept: */*\r\nReferer: http://attacker.example:PORT/\r\nConnection: keep-alive\r\n", "", http.StatusForbidden},
			{"rebound_name_like_localhost", "GET /orders HTTP/1.1\r\nHost: localhost.attacker.example:PORT\r\n", "", http.StatusForbidden},
			{"rebound_name_like_loopback", "GET /orders HTTP/1.1\r\nHost: 127.0.0.1.attacker.example:PORT\r\n", "", http.StatusForbidden},
			{"name_not_configured", "GET /orders HTTP/1.1\r\nHost: payments\r\n", "", http.StatusForbidden},
			{"service_and_namespace_may_be_public", "GET /orders HTTP/1.1\r\nHost: orders.prod\r\n", "", http.StatusForbidden},
			{"origin_not_loopback_without_fetch_metadata", "POST /orders HTTP/1.1\r\nHost: HOST\r\nContent-Length: 0\r\nOrigin: http://attacker.example:PORT\r\n", "", http.StatusForbidden},
			{"origin_loopback_lookalike", "POST /orders HTTP/1.1\r\nHost: HOST\r\nContent-Length: 0\r\nOrigin: http://localhost.attacker.example\r\n", "", http.StatusForbidden},
			{"origin_with_userinfo", "POST /orders HTTP/1.1\r\nHost: HOST\r\nContent-Length: 0\r\nOrigin: http://127.0.0.1@attacker.example\r\n", "", http.StatusForbidden},
			{"wildcard_needs_a_label", "GET /orders HTTP/1.1\r\nHost: example.internal\r\n", "", http.StatusForbidden},
			{"host_port_not_a_number", "GET /orders HTTP/1.1\r\nHost: orders.prod.svc:x\r\n", "", http.StatusForbidden},

			{"go_client", "GET /orders HTTP/1.1\r\nHost: HOST\r\nUser-Agent: Go-http-client/1.1\r\nAccept-Encoding: gzip\r\n", "", http.StatusOK},
			{"localhost", "GET /orders HTTP/1.1\r\nHost: localhost:PORT\r\n", "", http.StatusOK},
			{"other_ip_literal", "GET /orders HTTP/1.1\r\nHost: 10.0.0.7:15006\r\n", "", http.StatusOK},
			{"ipv6_literal", "GET /orders HTTP/1.1\r\nHost: [::1]:PORT\r\n", "", http.StatusOK},
			{"configured_name", "GET /orders HTTP/1.1\r\nHost: billing.internal\r\n", "", http.StatusOK},
			{"service_name_of_the_spiffe_id", "GET /orders HTTP/1.1\r\nHost: orders\r\n", "", http.StatusOK},
			{"kubernetes_service_name", "GET /orders HTTP/1.1\r\nHost: orders.prod.svc:8080\r\n", "", http.StatusOK},
			{"kubernetes_service_name_upper_case", "GET /orders HTTP/1.1\r\nHost: Orders.Prod.Svc.Cluster.Local\r\n", "", http.StatusOK},
			{"outbound_name", "GET /orders HTTP/1.1\r\nHost: out\r\n", "", http.StatusOK},
			{"x_net_websocket_loopback_origin", "POST /orders HTTP/1.1\r\nHost: HOST\r\nContent-Length: 0\r\nOrigin: http://localhost/\r\n", "", http.StatusOK},
			{"wildcard_name", "GET /orders HTTP/1.1\r\nHost: api.example.internal\r\n", "", http.StatusOK},
			{"absolute_form_proxy", "GET http://orders.prod.svc/orders HTTP/1.1\r\nHost: orders.prod.svc\r\n", "", http.StatusOK},
			{"http10_without_host", "GET /orders HTTP/1.0\r\n", "", http.StatusOK},
			{"curl_post", "POST /orders HTTP/1.1\r\nHost: HOST\r\nUser-Agent: curl/8.11.1\r\nAccept: */*\r\nContent-Length: 6\r\nContent-Type: application/x-www-form-urlencoded\r\n", "id=all", http.StatusOK},
			{"typed_in_address_bar", "GET /orders HTTP/1.1\r\nHost: HOST\r\nConnection: keep-alive\r\nUpgrade-Insecure-Requests: 1\r\n" + chromeUA + "Accept: text/html,*/*;q=0.8\r\nSec-Fetch-Site: none\r\nSec-Fetch-Mode: navigate\r\nSec-Fetch-User: ?1\r\nSec-Fetch-Dest: document\r\n", "", http.StatusOK},
		} {
			t.Run(tc.name, func(t *testing.T) {
				head := strings.ReplaceAll(strings.ReplaceAll(tc.head, "HOST", addr), "PORT", port)
				before := reached.Load()
				refusedBefore := testutil.ToFloat64(p.client.callers.refused.WithLabelValues("out", refusedBrowser)) +
					testutil.ToFloat64(p.client.callers.refused.WithLabelValues("out", refusedHost))
				c, err := net.Dial("tcp", addr)
				if err != nil {
					t.Fatal(err)
				}
				defer c.Close()
				c.SetDeadline(time.Now().Add(10 * time.Second))
				fmt.Fprintf(c, "%s\r\n%s", head, tc.body)
				resp, err := http.ReadResponse(bufio.NewReader(c), nil)
				if err != nil {
					t.Fatalf("reading the answer: %v", err)
				}
				b, _ := io.ReadAll(resp.Body)
				resp.Body.Close()
				if resp.StatusCode != tc.want {
					t.Fatalf("status %d (%q), want %d", resp.StatusCode, b, tc.want)
				}
				refused := testutil.ToFloat64(p.client.callers.refused.WithLabelValues("out", refusedBrowser)) +
					testutil.ToFloat64(p.client.callers.refused.WithLabelValues("out", refusedHost)) - refusedBefore
				if tc.want == http.StatusForbidden {
					if n := reached.Load() - before; n != 0 || strings.Contains(string(b), "secret") {
						t.Fatalf("the upstream was reached %d times: %q", n, b)
					}
					if refused != 1 {
						t.Fatalf("refusals counted: %v, want 1", refused)
					}
				} else if refused != 0 || reached.Load()-before != 1 {
					t.Fatalf("refusals counted %v, upstream reached %d times", refused, reached.Load()-before)
				}
			})
		}
	})
}

// TestBrowserRefusalLogPaced: a page sending refused requests in a loop
// gets one log line per second, the next one telling how many were not
// logged.
func TestBrowserRefusalLogPaced(t *testing.T) {
	var l refusalLog
	t0 := time.Unix(1000, 0)
	for _, tc := range []struct {
		at       time.Duration
		log      bool
		unlogged int64
	}{
		{0, true, 0},
		{time.Millisecond, false, 0},
		{500 * time.Millisecond, false, 0},
		{time.Second, true, 2},
		{time.Second, false, 0},
		{3 * time.Second, true, 1},
	} {
		ok, n := l.take(t0.Add(tc.at))
		if ok != tc.log || n != tc.unlogged {
			t.Fatalf("at %v: take = %v, %d; want %v, %d", tc.at, ok, n, tc.log, tc.unlogged)
		}
	}
}

// TestCheckHostPattern: the outbound's hosts are host names or "*." and
// one; anything else is a configuration error.
func TestCheckHostPattern(t *testing.T) {
	for _, h := range []string{"orders", "orders.prod.svc", "*.example.internal", "my_host.local", "orders.prod.svc."} {
		if err := checkHostPattern(h); err != nil {
			t.Errorf("%q: %v", h, err)
		}
	}
	for _, h := range []string{"", "*", "*.", "a..b", "orders:80", "*.a.*.b", "a b", "evil.example/x", strings.Repeat("a", 64)} {
		if err := checkHostPattern(h); err == nil {
			t.Errorf("%q accepted", h)
		}
	}
}

// FuzzBrowserRefusal: whatever Host, Origin and Sec-Fetch-Site a client
// sends, browserRefusal never panics, never passes a Sec-Fetch-Site other
// than "none", and passes a Host only when it is empty, an IP literal,
// localhost or one of the names.
func FuzzBrowserRefusal(f *testing.F) {
	for _, s := range [][3]string{
		{"127.0.0.1:15001", "", ""},
		{"attacker.example:15001", "", ""},
		{"orders", "http://localhost/", "none"},
		{"[::1]:1", "null", "cross-site"},
		{"localhost.:1", "http://127.0.0.1@evil", ""},
		{"x.example.internal", "https://[::1]:80", "same-origin"},
	} {
		f.Add(s[0], s[1], s[2])
	}
	hosts := []string{"orders", "*.example.internal"}
	f.Fuzz(func(t *testing.T, host, origin, site string) {
		h := http.Header{}
		if origin != "" {
			h["Origin"] = []string{origin}
		}
		if site != "" {
			h["Sec-Fetch-Site"] = []string{site}
		}
		if browserRefusal(host, h, hosts) != "" {
			return
		}
		if site != "" && site != "none" {
			t.Fatalf("Sec-Fetch-Site %q passed", site)
		}
		if host == "" {
			return
		}
		name := host
		if strings.HasPrefix(name, "[") {
			name = name[1:strings.IndexByte(name, ']')]
		} else if i := strings.IndexByte(name, ':'); i >= 0 {
			name = name[:i]
		}
		name = strings.ToLower(name)
		if _, err := netip.ParseAddr(name); err == nil || name == "localhost" || name == "orders" || strings.HasSuffix(name, ".example.internal") {
			return
		}
		t.Fatalf("Host %q passed", host)
	})
}
