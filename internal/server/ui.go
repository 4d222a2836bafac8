package server

// The dashboard (internal/ui) wired into the control plane. It reads
// through the same functions the admin API handlers use, and changes
// things only by running those handlers in process with the dashboard
// user as the authenticated actor: a revocation from the dashboard is
// validated, written, audited (with via=dashboard and the session) and
// pushed to the mesh exactly as one from the CLI.

import (
	"bytes"
	"context"
	"crypto/hkdf"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"sync"
	"time"

	"sigs.k8s.io/yaml"

	"github.com/moatless/moatless/internal/audit"
	"github.com/moatless/moatless/internal/detect"
	"github.com/moatless/moatless/internal/policy"
	"github.com/moatless/moatless/internal/store"
	"github.com/moatless/moatless/internal/token"
	"github.com/moatless/moatless/internal/ui"
	"github.com/moatless/moatless/internal/wire"
)

// dashboardActorKey carries the ui.Actor of a dashboard action into the
// admin handler it runs (authenticateAdmin, adminCall.event). Only this
// package sets it; nothing from a request can.
type dashboardActorKey struct{}

// Dashboard returns the dashboard handler (nil when disabled).
func (s *Server) Dashboard() *ui.UI { return s.ui }

// initDashboard mounts the dashboard at /ui unless it is disabled. Its
// session key is derived from the KEK (HKDF-SHA256 with its own label),
// so replicas sharing the KEK accept each other's sessions, and a leaked
// session key reveals nothing of the CA's or the token service's keys.
func (s *Server) initDashboard(ctx context.Context) error {
	dc := s.cfg.Dashboard
	if dc.Disabled {
		return nil
	}
	kek, err := s.loadKEK(ctx)
	if err != nil {
		return err
	}
	key, err := hkdf.Key(sha256.New, kek, nil, "moatless dashboard session v1", 32)
	clear(kek)
	if err != nil {
		return fmt.Errorf("server: derive dashboard session key: %w", err)
	}
	d := dashboard{s: s, incAudit: &incidentAudit{m: map[string]*incidentAuditEntry{}}}
	cfg := ui.Config{
		TrustDomain: s.td.Name(), SessionKey: key, SessionTTL: dc.SessionTTL.Std(), HSTSMaxAge: dc.HSTSMaxAge.Std(), Now: s.now,
		Logger: s.log.With("component", "ui"), Audit: s.audit,
		Admin: d, Nodes: d, Certs: d, Policies: d, Revocations: d, Records: d, Findings: d, Incidents: d, Sessions: d,
	}
	if dc.OIDCClientID != "" {
		cfg.OIDC = &ui.OIDC{ClientID: dc.OIDCClientID, AdminRole: dc.AdminRole, Provider: s.oauth.svc, Users: d}
	}
	u, err := ui.New(cfg)
	if err != nil {
		return fmt.Errorf("server: %w", err)
	}
	s.ui = u
	s.mux.Handle(ui.Prefix, u)
	s.mux.Handle(ui.Prefix+"/", u)
	if cfg.OIDC != nil {
		s.log.Info("dashboard OIDC login", "client_id", dc.OIDCClientID, "redirect_uri", u.RedirectURI(), "admin_role", dc.AdminRole)
	}
	return nil
}

// dashboard implements the dashboard's data sources.
type dashboard struct {
	s        *Server
	incAudit *incidentAudit
}

func (d dashboard) CheckAdminToken(tok string) bool { return d.s.checkAdminToken(tok) }

// EndSession stores a logged-out dashboard session, where every replica
// reads it.
func (d dashboard) EndSession(ctx context.Context, id string, expires time.Time) error {
	return d.s.db.EndUISession(ctx, id, expires)
}

// SessionEnded reports whether a dashboard session was logged out on any
// replica.
func (d dashboard) SessionEnded(ctx context.Context, id string) (bool, error) {
	return d.s.db.UISessionEnded(ctx, id)
}

// AdminTokenBinding is a hash of the admin token's hash: it changes with
// the token and reveals nothing about it.
func (d dashboard) AdminTokenBinding() []byte {
	h := sha256.New()
	h.Write([]byte("moatless dashboard admin binding v1\x00"))
	h.Write(d.s.adminHash[:])
	return h.Sum(nil)[:16]
}

func (d dashboard) DashboardUser(ctx context.Context, userID, role string) (string, bool, error) {
	u, err := d.s.db.OAuth().UserByID(ctx, userID)
	if errors.Is(err, token.ErrNotFound) {
		return "", false, nil
	}
	if err != nil {
		return "", false, err
	}
	return u.Name, slices.Contains(u.Roles, role), nil
}

