package server

// The risk section of the watch stream (wire.Update.Risk): the risk score
// of every SPIFFE ID the detectors hold at risk, so sidecars and the
// gateway can put the caller's score on their spans without asking.
//
// The scores are computed from the stored findings, not from this
// replica's engine: every replica writes its findings to the same table,
// so every replica computes the same section and the data plane sees one
// answer whichever replica it watches. The section is stored (meta row)
// and versioned like any other (store.SectionRisk): a stream resuming at
// ?since gets it only when it changed after since, and a new epoch or a
// first connection gets it whole. It is recomputed after findings are
// stored (at most once per riskMinInterval: a burst of findings is one
// push, not one per finding, since every push reaches every stream) and
// on every detect tick (findings age out of the risk window with no
// write), and written only when a score moved.

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/moatless/moatless/internal/detect"
	"github.com/moatless/moatless/internal/store"
	"github.com/moatless/moatless/internal/wire"
)

// riskCache is the risk section at one SectionRisk version, shared by
// every watch stream.
type riskCache struct {
	version uint64
	section *wire.RiskScores
}

// riskMinInterval is the least time between two recomputations set off
// by findings; one that comes sooner is left pending for the next
// maintenance pass (every poll_interval, 1 s by default).
const riskMinInterval = time.Second

// riskPublisher serializes recomputations of the risk section.
type riskPublisher struct {
	mu sync.Mutex
	// last is when the section was last recomputed (the process's own
	// clock: this paces the work, it decides nothing); pending says that
	// findings were stored since.
	last    time.Time
	pending bool
	// trimmed is how many identities the last computation left out
	// (over wire.MaxRiskScores), so the warning is logged once per
	// change, not per tick.
	trimmed int
}

// risksOf is every identity's risk from stored findings: per identity,
// the detectors' rule (detect.RiskOf) over its findings last seen at or
// after since, with their IDs in the order given; identities whose risk is
// zero are left out. Highest risk first, ties by identity.
func risksOf(fs []store.RiskFinding, since time.Time) []detect.IdentityRisk {
	by := map[string][]*detect.Finding{}
	for _, f := range fs {
		by[f.Identity] = append(by[f.Identity], &detect.Finding{ID: f.ID, Severity: detect.Severity(f.Severity), LastSeen: f.LastAt})
	}
	return detect.RisksOf(by, since)
}

// storedRisks is risksOf over the findings stored within the risk window
// at now. It is the one source of risk for every reader (the admin API's
// /risk, the dashboard, the playbooks' triggers, the watch stream's
// section, the identities-at-risk gauge): every replica writes its
// findings to the same table, so every replica answers alike, and a
// restarted replica answers as before, although each replica's engine
// holds only the findings it raised since it started.
func (s *Server) storedRisks(ctx context.Context, now time.Time) ([]detect.IdentityRisk, error) {
	since := now.Add(-s.detect.engine.Settings().RiskWindow.Std())
	fs, err := s.db.RiskFindings(ctx, since)
	if err != nil {
		return nil, err
	}
	return risksOf(fs, since), nil
}

// riskScores computes the section from findings: the SPIFFE IDs among
// risksOf, their scores rounded to two decimals; identities that are no
// SPIFFE ID (OAuth clients, addresses) are left out, since no span names
// them as a source. At most limit entries, the highest scores first (ties
// by ID), sorted by SPIFFE ID; trimmed is how many were left out.
func riskScores(fs []store.RiskFinding, since time.Time, limit int) (section wire.RiskScores, trimmed int) {
	out := []wire.RiskScore{}
	for _, ir := range risksOf(fs, since) {
		if !strings.HasPrefix(ir.Identity, "spiffe://") || len(ir.Identity) > maxRecordID {
			continue
		}
		if _, err := spiffeid.FromString(ir.Identity); err != nil {
			continue
		}
		if r := math.Round(ir.Risk*100) / 100; r > 0 {
			out = append(out, wire.RiskScore{SPIFFEID: ir.Identity, Score: r})
		}
	}
	if len(out) > limit {
		sort.Slice(out, func(i, j int) bool {
			if out[i].Score != out[j].Score {
				return out[i].Score > out[j].Score
			}
			return out[i].SPIFFEID < out[j].SPIFFEID
		})
		trimmed, out = len(out)-limit, out[:limit]
	}
	sort.Slice(out, func(i, j int) bool { return out[i].SPIFFEID < out[j].SPIFFEID })
	return wire.RiskScores{Scores: out}, trimmed
}

