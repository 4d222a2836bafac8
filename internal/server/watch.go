package server

import (
	"context"
	"database/sql"
	"net/http"
	"net/url"
	"strconv"
	"sync"
	"time"

	"github.com/moatless/moatless/internal/audit"
	"github.com/moatless/moatless/internal/store"
	"github.com/moatless/moatless/internal/wire"
)

// hub tells watch streams that the global version moved. Waiters take the
// current channel, which is closed (and replaced) on every change, so no
// change between a check and a wait is missed.
type hub struct {
	mu       sync.Mutex
	version  uint64
	sections store.Versions // the versions at h.version, shared by every stream
	ch       chan struct{}
	conns    map[string]*nodeStreams
}

// nodeStreams is what the hub knows of one node's watch streams here.
type nodeStreams struct {
	n       int       // open streams
	touched time.Time // the last store.TouchNode for the node, by any of them
}

func (h *hub) wait() <-chan struct{} {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.ch == nil {
		h.ch = make(chan struct{})
	}
	return h.ch
}

// setVersions records a versions snapshot and wakes every waiter if it is
// newer: streams read it instead of each querying the store.
func (h *hub) setVersions(vs store.Versions) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if vs.Global <= h.version {
		return
	}
	h.version, h.sections = vs.Global, vs
	if h.ch != nil {
		close(h.ch)
		h.ch = nil
	}
}

// snapshot returns the latest versions snapshot, or false when only the
// global version is known.
func (h *hub) snapshot() (store.Versions, bool) {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.sections, h.sections.Sections != nil
}

func (h *hub) current() uint64 {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.version
}

func (h *hub) connect(id string, delta int) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.conns == nil {
		h.conns = map[string]*nodeStreams{}
	}
	ns := h.conns[id]
	if ns == nil {
		ns = &nodeStreams{}
		h.conns[id] = ns
	}
	ns.n += delta
	if ns.n <= 0 {
		delete(h.conns, id)
	}
}

// nodeConnected reports whether node n counts as connected at now: a
// watch stream of it is open on this replica, or another replica
// recorded one recently. Streams write last_seen once per touchInterval
// (touchDue), so "recently" is that interval plus three heartbeats; a
// shorter window would show a node connected to another replica as
// disconnected for most of each interval. A revoked node never counts.
func (s *Server) nodeConnected(n store.Node, revoked bool, now time.Time) bool {
	return !revoked && (s.hub.isConnected(n.SPIFFEID) || now.Sub(n.LastSeen) < touchInterval+3*s.heartbeat)
}

func (h *hub) isConnected(id string) bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	ns := h.conns[id]
	return ns != nil && ns.n > 0
}

// touchDue reports whether a stream of node id, connected, should record
// now that the node is still there (store.TouchNode): true for one stream
// per node per touchInterval, however many streams the node has open
// (one per sidecar sharing the node's identity), so last_seen costs one
// store write per node per interval.
func (h *hub) touchDue(id string, now time.Time) bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	ns := h.conns[id]
	if ns == nil || now.Sub(ns.touched) < touchInterval {
		return false
	}
	ns.touched = now
	return true
}

// changed is called after this server committed a change, and by the
// poller when another replica did: it refreshes the revocation snapshot if
// revocations moved, then wakes the watch streams.
func (s *Server) changed(ctx context.Context) {
	ctx = context.WithoutCancel(ctx)
	vs, err := s.db.Versions(ctx)
	if err != nil {
		s.log.Error("read change versions", "err", err)
		return
	}
	if v := vs.Sections[store.SectionBundle]; v > s.bundleSeen.Load() {
		// Another replica may have taken a CA step: adopt it before the
		// streams send the bundle section, so they send the new bundle.
		s.bundleSeen.Store(v)
		if adopted, err := s.ca.Sync(ctx); err != nil {
			s.log.Error("adopt the CA state another replica saved; retrying at the next tick", "err", err)
		} else if adopted {
			if err := s.writeBundleFile(); err != nil {
				s.log.Error("write trust bundle", "err", err)
			}
			s.renewServerCertIfTainted(ctx)
		}
	}
	if v := vs.Sections[store.SectionEntries]; s.entries.Load().version != v {
		s.entries.Store(&entryCache{version: v})
	}
	if vs.Sections[store.SectionRevocations] != s.revs.Load().version {
		if err := s.reloadRevocations(ctx, vs.Sections[store.SectionRevocations]); err != nil {
			s.log.Error("reload revocations", "err", err)
			return
		}
		s.secretsRevocationsChanged()
	}
	if vs.Sections[store.SectionRisk] != s.risk.Load().version {
		if err := s.reloadRisk(ctx, vs.Sections[store.SectionRisk]); err != nil {
			s.log.Error("reload risk scores", "err", err)
			return
		}
	}
	s.hub.setVersions(vs)
}

