package proxy

import (
	"bufio"
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"golang.org/x/net/websocket"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"

	"github.com/moatless/moatless/internal/policy"
)

var allowFrontend = func() *fakeAuthz {
	return allowPrincipals(policy.ModeStrict, "example.org/ns/prod/sa/frontend")
}

func TestH2CFromAppAndHTTP2BetweenSidecars(t *testing.T) {
	seen := make(chan string, 4)
	l := listen(t)
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		seen <- r.Proto
		io.WriteString(w, "ok")
	})}
	go srv.Serve(l)
	t.Cleanup(func() { srv.Close() })
	p := newPair(t, allowFrontend(), l.Addr().String(), HTTP)

	protos := new(http.Protocols)
	protos.SetUnencryptedHTTP2(true)
	c := &http.Client{Transport: &http.Transport{Protocols: protos}}
	resp, err := c.Get(p.outboundURL + "/h2c")
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || string(b) != "ok" || resp.Proto != "HTTP/2.0" {
		t.Fatalf("got %s %d %q", resp.Proto, resp.StatusCode, b)
	}
	if got := <-seen; got != "HTTP/1.1" {
		t.Fatalf("app saw %s, want HTTP/1.1 (protocol http)", got)
	}
	// The hop between the sidecars negotiated h2: an mTLS client that asks
	// for h2 gets it from the inbound listener.
	mc := mtlsClient(t, p.ca, frontendID, ordersID)
	resp, err = mc.Get("https://" + p.inboundAddr + "/")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.Proto != "HTTP/2.0" {
		t.Fatalf("inbound answered %s, want HTTP/2.0", resp.Proto)
	}
}

func TestGRPCThroughPairCarriesTrailersAndStreams(t *testing.T) {
	testGRPCThroughPair(t, false)
}

// With HTTP/1.1 upstreams (the config default) plain requests travel over HTTP/1.1 between the
// sidecars; gRPC (streaming bodies, trailers) must still go over HTTP/2.
func TestGRPCThroughPairWithHTTP1Upstream(t *testing.T) {
	testGRPCThroughPair(t, true)
}

func testGRPCThroughPair(t *testing.T, http1 bool) {
	l := listen(t)
	gs := grpc.NewServer()
	hs := health.NewServer()
	hs.SetServingStatus("orders", healthpb.HealthCheckResponse_SERVING)
	healthpb.RegisterHealthServer(gs, hs)
	go gs.Serve(l)
	t.Cleanup(gs.Stop)
	p := newPairHTTP1(t, allowFrontend(), l.Addr().String(), HTTP2, http1)

	cc, err := grpc.NewClient(strings.TrimPrefix(p.outboundURL, "http://"), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	hc := healthpb.NewHealthClient(cc)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()

	tests := []struct {
		name     string
		service  string
		wantCode codes.Code
	}{
		{"ok_status_in_trailers", "orders", codes.OK},
		{"error_status_in_trailers", "nope", codes.NotFound},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			resp, err := hc.Check(ctx, &healthpb.HealthCheckRequest{Service: tc.service})
			if got := status.Code(err); got != tc.wantCode {
				t.Fatalf("code %v (%v), want %v", got, err, tc.wantCode)
			}
			if tc.wantCode == codes.OK && resp.GetStatus() != healthpb.HealthCheckResponse_SERVING {
				t.Fatalf("status %v", resp.GetStatus())
			}
		})
	}
	t.Run("server_stream_delivers_each_message", func(t *testing.T) {
		w, err := hc.Watch(ctx, &healthpb.HealthCheckRequest{Service: "orders"})
		if err != nil {
			t.Fatal(err)
		}
		m, err := w.Recv()
		if err != nil || m.GetStatus() != healthpb.HealthCheckResponse_SERVING {
			t.Fatalf("first: %v %v", m, err)
		}
		hs.SetServingStatus("orders", healthpb.HealthCheckResponse_NOT_SERVING)
		m, err = w.Recv()
		if err != nil || m.GetStatus() != healthpb.HealthCheckResponse_NOT_SERVING {
			t.Fatalf("second: %v %v", m, err)
		}
	})
	t.Run("denied_call_is_permission_denied", func(t *testing.T) {
		p.server.SetAuthorizer(2, allowPrincipals(policy.ModeStrict, "example.org/ns/prod/sa/other"))
		_, err := hc.Check(ctx, &healthpb.HealthCheckRequest{Service: "orders"})
		if got := status.Code(err); got != codes.PermissionDenied {
			t.Fatalf("code %v (%v), want PermissionDenied (HTTP 403)", got, err)
		}
	})
}

func TestWebSocketThroughPair(t *testing.T) {
	l := listen(t)
	mux := http.NewServeMux()
	mux.Handle("/ws", websocket.Handler(func(c *websocket.Conn) {
		io.Copy(c, c)
	}))
	srv := &http.Server{Handler: mux}
	go srv.Serve(l)
	t.Cleanup(func() { srv.Close() })
	p := newPair(t, allowFrontend(), l.Addr().String(), HTTP)

	wsURL := "ws" + strings.TrimPrefix(p.outboundURL, "http") + "/ws"
	ws, err := websocket.Dial(wsURL, "", "http://localhost/")
	if err != nil {
		t.Fatal(err)
	}
	defer ws.Close()
	for i := range 3 {
		msg := fmt.Sprintf("hello %d", i)
		if err := websocket.Message.Send(ws, msg); err != nil {
			t.Fatal(err)
		}
		var got string
		if err := websocket.Message.Receive(ws, &got); err != nil || got != msg {
			t.Fatalf("got %q %v, want %q", got, err, msg)
		}
	}
	if n := p.server.LiveConnections(); n < 1 {
		t.Fatalf("upgraded connection not tracked for revocation: %d", n)
	}
}

