package server

import (
	"context"
	"crypto/sha256"
	"crypto/x509"
	"database/sql"
	"errors"
	"fmt"
	"math"
	"net/http"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/moatless/moatless/internal/audit"
	"github.com/moatless/moatless/internal/ca"
	"github.com/moatless/moatless/internal/store"
	"github.com/moatless/moatless/internal/wire"
)

// maxSignBatch bounds the CSRs of one SignX509Request.
const maxSignBatch = 500

// Compiled on first use, not at start: a bounded repetition such as {0,61}
// compiles to tens of KB, and every role of the one binary (the sidecar
// too) would otherwise allocate and keep it.
var componentName = sync.OnceValue(func() *regexp.Regexp { return regexp.MustCompile(`^[a-z][a-z0-9-]{0,31}$`) })

// agentFail writes an agent API error and counts it.
func (s *Server) agentFail(w http.ResponseWriter, endpoint string, status int, msg string) {
	outcome := "client_error"
	switch {
	case status == http.StatusUnauthorized || status == http.StatusForbidden:
		outcome = "denied"
	case status >= 500:
		outcome = "server_error"
	}
	s.metrics.agentRequests.WithLabelValues(endpoint, outcome).Inc()
	writeErrors(w, status, msg)
}

func (s *Server) agentOK(w http.ResponseWriter, endpoint string, status int, v any) {
	s.metrics.agentRequests.WithLabelValues(endpoint, "success").Inc()
	if v == nil {
		w.WriteHeader(status)
		return
	}
	writeJSON(w, status, v)
}

// agentErr maps an error to a status and a message safe to return.
func (s *Server) agentErr(w http.ResponseWriter, endpoint string, err error) {
	var br *badRequest
	switch {
	case errors.As(err, &br):
		s.agentFail(w, endpoint, http.StatusBadRequest, br.msg)
	case errors.Is(err, errRevoked):
		s.agentFail(w, endpoint, http.StatusForbidden, err.Error())
	case errors.Is(err, store.ErrNotFound):
		s.agentFail(w, endpoint, http.StatusNotFound, strings.TrimPrefix(err.Error(), "store: "))
	default:
		s.log.Error("agent request failed", "endpoint", endpoint, "err", err)
		s.agentFail(w, endpoint, http.StatusInternalServerError, "internal error; see the server log")
	}
}

// authNode authenticates an agent API caller: a valid, unexpired,
// unrevoked X509-SVID that this server issued as a node SVID to that very
// SPIFFE ID. Workload SVIDs, admin certificates and certificates another
// CA under the same upstream root signed are refused. Every refusal is
// audited (agentRefused), so a revoked node still knocking, or a workload
// trying the agent API with its own SVID, shows up in the audit log.
func (s *Server) authNode(w http.ResponseWriter, r *http.Request, endpoint string) (*caller, bool) {
	c, err := s.peer(r)
	switch {
	case errors.Is(err, errRevoked):
		s.agentRefused(w, r, endpoint, c, "revoked", http.StatusForbidden, err.Error())
		return nil, false
	case errors.Is(err, errExpired):
		s.agentRefused(w, r, endpoint, c, "expired", http.StatusUnauthorized, err.Error())
		return nil, false
	case err != nil:
		s.agentRefused(w, r, endpoint, nil, "no_client_cert", http.StatusUnauthorized, err.Error())
		return nil, false
	}
	kind, err := s.credentialKind(r.Context(), c)
	if err != nil {
		s.agentErr(w, endpoint, err)
		return nil, false
	}
	if kind != store.SVIDKindNode {
		s.agentRefused(w, r, endpoint, c, "not_a_node", http.StatusForbidden, fmt.Sprintf("%s is not an attested node: attest with a join token first", c.id))
		return nil, false
	}
	return c, true
}

