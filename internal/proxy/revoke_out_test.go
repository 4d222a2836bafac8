package proxy

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"golang.org/x/net/websocket"

	"github.com/moatless/moatless/internal/policy"
	"github.com/moatless/moatless/internal/proxy/proxytest"
	"github.com/moatless/moatless/internal/testpki"
	"github.com/moatless/moatless/internal/wire"
)

// holdApp answers /hold with a first line and then holds the response
// open until the request ends, echoes WebSocket messages on /ws and
// answers everything else at once.
func holdApp(t testing.TB) string {
	t.Helper()
	l := listen(t)
	mux := http.NewServeMux()
	mux.Handle("/ws", websocket.Handler(func(c *websocket.Conn) { io.Copy(c, c) }))
	mux.HandleFunc("/hold", func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, "open\n")
		w.(http.Flusher).Flush()
		<-r.Context().Done()
	})
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "ok") })
	srv := &http.Server{Handler: mux}
	go srv.Serve(l)
	t.Cleanup(func() { srv.Close() })
	return l.Addr().String()
}

// liveStream is one live stream through an outbound listener: alive
// reports whether it still carries data (or, for a held HTTP response,
// has not ended), ended waits up to 5 s for it to end.
type liveStream struct {
	alive func() error
	ended func() error
}

// openStream opens a stream of kind through outbound listener l.
func openStream(t *testing.T, kind string, l net.Listener) liveStream {
	t.Helper()
	switch kind {
	case "tcp":
		c, r := dialEcho(t, l, nil, nil)
		return liveStream{
			alive: func() error { return echoes(c, r) },
			ended: func() error {
				c.SetReadDeadline(time.Now().Add(5 * time.Second))
				if _, err := r.ReadByte(); err == nil || isTimeout(err) {
					return fmt.Errorf("stream still open: %v", err)
				}
				return nil
			},
		}
	case "websocket":
		ws, err := websocket.Dial("ws://"+l.Addr().String()+"/ws", "", "http://localhost/")
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { ws.Close() })
		echo := func() error {
			ws.SetDeadline(time.Now().Add(5 * time.Second))
			if err := websocket.Message.Send(ws, "ping"); err != nil {
				return err
			}
			var got string
			if err := websocket.Message.Receive(ws, &got); err != nil {
				return err
			}
			if got != "ping" {
				return fmt.Errorf("echoed %q", got)
			}
			return nil
		}
		if err := echo(); err != nil {
			t.Fatal(err)
		}
		return liveStream{
			alive: echo,
			ended: func() error {
				ws.SetDeadline(time.Now().Add(5 * time.Second))
				var got string
				if err := websocket.Message.Receive(ws, &got); err == nil || isTimeout(err) {
					return fmt.Errorf("websocket still open: %q %v", got, err)
				}
				return nil
			},
		}
	}
	// An HTTP response in progress: the app holds it open.
	c, err := net.Dial("tcp", l.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	io.WriteString(c, "GET /hold HTTP/1.1\r\nHost: orders\r\n\r\n")
	r := bufio.NewReader(c)
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	resp, err := http.ReadResponse(r, nil)
	if err != nil {
		t.Fatal(err)
	}
	line, err := bufio.NewReader(resp.Body).ReadString('\n')
	if err != nil || line != "open\n" || resp.StatusCode != 200 {
		t.Fatalf("held response: %d %q %v", resp.StatusCode, line, err)
	}
	c.SetReadDeadline(time.Time{})
	return liveStream{
		alive: func() error {
			c.SetReadDeadline(time.Now().Add(20 * time.Millisecond))
			defer c.SetReadDeadline(time.Time{})
			if _, err := r.ReadByte(); !isTimeout(err) {
				return fmt.Errorf("held response ended: %v", err)
			}
			return nil
		},
		ended: func() error {
			c.SetReadDeadline(time.Now().Add(5 * time.Second))
			if _, err := io.Copy(io.Discard, r); isTimeout(err) {
				return errors.New("held response still open")
			}
			return nil
		},
	}
}

