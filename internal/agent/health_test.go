package agent

import (
	"io"
	"net/http"
	"testing"
	"time"
)

// TestHealthListenerRefusesReboundHost is the attack of a web page a
// browser on the node opens, whose name the attacker re-resolves to
// 127.0.0.1 (DNS rebinding): the browser calls the health listener with
// the page's name as Host and hands /metrics (SPIFFE IDs, the server's
// address) to the page. Such a Host gets 421; calls by address, as
// Prometheus scrapes, and as localhost are answered.
func TestHealthListenerRefusesReboundHost(t *testing.T) {
	f := newFakeServer(t)
	f.tokens["t"] = nodeID
	af := startAgent(t, f, "t", t.TempDir())
	addr := af.a.HealthAddr().String()
	c := &http.Client{Timeout: 10 * time.Second}
	for _, tc := range []struct {
		name, path, host string
		want             int
	}{
		{"metrics_by_address", "/metrics", addr, http.StatusOK},
		{"healthz_as_localhost", "/healthz", "localhost", http.StatusOK},
		{"metrics_rebound", "/metrics", "attacker.example", http.StatusMisdirectedRequest},
		{"readyz_rebound", "/readyz", "attacker.example:8089", http.StatusMisdirectedRequest},
	} {
		t.Run(tc.name, func(t *testing.T) {
			req, _ := http.NewRequest("GET", "http://"+addr+tc.path, nil)
			req.Host = tc.host
			resp, err := c.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if resp.StatusCode != tc.want {
				t.Fatalf("status %d, want %d", resp.StatusCode, tc.want)
			}
		})
	}
}
