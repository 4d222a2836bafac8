package e2e

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestRevokedShownAsRevoked: after "moatless revoke --spiffe-id X",
// X is shown as revoked, with the revocation's time and reason, by
// "agent list", "policy status" (and not counted for convergence), X's
// sidecar's /readyz, and "svid fetch" run as X.
func TestRevokedShownAsRevoked(t *testing.T) {
	p := startPlane(t)
	const web = "spiffe://e2e.test/ns/shop/sa/web"
	a := p.startAgent(p.joinToken(agentID), t.TempDir())
	p.admin("entry", "create", "--parent", agentID, "--spiffe-id", web, "--selector", uidSelector())
	fetchX509(t, a.client(t))
	sc := startSidecarProc(t, "orders-sidecar", fmt.Sprintf("identity:\n  join: {server: %q, token_file: %s, server_bundle: %s}\n"+
		"outbound:\n  - {listen: %q, upstream: \"127.0.0.1:1\", spiffe_id: %q}\n",
		p.addr, p.joinTokenFile(scOrdersID), filepath.Join(p.dataDir, "bundle.pem"), freeAddr(t), scFrontendID), true)
	waitFor(t, 20*time.Second, "the sidecar to be listed", func() bool { return p.nodeKnown(scOrdersID) })

	const reason = "key leaked in ticket 42"
	p.admin("revoke", "--spiffe-id", scOrdersID, "--reason", reason)
	p.admin("revoke", "--spiffe-id", web, "--reason", reason)

	// agent list: revoked, not connected, with time and reason.
	for _, n := range p.nodes() {
		if n.SPIFFEID != scOrdersID {
			continue
		}
		if !n.Revoked || n.Connected || n.Reason != reason || time.Since(n.RevokedAt) > time.Minute {
			t.Fatalf("agent list -o json shows the revoked sidecar as %+v", n)
		}
	}
	if out := p.admin("agent", "list"); !strings.Contains(out, scOrdersID+": revoked at ") || !strings.Contains(out, reason) {
		t.Fatalf("agent list does not show the revocation:\n%s", out)
	}

	// policy status: not connected, not counted, marked revoked.
	var st struct {
		Connected int `json:"connected"`
		Nodes     []struct {
			SPIFFEID  string `json:"spiffe_id"`
			Connected bool   `json:"connected"`
			Revoked   bool   `json:"revoked"`
			Reason    string `json:"revocation_reason"`
		} `json:"nodes"`
	}
	if err := json.Unmarshal([]byte(p.admin("policy", "status", "-o", "json")), &st); err != nil {
		t.Fatal(err)
	}
	found := false
	for _, n := range st.Nodes {
		if n.SPIFFEID == scOrdersID {
			found = true
			if !n.Revoked || n.Connected || n.Reason != reason {
				t.Fatalf("policy status shows the revoked sidecar as %+v", n)
			}
		}
	}
	if !found || st.Connected != 0 {
		t.Fatalf("policy status counts %d connected nodes (want 0), lists the sidecar: %v", st.Connected, found)
	}
	if out := p.admin("policy", "status"); !strings.Contains(out, scOrdersID+": revoked at ") {
		t.Fatalf("policy status does not show the revocation:\n%s", out)
	}

	// The sidecar's /readyz: 503, saying when and why.
	var body string
	waitFor(t, 15*time.Second, "the revoked sidecar's /readyz to fail", func() bool {
		resp, err := http.Get("http://" + sc.admin + "/readyz")
		if err != nil {
			return false
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		body = string(b)
		return resp.StatusCode == http.StatusServiceUnavailable
	})
	if !strings.Contains(body, scOrdersID+" was revoked at ") || !strings.Contains(body, reason) {
		t.Fatalf("/readyz of the revoked sidecar: %q", body)
	}

	// svid fetch as the revoked workload: revoked, with when and why.
	var stderr string
	waitFor(t, 15*time.Second, "svid fetch to be refused", func() bool {
		var code int
		code, _, stderr = run(t, nil, "", "svid", "fetch", "--socket", a.sock)
		return code == 4
	})
	if !strings.Contains(stderr, web+" was revoked at ") || !strings.Contains(stderr, reason) || strings.Contains(stderr, "no registration entry matches") {
		t.Fatalf("svid fetch under a revoked ID: %s", stderr)
	}
}