func (d dashboard) Nodes(ctx context.Context) ([]ui.Node, ui.Convergence, error) {
	ns, err := d.s.nodeStatuses(ctx)
	if err != nil {
		return nil, ui.Convergence{}, err
	}
	st, err := d.s.policyStatusOf(ctx)
	if err != nil {
		return nil, ui.Convergence{}, err
	}
	out := make([]ui.Node, len(ns))
	for i, n := range ns {
		out[i] = ui.Node{Node: n.Node, Connected: n.Connected, RequiredVersion: n.RequiredVersion, InSync: n.InSync,
			Enforcing: enforcesPolicy(n.Component), PolicyCurrent: n.PolicyVersion == st.Version}
	}
	return out, ui.Convergence{Version: st.Version, Connected: st.Connected, AtVersion: st.AtVersion, Converged: st.Converged}, nil
}

func (d dashboard) Entries(ctx context.Context) ([]wire.Entry, error) {
	return d.s.db.ListEntries(ctx, store.EntryFilter{})
}

func (d dashboard) SVIDs(ctx context.Context, limit int) ([]store.IssuedSVID, int, error) {
	return d.s.db.SVIDs(ctx, d.s.now(), limit)
}

func (d dashboard) CA(ctx context.Context) (ui.CAState, error) {
	b, status := d.s.ca.View()
	seq, _ := b.SequenceNumber()
	return ui.CAState{TrustDomain: d.s.td.Name(), BundleSequence: seq, Authorities: status}, nil
}

func (d dashboard) PolicyHistory(ctx context.Context, before uint64, limit int) ([]store.PolicyVersion, error) {
	return d.s.db.PolicyHistory(ctx, before, limit)
}

// PolicyObjects shows each object as YAML, a Rego module as its source.
func (d dashboard) PolicyObjects(ctx context.Context, version uint64) (uint64, []ui.PolicyObject, error) {
	v, objs, err := d.s.db.PolicySet(ctx, d.s.db.SQL(), version)
	if errors.Is(err, store.ErrNotFound) {
		return 0, nil, &ui.ActionError{Status: http.StatusNotFound, Msg: fmt.Sprintf("There is no policy version %d.", version)}
	}
	if err != nil {
		return 0, nil, err
	}
	out := make([]ui.PolicyObject, 0, len(objs))
	for _, o := range objs {
		var text string
		if o.Kind == policy.KindRegoModule {
			var m wire.RegoModule
			if err := json.Unmarshal(o.Raw, &m); err != nil {
				return 0, nil, fmt.Errorf("server: module %s: %w", o.Name, err)
			}
			text = m.Source
		} else {
			y, err := yaml.JSONToYAML(o.Raw)
			if err != nil {
				return 0, nil, fmt.Errorf("server: %s: %w", o.PolicyRef, err)
			}
			text = string(y)
		}
		out = append(out, ui.PolicyObject{PolicyRef: o.PolicyRef, Text: text})
	}
	return v, out, nil
}

func (d dashboard) RollbackPolicy(ctx context.Context, a ui.Actor, version uint64) (uint64, int, error) {
	var res PolicyChangeResult
	err := d.s.dashboardCall(ctx, a, d.s.rollbackPolicies, http.MethodPost, PathAdminPolicyRollback, "", PolicyRollbackRequest{Version: version}, &res)
	return res.Version, len(res.Changes), err
}

func (d dashboard) Revocations(ctx context.Context) (store.RevocationList, []ui.RevokedToken, error) {
	l, err := d.s.db.Revocations(ctx, d.s.now())
	if err != nil {
		return l, nil, err
	}
	toks, err := d.s.oauthRevokedTokens(ctx)
	if err != nil {
		return l, nil, err
	}
	out := make([]ui.RevokedToken, len(toks))
	for i, t := range toks {
		out[i] = ui.RevokedToken{JTI: t.JTI, ExpiresAt: t.ExpiresAt}
	}
	return l, out, nil
}

func (d dashboard) Revoke(ctx context.Context, a ui.Actor, spiffeID, serial, reason string) error {
	return d.s.dashboardCall(ctx, a, d.s.createRevocation, http.MethodPost, PathAdminRevocations, "",
		RevokeRequest{SPIFFEID: spiffeID, Serial: serial, Reason: reason}, nil)
}

func (d dashboard) Unrevoke(ctx context.Context, a ui.Actor, spiffeID string) error {
	return d.s.dashboardCall(ctx, a, d.s.deleteRevocation, http.MethodDelete,
		PathAdminRevocations+"?"+url.Values{"spiffe_id": {spiffeID}}.Encode(), "", nil, nil)
}

func (d dashboard) AuditRecords(ctx context.Context, before uint64, limit int, kinds []string) ([]audit.Record, uint64, error) {
	recs, err := audit.ListKinds(ctx, d.s.db, before, limit, kinds)
	if err != nil {
		return nil, 0, err
	}
	var next uint64
	if len(recs) == limit && recs[len(recs)-1].Seq > 1 {
		next = recs[len(recs)-1].Seq
	}
	return recs, next, nil
}