// agentRefused records an agent API call refused for its credential: an
// audit record (kind agent.call, outcome denied; the actor is the SPIFFE
// ID of the certificate presented, "anonymous" without one), then the
// answer. These records share the bound of anonymous refusals
// (s.refusals): a revoked node retrying in a loop, or a flood of calls
// without a certificate, cannot become a flood of fsynced audit writes.
// Over the bound the caller gets 429 and the refusal is only counted in
// moatless_agent_requests_total{outcome="rate_limited"}.
func (s *Server) agentRefused(w http.ResponseWriter, r *http.Request, endpoint string, c *caller, reason string, status int, msg string) {
	if !s.refusals.allow(s.now()) {
		s.metrics.agentRequests.WithLabelValues(endpoint, "rate_limited").Inc()
		writeErrors(w, http.StatusTooManyRequests, "too many refused requests; retry later")
		return
	}
	actor := "anonymous"
	details := map[string]string{"reason": reason, "method": r.Method, "path": r.URL.Path, "status": strconv.Itoa(status), "remote": remoteHost(r)}
	if c != nil {
		actor = c.id.String()
		details["serial"] = c.serial
	}
	ev := audit.Event{Kind: audit.KindAgentCall, Actor: actor, Subject: r.Method + " " + r.URL.Path, Outcome: audit.Denied, Details: details}
	if err := s.audit.Append(r.Context(), ev); err != nil {
		s.log.Error("audit log unavailable", "err", err)
		s.agentFail(w, endpoint, http.StatusInternalServerError, "audit log unavailable")
		return
	}
	s.log.Warn("agent API call refused", "endpoint", endpoint, "reason", reason, "actor", actor, "remote", remoteHost(r))
	s.agentFail(w, endpoint, status, msg)
}

func toWireSVID(iss *ca.Issued, id, entryID string) wire.X509SVID {
	out := wire.X509SVID{SPIFFEID: id, EntryID: entryID, Serial: iss.Serial, ExpiresAt: iss.NotAfter.UTC()}
	for _, c := range iss.Chain {
		out.CertChain = append(out.CertChain, c.Raw)
	}
	return out
}

// wireBundle converts the CA's bundle to the wire form: the bundle and
// the authorities' states from one snapshot (ca.View), so a bundle
// sequence number never goes out with another state's taint marks.
func (s *Server) wireBundle() *wire.Bundle {
	b, status := s.ca.View()
	out := &wire.Bundle{TrustDomain: s.td.Name(), X509Authorities: [][]byte{}, JWTAuthorities: []wire.JWTAuthority{}}
	for _, c := range b.X509Authorities() {
		out.X509Authorities = append(out.X509Authorities, c.Raw)
	}
	expiry := map[string]time.Time{}
	taintedJWT := map[string]bool{}
	for _, a := range status {
		switch {
		case a.Kind == ca.KindJWT:
			expiry[a.ID] = a.NotAfter
			taintedJWT[a.ID] = a.State == ca.StateTainted
		case a.State == ca.StateTainted:
			out.TaintedX509Authorities = append(out.TaintedX509Authorities, a.ID)
		}
	}
	slices.Sort(out.TaintedX509Authorities)
	for kid, pub := range b.JWTAuthorities() {
		der, err := x509.MarshalPKIXPublicKey(pub)
		if err != nil {
			s.log.Error("cannot encode a JWT authority", "kid", kid, "err", err)
			continue
		}
		out.JWTAuthorities = append(out.JWTAuthorities, wire.JWTAuthority{KeyID: kid, PublicKey: der, ExpiresAt: expiry[kid].UTC(), Tainted: taintedJWT[kid]})
	}
	slices.SortFunc(out.JWTAuthorities, func(a, b wire.JWTAuthority) int { return strings.Compare(a.KeyID, b.KeyID) })
	if h, ok := b.RefreshHint(); ok {
		out.RefreshHint = wire.Duration(h)
	}
	out.SequenceNumber, _ = b.SequenceNumber()
	return out
}

