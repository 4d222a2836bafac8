package server_test

import (
	"context"
	"encoding/json"
	"path/filepath"
	"testing"
	"time"

	"github.com/moatless/moatless/internal/audit"
	"github.com/moatless/moatless/internal/config"
	"github.com/moatless/moatless/internal/server"
	"github.com/moatless/moatless/internal/store"
	"github.com/moatless/moatless/internal/wire"
)

// TestLifecycle: when the clock passes, a node that stopped renewing is
// evicted (its still-valid workload SVID revoked, its entry kept, the
// eviction audited), spent join tokens are pruned, and audit records past
// the retention leave the store for segment files that verify with it.
func TestLifecycle(t *testing.T) {
	archive := t.TempDir()
	e := start(t, "", func(c *config.Server) {
		c.PollInterval = wire.Duration(20 * time.Millisecond)
		c.EvictNodesAfter = wire.Duration(time.Hour)
		c.AuditRetention = wire.Duration(2 * time.Hour)
		c.AuditArchiveDir = archive
	})
	ctx := context.Background()
	n := e.attest("spiffe://example.org/agent/gone")
	req := entryReq(n.id, "spiffe://example.org/ns/prod/sa/long", "unix:uid:1")
	req.X509TTL = wire.Duration(20 * time.Hour)
	var ent wire.Entry
	e.admin("POST", server.PathAdminEntries, req, &ent)
	wkey := newKey(t)
	st, body := e.do(n.http, "POST", wire.PathSignX509, "", wire.SignX509Request{Requests: []wire.X509SVIDRequest{{EntryID: ent.ID, CSR: csr(t, wkey)}}})
	if st != 200 {
		t.Fatalf("sign: %d %s", st, body)
	}
	var signed wire.SignX509Response
	if err := json.Unmarshal(body, &signed); err != nil {
		t.Fatal(err)
	}
	var unused server.JoinTokenResponse
	e.admin("POST", server.PathAdminJoinTokens, server.JoinTokenRequest{SPIFFEID: "spiffe://example.org/agent/never"}, &unused)
	before, err := audit.Verify(ctx, e.srv.Store(), audit.VerifyOptions{})
	if err != nil {
		t.Fatal(err)
	}

	// Three hours on: the node SVID (1h) expired two hours ago, the
	// workload SVID (20h) is still valid; every record so far is older
	// than the retention.
	e.clock.Add(3 * time.Hour)
	deadline := time.Now().Add(20 * time.Second)
	for {
		_, err := e.srv.Store().Node(ctx, n.id)
		segs, _ := e.srv.Store().AuditSegments(ctx)
		if err == store.ErrNotFound && len(segs) > 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("after 3h: node lookup %v, %d audit segments", err, len(segs))
		}
		time.Sleep(20 * time.Millisecond)
	}
	var revs store.RevocationList
	e.admin("GET", server.PathAdminRevocations, nil, &revs)
	found := false
	for _, r := range revs.Serials {
		found = found || (r.Serial == signed.SVIDs[0].Serial && r.Reason == "node evicted")
	}
	if !found {
		t.Fatalf("the evicted node's workload SVID %s is not revoked: %+v", signed.SVIDs[0].Serial, revs.Serials)
	}
	var kept wire.Entry
	e.admin("GET", server.PathAdminEntries+"/"+ent.ID, nil, &kept)
	var evictions int
	page, err := audit.List(ctx, e.srv.Store(), 0, 1000)
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range page {
		if r.Kind == server.KindNodeEvict && r.Subject == n.id && r.Details["certificates_revoked"] == "1" {
			evictions++
		}
	}
	// Checked before the clock moves on: a day later the record itself
	// is past the retention and leaves the store for the archive.
	if evictions != 1 {
		t.Fatalf("%d eviction records", evictions)
	}

	var toks []store.JoinToken
	e.admin("GET", server.PathAdminJoinTokens+"?all=true", nil, &toks)
	// The join token expired 2h45m ago: pruned only after a day.
	if len(toks) != 2 {
		t.Fatalf("join tokens after 3h: %+v", toks)
	}
	e.clock.Add(24 * time.Hour)
	deadline = time.Now().Add(20 * time.Second)
	for {
		// From the store: past a day the server's certificate was renewed
		// at the test clock, which the test's TLS client does not share.
		if toks, err = e.srv.Store().JoinTokens(ctx, true, e.clock.Now()); err != nil {
			t.Fatal(err)
		}
		if len(toks) == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("expired join tokens not pruned: %+v", toks)
		}
		time.Sleep(20 * time.Millisecond)
	}

	// The archive and the store verify as one chain from record 1.
	// (The server may be archiving again meanwhile: VerifyAll copes.)
	arch, res, _, err := audit.VerifyAll(ctx, e.srv.Store(), archive, audit.VerifyOptions{ExpectHead: &before.Head})
	if err != nil {
		t.Fatal(err)
	}
	if arch.Records < before.Records || res.Base.String() != arch.Head.String() {
		t.Fatalf("archive %+v, store %+v, before %+v", arch, res, before)
	}
	if m, _ := filepath.Glob(filepath.Join(archive, "audit-*.ndjson")); len(m) == 0 {
		t.Fatal("no segment file")
	}
}
