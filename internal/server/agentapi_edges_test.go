package server_test

import (
	"bytes"
	"context"
	"database/sql"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/moatless/moatless/internal/audit"
	"github.com/moatless/moatless/internal/config"
	"github.com/moatless/moatless/internal/server"
	"github.com/moatless/moatless/internal/store"
	"github.com/moatless/moatless/internal/wire"
)

// TestRenewReadsRevocationsFromTheStore: a node renewed its SVID on a
// replica that had not yet heard of a revocation another replica (or a
// re-attestation with replace) had just committed: authNode checks the
// revocation set in memory, which follows the store within a poll or a
// notification. The new serial was not revoked, so the node escaped the
// revocation for good, renewing again and again. The renewal now reads
// the store in its own transaction. Here the revocations are written to
// the store directly, as another replica does, and the poll interval is
// a minute: this server has not heard of them.
func TestRenewReadsRevocationsFromTheStore(t *testing.T) {
	e := start(t, "", func(c *config.Server) { c.PollInterval = wire.Duration(time.Minute) })
	db := e.srv.Store()
	ctx := context.Background()
	for _, tc := range []struct {
		name   string
		revoke func(tx *sql.Tx, n *node) error
		want   int
	}{
		{"serial_revoked_elsewhere", func(tx *sql.Tx, n *node) error {
			_, err := db.RevokeSerial(ctx, tx, store.RevokedSerial{Serial: n.svid.Serial, SPIFFEID: n.id, ExpiresAt: n.svid.ExpiresAt, RevokedBy: "other-replica", RevokedAt: time.Now()})
			return err
		}, 403},
		{"id_revoked_elsewhere", func(tx *sql.Tx, n *node) error {
			_, err := db.RevokeID(ctx, tx, store.RevokedID{SPIFFEID: n.id, RevokedBy: "other-replica", RevokedAt: time.Now()})
			return err
		}, 403},
		{"superseded_elsewhere", func(tx *sql.Tx, n *node) error {
			_, err := db.SupersedeNodeSVIDs(ctx, tx, n.id, "another-serial", time.Now(), "other-replica")
			return err
		}, 403},
		{"not_revoked", func(*sql.Tx, *node) error { return nil }, 200},
	} {
		t.Run(tc.name, func(t *testing.T) {
			n := e.attest("spiffe://example.org/agent/" + strings.ReplaceAll(tc.name, "_", "-"))
			if err := db.Tx(ctx, func(tx *sql.Tx) error { return tc.revoke(tx, n) }); err != nil {
				t.Fatal(err)
			}
			st, body := e.do(n.http, "POST", wire.PathRenew, "", wire.RenewRequest{CSR: csr(t, n.key)})
			if st != tc.want {
				t.Fatalf("renew: %d %s, want %d", st, body, tc.want)
			}
			if tc.want != 200 {
				if r := lastAudit(t, e); r.Kind != audit.KindAgentCall || r.Outcome != audit.Denied || r.Details["reason"] != "revoked" || r.Actor != n.id {
					t.Fatalf("audit record of the refusal: %+v", r)
				}
			}
		})
	}
}

// lockedBuffer is a log sink for the server's goroutines.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) count(s string) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return strings.Count(l.b.String(), s)
}

// TestOverBudgetReportsDoNotFloodTheLog: a node looping on the audit
// report endpoint over its budget got a 429 and wrote one server log
// line per request, without bound. The lines are paced (10 at once, one a
// second); every refusal is still counted in the metrics.
func TestOverBudgetReportsDoNotFloodTheLog(t *testing.T) {
	logs := &lockedBuffer{}
	e := startTB(t, "", func(sc *server.Config) { sc.Logger = slog.New(slog.NewJSONHandler(logs, nil)) },
		func(c *config.Server) { c.AuditReportRate, c.AuditReportBurst = 1, wire.MaxAuditEvents })
	n := e.attest("spiffe://example.org/sidecar/loud")
	full := wire.AuditReport{Events: make([]wire.AuditEvent, wire.MaxAuditEvents)}
	for i := range full.Events {
		full.Events[i] = denyEvent("/")
	}
	if st, body := e.do(n.http, "POST", wire.PathAudit, "", full); st != 204 { // spends the budget; the test clock stands still
		t.Fatalf("full report: %d %s", st, body)
	}
	report := wire.AuditReport{Events: []wire.AuditEvent{denyEvent("/")}}
	refused := 0
	for range 200 {
		if st, body := e.do(n.http, "POST", wire.PathAudit, "", report); st == 429 {
			refused++
		} else if st != 204 {
			t.Fatalf("report: %d %s", st, body)
		}
	}
	lines := logs.count("audit report refused")
	t.Logf("%d reports refused, %d log lines", refused, lines)
	if refused < 190 || lines > 10 {
		t.Fatalf("%d reports refused, %d log lines: want at least 190 refused and at most 10 lines", refused, lines)
	}
}