// attestFailure records a refused attestation: metric by reason, audit
// record, and the answer.
func (s *Server) attestFailure(w http.ResponseWriter, r *http.Request, reason, subject string, status int, msg string) {
	s.metrics.attestFailures.WithLabelValues(reason).Inc()
	if !s.refusals.allow(s.now()) {
		s.metrics.attestFailures.WithLabelValues("rate_limited").Inc()
		s.agentFail(w, "attest", http.StatusTooManyRequests, "too many refused requests; retry later")
		return
	}
	ev := audit.Event{Kind: audit.KindAttest, Actor: "anonymous", Subject: subject, Outcome: audit.Failure,
		Details: map[string]string{"reason": reason, "remote": remoteHost(r)}}
	if status == http.StatusForbidden {
		ev.Outcome = audit.Denied
	}
	if err := s.audit.Append(r.Context(), ev); err != nil {
		s.log.Error("audit log unavailable", "err", err)
		s.agentFail(w, "attest", http.StatusInternalServerError, "audit log unavailable")
		return
	}
	s.log.Warn("attestation refused", "reason", reason, "remote", remoteHost(r))
	s.agentFail(w, "attest", status, msg)
}

// handleAttest: a node proves itself with a single-use join token and gets
// its first SVID for the token's SPIFFE ID. Consuming the token, recording
// the node and its certificate, and the audit record are one transaction;
// a refused attestation changes nothing (the token stays usable unless it
// was the reason).
func (s *Server) handleAttest(w http.ResponseWriter, r *http.Request) {
	var in wire.AttestRequest
	if err := decodeJSON(r, wire.MaxBodySize, &in); err != nil {
		s.attestFailure(w, r, "malformed", "", http.StatusBadRequest, err.Error())
		return
	}
	if in.JoinToken == "" || len(in.JoinToken) > 256 {
		s.attestFailure(w, r, "malformed", "", http.StatusBadRequest, "join_token: required (at most 256 characters)")
		return
	}
	if len(in.CSR) == 0 {
		s.attestFailure(w, r, "malformed", "", http.StatusBadRequest, "csr: required (PKCS#10, DER, base64 in JSON)")
		return
	}
	hash := sha256.Sum256([]byte(in.JoinToken))
	now := s.now()
	var (
		jt         store.JoinToken
		id         spiffeid.ID
		iss        *ca.Issued
		revokedNow bool
	)
	type refusal struct {
		reason string
		status int
		msg    string
	}
	var refused *refusal
	err := s.db.Tx(r.Context(), func(tx *sql.Tx) error {
		var err error
		jt, err = s.db.ConsumeJoinToken(r.Context(), tx, hash, now)
		switch {
		case errors.Is(err, store.ErrTokenUnknown), errors.Is(err, store.ErrTokenUsed), errors.Is(err, store.ErrTokenExpired):
			reason := map[error]string{store.ErrTokenUnknown: "unknown_token", store.ErrTokenUsed: "used_token", store.ErrTokenExpired: "expired_token"}
			for k, v := range reason {
				if errors.Is(err, k) {
					refused = &refusal{v, http.StatusUnauthorized, "join token is unknown, expired or already used: create a new one with \"moatless jointoken create\""}
				}
			}
			return err
		case err != nil:
			return err
		}
		if id, err = spiffeid.FromString(jt.SPIFFEID); err != nil {
			return fmt.Errorf("stored join token %s has a bad SPIFFE ID: %w", jt.ID, err)
		}
		// The revocation set in memory follows the store within a poll or
		// a notification; an ID revoked on another replica a moment ago is
		// read from the store itself, so no replica mints a node SVID for
		// it in that window.
		if revokedNow, err = s.db.IsRevokedIDTx(r.Context(), tx, id.String()); err != nil {
			return err
		}
		if revokedNow || s.revs.Load().revoked(id.String(), "") {
			refused = &refusal{"revoked", http.StatusForbidden, id.String() + " is revoked"}
			return errRevoked
		}
		if iss, err = s.ca.SignX509SVID(in.CSR, id, s.cfg.X509SVIDTTL.Std()); err != nil {
			refused = &refusal{"bad_csr", http.StatusBadRequest, "csr: " + err.Error()}
			return err
		}
		if err := s.db.UpsertAttestedNode(r.Context(), tx, store.Node{SPIFFEID: id.String(), TokenID: jt.ID, AttestedAt: now,
			Serial: iss.Serial, NotAfter: iss.NotAfter, RemoteAddr: remoteHost(r)}); err != nil {
			return err
		}
		if err := s.db.InsertSVIDs(r.Context(), tx, store.IssuedSVID{Serial: iss.Serial, SPIFFEID: id.String(), Kind: store.SVIDKindNode,
			IssuedTo: id.String(), NotAfter: iss.NotAfter, IssuedAt: now}); err != nil {
			return err
		}
		details := map[string]string{"serial": iss.Serial, "not_after": iss.NotAfter.UTC().Format(time.RFC3339), "remote": remoteHost(r)}
		if jt.Replace {
			// The token replaces the node (re-provisioned, perhaps after a
			// compromise): every node SVID issued for its ID before,
			// renewed ones included, is revoked, so a copy of one cannot
			// go on renewing beside the new agent. Without replace several
			// holders of one ID are allowed (join-mode replicas).
			superseded, err := s.db.SupersedeNodeSVIDs(r.Context(), tx, id.String(), iss.Serial, now, s.id.String())
			if err != nil {
				return err
			}
			details["superseded_svids"] = strconv.FormatInt(superseded, 10)
		}
		return s.audit.AppendTx(r.Context(), tx, audit.Event{Kind: audit.KindAttest, Actor: id.String(), Subject: jt.ID, Outcome: audit.Success,
			Details: details})
	})
	if refused != nil {
		s.attestFailure(w, r, refused.reason, jt.ID, refused.status, refused.msg)
		return
	}
	if err != nil {
		s.agentErr(w, "attest", err)
		return
	}
	s.metrics.attestations.Inc()
	s.metrics.svids.WithLabelValues(store.SVIDKindNode).Inc()
	if n, err := s.db.CountNodes(r.Context()); err == nil { // a re-attesting node is not a new one
		s.metrics.nodes.Set(float64(n))
	}
	s.log.Info("node attested", "spiffe_id", id.String(), "serial", iss.Serial, "remote", remoteHost(r))
	s.changed(r.Context())
	s.agentOK(w, "attest", http.StatusOK, wire.AttestResponse{SVID: toWireSVID(iss, id.String(), ""), Bundle: *s.wireBundle()})
}

