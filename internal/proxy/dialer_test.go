package proxy

import (
	"bufio"
	"crypto/tls"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"golang.org/x/net/websocket"

	"github.com/moatless/moatless/internal/testpki"
)

// tlsUpstream is an mTLS HTTP server (not a sidecar) presenting svid,
// at most TLS version maxVersion (0: 1.3), offering h2 and http/1.1: it
// answers every request, and every WebSocket message, with the TLS
// version and protocol it was reached over.
func tlsUpstream(t *testing.T, svid *testpki.SVID, maxVersion uint16) string {
	t.Helper()
	l := listen(t)
	state := func(cs *tls.ConnectionState) string {
		return fmt.Sprintf("tls=%x alpn=%q", cs.Version, cs.NegotiatedProtocol)
	}
	mux := http.NewServeMux()
	mux.Handle("/ws", websocket.Handler(func(c *websocket.Conn) {
		var msg string
		for websocket.Message.Receive(c, &msg) == nil {
			websocket.Message.Send(c, state(c.Request().TLS))
		}
	}))
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) { fmt.Fprint(w, state(r.TLS)) })
	srv := &http.Server{Handler: mux, ErrorLog: log.New(io.Discard, "", 0), TLSConfig: &tls.Config{
		Certificates: []tls.Certificate{svid.TLSCertificate()},
		ClientAuth:   tls.RequireAnyClientCert, MaxVersion: maxVersion,
		NextProtos: []string{"h2", "http/1.1"},
	}}
	go srv.ServeTLS(l, "", "")
	t.Cleanup(func() { srv.Close() })
	return l.Addr().String()
}

// TestOutboundDialer attacks the outbound connections the sidecar dials
// itself (dialTracked under net/http's DialTLSContext, the lean HTTP/1.1
// client and WebSocket upgrades): the upstream must present the
// configured SPIFFE ID over TLS 1.3, whichever path dials; HTTP/2 is
// negotiated by ALPN in h2 mode, HTTP/1.1 in http1 mode and for
// WebSockets; and two outbound listeners to the same address expecting
// different IDs never share a connection or a session, in either order.
func TestOutboundDialer(t *testing.T) {
	ca := testpki.NewCA(t, "example.org")
	right := tlsUpstream(t, ca.SVID(t, ordersID, 0), 0)
	impostor := tlsUpstream(t, ca.SVID(t, "spiffe://example.org/ns/prod/sa/impostor", 0), 0)
	tls12 := tlsUpstream(t, ca.SVID(t, ordersID, 0), tls.VersionTLS12)
	orders := spiffeid.RequireFromString(ordersID)
	payments := spiffeid.RequireFromString("spiffe://example.org/ns/prod/sa/payments")
	for _, mode := range []struct {
		name  string
		http1 bool
		alpn  string
	}{{"h2", false, `"h2"`}, {"http1", true, `"http/1.1"`}} {
		t.Run(mode.name, func(t *testing.T) {
			var obs []Outbound
			ls := map[string]net.Listener{}
			for _, o := range []struct {
				name, addr string
				id         spiffeid.ID
			}{
				{"right", right, orders}, {"impostor", impostor, orders}, {"tls12", tls12, orders},
				// The same address as "right", expecting another ID.
				{"same_addr_other_id", right, payments},
			} {
				l := listen(t)
				ls[o.name] = l
				obs = append(obs, Outbound{Name: o.name, Listener: l, Upstream: o.addr, ID: o.id, Protocol: HTTP, HTTP1: mode.http1})
			}
			startSidecar(t, Config{Identity: newStaticIdentity(ca, ca.SVID(t, frontendID, 0)), Outbound: obs})
			c := &http.Client{}
			t.Cleanup(c.CloseIdleConnections)
			want := "tls=304 alpn=" + mode.alpn
			for _, order := range [][]string{{"same_addr_other_id", "right"}, {"right", "same_addr_other_id"}} {
				for _, name := range order {
					code, body := get(t, c, "GET", "http://"+ls[name].Addr().String()+"/")
					if name == "right" && (code != 200 || body != want) {
						t.Fatalf("%v: right upstream: %d %q, want %q", order, code, body, want)
					}
					if name != "right" && code == 200 {
						t.Fatalf("%v: %s reached an upstream presenting another ID: %q", order, name, body)
					}
				}
			}
			for _, name := range []string{"impostor", "tls12"} {
				if code, body := get(t, c, "GET", "http://"+ls[name].Addr().String()+"/"); code == 200 {
					t.Fatalf("%s: %d %q", name, code, body)
				}
			}
			for _, name := range []string{"right", "impostor", "tls12", "same_addr_other_id"} {
				ws, err := websocket.Dial("ws://"+ls[name].Addr().String()+"/ws", "", "http://localhost/")
				if name != "right" {
					if err == nil {
						ws.Close()
						t.Fatalf("websocket through %s: upgraded", name)
					}
					continue
				}
				if err != nil {
					t.Fatal(err)
				}
				websocket.Message.Send(ws, "x")
				var got string
				err = websocket.Message.Receive(ws, &got)
				ws.Close()
				if err != nil || got != `tls=304 alpn="http/1.1"` {
					t.Fatalf("websocket: %q %v", got, err)
				}
			}
		})
	}
}

// TestTrackedUpstreamClosedWhileIdleIsNotReused: the lean HTTP/1.1
// client peeks at a pooled upstream connection idle for a while before
// reusing it (connAlive), so that a POST, which is not replayed, does not
// go out on a connection the upstream closed meanwhile. The peek needs
// the socket under the TLS connection; the tracking wrapper of outbound
// connections (trackedConn) hid it and every pooled connection looked
// alive.
func TestTrackedUpstreamClosedWhileIdleIsNotReused(t *testing.T) {
	ca := testpki.NewCA(t, "example.org")
	// The upstream answers one request per connection, keep-alive, then
	// closes it and says so on closed.
	closed := make(chan struct{}, 4)
	conf := &tls.Config{Certificates: []tls.Certificate{ca.SVID(t, ordersID, 0).TLSCertificate()}, ClientAuth: tls.RequireAnyClientCert}
	l := serveRaw(t, func(c net.Conn) {
		tc := tls.Server(c, conf)
		if req, err := http.ReadRequest(bufio.NewReader(tc)); err == nil {
			io.Copy(io.Discard, req.Body)
			io.WriteString(tc, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
		}
		tc.Close()
		closed <- struct{}{}
	})
	ti := &tlsIdentity{src: newStaticIdentity(ca, ca.SVID(t, frontendID, 0)), now: time.Now,
		revoked: func() *revocationSet { return nil }, live: newTracker()}
	rt, tr := ti.upstreamClient(spiffeid.RequireFromString(ordersID), "", l.Addr().String(), true, 5*time.Second)
	t.Cleanup(tr.CloseIdleConnections)
	a := rt.(*appClient)
	var clock atomic.Int64
	clock.Store(time.Now().UnixNano())
	a.now = func() time.Time { return time.Unix(0, clock.Load()) }
	for i := range 2 {
		req, _ := http.NewRequest("POST", "http://"+l.Addr().String()+"/", strings.NewReader("body"))
		resp, err := a.RoundTrip(req)
		if err != nil {
			t.Fatalf("request %d: %v", i, err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 || string(b) != "ok" {
			t.Fatalf("request %d: %d %q", i, resp.StatusCode, b)
		}
		<-closed
		clock.Add(int64(time.Second)) // idle past peekAfter
	}
}
