package gateway

import (
	"context"
	"crypto/tls"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/svid/x509svid"

	"github.com/moatless/moatless/internal/config"
	"github.com/moatless/moatless/internal/proxy"
	"github.com/moatless/moatless/internal/proxy/proxytest"
	"github.com/moatless/moatless/internal/testpki"
	"github.com/moatless/moatless/internal/wire"
)

// joined is the identity of a process that is its own agent, holding an
// SVID for id signed by signer and a bundle of cas.
func joined(t testing.TB, signer *testpki.CA, id string, cas ...*testpki.CA) *proxy.NodeIdentity {
	t.Helper()
	s := signer.SVID(t, id, time.Hour).X509SVID()
	n := &proxy.NodeIdentity{SVID: func() *x509svid.SVID { return s }}
	setBundle(t, n, cas...)
	return n
}

func setBundle(t testing.TB, n *proxy.NodeIdentity, cas ...*testpki.CA) {
	t.Helper()
	b := wire.Bundle{TrustDomain: td}
	for _, ca := range cas {
		b.X509Authorities = append(b.X509Authorities, ca.Cert.Raw)
	}
	if err := n.SetBundle(b); err != nil {
		t.Fatal(err)
	}
}

// TestRevokedAuthorityClosesUpstreamConnections: when the CA authority
// that signed the upstream sidecar's SVID leaves the gateway's bundle,
// the gateway's live connection to it is closed and the next request is
// refused at the handshake, not carried on the old connection.
func TestRevokedAuthorityClosesUpstreamConnections(t *testing.T) {
	a, b := testpki.NewCA(t, td), testpki.NewCA(t, td)
	up, addr := startUpstreamSidecar(t, joined(t, a, ordersID, a, b), echoApp(t))
	id := joined(t, b, gatewayID, a, b)
	tg := startGatewayWith(t, b, addr, nil, func(o *Options) { o.Identity = id })
	if resp, _ := tg.do(t, "GET", "/orders", nil, nil); resp.StatusCode != http.StatusOK {
		t.Fatalf("before the revoke: %d", resp.StatusCode)
	}
	if n := up.LiveConnections(); n != 1 {
		t.Fatalf("upstream holds %d connections, want 1", n)
	}
	start := time.Now()
	setBundle(t, id, b) // ca revoke a
	proxytest.Within(t, "the gateway's connection to the upstream signed by the revoked authority closed", func() bool { return up.LiveConnections() == 0 })
	t.Logf("revoked authority: gateway's upstream connection closed %s after the bundle update", time.Since(start).Round(time.Microsecond))
	if resp, _ := tg.do(t, "GET", "/orders", nil, nil); resp.StatusCode == http.StatusOK {
		t.Fatal("a request reached the upstream signed by the revoked authority")
	}
}

// TestRevokedUpstreamClosesUpstreamConnections: revoking the upstream
// sidecar's SPIFFE ID or its certificate's serial, blocking the gateway
// from calling it, or revoking the gateway's own identity closes the gateway's
// live (pooled) connection to it at once, even when the upstream's own
// sidecar has not heard of it, and the next request is refused at the
// handshake instead of riding the old connection.
func TestRevokedUpstreamClosesUpstreamConnections(t *testing.T) {
	for _, tc := range []struct {
		name string
		rev  func(serial string) *wire.Revocations
	}{
		{"spiffe_id", func(string) *wire.Revocations { return &wire.Revocations{SPIFFEIDs: []string{ordersID}} }},
		{"serial", func(s string) *wire.Revocations {
			return &wire.Revocations{Serials: []wire.RevokedSerial{{Serial: s, ExpiresAt: time.Now().Add(time.Hour)}}}
		}},
		// detect's block-pair of the edge gateway → upstream
		{"blocked_edge", func(string) *wire.Revocations {
			return &wire.Revocations{BlockedEdges: []wire.BlockedEdge{{Source: gatewayID, Destination: ordersID}}}
		}},
		// the gateway's own identity revoked: its egress is cut
		{"own_id", func(string) *wire.Revocations { return &wire.Revocations{SPIFFEIDs: []string{gatewayID}} }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			a := testpki.NewCA(t, td)
			svid := a.SVID(t, ordersID, time.Hour).X509SVID()
			upID := &proxy.NodeIdentity{SVID: func() *x509svid.SVID { return svid }}
			setBundle(t, upID, a)
			up, addr := startUpstreamSidecar(t, upID, echoApp(t))
			tg := startGatewayWith(t, a, addr, nil, func(o *Options) { o.Identity = joined(t, a, gatewayID, a) })
			if resp, _ := tg.do(t, "GET", "/orders", nil, nil); resp.StatusCode != http.StatusOK {
				t.Fatalf("before the revoke: %d", resp.StatusCode)
			}
			if n := up.LiveConnections(); n != 1 {
				t.Fatalf("upstream holds %d connections, want 1", n)
			}
			start := time.Now()
			if n := tg.g.SetRevocations(tc.rev(svid.Certificates[0].SerialNumber.Text(16))); n != 1 {
				t.Fatalf("closed %d connections, want 1", n)
			}
			proxytest.Within(t, "the gateway's connection to the revoked upstream closed", func() bool { return up.LiveConnections() == 0 })
			t.Logf("revoked upstream: gateway's upstream connection closed %s after the revocation", time.Since(start).Round(time.Microsecond))
			resp, _ := tg.do(t, "GET", "/orders", nil, nil)
			if resp.StatusCode == http.StatusOK {
				t.Fatal("a request reached the revoked upstream")
			}
			t.Logf("the next request: %d", resp.StatusCode)
		})
	}
}

