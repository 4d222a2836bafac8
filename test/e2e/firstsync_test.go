package e2e

import (
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/workloadapi"
)

// TestAgentFirstFetchAfterStart: a workload that connects the moment the
// agent's socket appears (started together, as under systemd or in a
// pod) gets the identity it has, not "no identity issued".
func TestAgentFirstFetchAfterStart(t *testing.T) {
	p := startPlane(t)
	const web = "spiffe://e2e.test/ns/shop/sa/web"
	p.admin("entry", "create", "--parent", agentID, "--spiffe-id", web, "--selector", uidSelector())
	for i, tc := range []string{"first_start", "restart_from_data_dir"} {
		t.Run(tc, func(t *testing.T) {
			sock := filepath.Join(shortTempDir(t), "a.sock")
			token := ""
			if i == 0 {
				token = p.joinToken(agentID)
			}
			data := filepath.Join(p.dataDir, "agent-first-sync")
			a := start(t, "agent", append(p.env, "MOATLESS_JOIN_TOKEN="+token), "agent", "--server", p.addr,
				"--trust-bundle", filepath.Join(p.dataDir, "bundle.pem"), "--socket", sock, "--data-dir", data, "--health-listen", "off")
			until := time.Now().Add(30 * time.Second)
			for {
				if _, err := os.Stat(sock); err == nil {
					break
				}
				if a.exited() || time.Now().After(until) {
					t.Fatalf("no socket:\n%s", a.out.String())
				}
				time.Sleep(time.Millisecond)
			}
			svid, err := workloadapi.FetchX509SVID(deadline(t, 20*time.Second), workloadapi.WithAddr("unix://"+sock))
			if err != nil || svid.ID.String() != web {
				t.Fatalf("first fetch as the agent starts: %v %v, want %s", svid, err, web)
			}
			a.stop(t)
		})
	}
}