// maxPendingBundleEvents bounds the audit records of bundle changes
// waiting for their publication (the store failing for a long time).
const maxPendingBundleEvents = 100

// bundlePublication is what publishBundle has not finished: the audit
// records of CA steps that took effect (the CA saved them) but whose new
// bundle version was not committed yet, and whether bundle.pem and
// ca-revoked are still to be rewritten. The maintenance loop retries it.
type bundlePublication struct {
	mu     sync.Mutex
	events []audit.Event
	files  bool
}

// publishBundle records a bundle change (rotation, a Tick step) as a new
// bundle version with its audit record, rewrites DIR/bundle.pem and wakes
// the watch streams. The CA has saved the change already: when this fails
// the change stays pending and the maintenance loop publishes it
// (retryBundlePublication), with ev, once the store takes it.
func (s *Server) publishBundle(ctx context.Context, ev audit.Event) error {
	err := s.publishBundleEvent(ctx, ev)
	// A revoked CA key (revoked here or adopted from another replica)
	// takes the tokens issued on its strength with it now, not at the
	// token service's next tick; after the bundle went out, which agents
	// need first.
	if o := s.OAuth(); o != nil {
		// Not cut short by an admin client that hangs up: Tick would
		// otherwise be the next chance, 30 s later.
		if err := o.RevokeAuthorityTokens(context.WithoutCancel(ctx)); err != nil {
			s.log.Error("revoke the access tokens of a revoked CA authority; will retry", "err", err)
		}
	}
	return err
}

func (s *Server) publishBundleEvent(ctx context.Context, ev audit.Event) error {
	seq, _ := s.ca.Bundle().SequenceNumber()
	if ev.Details == nil {
		ev.Details = map[string]string{}
	}
	ev.Details["bundle_sequence"] = strconv.FormatUint(seq, 10)
	p := &s.pub
	p.mu.Lock()
	defer p.mu.Unlock()
	if len(p.events) < maxPendingBundleEvents {
		p.events = append(p.events, ev)
	} else {
		s.log.Error("too many bundle changes waiting for their publication; dropping one's audit record", "kind", ev.Kind, "subject", ev.Subject, "bundle_sequence", seq)
	}
	return s.publishPendingLocked(ctx)
}

// retryBundlePublication publishes what publishBundle could not.
func (s *Server) retryBundlePublication(ctx context.Context) {
	p := &s.pub
	p.mu.Lock()
	defer p.mu.Unlock()
	if len(p.events) == 0 && !p.files {
		return
	}
	if err := s.publishPendingLocked(ctx); err != nil {
		s.log.Error("publish trust bundle; will retry", "err", err)
		return
	}
	s.log.Info("published a trust bundle change that failed to publish before")
}

// publishPendingLocked commits one bundle version with every pending
// audit record, then rewrites the files and wakes the streams. Callers
// hold s.pub.mu.
func (s *Server) publishPendingLocked(ctx context.Context) error {
	p := &s.pub
	if len(p.events) > 0 {
		err := s.db.Tx(ctx, func(tx *sql.Tx) error {
			if _, err := s.db.BumpVersion(ctx, tx, store.SectionBundle); err != nil {
				return err
			}
			for _, ev := range p.events {
				if err := s.audit.AppendTx(ctx, tx, ev); err != nil {
					return err
				}
			}
			return nil
		})
		if err != nil {
			return err
		}
		p.events = nil
	}
	p.files = true
	if err := s.writeBundleFile(); err != nil {
		return err
	}
	p.files = false
	s.changed(ctx)
	return nil
}

