package server_test

import (
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/moatless/moatless/internal/server"
	"github.com/moatless/moatless/internal/wire"
)

// TestJWTSVIDSigningBudget: every JWT-SVID a node has signed is a
// signature and an fsynced audit record, and any local workload with an
// identity can make its agent ask for one per audience set it invents. A
// node gets a budget (burst, then a rate); past it the answer is 429 with
// Retry-After, and other nodes are not charged. The budget refills on the
// server's clock.
func TestJWTSVIDSigningBudget(t *testing.T) {
	e := startTB(t, "", func(c *server.Config) { c.JWTSVIDBurst, c.JWTSVIDRate = 3, 1 })
	a, b, entA, entB := twoNodesWithEntries(e)
	sign := func(n *node, entry string, aud string) int {
		t.Helper()
		st, body := e.do(n.http, "POST", wire.PathSignJWT, "", wire.SignJWTRequest{EntryID: entry, Audience: []string{aud}})
		if st != http.StatusOK && st != http.StatusTooManyRequests {
			t.Fatalf("sign: %d %s", st, body)
		}
		return st
	}
	for i, aud := range []string{"x1", "x2", "x3"} {
		if st := sign(a, entA.ID, aud); st != 200 {
			t.Fatalf("JWT-SVID %d within the burst: %d", i, st)
		}
	}
	if st := sign(a, entA.ID, "x4"); st != 429 {
		t.Fatalf("past the burst: %d, want 429", st)
	}
	if st := sign(b, entB.ID, "y1"); st != 200 {
		t.Fatalf("another node was charged: %d", st)
	}
	e.clock.Add(time.Second)
	if st := sign(a, entA.ID, "x5"); st != 200 {
		t.Fatalf("a second later (rate 1/s): %d, want 200", st)
	}
	body := `{"entry_id":"` + entA.ID + `","audience":["x6"]}`
	req, _ := http.NewRequest("POST", "https://"+e.addr+wire.PathSignJWT, strings.NewReader(body))
	req.Header.Set("Content-Type", "application/json")
	resp, err := a.http.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 429 || resp.Header.Get("Retry-After") != "1" {
		t.Fatalf("and the one after: %d Retry-After %q, want 429 and 1", resp.StatusCode, resp.Header.Get("Retry-After"))
	}
}

// twoNodesWithEntries attests nodes a and b and registers one entry under
// each, for the signing budget tests.
func twoNodesWithEntries(e *env) (a, b *node, entA, entB wire.Entry) {
	a, b = e.attest("spiffe://example.org/agent/a"), e.attest("spiffe://example.org/agent/b")
	e.admin("POST", server.PathAdminEntries, entryReq(a.id, "spiffe://example.org/ns/prod/sa/a", "unix:uid:1"), &entA)
	e.admin("POST", server.PathAdminEntries, entryReq(b.id, "spiffe://example.org/ns/prod/sa/b", "unix:uid:1"), &entB)
	return a, b, entA, entB
}