// AuditEvents is the dashboard's EventSource: the newest records of kinds
// without their hashes, details undecoded (the service graph decodes one
// record's per edge).
func (d dashboard) AuditEvents(ctx context.Context, limit int, kinds []string) ([]ui.Event, uint64, error) {
	head, _, err := d.s.db.AuditHead(ctx)
	if err != nil {
		return nil, 0, err
	}
	rows, err := d.s.db.AuditEventsDescKinds(ctx, head, limit, kinds)
	if err != nil {
		return nil, 0, err
	}
	evs := make([]ui.Event, len(rows))
	for i, r := range rows {
		evs[i] = ui.Event{Seq: uint64(r.Seq), Time: time.Unix(0, r.At).UTC(), Kind: r.Kind, Actor: r.Actor, Subject: r.Subject,
			Outcome: r.Outcome, Details: json.RawMessage(r.Details)}
	}
	var next uint64
	if len(evs) == limit && evs[len(evs)-1].Seq > 1 {
		next = evs[len(evs)-1].Seq
	}
	return evs, next, nil
}

// dashboardCall runs admin handler h in process for a dashboard action,
// with a as the authenticated actor: the same validation, transaction,
// audit record and push as an admin API call. id is the {id} of the
// handler's path pattern ("" for none). A refusal (4xx) becomes a
// *ui.ActionError with the handler's message; a server error stays
// generic (the handler logged the detail).
func (s *Server) dashboardCall(ctx context.Context, a ui.Actor, h func(*adminCall), method, target, id string, in, out any) error {
	var body []byte
	if in != nil {
		var err error
		if body, err = json.Marshal(in); err != nil {
			return err
		}
	}
	r, err := http.NewRequestWithContext(context.WithValue(ctx, dashboardActorKey{}, a), method, target, bytes.NewReader(body))
	if err != nil {
		return err
	}
	r.RemoteAddr = a.Remote
	if id != "" {
		r.SetPathValue("id", id)
	}
	res := newHeldResponse()
	s.admin(h).ServeHTTP(res, r)
	if res.status >= 400 {
		msg := res.firstError()
		if res.status >= 500 || msg == "" {
			return fmt.Errorf("server: dashboard %s %s: status %d", method, target, res.status)
		}
		return &ui.ActionError{Status: res.status, Msg: msg}
	}
	if out != nil {
		if err := json.Unmarshal(res.body.Bytes(), out); err != nil {
			return fmt.Errorf("server: dashboard %s %s: %w", method, target, err)
		}
	}
	return nil
}

// Findings reads the findings as the admin API lists them (newest first,
// a cursor of first-seen times).
func (d dashboard) Findings(ctx context.Context, q ui.FindingQuery) ([]detect.Finding, time.Time, error) {
	rows, err := d.s.db.Findings(ctx, store.FindingQuery{Identity: q.Identity, Severities: q.MinSeverity.AtLeast(), Before: q.Before, Limit: q.Limit})
	if err != nil {
		return nil, time.Time{}, err
	}
	p, err := pageOf(rows, q.Limit, findingOf, func(r store.FindingRow) time.Time { return r.At })
	return p.Items, cursorTime(p.Next), err
}

// cursorTime is the time of a page cursor ("" the zero time).
func cursorTime(next string) time.Time {
	n, err := strconv.ParseInt(next, 10, 64)
	if err != nil {
		return time.Time{}
	}
	return time.Unix(0, n).UTC()
}

func (d dashboard) Finding(ctx context.Context, id string) (detect.Finding, error) {
	r, err := d.s.db.Finding(ctx, id)
	if errors.Is(err, store.ErrNotFound) {
		return detect.Finding{}, &ui.ActionError{Status: http.StatusNotFound, Msg: "There is no such finding."}
	}
	if err != nil {
		return detect.Finding{}, err
	}
	return findingOf(r)
}

func (d dashboard) Risks(ctx context.Context) (map[string]float64, error) {
	rs, err := d.s.storedRisks(ctx, d.s.now())
	if err != nil {
		return nil, err
	}
	out := make(map[string]float64, len(rs))
	for _, r := range rs {
		out[r.Identity] = r.Risk
	}
	return out, nil
}

func (d dashboard) Incidents(ctx context.Context, q ui.IncidentQuery) ([]detect.Incident, time.Time, error) {
	rows, err := d.s.db.Incidents(ctx, store.IncidentQuery{Identity: q.Identity, State: q.State, Before: q.Before, Limit: q.Limit})
	if err != nil {
		return nil, time.Time{}, err
	}
	p, err := pageOf(rows, q.Limit, incidentOf, func(r store.IncidentRow) time.Time { return r.OpenedAt })
	return p.Items, cursorTime(p.Next), err
}

