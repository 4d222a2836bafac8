package server_test

import (
	"bytes"
	"encoding/json"
	"io"
	"net/http"
	"testing"
	"time"

	"github.com/moatless/moatless/internal/audit"
	"github.com/moatless/moatless/internal/server"
	"github.com/moatless/moatless/internal/wire"
)

// TestX509SVIDSigningBudget: a compromised node can loop on the signing
// endpoint with batches of 500 CSRs for one of its entries. Each SVID is
// a signature, a stored certificate record and an fsynced audit record, so
// without a bound one node fills the server's disk and audit log and eats
// its CPU (SPIRE's server rate-limits signing per agent for this reason).
// A node gets a budget of SVIDs (burst, then a rate, counted per SVID,
// not per request); past it the answer is 429 with Retry-After and nothing
// is signed or recorded; other nodes are not charged; the budget refills
// on the server's clock. A batch larger than the burst can never pass and
// says so. The agent (internal/agent) retries a refused batch with
// backoff and keeps serving the SVIDs it holds.
func TestX509SVIDSigningBudget(t *testing.T) {
	e := startTB(t, "", func(c *server.Config) { c.X509SVIDBurst, c.X509SVIDRate = 4, 2 })
	a, b, entA, entB := twoNodesWithEntries(e)
	sign := func(n *node, entry string, count int) (*http.Response, string) {
		t.Helper()
		reqs := make([]wire.X509SVIDRequest, count)
		for i := range reqs {
			reqs[i] = wire.X509SVIDRequest{EntryID: entry, CSR: csr(t, newKey(t))}
		}
		j, err := json.Marshal(wire.SignX509Request{Requests: reqs})
		if err != nil {
			t.Fatal(err)
		}
		req, _ := http.NewRequest("POST", "https://"+e.addr+wire.PathSignX509, bytes.NewReader(j))
		req.Header.Set("Content-Type", "application/json")
		resp, err := n.http.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		body, _ := io.ReadAll(resp.Body)
		if resp.StatusCode != http.StatusOK && resp.StatusCode != http.StatusTooManyRequests {
			t.Fatalf("sign: %d %s", resp.StatusCode, body)
		}
		return resp, string(body)
	}
	issued := func() int {
		t.Helper()
		var page server.AuditPage
		e.admin("GET", server.PathAdminAudit+"?limit=1000", nil, &page)
		n := 0
		for _, r := range page.Records {
			if r.Kind == audit.KindIssueX509 && r.Subject == entA.SPIFFEID {
				n++
			}
		}
		return n
	}

	if resp, body := sign(a, entA.ID, 3); resp.StatusCode != 200 {
		t.Fatalf("3 SVIDs within a burst of 4: %d %s", resp.StatusCode, body)
	}
	resp, body := sign(a, entA.ID, 2)
	if resp.StatusCode != 429 || resp.Header.Get("Retry-After") != "1" {
		t.Fatalf("2 more with 1 left: %d Retry-After %q %s, want 429 and 1", resp.StatusCode, resp.Header.Get("Retry-After"), body)
	}
	if n := issued(); n != 3 {
		t.Fatalf("%d SVIDs recorded for the entry, want 3: a refused batch signs nothing", n)
	}
	if resp, body := sign(b, entB.ID, 4); resp.StatusCode != 200 {
		t.Fatalf("another node was charged: %d %s", resp.StatusCode, body)
	}
	e.clock.Add(time.Second) // 1 left + 2 per second
	if resp, body := sign(a, entA.ID, 3); resp.StatusCode != 200 {
		t.Fatalf("a second later (rate 2/s): %d %s, want 200", resp.StatusCode, body)
	}
	if resp, body := sign(a, entA.ID, 5); resp.StatusCode != 429 || !contains(body, "larger than") {
		t.Fatalf("a batch over the burst: %d %s, want 429 saying it can never pass", resp.StatusCode, body)
	}
	// The node's own renewals draw on the same budget: a loop of renewals
	// is as much signing and auditing as a loop of batches.
	if st, body := e.do(a.http, "POST", wire.PathRenew, "", wire.RenewRequest{CSR: csr(t, newKey(t))}); st != 429 {
		t.Fatalf("renew with the budget spent: %d %s, want 429", st, body)
	}
	e.clock.Add(time.Second)
	if st, body := e.do(a.http, "POST", wire.PathRenew, "", wire.RenewRequest{CSR: csr(t, newKey(t))}); st != 200 {
		t.Fatalf("renew a second later: %d %s, want 200", st, body)
	}
}
