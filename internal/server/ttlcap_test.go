package server_test

import (
	"encoding/json"
	"testing"
	"time"

	"github.com/moatless/moatless/internal/config"
	"github.com/moatless/moatless/internal/server"
	"github.com/moatless/moatless/internal/wire"
)

// TestLoweredMaxTTLBoundsExistingEntries: entries are checked against
// max_x509_svid_ttl and max_jwt_svid_ttl when written. An operator who
// lowers the maxima (to shorten every identity's life during an incident)
// must see every SVID issued from then on bounded, including those of
// entries written under the old maxima.
func TestLoweredMaxTTLBoundsExistingEntries(t *testing.T) {
	dir := t.TempDir()
	e := start(t, dir)
	n := e.attest("spiffe://example.org/agent/node1")
	req := entryReq(n.id, "spiffe://example.org/ns/prod/sa/long", "unix:uid:1")
	req.X509TTL = wire.Duration(20 * time.Hour)
	req.JWTTTL = wire.Duration(50 * time.Minute)
	var ent wire.Entry
	e.admin("POST", server.PathAdminEntries, req, &ent)
	e.stop()

	e = start(t, dir, func(c *config.Server) {
		c.MaxX509SVIDTTL = wire.Duration(2 * time.Hour)
		c.MaxJWTSVIDTTL = wire.Duration(10 * time.Minute)
	})
	c := e.client(n.cert())
	now := e.clock.Now()
	st, body := e.do(c, "POST", wire.PathSignX509, "", wire.SignX509Request{Requests: []wire.X509SVIDRequest{{EntryID: ent.ID, CSR: csr(t, newKey(t))}}})
	if st != 200 {
		t.Fatalf("sign X509: %d %s", st, body)
	}
	var x wire.SignX509Response
	if err := json.Unmarshal(body, &x); err != nil {
		t.Fatal(err)
	}
	if got := x.SVIDs[0].ExpiresAt; got.After(now.Add(2*time.Hour + time.Second)) {
		t.Errorf("X509-SVID expires at %s, %s from now; max_x509_svid_ttl is now 2h", got, got.Sub(now).Round(time.Second))
	}
	st, body = e.do(c, "POST", wire.PathSignJWT, "", wire.SignJWTRequest{EntryID: ent.ID, Audience: []string{"orders"}})
	if st != 200 {
		t.Fatalf("sign JWT: %d %s", st, body)
	}
	var j wire.SignJWTResponse
	if err := json.Unmarshal(body, &j); err != nil {
		t.Fatal(err)
	}
	if j.ExpiresAt.After(now.Add(10*time.Minute + time.Second)) {
		t.Errorf("JWT-SVID expires at %s, %s from now; max_jwt_svid_ttl is now 10m", j.ExpiresAt, j.ExpiresAt.Sub(now).Round(time.Second))
	}
}
