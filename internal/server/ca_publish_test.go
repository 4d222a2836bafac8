package server_test

import (
	"context"
	"crypto/x509"
	"encoding/hex"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/moatless/moatless/internal/audit"
	"github.com/moatless/moatless/internal/config"
	"github.com/moatless/moatless/internal/server"
	"github.com/moatless/moatless/internal/wire"
)

// A CA step is saved before it is published (a new bundle version with
// the step's audit record). When the publication fails (the audit log is
// down) the step has taken effect all the same: retrying it is refused
// ("already tainted"), so the server itself must publish it once it can,
// or agents would keep the old bundle (no re-issue of what the tainted
// key signed, `agent list` IN SYNC on the version before the taint) until
// the next rotation, hours later.
func TestCAStepPublishedAfterAFailedPublication(t *testing.T) {
	e := start(t, "", func(c *config.Server) { c.PollInterval = wire.Duration(20 * time.Millisecond) })
	db := e.srv.Store().SQL()
	auditDown := func(down bool) {
		t.Helper()
		q := "DROP TRIGGER audit_down"
		if down {
			q = "CREATE TRIGGER audit_down BEFORE INSERT ON audit_log BEGIN SELECT RAISE(ABORT, 'audit log down'); END"
		}
		if _, err := db.Exec(q); err != nil {
			t.Fatal(err)
		}
	}
	n := e.attest("spiffe://example.org/agent/a")
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	ch := e.watch(ctx, n)
	next(t, ch)
	oldX, _ := e.rotate("x509")

	auditDown(true)
	code, body := e.do(e.client(nil), "POST", server.PathAdminCATaint, e.token, server.CAStepRequest{ID: oldX})
	auditDown(false)
	if code != http.StatusInternalServerError || !strings.Contains(string(body), "saved") {
		t.Fatalf("taint with the audit log down: %d %s, want 500 saying the step was saved", code, body)
	}
	// Retrying is refused: the step took effect.
	if code, body := e.do(e.client(nil), "POST", server.PathAdminCATaint, e.token, server.CAStepRequest{ID: oldX}); code != http.StatusConflict {
		t.Fatalf("taint again: %d %s, want 409", code, body)
	}
	deadline := time.After(10 * time.Second)
	for tainted := false; !tainted; {
		select {
		case u, ok := <-ch:
			if !ok {
				t.Fatal("watch stream ended")
			}
			tainted = u.Bundle != nil && slices.Contains(u.Bundle.TaintedX509Authorities, oldX)
		case <-deadline:
			t.Fatal("the node never received the bundle that marks the tainted authority")
		}
	}
	// The operator's step has its audit record, with its actor.
	waitFor(t, "the ca.taint audit record", func() bool {
		recs, err := audit.List(context.Background(), e.srv.Store(), 0, 1000)
		if err != nil {
			t.Fatal(err)
		}
		return slices.ContainsFunc(recs, func(r audit.Record) bool {
			return r.Kind == server.KindCATaint && r.Subject == oldX && r.Actor != "" && r.Details["bundle_sequence"] != ""
		})
	})
}

// The same failure, then a restart before the maintenance loop could
// publish: the pending publication was in memory only. The restarted
// server publishes the bundle it starts with, so an agent that resumes
// its watch stream (?since, which sends only the sections that moved)
// gets it; without that it kept the bundle before the taint.
func TestCAStepPublishedAfterARestartInTheMiddle(t *testing.T) {
	dir := t.TempDir()
	slow := func(c *config.Server) { c.PollInterval = wire.Duration(time.Minute) }
	e := start(t, dir, slow)
	n := e.attest("spiffe://example.org/agent/a")
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	ch := e.watch(ctx, n)
	first := next(t, ch)
	oldX, p := e.rotate("x509")
	// The prepare and the activation each publish the bundle.
	last := first.Version
	for seen := 0; seen < 2; {
		u := next(t, ch)
		last = u.Version
		if u.Bundle != nil && u.Bundle.SequenceNumber == p.BundleSequence {
			seen++
		}
	}
	db := e.srv.Store().SQL()
	if _, err := db.Exec("CREATE TRIGGER audit_down BEFORE INSERT ON audit_log BEGIN SELECT RAISE(ABORT, 'audit log down'); END"); err != nil {
		t.Fatal(err)
	}
	if code, body := e.do(e.client(nil), "POST", server.PathAdminCATaint, e.token, server.CAStepRequest{ID: oldX}); code != http.StatusInternalServerError {
		t.Fatalf("taint with the audit log down: %d %s", code, body)
	}
	if _, err := db.Exec("DROP TRIGGER audit_down"); err != nil {
		t.Fatal(err)
	}
	cancel()
	e.stop()

	e = start(t, dir, slow)
	rctx, rcancel := context.WithCancel(context.Background())
	defer rcancel()
	rn := &node{id: n.id, key: n.key, svid: n.svid}
	rn.http = e.client(rn.cert())
	u := next(t, e.watchQuery(rctx, rn, "since="+strconv.FormatUint(last, 10)+"&epoch="+first.Epoch))
	if !u.Resumed {
		t.Fatalf("the stream did not resume: %+v", u)
	}
	if u.Bundle == nil || !slices.Contains(u.Bundle.TaintedX509Authorities, oldX) {
		t.Fatalf("the resumed stream does not carry the bundle that marks the tainted authority: %+v", u.Bundle)
	}
}

// A revoke whose publication failed (the audit log down) has taken effect
// in the CA, but no version moved, so no wake reaches the watch streams.
// The next heartbeat ends the stream of a node whose SVID the revoked key
// signed; it must first hand the node the bundle without that key, or
// the node (and its workloads) would go on trusting it until it attests
// again: it cannot reconnect with its SVID to be told.
func TestRevokedSignersStreamGetsTheBundleBeforeItEnds(t *testing.T) {
	e := start(t, "", func(c *config.Server) { c.PollInterval = wire.Duration(time.Minute) })
	db := e.srv.Store().SQL()
	n := e.attest("spiffe://example.org/agent/a")
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	ch := e.watch(ctx, n)
	next(t, ch)
	oldX, _ := e.rotate("x509")
	e.caStep(server.PathAdminCATaint, server.CAStepRequest{ID: oldX})

	if _, err := db.Exec("CREATE TRIGGER audit_down BEFORE INSERT ON audit_log BEGIN SELECT RAISE(ABORT, 'audit log down'); END"); err != nil {
		t.Fatal(err)
	}
	code, body := e.do(e.client(nil), "POST", server.PathAdminCARevoke, e.token, server.CAStepRequest{Kind: "x509", ID: oldX})
	if code != http.StatusInternalServerError || !strings.Contains(string(body), "saved") {
		t.Fatalf("revoke with the audit log down: %d %s, want 500 saying the step was saved", code, body)
	}
	var last *wire.Bundle
	for ended := false; !ended; {
		select {
		case u, ok := <-ch:
			if ended = !ok; ok && u.Bundle != nil {
				last = u.Bundle
			}
		case <-time.After(10 * time.Second):
			t.Fatal("the watch stream of a node whose SVID the revoked authority signed stays open")
		}
	}
	if last == nil {
		t.Fatal("the stream ended without a bundle after the revoke")
	}
	for _, der := range last.X509Authorities {
		if c, err := x509.ParseCertificate(der); err == nil && hex.EncodeToString(c.SubjectKeyId) == oldX {
			t.Fatal("the last bundle the node got before its stream ended still trusts the revoked authority")
		}
	}
}