// buildUpdate fills the sections of u that changed after since for caller
// c (all of them when full).
func (s *Server) buildUpdate(ctx context.Context, c *caller, vs store.Versions, since uint64, full bool) (wire.Update, bool, error) {
	u := wire.Update{Version: vs.Global}
	any := false
	if full || vs.Sections[store.SectionBundle] > since {
		u.Bundle = s.cachedWireBundle()
		any = true
	}
	// A parent's entries version never exceeds the entries section's
	// (store.ParentVersion), so a change that moved no entries needs no
	// per-stream store query: a revocation or a policy change reaches
	// every stream without one query per node.
	if full || vs.Sections[store.SectionEntries] > since {
		pv, err := s.db.ParentVersion(ctx, c.id.String())
		if err != nil {
			return u, false, err
		}
		if full || pv > since {
			entries, err := s.db.ListEntries(ctx, store.EntryFilter{ParentID: c.id.String()})
			if err != nil {
				return u, false, err
			}
			u.Entries = &entries
			any = true
		}
	}
	if full || vs.Sections[store.SectionRevocations] > since {
		u.Revocations = s.revs.Load().section
		any = true
	}
	if full || vs.Sections[store.SectionRisk] > since {
		u.Risk = s.risk.Load().section
		any = true
	}
	if full || vs.Sections[store.SectionPolicies] > since {
		ps, err := s.cachedPolicySet(ctx, vs.Sections[store.SectionPolicies])
		if err != nil {
			return u, false, err
		}
		if ps != nil {
			u.Policies = ps
			any = true
		}
	}
	return u, any, nil
}

// handleWatch streams wire.Update objects as NDJSON to an attested node:
// first what the node needs to be current (every section, or with a
// resumable ?since only what changed after it), then each change that
// concerns it (its entries, the bundle, revocations, policies) with the
// global version, and a heartbeat whenever it was silent for s.heartbeat
// (the line every stream at that version sends alike). The stream
// ends when the caller's SVID expires or is revoked (the node reconnects
// with a renewed SVID), or when the server shuts down.
func (s *Server) handleWatch(w http.ResponseWriter, r *http.Request) {
	c, ok := s.authNode(w, r, "watch")
	if !ok {
		return
	}
	since, hasSince, epoch, err := watchQuery(r.URL.Query())
	if err != nil {
		s.agentErr(w, "watch", err)
		return
	}
	ctx := r.Context()
	id := c.id.String()
	rc := http.NewResponseController(w)
	// Reading the versions before building the update means the content
	// sent is at least as new as the version it is labelled with.
	wake := s.hub.wait()
	vs, err := s.db.Versions(ctx)
	if err != nil {
		s.agentErr(w, "watch", err)
		return
	}
	// A delta is only as good as the client's claim to hold the store's
	// state at since: same history (epoch), not ahead of the store. A
	// client that lies about it deprives only itself.
	resume := hasSince && epoch != "" && epoch == s.epoch && since <= vs.Global
	first, _, err := s.buildUpdate(ctx, c, vs, since, !resume)
	if err != nil {
		s.agentErr(w, "watch", err)
		return
	}
	first.Epoch, first.Resumed, first.HeartbeatInterval = s.epoch, resume, wire.Duration(s.heartbeat)
	w.Header().Set("Content-Type", "application/x-ndjson")
	w.Header().Set("Cache-Control", "no-store")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(http.StatusOK)
	s.metrics.agentRequests.WithLabelValues("watch", "success").Inc()
	kind := "snapshot"
	if resume {
		kind = "resumed"
	}
	s.metrics.watchStarts.WithLabelValues(kind).Inc()
	s.hub.connect(id, 1)
	s.metrics.connected.Inc()
	defer func() {
		s.hub.connect(id, -1)
		s.metrics.connected.Dec()
	}()
	if s.hub.touchDue(id, time.Now()) {
		_ = s.db.TouchNode(ctx, id, s.now())
	}

	updates := s.metrics.watchUpdates.WithLabelValues("update")
	heartbeats := s.metrics.watchUpdates.WithLabelValues("heartbeat")
	// The write deadline cuts a peer that stops reading. It is moved
	// only when less than watchWriteTimeout-watchDeadlineSlack is left,
	// not on every line: on HTTP/2 each move is a round trip to the
	// connection's goroutine and a new timer, which at a heartbeat every
	// 500 ms on thousands of streams was a good part of the server's
	// work. Every write still has at least that long to complete.
	var deadline time.Time
	write := func(line []byte) bool {
		if now := time.Now(); deadline.Sub(now) < watchWriteTimeout-watchDeadlineSlack {
			deadline = now.Add(watchWriteTimeout)
			_ = rc.SetWriteDeadline(deadline)
		}
		if _, err := w.Write(line); err != nil {
			return false
		}
		return rc.Flush() == nil
	}
	send := func(u wire.Update) bool {
		line, err := s.encodeUpdate(u)
		if err != nil {
			s.log.Error("watch: encode update", "err", err)
			return false
		}
		if !write(line) {
			return false
		}
		updates.Inc()
		return true
	}
	if !send(first) {
		return
	}
	last := first.Version
	// The heartbeat fires only after s.heartbeat without any line: a
	// stream that just got an update is not idle, and the client's
	// silence timer counts every line.
	heartbeat := time.NewTimer(s.heartbeat)
	defer heartbeat.Stop()
	expiry := time.NewTimer(max(c.leaf.NotAfter.Sub(s.now()), 0))
	defer expiry.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-expiry.C:
			return
		case <-heartbeat.C:
			if s.revs.Load().revoked(id, c.serial) {
				return
			}
			if s.signerRevoked(c) {
				// The revoke has not woken this stream yet (the wake
				// follows the store's version bump): the node gets the
				// bundle without the authority that signed its SVID
				// before the stream ends, as on a wake, or it would go
				// on trusting that authority until it attests again.
				send(wire.Update{Version: last, Bundle: s.cachedWireBundle()})
				return
			}
			if !write(s.heartbeatAt(last)) {
				return
			}
			heartbeats.Inc()
			heartbeat.Reset(s.heartbeat)
			// last_seen is for humans (moatless agent list): one write
			// per node per touchInterval, not per heartbeat or stream.
			if s.hub.touchDue(id, time.Now()) {
				_ = s.db.TouchNode(ctx, id, s.now())
			}
		case <-wake:
			wake = s.hub.wait()
			// A node revoked meanwhile gets this last update before the
			// stream ends: it learns that it is cut off (an isolated
			// sidecar then refuses its own workload's calls).
			revoked := s.revs.Load().revoked(id, c.serial)
			vs, ok := s.hub.snapshot()
			if !ok || vs.Global <= last {
				var err error
				if vs, err = s.db.Versions(ctx); err != nil {
					s.log.Warn("watch: read versions", "err", err)
					continue
				}
			}
			if vs.Global <= last {
				if revoked {
					return
				}
				continue
			}
			if revoked {
				// Only the revocations: nothing else is served to it.
				u, _, err := s.buildUpdate(ctx, c, vs, last, false)
				if err != nil {
					s.log.Warn("watch: build update", "err", err)
				} else if u.Revocations != nil {
					send(wire.Update{Version: u.Version, Revocations: u.Revocations})
				}
				return
			}
			line, err := s.updateLine(ctx, c, vs, last)
			if err != nil {
				s.log.Warn("watch: build update", "err", err)
				continue
			}
			last = vs.Global
			if line == nil {
				continue
			}
			if !write(line) {
				return
			}
			updates.Inc()
			heartbeat.Reset(s.heartbeat)
			if s.signerRevoked(c) {
				// The node got the bundle without the authority that
				// signed its SVID; the stream ends, and the node must
				// reconnect with an SVID of a trusted authority (or
				// attest again).
				return
			}
		}
	}
}