// riskMoved is called after findings were stored: it recomputes the
// section now, or leaves that pending when the last recomputation was
// less than riskMinInterval ago.
func (s *Server) riskMoved(ctx context.Context) {
	d := s.detect
	d.risk.mu.Lock()
	due := time.Since(d.risk.last) >= riskMinInterval
	if !due {
		d.risk.pending = true
	}
	d.risk.mu.Unlock()
	if due {
		if err := s.publishRisk(ctx, s.now()); err != nil {
			s.log.Error("publish risk scores; retrying at the next detect tick", "err", err)
		}
	}
}

// riskPending runs a recomputation riskMoved left pending, once
// riskMinInterval has passed.
func (s *Server) riskPending(ctx context.Context) {
	d := s.detect
	d.risk.mu.Lock()
	due := d.risk.pending && time.Since(d.risk.last) >= riskMinInterval
	d.risk.mu.Unlock()
	if due {
		if err := s.publishRisk(ctx, s.now()); err != nil {
			s.log.Warn("publish risk scores", "err", err)
		}
	}
}

// publishRisk recomputes the risk section at now and, when it differs
// from the stored one, stores it with a new SectionRisk version and wakes
// the watch streams.
func (s *Server) publishRisk(ctx context.Context, now time.Time) (err error) {
	d := s.detect
	d.risk.mu.Lock()
	defer d.risk.mu.Unlock()
	d.risk.last, d.risk.pending = time.Now(), false
	changed := false
	defer func() {
		outcome := map[bool]string{true: "changed", false: "unchanged"}[changed]
		if err != nil {
			outcome = "error"
		}
		d.metrics.riskPublishes.WithLabelValues(outcome).Inc()
	}()
	since := now.Add(-d.engine.Settings().RiskWindow.Std())
	fs, err := s.db.RiskFindings(ctx, since)
	if err != nil {
		return err
	}
	section, trimmed := riskScores(fs, since, wire.MaxRiskScores)
	high := 0
	for _, ir := range risksOf(fs, since) {
		if ir.Risk >= 0.75 {
			high++
		}
	}
	d.metrics.atRisk.Set(float64(high))
	if trimmed > 0 && trimmed != d.risk.trimmed {
		s.log.Warn("more identities at risk than the watch stream carries; sending the highest scores", "at_risk", len(section.Scores)+trimmed,
			"sent", len(section.Scores), "limit", wire.MaxRiskScores)
	}
	d.risk.trimmed = trimmed
	body, err := json.Marshal(section)
	if err != nil {
		return fmt.Errorf("server: encode risk section: %w", err)
	}
	if changed, err = s.db.PutRiskSection(ctx, body); err != nil {
		return err
	}
	d.metrics.riskSent.Set(float64(len(section.Scores)))
	if changed {
		s.changed(ctx)
	}
	return nil
}

// reloadRisk reads the stored risk section as of version into the cache
// the watch streams read. Before any was stored the section is empty.
func (s *Server) reloadRisk(ctx context.Context, version uint64) error {
	sec := &wire.RiskScores{Scores: []wire.RiskScore{}}
	body, err := s.db.RiskSection(ctx)
	switch {
	case errors.Is(err, store.ErrNotFound):
	case err != nil:
		return err
	default:
		if err := json.Unmarshal(body, sec); err != nil {
			return fmt.Errorf("server: stored risk section: %w", err)
		}
	}
	s.risk.Store(&riskCache{version: version, section: sec})
	s.riskScores.Set(*sec)
	return nil
}