// handleRenew signs a fresh node SVID for the caller's own SPIFFE ID.
func (s *Server) handleRenew(w http.ResponseWriter, r *http.Request) {
	c, ok := s.authNode(w, r, "renew")
	if !ok {
		return
	}
	var in wire.RenewRequest
	if err := decodeJSON(r, wire.MaxBodySize, &in); err != nil {
		s.agentErr(w, "renew", err)
		return
	}
	if len(in.CSR) == 0 {
		s.agentErr(w, "renew", badf("csr: required"))
		return
	}
	if !s.spendX509(w, "renew", c, 1) {
		return
	}
	iss, err := s.ca.SignX509SVID(in.CSR, c.id, s.cfg.X509SVIDTTL.Std())
	if err != nil {
		s.agentErr(w, "renew", badf("csr: %v", err))
		return
	}
	now := s.now()
	var revokedNow bool
	err = s.db.Tx(r.Context(), func(tx *sql.Tx) error {
		if err := s.db.SetNodeSVID(r.Context(), tx, c.id.String(), iss.Serial, iss.NotAfter, now); err != nil {
			return err
		}
		// authNode checked the revocation set in memory, which follows
		// the store within a poll or a notification. A node whose
		// certificate was revoked a moment ago (on another replica, or
		// by a re-attestation with replace: SupersedeNodeSVIDs) must not
		// renew in that window: its new serial would not be revoked, and
		// it would go on renewing for good. So the store itself is read,
		// in the transaction that records the new SVID, after the node
		// row is written (a concurrent re-attestation writes it too, so
		// one of the two sees the other).
		idRevoked, err := s.db.IsRevokedIDTx(r.Context(), tx, c.id.String())
		if err != nil {
			return err
		}
		serialRevoked, err := s.db.IsRevokedSerialTx(r.Context(), tx, c.serial)
		if err != nil {
			return err
		}
		if idRevoked || serialRevoked {
			revokedNow = true
			return errRevoked
		}
		if err := s.db.InsertSVIDs(r.Context(), tx, store.IssuedSVID{Serial: iss.Serial, SPIFFEID: c.id.String(), Kind: store.SVIDKindNode,
			IssuedTo: c.id.String(), NotAfter: iss.NotAfter, IssuedAt: now}); err != nil {
			return err
		}
		return s.audit.AppendTx(r.Context(), tx, audit.Event{Kind: audit.KindRenew, Actor: c.id.String(), Subject: c.id.String(), Outcome: audit.Success,
			Details: map[string]string{"serial": iss.Serial, "previous_serial": c.serial, "not_after": iss.NotAfter.UTC().Format(time.RFC3339), "remote": remoteHost(r)}})
	})
	if revokedNow {
		s.agentRefused(w, r, "renew", c, "revoked", http.StatusForbidden, errRevoked.Error())
		return
	}
	if err != nil {
		s.agentErr(w, "renew", err)
		return
	}
	s.metrics.svids.WithLabelValues(store.SVIDKindNode).Inc()
	s.agentOK(w, "renew", http.StatusOK, wire.X509SVIDResponse{SVID: toWireSVID(iss, c.id.String(), "")})
}