// watchWriteTimeout is how long one write to a watch stream may block
// before the stream is dropped; watchDeadlineSlack is how much of it may
// pass before the deadline is moved again (so a write has at least
// watchWriteTimeout-watchDeadlineSlack).
const (
	watchWriteTimeout  = 30 * time.Second
	watchDeadlineSlack = 10 * time.Second
)

// updateLine is the encoded update that brings caller c from version
// since to vs, nil when nothing in it concerns c. When no entries changed
// after since the line is the same for every stream and is encoded once
// (s.lines); otherwise it carries c's own entries.
func (s *Server) updateLine(ctx context.Context, c *caller, vs store.Versions, since uint64) ([]byte, error) {
	encode := func() ([]byte, error) {
		u, any, err := s.buildUpdate(ctx, c, vs, since, false)
		if err != nil || !any {
			return nil, err
		}
		return s.encodeUpdate(u)
	}
	if vs.Sections[store.SectionEntries] > since {
		return encode()
	}
	return s.lines.get(lineKey{since: since, version: vs.Global}, encode)
}

// touchInterval is how often a watch stream records that its node is
// still there (store.TouchNode).
const touchInterval = 30 * time.Second

// watchQuery parses the watch stream's query: since (a version) and
// epoch (what an earlier stream announced). Anything else is refused.
func watchQuery(q url.Values) (since uint64, hasSince bool, epoch string, err error) {
	for k, v := range q {
		if k != "since" && k != "epoch" {
			return 0, false, "", badf("query parameter %q: unknown (allowed: since, epoch)", k)
		}
		if len(v) != 1 {
			return 0, false, "", badf("query parameter %q: give it once", k)
		}
	}
	if v := q.Get("since"); v != "" {
		if since, err = strconv.ParseUint(v, 10, 63); err != nil {
			return 0, false, "", badf("since %q: want a version number", v)
		}
		hasSince = true
	}
	epoch = q.Get("epoch")
	if len(epoch) > wire.MaxEpochLength {
		return 0, false, "", badf("epoch: longer than %d characters", wire.MaxEpochLength)
	}
	for _, r := range epoch {
		if !(r >= '0' && r <= '9' || r >= 'a' && r <= 'f') {
			return 0, false, "", badf("epoch %q: want lower-case hex, as the server sent it", epoch)
		}
	}
	return since, hasSince, epoch, nil
}