// TestRevokedAuthorityClosesTokenExchangeConnections: the gateway's
// pooled connection to the token service, whose certificate the mesh CA
// authority a signed, is not reused once a has left the bundle: it is
// closed at the bundle update, and the next exchange dials anew and
// verifies against the bundle in force (and fails, here).
func TestRevokedAuthorityClosesTokenExchangeConnections(t *testing.T) {
	a, b := testpki.NewCA(t, td), testpki.NewCA(t, td)
	var open atomic.Int64
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.Copy(io.Discard, r.Body)
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusBadRequest)
		io.WriteString(w, `{"error":"invalid_grant"}`)
	}))
	srv.TLS = &tls.Config{Certificates: []tls.Certificate{a.ServerCert(t, "", "127.0.0.1")}}
	srv.Config.ConnState = func(_ net.Conn, s http.ConnState) {
		switch s {
		case http.StateNew:
			open.Add(1)
		case http.StateClosed, http.StateHijacked:
			open.Add(-1)
		}
	}
	srv.StartTLS()
	t.Cleanup(srv.Close)
	id := joined(t, b, gatewayID, a, b)
	up := startUpstream(t, b, ordersID, echoApp(t))
	tg := startGatewayWith(t, b, up, func(c *config.Gateway) {
		c.TokenExchange = &config.GatewayTokenExchange{TokenURL: srv.URL + "/oauth2/token", ClientID: "edge"}
	}, func(o *Options) { o.Identity = id })
	ctx := context.Background()
	if _, err := tg.g.exchange.exchange(ctx, "subject", "orders"); !errors.Is(err, errExchangeRefused) {
		t.Fatalf("before the revoke: %v, want a refusal from the token service", err)
	}
	if n := open.Load(); n != 1 {
		t.Fatalf("%d connections to the token service, want 1 (pooled)", n)
	}
	setBundle(t, id, b) // ca revoke a
	proxytest.Within(t, "the pooled connection to the token service chained to the revoked authority closed", func() bool { return open.Load() == 0 })
	if _, err := tg.g.exchange.exchange(ctx, "subject", "orders"); err == nil || errors.Is(err, errExchangeRefused) {
		t.Fatalf("after the revoke: %v, want a failed handshake", err)
	}
}

// TestRevokedIdentityTokenRefused: a token issued to or for a revoked
// workload (its SPIFFE ID the subject, authorized party, client or an
// actor of the token) is refused at the edge with a 401, as a sidecar
// refuses it, however valid its signature and lifetime: the upstream
// need not hear of the revocation for the isolated identity's tokens to
// stop opening the mesh from outside. Other tokens pass.
func TestRevokedIdentityTokenRefused(t *testing.T) {
	const isolated = "spiffe://" + td + "/ns/prod/sa/frontend"
	tg, sign := startHS256Gateway(t)
	tg.g.SetRevocations(&wire.Revocations{SPIFFEIDs: []string{isolated}})
	for _, tc := range []struct {
		name   string
		claims map[string]any
		want   int
	}{
		{"subject", map[string]any{"sub": isolated}, http.StatusUnauthorized},
		{"authorized_party", map[string]any{"sub": "alice", "azp": isolated}, http.StatusUnauthorized},
		{"client_id", map[string]any{"sub": "alice", "client_id": isolated}, http.StatusUnauthorized},
		{"actor", map[string]any{"sub": "alice", "act": map[string]any{"sub": "spiffe://" + td + "/ns/prod/sa/edge", "act": map[string]any{"sub": isolated}}}, http.StatusUnauthorized},
		{"other", map[string]any{"sub": "alice", "azp": "spiffe://" + td + "/ns/prod/sa/billing"}, http.StatusOK},
	} {
		t.Run(tc.name, func(t *testing.T) {
			resp, body := tg.do(t, "GET", "/orders", nil, map[string]string{"Authorization": "Bearer " + sign(tc.claims)})
			if resp.StatusCode != tc.want {
				t.Fatalf("status %d, want %d: %s", resp.StatusCode, tc.want, body)
			}
		})
	}
}

// TestGatewayNotReadyWhenItsIdentityIsRevoked: a gateway whose own SPIFFE
// ID or SVID serial is revoked says so on its readiness check, as a
// sidecar does: every upstream refuses it, so a load balancer must not
// keep sending it the internet's traffic. Another identity's revocation
// leaves it ready.
func TestGatewayNotReadyWhenItsIdentityIsRevoked(t *testing.T) {
	ca := testpki.NewCA(t, td)
	svid := ca.SVID(t, gatewayID, time.Hour).X509SVID()
	for _, tc := range []struct {
		name  string
		rev   *wire.Revocations
		ready bool
	}{
		{"spiffe_id", &wire.Revocations{SPIFFEIDs: []string{gatewayID}}, false},
		{"serial", &wire.Revocations{Serials: []wire.RevokedSerial{{Serial: svid.Certificates[0].SerialNumber.Text(16), ExpiresAt: time.Now().Add(time.Hour)}}}, false},
		{"other_id", &wire.Revocations{SPIFFEIDs: []string{ordersID}}, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			id := &proxy.NodeIdentity{SVID: func() *x509svid.SVID { return svid }}
			setBundle(t, id, ca)
			tg := startGatewayWith(t, ca, startUpstream(t, ca, ordersID, echoApp(t)), nil, func(o *Options) { o.Identity = id })
			if err := tg.g.Ready(); err != nil {
				t.Fatalf("before the revocation: %v", err)
			}
			tg.g.SetRevocations(tc.rev)
			err := tg.g.Ready()
			if (err == nil) != tc.ready {
				t.Fatalf("Ready() = %v, want ready %v", err, tc.ready)
			}
			if err != nil && !strings.Contains(err.Error(), gatewayID) {
				t.Fatalf("the readiness error does not name the identity: %v", err)
			}
		})
	}
}