// entryCache holds registration entries by id as read at one
// entries-section version. changed() replaces it whole when that version
// moves (a change here or, via the poller, on another replica), so the
// version is the cache's own and nothing is cleared in place: a reader
// that raced with the replacement files what it read into the old cache,
// which no one reads again.
type entryCache struct {
	version uint64
	m       sync.Map // id -> wire.Entry
	n       atomic.Int64
}

// maxCachedEntries bounds an entryCache; past it entries are read from the
// store until the next entries change.
const maxCachedEntries = 100_000

// cachedEntry returns the entry with id from the cache or the store. A hit
// is never older than the last entries change this server has seen.
func (s *Server) cachedEntry(ctx context.Context, id string) (wire.Entry, error) {
	c := s.entries.Load()
	if v, ok := c.m.Load(id); ok {
		return v.(wire.Entry), nil
	}
	e, err := s.db.Entry(ctx, id)
	if err != nil {
		return e, err
	}
	if c.n.Add(1) <= maxCachedEntries {
		c.m.Store(id, e)
	}
	return e, nil
}

// entryFor loads an entry the caller may get an identity for: it exists,
// its parent is the caller, and its SPIFFE ID is not revoked.
func (s *Server) entryFor(ctx context.Context, c *caller, field, id string) (wire.Entry, error) {
	if id == "" {
		return wire.Entry{}, badf("%s: required", field)
	}
	e, err := s.cachedEntry(ctx, id)
	if errors.Is(err, store.ErrNotFound) || (err == nil && e.ParentID != c.id.String()) {
		// The same answer for "absent" and "not yours": a node learns
		// nothing about other nodes' entries.
		return e, fmt.Errorf("%w: %s: no entry %q parented by %s", store.ErrNotFound, field, id, c.id)
	}
	if err != nil {
		return e, err
	}
	if s.revs.Load().revoked(e.SPIFFEID, "") {
		return e, fmt.Errorf("%w: %s", errRevoked, e.SPIFFEID)
	}
	return e, nil
}

// entryTTL is the lifetime of an SVID issued for an entry: the entry's
// own TTL (def when it has none), never beyond the server's current max.
// Entries are checked against the max when written; checking again here
// makes lowering max_x509_svid_ttl or max_jwt_svid_ttl (say, during an
// incident) bound every SVID issued from then on, not only new entries.
func entryTTL(ttl, def, maxTTL time.Duration) time.Duration {
	if ttl == 0 {
		ttl = def
	}
	if maxTTL > 0 && ttl > maxTTL {
		ttl = maxTTL
	}
	return ttl
}