func (d dashboard) Incident(ctx context.Context, id string) (detect.Incident, error) {
	r, err := d.s.db.Incident(ctx, d.s.db.SQL(), id)
	if errors.Is(err, store.ErrNotFound) {
		return detect.Incident{}, &ui.ActionError{Status: http.StatusNotFound, Msg: "There is no such incident."}
	}
	if err != nil {
		return detect.Incident{}, err
	}
	return incidentOf(r)
}

// incidentKinds are the kinds of the audit records an incident makes.
var incidentKinds = []string{"incident.", "revocation."}

// Bounds of an incident page's audit search.
const (
	// maxIncidentAuditScan is how far back, in records, the first view
	// of an incident searches the audit log.
	maxIncidentAuditScan = 50_000
	// maxCachedIncidents bounds the incidents whose records are kept.
	maxCachedIncidents = 256
)

// incidentAudit keeps, per incident, the audit records found so far and
// the head they were read up to. The log only grows, so a refresh of an
// incident's page (every 5 s while it is open) reads only the records
// appended since, not the log back to the incident's opening again.
type incidentAudit struct {
	mu sync.Mutex
	m  map[string]*incidentAuditEntry
}

type incidentAuditEntry struct {
	head, from uint64
	recs       []audit.Record // newest first
}

// IncidentAudit returns the records that name the incident, newest
// first, among the records from sequence number from on (1: the whole
// log). Only the kinds incidents make are read: decision records, the
// bulk of the log, are skipped in the query.
func (d dashboard) IncidentAudit(ctx context.Context, inc detect.Incident) ([]audit.Record, uint64, error) {
	head, _, err := d.s.db.AuditHead(ctx)
	if err != nil {
		return nil, 0, err
	}
	c := d.incAudit
	c.mu.Lock()
	var e incidentAuditEntry
	if old, ok := c.m[inc.ID]; ok && old.head <= head {
		e = *old
	} else {
		e.head, e.from = head, 1
		if head > maxIncidentAuditScan {
			e.from = head - maxIncidentAuditScan + 1
		}
		e.head = e.from - 1
	}
	c.mu.Unlock()
	var fresh []audit.Record
	for upTo := head; upTo > e.head; {
		recs, err := audit.ListRange(ctx, d.s.db, e.head+1, upTo, 1000, incidentKinds)
		if err != nil {
			return nil, 0, err
		}
		for _, r := range recs {
			if r.Details["incident"] == inc.ID {
				fresh = append(fresh, r)
			}
		}
		if len(recs) < 1000 {
			break
		}
		upTo = recs[len(recs)-1].Seq - 1
	}
	e.recs = append(fresh, e.recs...)
	e.head = head
	c.mu.Lock()
	if _, ok := c.m[inc.ID]; !ok && len(c.m) >= maxCachedIncidents {
		for k := range c.m { // drop one: the map has no order worth keeping
			delete(c.m, k)
			break
		}
	}
	c.m[inc.ID] = &e
	c.mu.Unlock()
	return e.recs, e.from, nil
}

func (d dashboard) Isolate(ctx context.Context, a ui.Actor, identity, finding, reason string) (detect.Incident, error) {
	var inc detect.Incident
	err := d.s.dashboardCall(ctx, a, d.s.createIncident, http.MethodPost, PathAdminIncidents, "",
		IncidentRequest{Identity: identity, Action: detect.ActionIsolate, Finding: finding, Reason: reason}, &inc)
	return inc, err
}

func (d dashboard) Release(ctx context.Context, a ui.Actor, id, reason string) (detect.Incident, error) {
	var inc detect.Incident
	err := d.s.dashboardCall(ctx, a, d.s.releaseIncident, http.MethodPost, PathAdminIncidents+"/"+url.PathEscape(id)+"/release", id,
		ReleaseRequest{Reason: reason}, &inc)
	return inc, err
}

func (d dashboard) ConfirmBlocks(ctx context.Context, a ui.Actor, id string) (detect.Incident, error) {
	var inc detect.Incident
	err := d.s.dashboardCall(ctx, a, d.s.confirmIncident, http.MethodPost, PathAdminIncidents+"/"+url.PathEscape(id)+"/confirm", id, nil, &inc)
	return inc, err
}

func (d dashboard) Export(ctx context.Context, a ui.Actor, id string) ([]byte, error) {
	var b json.RawMessage
	err := d.s.dashboardCall(ctx, a, d.s.exportIncident, http.MethodGet, PathAdminIncidents+"/"+url.PathEscape(id)+"/export", id, nil, &b)
	return b, err
}