// TestRevokedUpstreamClosesLiveOutbound: revoking an upstream's SPIFFE ID
// or its certificate's serial, or blocking this workload from calling it,
// closes the live outbound connections to it (a raw TCP stream, an
// upgraded WebSocket, an HTTP/2 or HTTP/1.1 connection with a response in
// progress) within milliseconds of the revocation reaching this sidecar,
// even when the upstream's own sidecar has not heard of it (or is a
// SPIFFE peer that never hears of it). So does revoking this workload's
// own identity (isolating it: its egress is cut), or the serial of the
// certificate its connections were opened with. A block read
// the other way round (the upstream blocked from calling this workload)
// or another identity's revocation closes nothing.
func TestRevokedUpstreamClosesLiveOutbound(t *testing.T) {
	ca := testpki.NewCA(t, "example.org")
	ordersSVID, frontendSVID := ca.SVID(t, ordersID, 0), ca.SVID(t, frontendID, 0)
	for _, kind := range []string{"tcp", "websocket", "http2", "http1"} {
		for _, tc := range []struct {
			name   string
			rev    *wire.Revocations
			closes bool
		}{
			{"spiffe_id", &wire.Revocations{SPIFFEIDs: []string{ordersID}}, true},
			{"serial", &wire.Revocations{Serials: []wire.RevokedSerial{{Serial: strings.ToUpper("000" + serialHex(ordersSVID.Chain[0])), ExpiresAt: time.Now().Add(time.Hour)}}}, true},
			{"own_id", &wire.Revocations{SPIFFEIDs: []string{frontendID}}, true},
			// the certificate this workload's connections were opened with
			{"own_serial", &wire.Revocations{Serials: []wire.RevokedSerial{{Serial: serialHex(frontendSVID.Chain[0]), ExpiresAt: time.Now().Add(time.Hour)}}}, true},
			{"blocked_edge", &wire.Revocations{BlockedEdges: []wire.BlockedEdge{{Source: frontendID, Destination: ordersID}}}, true},
			{"reverse_edge", &wire.Revocations{BlockedEdges: []wire.BlockedEdge{{Source: ordersID, Destination: frontendID}}}, false},
			{"other_id", &wire.Revocations{SPIFFEIDs: []string{"spiffe://example.org/ns/prod/sa/payments"}}, false},
		} {
			t.Run(kind+"/"+tc.name, func(t *testing.T) {
				proto, app := HTTP, holdApp(t)
				if kind == "tcp" {
					proto, app = TCP, tcpEcho(t)
				}
				inL := listen(t)
				up := startSidecar(t, Config{Identity: newStaticIdentity(ca, ordersSVID), Namespace: "prod",
					Inbound:    []Inbound{{Name: "in", Listener: inL, App: app, Protocol: proto}},
					Authorizer: allowPrincipals(policy.ModeStrict, "example.org/ns/prod/sa/frontend")})
				outL := listen(t)
				client := startSidecar(t, Config{Identity: newStaticIdentity(ca, frontendSVID), Outbound: []Outbound{
					{Name: "orders", Listener: outL, Upstream: inL.Addr().String(), ID: spiffeid.RequireFromString(ordersID), Protocol: proto, HTTP1: kind == "http1"},
				}})
				s := openStream(t, kind, outL)
				if n := client.liveOut.len(); n != 1 {
					t.Fatalf("%d outbound connections tracked, want 1", n)
				}
				start := time.Now()
				n := client.SetRevocations(tc.rev)
				if !tc.closes {
					if n != 0 {
						t.Fatalf("closed %d connections", n)
					}
					if err := s.alive(); err != nil {
						t.Fatal(err)
					}
					if up.LiveConnections() != 1 || client.liveOut.len() != 1 {
						t.Fatalf("connections: upstream %d, tracked %d", up.LiveConnections(), client.liveOut.len())
					}
					return
				}
				if n != 1 {
					t.Fatalf("closed %d connections, want 1", n)
				}
				if err := s.ended(); err != nil {
					t.Fatal(err)
				}
				t.Logf("revoked upstream: live outbound %s closed %s after the revocation", kind, time.Since(start).Round(time.Microsecond))
				if client.liveOut.len() != 0 {
					t.Fatalf("%d outbound connections still tracked", client.liveOut.len())
				}
			})
		}
	}
}

// TestRevokedOwnSerialClosesResumedOutbound: an outbound connection that
// resumed a TLS session presents no certificate (the session carries the
// one the first connection presented); revoking that certificate's
// serial closes it all the same, and refuses the next one, whether it
// would resume or not.
func TestRevokedOwnSerialClosesResumedOutbound(t *testing.T) {
	ca := testpki.NewCA(t, "example.org")
	frontendSVID := ca.SVID(t, frontendID, 0)
	inL := listen(t)
	startSidecar(t, Config{Identity: newStaticIdentity(ca, ca.SVID(t, ordersID, 0)), Namespace: "prod",
		Inbound:    []Inbound{{Name: "in", Listener: inL, App: tcpEcho(t), Protocol: TCP}},
		Authorizer: allowPrincipals(policy.ModeStrict, "example.org/ns/prod/sa/frontend")})
	outL := listen(t)
	client := startSidecar(t, Config{Identity: newStaticIdentity(ca, frontendSVID), Outbound: []Outbound{
		{Name: "orders", Listener: outL, Upstream: inL.Addr().String(), ID: spiffeid.RequireFromString(ordersID), Protocol: TCP},
	}})
	first, r := dialEcho(t, outL, nil, nil) // a full handshake, whose session is kept
	if err := echoes(first, r); err != nil {
		t.Fatal(err)
	}
	first.Close()
	proxytest.Within(t, "the first stream forgotten", func() bool { return client.liveOut.len() == 0 })
	resumed := openStream(t, "tcp", outL)
	n := client.SetRevocations(&wire.Revocations{Serials: []wire.RevokedSerial{{Serial: serialHex(frontendSVID.Chain[0]), ExpiresAt: time.Now().Add(time.Hour)}}})
	if n != 1 {
		t.Fatalf("closed %d connections, want the resumed one", n)
	}
	if err := resumed.ended(); err != nil {
		t.Fatal(err)
	}
	c, err := net.Dial("tcp", outL.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := echoes(c, bufio.NewReader(c)); err == nil {
		t.Fatal("a new stream was opened with the revoked certificate's session")
	}
}