// handleSignX509 signs X509-SVIDs for entries parented by the caller. All
// or nothing: one bad request fails the whole batch and nothing is issued.
// The issued certificates and one audit record each are written by a group
// commit before the answer.
func (s *Server) handleSignX509(w http.ResponseWriter, r *http.Request) {
	start := time.Now()
	c, ok := s.authNode(w, r, "x509svids")
	if !ok {
		return
	}
	var in wire.SignX509Request
	if err := decodeJSON(r, wire.MaxBodySize, &in); err != nil {
		s.agentErr(w, "x509svids", err)
		return
	}
	if len(in.Requests) == 0 || len(in.Requests) > maxSignBatch {
		s.agentErr(w, "x509svids", badf("requests: want 1 to %d", maxSignBatch))
		return
	}
	if !s.spendX509(w, "x509svids", c, len(in.Requests)) {
		return
	}
	entries := make([]wire.Entry, len(in.Requests))
	seen := map[string]wire.Entry{}
	for i, req := range in.Requests {
		e, ok := seen[req.EntryID]
		if !ok {
			var err error
			e, err = s.entryFor(r.Context(), c, fmt.Sprintf("requests[%d].entry_id", i), req.EntryID)
			if err != nil {
				s.agentErr(w, "x509svids", err)
				return
			}
			seen[req.EntryID] = e
		}
		if len(req.CSR) == 0 {
			s.agentErr(w, "x509svids", badf("requests[%d].csr: required", i))
			return
		}
		entries[i] = e
	}
	now := s.now()
	out := wire.SignX509Response{SVIDs: make([]wire.X509SVID, len(in.Requests))}
	recs := make([]store.IssuedSVID, len(in.Requests))
	evs := make([]audit.Event, len(in.Requests))
	for i, req := range in.Requests {
		e := entries[i]
		id, err := spiffeid.FromString(e.SPIFFEID)
		if err != nil {
			s.agentErr(w, "x509svids", fmt.Errorf("entry %s has a bad SPIFFE ID: %w", e.ID, err))
			return
		}
		ttl := entryTTL(e.X509TTL.Std(), s.cfg.X509SVIDTTL.Std(), s.cfg.MaxX509SVIDTTL.Std())
		iss, err := s.ca.SignX509SVID(req.CSR, id, ttl)
		if err != nil {
			s.agentErr(w, "x509svids", badf("requests[%d].csr: %v", i, err))
			return
		}
		out.SVIDs[i] = toWireSVID(iss, e.SPIFFEID, e.ID)
		recs[i] = store.IssuedSVID{Serial: iss.Serial, SPIFFEID: e.SPIFFEID, Kind: store.SVIDKindWorkload, EntryID: e.ID,
			IssuedTo: c.id.String(), NotAfter: iss.NotAfter, IssuedAt: now}
		evs[i] = audit.Event{Kind: audit.KindIssueX509, Actor: c.id.String(), Subject: e.SPIFFEID, Outcome: audit.Success, Time: now,
			Details: map[string]string{"entry_id": e.ID, "serial": iss.Serial, "not_after": iss.NotAfter.UTC().Format(time.RFC3339)}}
	}
	err := s.audit.AppendWith(r.Context(), func(ctx context.Context, tx *sql.Tx) error {
		return s.db.InsertSVIDs(ctx, tx, recs...)
	}, evs...)
	if err != nil {
		s.agentErr(w, "x509svids", err)
		return
	}
	s.metrics.svids.WithLabelValues(store.SVIDKindWorkload).Add(float64(len(recs)))
	s.metrics.signSeconds.Observe(time.Since(start).Seconds())
	s.agentOK(w, "x509svids", http.StatusOK, out)
}

// overBudget answers 429 for a spent signing budget, with Retry-After
// when waiting helps, and counts it.
func (s *Server) overBudget(w http.ResponseWriter, endpoint string, wait time.Duration, msg string) {
	s.metrics.agentRequests.WithLabelValues(endpoint, "rate_limited").Inc()
	if wait > 0 {
		w.Header().Set("Retry-After", strconv.Itoa(int(math.Ceil(max(wait, time.Second).Seconds()))))
	}
	writeErrors(w, http.StatusTooManyRequests, msg)
}

