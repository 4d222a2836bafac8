package server

// Lifecycle: what the maintenance loop removes so the store does not grow
// without bound and nothing outlives its purpose. Expired certificates,
// join tokens and revocations are pruned in prune (watch.go); the token
// service prunes its own; here: nodes that stopped renewing, and audit
// records past the retention.

import (
	"context"
	"database/sql"
	"errors"
	"strconv"
	"time"

	"github.com/moatless/moatless/internal/audit"
	"github.com/moatless/moatless/internal/store"
)

// KindNodeEvict records a node evicted for not renewing.
const KindNodeEvict = "node.evict"

// evictBatch bounds the nodes evicted per maintenance pass.
const evictBatch = 100

// archiveEvery is how often audit retention runs.
const archiveEvery = time.Hour

// evictStaleNodes evicts the nodes whose node SVID expired more than
// evict_nodes_after ago (store.EvictNode): their certificates are revoked,
// their entries kept, each with an audit record. Replicas may run it at
// once; each node is evicted by one of them.
func (s *Server) evictStaleNodes(ctx context.Context, now time.Time) {
	cutoff := now.Add(-s.cfg.EvictNodesAfter.Std())
	nodes, err := s.db.StaleNodes(ctx, cutoff, evictBatch)
	if err != nil {
		s.log.Warn("list nodes to evict", "err", err)
		return
	}
	changed := false
	for _, n := range nodes {
		var evicted bool
		var revoked int64
		err := s.db.Tx(ctx, func(tx *sql.Tx) error {
			var err error
			evicted, revoked, err = s.db.EvictNode(ctx, tx, n.SPIFFEID, cutoff, now, s.id.String())
			if err != nil || !evicted {
				return err
			}
			return s.audit.AppendTx(ctx, tx, audit.Event{Kind: KindNodeEvict, Actor: s.id.String(), Subject: n.SPIFFEID, Outcome: audit.Success,
				Details: map[string]string{"svid_expired_at": n.NotAfter.UTC().Format(time.RFC3339), "last_seen": n.LastSeen.UTC().Format(time.RFC3339),
					"certificates_revoked": strconv.FormatInt(revoked, 10), "evict_after": s.cfg.EvictNodesAfter.Std().String()}})
		})
		if err != nil {
			s.log.Warn("evict node", "spiffe_id", n.SPIFFEID, "err", err)
			continue
		}
		if evicted {
			s.log.Info("evicted a node that stopped renewing", "spiffe_id", n.SPIFFEID, "svid_expired_at", n.NotAfter, "certificates_revoked", revoked)
			changed = changed || revoked > 0
		}
	}
	if changed {
		s.changed(ctx)
	}
}

// archiveAudit moves audit records older than audit_retention to segment
// files in audit_archive_dir (audit.Archive).
func (s *Server) archiveAudit(ctx context.Context, now time.Time) {
	if s.cfg.AuditRetention == 0 {
		return
	}
	segs, err := audit.Archive(ctx, s.db, s.audit, audit.ArchiveOptions{
		Dir: s.cfg.AuditArchiveDir, Before: now.Add(-s.cfg.AuditRetention.Std()), Actor: s.id.String(), Now: s.now,
	})
	for _, g := range segs {
		s.log.Info("archived audit records", "first_seq", g.FirstSeq, "last_seq", g.LastSeq, "file", g.File)
	}
	if err != nil && !errors.Is(err, store.ErrArchiveMoved) {
		s.log.Error("archive audit records; they stay in the store", "err", err)
	}
}