// maintain runs the server's periodic work until ctx ends: CA rotation
// steps, server certificate renewal, the fallback poll for other replicas'
// changes (replica.go), and pruning expired records.
func (s *Server) maintain(ctx context.Context) {
	t := time.NewTicker(s.cfg.PollInterval.Std())
	defer t.Stop()
	var lastPrune, lastArchive time.Time
	// Leases that expired while the server was down are revoked now, not
	// a poll interval later.
	s.tickSecrets(ctx)
	for tick := uint64(1); ; tick++ {
		select {
		case <-ctx.Done():
			return
		case <-s.secretsRevoked():
			if s.secrets != nil {
				s.secrets.svc.RevokeLeasesOfRevokedIDs(ctx)
			}
			continue
		case <-t.C:
		}
		// Tick may report a change together with an error: it adopted a
		// step another replica saved, then failed its own. The adopted
		// bundle must still go out.
		changed, err := s.ca.Tick(ctx)
		if err != nil {
			s.log.Error("CA rotation step failed; will retry", "err", err)
		}
		if changed {
			ev := audit.Event{Kind: audit.KindBundleChange, Actor: s.id.String(), Subject: s.td.Name(), Outcome: audit.Success}
			if err := s.publishBundle(ctx, ev); err != nil {
				s.log.Error("publish trust bundle; will retry", "err", err)
			}
		} else {
			s.retryBundlePublication(ctx)
		}
		if c := s.cert.Load(); c == nil || s.now().After(c.renewAt) || s.serverCertIssuerTainted() {
			if err := s.renewServerCert(ctx); err != nil {
				s.log.Error("renew server certificate; keeping the old one", "err", err)
			}
		}
		if s.pollDue(tick) {
			if v, err := s.db.GlobalVersion(ctx); err == nil && v > s.hub.current() {
				if s.listening.Load() {
					s.metrics.feedEvents.WithLabelValues("poll_catch_up").Inc()
				}
				s.changed(ctx)
			}
		}
		s.tickOAuth(ctx)
		s.tickSecrets(ctx)
		now := s.now()
		prune := now.Sub(lastPrune) >= time.Minute
		if prune {
			lastPrune = now
			s.prune(ctx, now)
			s.evictStaleNodes(ctx, now)
		}
		if now := s.now(); s.cfg.AuditRetention > 0 && now.Sub(lastArchive) >= archiveEvery {
			lastArchive = now
			s.archiveAudit(ctx, now)
		}
		s.tickDetect(ctx, now, prune)
	}
}

// prune drops records that can no longer matter.
func (s *Server) prune(ctx context.Context, now time.Time) {
	if _, err := s.db.PruneSVIDs(ctx, now.Add(-time.Hour)); err != nil {
		s.log.Warn("prune issued certificates", "err", err)
	}
	if _, err := s.db.PruneJoinTokens(ctx, now.Add(-24*time.Hour)); err != nil {
		s.log.Warn("prune join tokens", "err", err)
	}
	var n int64
	err := s.db.Tx(ctx, func(tx *sql.Tx) error {
		var err error
		n, err = s.db.PruneRevokedSerials(ctx, tx, now)
		return err
	})
	if err != nil {
		s.log.Warn("prune revoked serials", "err", err)
	} else if n > 0 {
		s.changed(ctx)
	}
	if _, err := s.db.PruneUISessions(ctx, now); err != nil {
		s.log.Warn("prune ended dashboard sessions", "err", err)
	}
	if err := s.metrics.refreshCounts(ctx); err != nil {
		s.log.Warn("refresh gauges", "err", err)
	}
}