// spendX509 takes n X509-SVIDs from the caller's signing budget
// (Config.X509SVIDBurst at once, X509SVIDRate per second), or answers 429
// and returns false. It is charged before anything is signed or written:
// a node looping on the signing endpoints could otherwise fill the store
// and the audit log and take the server's CPU.
func (s *Server) spendX509(w http.ResponseWriter, endpoint string, c *caller, n int) bool {
	ok, wait := s.x509Signs.take(c.id.String(), s.now(), float64(n))
	switch {
	case ok:
		return true
	case wait == 0:
		s.overBudget(w, endpoint, 0, fmt.Sprintf("a batch of %d X509-SVIDs is larger than a node's signing budget allows at once; send smaller batches", n))
	default:
		s.overBudget(w, endpoint, wait, fmt.Sprintf("%s asked for more X509-SVIDs than its budget allows; retry later", c.id))
	}
	return false
}

// handleSignJWT signs a JWT-SVID for an entry parented by the caller.
func (s *Server) handleSignJWT(w http.ResponseWriter, r *http.Request) {
	c, ok := s.authNode(w, r, "jwtsvid")
	if !ok {
		return
	}
	var in wire.SignJWTRequest
	if err := decodeJSON(r, wire.MaxBodySize, &in); err != nil {
		s.agentErr(w, "jwtsvid", err)
		return
	}
	e, err := s.entryFor(r.Context(), c, "entry_id", in.EntryID)
	if err != nil {
		s.agentErr(w, "jwtsvid", err)
		return
	}
	if err := validateAudience(in.Audience); err != nil {
		s.agentErr(w, "jwtsvid", err)
		return
	}
	// Each JWT-SVID is a signature and an fsynced audit record, and any
	// local workload with an identity can ask for one per new audience:
	// a node gets Config.JWTSVIDBurst at once, JWTSVIDRate per second.
	if ok, wait := s.jwtSigns.take(c.id.String(), s.now(), 1); !ok {
		s.overBudget(w, "jwtsvid", wait, fmt.Sprintf("%s asked for more JWT-SVIDs than its budget allows; retry later", c.id))
		return
	}
	id, err := spiffeid.FromString(e.SPIFFEID)
	if err != nil {
		s.agentErr(w, "jwtsvid", err)
		return
	}
	ttl := entryTTL(e.JWTTTL.Std(), s.cfg.JWTSVIDTTL.Std(), s.cfg.MaxJWTSVIDTTL.Std())
	tok, exp, err := s.ca.SignJWTSVID(id, in.Audience, ttl)
	if err != nil {
		s.agentErr(w, "jwtsvid", badf("%v", err))
		return
	}
	ev := audit.Event{Kind: audit.KindIssueJWT, Actor: c.id.String(), Subject: e.SPIFFEID, Outcome: audit.Success,
		Details: map[string]string{"entry_id": e.ID, "audience": strings.Join(in.Audience, " "), "expires_at": exp.UTC().Format(time.RFC3339)}}
	if err := s.audit.Append(r.Context(), ev); err != nil {
		s.agentErr(w, "jwtsvid", err)
		return
	}
	s.metrics.svids.WithLabelValues("jwt").Inc()
	s.agentOK(w, "jwtsvid", http.StatusOK, wire.SignJWTResponse{SPIFFEID: e.SPIFFEID, Token: tok, ExpiresAt: exp.UTC()})
}

// handleAck records what the caller applied.
func (s *Server) handleAck(w http.ResponseWriter, r *http.Request) {
	c, ok := s.authNode(w, r, "ack")
	if !ok {
		return
	}
	var in wire.Ack
	if err := decodeJSON(r, wire.MaxBodySize, &in); err != nil {
		s.agentErr(w, "ack", err)
		return
	}
	if !componentName().MatchString(in.Component) {
		s.agentErr(w, "ack", badf("component %q: want a short lower-case name such as agent, sidecar or gateway", in.Component))
		return
	}
	if in.Version > s.hub.current() {
		v, err := s.db.GlobalVersion(r.Context())
		if err != nil {
			s.agentErr(w, "ack", err)
			return
		}
		if in.Version > v {
			s.agentErr(w, "ack", badf("version %d: the server is only at %d", in.Version, v))
			return
		}
	}
	if err := s.db.RecordAck(r.Context(), c.id.String(), in.Component, in.Version, in.PolicyVersion, s.now()); err != nil {
		s.agentErr(w, "ack", err)
		return
	}
	s.agentOK(w, "ack", http.StatusNoContent, nil)
}
