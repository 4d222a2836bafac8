package proxy

import (
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/moatless/moatless/internal/policy"
	"github.com/moatless/moatless/internal/wire"
)

// TestBlockedPair runs on both server paths, with HTTP/1.1 between the
// sidecars (the fast path's case on both sides).
func TestBlockedPair(t *testing.T) {
	forServerPaths(t, testBlockedPair)
}

func testBlockedPair(t *testing.T, sp serverPath) {
	app := echoApp(t)
	p := newPairWith(t, allowPrincipals(policy.ModeStrict, "example.org/ns/prod/sa/frontend"), app, HTTP, true, sp.edit)
	// A client that keeps its connection to the inbound sidecar: the
	// outbound sidecar's pool.
	c := &http.Client{}
	if code, _ := get(t, c, "GET", p.outboundURL+"/api/orders/1"); code != 200 {
		t.Fatalf("before the block: %d", code)
	}
	if p.server.LiveConnections() == 0 {
		t.Fatal("no live connection to cut")
	}
	now := time.Now()
	for _, tc := range []struct {
		name    string
		blocks  []wire.BlockedEdge
		want    int
		closing bool
	}{
		{"other_pair_not_blocked", []wire.BlockedEdge{{Source: frontendID, Destination: "spiffe://example.org/ns/prod/sa/payments"}}, 200, false},
		{"lapsed_block", []wire.BlockedEdge{{Source: frontendID, Destination: ordersID, ExpiresAt: now.Add(-time.Second)}}, 200, false},
		{"blocked_at_the_destination", []wire.BlockedEdge{{Source: frontendID, Destination: ordersID, ExpiresAt: now.Add(time.Hour)}}, 503, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			n := p.server.SetRevocations(&wire.Revocations{BlockedEdges: tc.blocks})
			if (n > 0) != tc.closing {
				t.Fatalf("closed %d live connections", n)
			}
			code, body := get(t, c, "GET", p.outboundURL+"/api/orders/1")
			if code != tc.want {
				t.Fatalf("got %d %q, want %d", code, body, tc.want)
			}
		})
	}
	p.server.SetRevocations(&wire.Revocations{})
	if code, _ := get(t, c, "GET", p.outboundURL+"/api/orders/1"); code != 200 {
		t.Fatalf("after the block was lifted: %d", code)
	}
	// The caller's own sidecar refuses the blocked edge too, before any
	// connection.
	p.client.SetRevocations(&wire.Revocations{BlockedEdges: []wire.BlockedEdge{{Source: frontendID, Destination: ordersID}}})
	code, body := get(t, c, "GET", p.outboundURL+"/api/orders/1")
	if code != 503 || !strings.Contains(body, "blocked") {
		t.Fatalf("outbound on a blocked edge: %d %q", code, body)
	}
}

func TestIsolatedWorkloadEgressCut(t *testing.T) {
	forServerPaths(t, testIsolatedWorkloadEgressCut)
}

func testIsolatedWorkloadEgressCut(t *testing.T, sp serverPath) {
	app := echoApp(t)
	p := newPairWith(t, allowPrincipals(policy.ModeStrict, "example.org/ns/prod/sa/frontend"), app, HTTP, true, sp.edit)
	c := &http.Client{}
	if code, _ := get(t, c, "GET", p.outboundURL+"/"); code != 200 {
		t.Fatalf("before: %d", code)
	}
	p.client.SetRevocations(&wire.Revocations{SPIFFEIDs: []string{frontendID}})
	resp, err := c.Get(p.outboundURL + "/")
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 503 || !strings.Contains(string(b), "this workload's identity is revoked") {
		t.Fatalf("an isolated workload's call: %d %q", resp.StatusCode, b)
	}
}

func TestRevokedIdentityToken(t *testing.T) {
	rs := newRevocationSet(&wire.Revocations{SPIFFEIDs: []string{"spiffe://example.org/ns/prod/sa/reports"}})
	for _, tc := range []struct {
		name   string
		claims map[string]any
		want   bool
	}{
		{"user_token", map[string]any{"sub": "alice", "azp": "webapp"}, false},
		{"workload_is_subject", map[string]any{"sub": "spiffe://example.org/ns/prod/sa/reports"}, true},
		{"workload_is_client", map[string]any{"sub": "alice", "client_id": "spiffe://example.org/ns/prod/sa/reports"}, true},
		{"workload_is_azp", map[string]any{"sub": "alice", "azp": "spiffe://example.org/ns/prod/sa/reports"}, true},
		{"workload_acted", map[string]any{"sub": "alice", "act": map[string]any{"sub": "spiffe://example.org/ns/prod/sa/reports"}}, true},
		{"workload_acted_earlier_in_the_chain", map[string]any{"sub": "alice", "act": map[string]any{"sub": "spiffe://example.org/ns/prod/sa/orders",
			"act": map[string]any{"sub": "spiffe://example.org/ns/prod/sa/reports"}}}, true},
		{"other_workload", map[string]any{"sub": "spiffe://example.org/ns/prod/sa/orders"}, false},
		{"odd_types", map[string]any{"sub": 42, "act": "reports"}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := rs.revokedIdentityToken(tc.claims); got != tc.want {
				t.Fatalf("got %v, want %v", got, tc.want)
			}
		})
	}
	if (*revocationSet)(nil).revokedIdentityToken(map[string]any{"sub": "x"}) {
		t.Fatal("nil set revokes")
	}
}
