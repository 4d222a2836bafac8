package gateway

import (
	"strings"
	"testing"

	"github.com/moatless/moatless/internal/config"
)

// A request that asks to switch protocols and does not (the upstream
// answers it as a plain request, the gateway refuses it, the route does
// not carry the protocol) is answered and the connection closed, as
// Envoy closes after a refused upgrade: the client may already be sending
// the new protocol's frames, and the framing guard holds nothing back
// after an Upgrade field, so what followed would reach net/http, which
// serves it, or answers it itself without the gateway's headers, access
// log or metric. A bare 400 from net/http and a request served after the
// upgrade are both failures.
func TestRefusedUpgradeClosesConnection(t *testing.T) {
	// What a client sends after the upgrade request: a head the framing
	// guard would refuse itself (net/http answers it with its own bare
	// 400), then one net/http would serve.
	const next = "GET /orders/1 HTTP/1.1\r\nHost: localhost\r\nX-A : a\r\n\r\nGET /orders/2 HTTP/1.1\r\nHost: localhost\r\n\r\n"
	const ws = "Connection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
	cases := []struct {
		name string
		req  string
		want string // the status line of the one answer
	}{
		{"upstream_answers_plainly", "GET /orders/1 HTTP/1.1\r\nHost: localhost\r\n" + ws + "\r\n", "HTTP/1.1 200 OK"},
		{"gateway_denies", "GET /private/1 HTTP/1.1\r\nHost: localhost\r\n" + ws + "\r\n", "HTTP/1.1 403 Forbidden"},
		{"protocol_not_carried", "GET /orders/1 HTTP/1.1\r\nHost: localhost\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n\r\n", "HTTP/1.1 200 OK"},
		{"not_a_get", "POST /orders/1 HTTP/1.1\r\nHost: localhost\r\nContent-Length: 2\r\n" + ws + "\r\n{}", "HTTP/1.1 200 OK"},
	}
	for _, fast := range []bool{true, false} {
		tg := startGateway(t, func(c *config.Gateway) { c.DisableHTTP1FastPath = !fast })
		for _, tc := range cases {
			name := tc.name + map[bool]string{true: "_fast", false: "_nethttp"}[fast]
			t.Run(name, func(t *testing.T) {
				got := tg.raw(t, tc.req+next)
				if !strings.HasPrefix(got, tc.want+"\r\n") {
					t.Fatalf("answer %q, want %s", got, tc.want)
				}
				if n := strings.Count(got, "HTTP/1.1 "); n != 1 {
					t.Fatalf("%d answers on the connection, want 1 and the connection closed:\n%s", n, got)
				}
				head, _, _ := strings.Cut(got, "\r\n\r\n")
				if !strings.Contains(head, "\r\nConnection: close\r\n") {
					t.Errorf("the answer does not say Connection: close:\n%s", head)
				}
			})
		}
	}
}