func TestRawTCPThroughPairWithL4Policy(t *testing.T) {
	l := serveRaw(t, func(c net.Conn) {
		defer c.Close()
		line, _ := bufio.NewReader(c).ReadString('\n')
		fmt.Fprintf(c, "echo %s", line)
	})
	var sawProtocol policy.Protocol = 99
	authz := &fakeAuthz{mode: policy.ModeStrict, evaluate: func(req *policy.Request) policy.Decision {
		sawProtocol = req.Protocol
		if req.Source.Principal == "example.org/ns/prod/sa/frontend" {
			return policy.Decision{Outcome: policy.Allow, Rule: 0, Policy: "prod/tcp"}
		}
		return policy.Decision{Outcome: policy.Deny, Rule: -1}
	}}
	p := newPair(t, authz, l.Addr().String(), TCP)
	out := strings.TrimPrefix(p.outboundURL, "http://")

	c, err := net.Dial("tcp", out)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	fmt.Fprintf(c, "ping\n")
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	got, err := bufio.NewReader(c).ReadString('\n')
	if err != nil || got != "echo ping\n" {
		t.Fatalf("got %q %v", got, err)
	}
	if sawProtocol != policy.TCP {
		t.Fatalf("policy saw protocol %v, want TCP", sawProtocol)
	}

	p.server.SetAuthorizer(2, &fakeAuthz{mode: policy.ModeStrict, evaluate: func(*policy.Request) policy.Decision {
		return policy.Decision{Outcome: policy.Deny, Rule: -1}
	}})
	c2, err := net.Dial("tcp", out)
	if err != nil {
		t.Fatal(err)
	}
	defer c2.Close()
	fmt.Fprintf(c2, "ping\n")
	c2.SetReadDeadline(time.Now().Add(5 * time.Second))
	if b, err := io.ReadAll(c2); len(b) != 0 {
		t.Fatalf("denied TCP connection got %q (%v)", b, err)
	}
}

func TestSVIDRotationKeepsConnectionsAndServesNewCert(t *testing.T) {
	app := echoApp(t)
	p := newPair(t, allowFrontend(), app, HTTP)
	mc := mtlsClient(t, p.ca, frontendID, ordersID)
	var firstSerial, secondSerial string
	resp, err := mc.Get("https://" + p.inboundAddr + "/")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	firstSerial = serialHex(resp.TLS.PeerCertificates[0])

	rotated := p.ca.SVID(t, ordersID, 0)
	p.serverID.svid.Store(rotated.X509SVID())
	// The pooled connection still works after rotation.
	resp, err = mc.Get("https://" + p.inboundAddr + "/")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if got := serialHex(resp.TLS.PeerCertificates[0]); got != firstSerial {
		t.Fatalf("existing connection changed certificate: %s → %s", firstSerial, got)
	}
	// A new full handshake (no session to resume) gets the new SVID.
	conf := mc.Transport.(*http.Transport).TLSClientConfig.Clone()
	conf.ClientSessionCache = nil
	conn, err := tls.Dial("tcp", p.inboundAddr, conf)
	if err != nil {
		t.Fatal(err)
	}
	secondSerial = serialHex(conn.ConnectionState().PeerCertificates[0])
	conn.Close()
	if secondSerial != serialHex(rotated.Chain[0]) {
		t.Fatalf("new handshake served %s, want rotated %s", secondSerial, serialHex(rotated.Chain[0]))
	}
}

func TestOutboundHTTP1Upstream(t *testing.T) {
	l := listen(t)
	mux := http.NewServeMux()
	mux.Handle("/ws", websocket.Handler(func(c *websocket.Conn) { io.Copy(c, c) }))
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		fmt.Fprintf(w, "%s %s %s %d", r.Method, r.URL.Path, r.Proto, len(b))
	})
	srv := &http.Server{Handler: mux}
	go srv.Serve(l)
	t.Cleanup(func() { srv.Close() })
	p := newPairHTTP1(t, allowFrontend(), l.Addr().String(), HTTP, true)
	c := &http.Client{}
	for i := range 3 {
		resp, err := c.Post(p.outboundURL+"/api/orders", "text/plain", strings.NewReader(strings.Repeat("z", i*1000)))
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if want := fmt.Sprintf("POST /api/orders HTTP/1.1 %d", i*1000); resp.StatusCode != 200 || string(b) != want {
			t.Fatalf("got %d %q, want %q", resp.StatusCode, b, want)
		}
	}
	if code, body := get(t, c, "DELETE", p.outboundURL+"/x"); code != 403 || body != "RBAC: access denied" {
		t.Fatalf("delete: %d %q", code, body)
	}
	ws, err := websocket.Dial("ws"+strings.TrimPrefix(p.outboundURL, "http")+"/ws", "", "http://localhost/")
	if err != nil {
		t.Fatal(err)
	}
	defer ws.Close()
	websocket.Message.Send(ws, "hi")
	var got string
	if err := websocket.Message.Receive(ws, &got); err != nil || got != "hi" {
		t.Fatalf("websocket: %q %v", got, err)
	}
}
