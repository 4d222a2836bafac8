package e2e

import (
	"encoding/json"
	"fmt"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// nodeKnown reports whether "agent list" on this server lists a node or
// sidecar with that SPIFFE ID: it attested to this server.
func (p *plane) nodeKnown(id string) bool {
	p.t.Helper()
	for _, n := range p.nodes() {
		if n.SPIFFEID == id {
			return true
		}
	}
	return false
}

// listedNode is one row of "agent list -o json".
type listedNode struct {
	SPIFFEID  string    `json:"spiffe_id"`
	Component string    `json:"component"`
	Connected bool      `json:"connected"`
	Revoked   bool      `json:"revoked"`
	RevokedAt time.Time `json:"revoked_at"`
	Reason    string    `json:"revocation_reason"`
}

// nodes is "agent list -o json", read as a bare list or as an object
// with items.
func (p *plane) nodes() []listedNode {
	p.t.Helper()
	out := p.admin("agent", "list", "-o", "json")
	var list []listedNode
	if err := json.Unmarshal([]byte(out), &list); err == nil {
		return list
	}
	var page struct {
		Items []listedNode `json:"items"`
	}
	if err := json.Unmarshal([]byte(out), &page); err != nil {
		p.t.Fatalf("agent list -o json: %v\n%s", err, out)
	}
	return page.Items
}

// TestAgentStaleDataDir: an agent's data directory from another server (a
// second tour, a server whose data directory was reset) is not used
// against the new server's bundle. Without a join token the agent exits 2
// naming the file to remove; with one it attests afresh, replaces the old
// SVID and serves workloads their identities from the new server.
func TestAgentStaleDataDir(t *testing.T) {
	old := startPlane(t)
	agentData := t.TempDir()
	a := old.startAgent(old.joinToken(agentID), agentData)
	a.stop(t)
	old.server.stop(t)

	p := startPlane(t)
	sock := filepath.Join(shortTempDir(t), "a.sock")
	args := []string{"agent", "--server", p.addr, "--trust-bundle", filepath.Join(p.dataDir, "bundle.pem"),
		"--socket", sock, "--data-dir", agentData, "--health-listen", "off"}
	noToken := start(t, "agent-without-token", append(p.env, "MOATLESS_JOIN_TOKEN="), args...)
	if code := noToken.exitCode(t, 30*time.Second); code != 2 {
		t.Fatalf("stale data directory without a join token: exit %d, want 2\n%s", code, noToken.out.String())
	}
	file := filepath.Join(agentData, "node-svid.pem")
	if out := noToken.out.String(); !strings.Contains(out, "remove "+file) || !strings.Contains(out, "does not chain to the trust bundle given") {
		t.Fatalf("the error does not say why and which file to remove:\n%s", out)
	}

	a2 := p.startAgent(p.joinToken(agentID), agentData)
	p.admin("entry", "create", "--parent", agentID, "--spiffe-id", "spiffe://e2e.test/ns/shop/sa/web", "--selector", uidSelector())
	fetchX509(t, a2.client(t))
	if !p.nodeKnown(agentID) {
		t.Fatal("the new server does not know the agent")
	}
	// The replaced state is the new server's: a restart without a token
	// uses it.
	a2.stop(t)
	a3 := p.startAgent("", agentData)
	fetchX509(t, a3.client(t))
}

// TestSidecarStaleStateDir: the same for a join-mode sidecar's state_dir.
func TestSidecarStaleStateDir(t *testing.T) {
	old := startPlane(t)
	stateDir := t.TempDir()
	cfg := func(p *plane, tokenFile string) string {
		return fmt.Sprintf("identity:\n  join: {server: %q, token_file: %s, server_bundle: %s, state_dir: %s}\n"+
			"outbound:\n  - {listen: %q, upstream: \"127.0.0.1:1\", spiffe_id: %q}\n",
			p.addr, tokenFile, filepath.Join(p.dataDir, "bundle.pem"), stateDir, freeAddr(t), scFrontendID)
	}
	sc := startSidecarProc(t, "sidecar-old", cfg(old, old.joinTokenFile(scOrdersID)), true)
	sc.stop(t)
	old.server.stop(t)

	p := startPlane(t)
	missing := filepath.Join(t.TempDir(), "no-token")
	path := filepath.Join(t.TempDir(), "sc.yaml")
	writeTestFile(t, filepath.Dir(path), "sc.yaml", cfg(p, missing)+"admin: \"off\"\n")
	noToken := start(t, "sidecar-without-token", nil, "sidecar", "-config", path)
	if code := noToken.exitCode(t, 30*time.Second); code != 2 {
		t.Fatalf("stale state_dir without a join token: exit %d, want 2\n%s", code, noToken.out.String())
	}
	file := filepath.Join(stateDir, "node-svid.pem")
	if out := noToken.out.String(); !strings.Contains(out, "remove "+file) {
		t.Fatalf("the error does not name the file to remove:\n%s", out)
	}

	startSidecarProc(t, "sidecar-new", cfg(p, p.joinTokenFile(scOrdersID)), true)
	waitFor(t, 20*time.Second, "the sidecar to follow the new server", func() bool { return p.nodeKnown(scOrdersID) })
}
