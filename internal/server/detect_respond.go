package server

// Response: the playbooks (versioned like policies), the incidents they
// open, the steps they take through the server's own machinery
// (revocation, blocked pairs on the watch stream, certificate
// revocation), each audited with the finding that caused it, and the
// forensics bundle of an incident.

import (
	"context"
	"database/sql"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/moatless/moatless/internal/audit"
	"github.com/moatless/moatless/internal/detect"
	"github.com/moatless/moatless/internal/store"
	"github.com/moatless/moatless/internal/wire"
)

// Admin API paths of response.
const (
	// PathAdminIncidents: GET ?identity=&state=&before=&limit= lists
	// incidents; POST IncidentRequest acts by hand (isolate, block-pair,
	// quarantine, revoke-certificate, notify, or a playbook).
	// /{id}: GET; /{id}/release, /{id}/confirm: POST; /{id}/export: GET
	// ForensicsBundle.
	PathAdminIncidents = "/v1/admin/incidents"
	// PathAdminPlaybooks: GET PlaybookSet (?version=N for an older one);
	// POST PlaybookApplyRequest; /{name}: DELETE; /history: GET.
	PathAdminPlaybooks = "/v1/admin/playbooks"
	// PathAdminBlocks: GET the blocked pairs in force.
	PathAdminBlocks = PathAdminDetect + "/blocks"
)

// Audit kinds of response.
const (
	KindIncidentOpen    = "incident.open"
	KindIncidentStep    = "incident.step"
	KindIncidentRelease = "incident.release"
	KindIncidentConfirm = "incident.confirm"
	KindPlaybookApply   = "playbook.apply"
	KindPlaybookDelete  = "playbook.delete"
)

// IncidentRequest acts on an identity by hand. Exactly one of Action and
// Playbook.
type IncidentRequest struct {
	Identity string `json:"identity"`
	// Action is one step: isolate, block-pair, quarantine,
	// revoke-certificate or notify.
	Action string `json:"action,omitempty"`
	// Playbook runs every step of the named playbook.
	Playbook string `json:"playbook,omitempty"`
	// Destination is the other end of a block-pair by hand.
	Destination string `json:"destination,omitempty"`
	// Duration of a block-pair (default 24h).
	Duration wire.Duration `json:"duration,omitempty"`
	Reason   string        `json:"reason,omitempty"`
	// Finding is the ID of the finding the admin acts on (optional): it
	// must be about Identity; the steps are audited with it as their
	// cause, and it joins the incident.
	Finding string `json:"finding,omitempty"`
}

// ReleaseRequest releases an incident.
type ReleaseRequest struct {
	Reason string `json:"reason,omitempty"`
}

// PlaybookSet is the playbooks in force at a version.
type PlaybookSet struct {
	Version uint64            `json:"version"`
	Items   []detect.Playbook `json:"items"`
}

// PlaybookApplyRequest applies playbook files: every document is created
// or replaced; playbooks not named stay as they are.
type PlaybookApplyRequest struct {
	Files []PolicyFile `json:"files"`
}

// ForensicsBundle is everything the server knows about an incident's
// identity, as one JSON file: the incident, its findings with the
// records behind them, the identity's sampled decisions and traffic
// around it, the audit records that name the identity or the incident
// (with their hashes: compare the head with "moatless audit verify"),
// its certificates, revocations and blocks.
type ForensicsBundle struct {
	Format       string               `json:"format"` // moatless-forensics/v1
	GeneratedAt  time.Time            `json:"generated_at"`
	GeneratedBy  string               `json:"generated_by"`
	Incident     detect.Incident      `json:"incident"`
	Findings     []detect.Finding     `json:"findings"`
	Decisions    []store.Sample       `json:"decisions"`
	Traffic      []EdgeSummary        `json:"traffic"`
	AuditRecords []AuditRecord        `json:"audit_records"`
	AuditHead    AuditHeadRef         `json:"audit_head"`
	Certificates []store.IssuedSVID   `json:"certificates"`
	Revocations  store.RevocationList `json:"revocations"`
	Blocks       []store.Block        `json:"blocks"`
}

// AuditHeadRef is the audit chain's head when a bundle was made.
type AuditHeadRef struct {
	Seq  uint64 `json:"seq"`
	Hash string `json:"hash"`
}

// respondState is the responder's part of detectState. Which incident is
// open for an identity is not kept here but in the store
// (store.ClaimOpenIncident), where every replica sees it.
type respondState struct {
	// playbooks caches the set in force at a playbooks version.
	pbVersion uint64
	pbLoaded  bool
	playbooks []detect.Playbook
}

// initRespond mounts the endpoints.
func (s *Server) initRespond(context.Context) error {
	m := s.mux
	m.Handle("GET "+PathAdminIncidents, s.admin(s.listIncidents))
	m.Handle("POST "+PathAdminIncidents, s.admin(s.createIncident))
	m.Handle("GET "+PathAdminIncidents+"/{id}", s.admin(s.getIncident))
	m.Handle("POST "+PathAdminIncidents+"/{id}/release", s.admin(s.releaseIncident))
	m.Handle("POST "+PathAdminIncidents+"/{id}/confirm", s.admin(s.confirmIncident))
	m.Handle("GET "+PathAdminIncidents+"/{id}/export", s.admin(s.exportIncident))
	m.Handle("GET "+PathAdminPlaybooks, s.admin(s.getPlaybooks))
	m.Handle("POST "+PathAdminPlaybooks, s.adminLimit(maxPolicyBody, s.applyPlaybooks))
	m.Handle("GET "+PathAdminPlaybooks+"/history", s.admin(s.playbookHistory))
	m.Handle("DELETE "+PathAdminPlaybooks+"/{name}", s.admin(s.deletePlaybook))
	m.Handle("GET "+PathAdminBlocks, s.admin(s.listBlocks))
	return nil
}

// currentPlaybooks returns the playbooks in force (cached per version).
func (s *Server) currentPlaybooks(ctx context.Context) (uint64, []detect.Playbook, error) {
	d := s.detect
	v, err := s.db.CurrentPolicyVersionIn(ctx, s.db.SQL(), store.Playbooks)
	if err != nil {
		return 0, nil, err
	}
	if d.resp.pbLoaded && d.resp.pbVersion == v {
		return v, d.resp.playbooks, nil
	}
	v, objs, err := s.db.PolicySetIn(ctx, s.db.SQL(), store.Playbooks, v)
	if err != nil {
		return 0, nil, err
	}
	pbs := make([]detect.Playbook, 0, len(objs))
	for _, o := range objs {
		pb, err := detect.ParsePlaybookJSON(o.Raw)
		if err != nil {
			return 0, nil, fmt.Errorf("stored playbook %s: %w", o.Name, err)
		}
		pbs = append(pbs, pb)
	}
	d.resp.pbVersion, d.resp.playbooks, d.resp.pbLoaded = v, pbs, true
	return v, pbs, nil
}

// incidentOpenError is openIncident's answer when another incident (of
// this replica or another) holds the identity's open claim.
type incidentOpenError struct{ id string }

func (e *incidentOpenError) Error() string {
	return fmt.Sprintf("server: incident %s is open for the identity already", e.id)
}

// storedFindings returns the stored findings about identity that count
// towards its risk at now (those of every replica, oldest first) and that
// risk: the playbooks' triggers read the same truth as /risk.
func (s *Server) storedFindings(ctx context.Context, identity string, now time.Time) ([]detect.Finding, float64, error) {
	since := now.Add(-s.detect.engine.Settings().RiskWindow.Std())
	rows, err := s.db.Findings(ctx, store.FindingQuery{Identity: identity, SeenSince: since, Limit: 1000})
	if err != nil {
		return nil, 0, err
	}
	fs := make([]detect.Finding, 0, len(rows))
	ptrs := make([]*detect.Finding, 0, len(rows))
	for i := len(rows) - 1; i >= 0; i-- {
		f, err := findingOf(rows[i])
		if err != nil {
			return nil, 0, err
		}
		fs = append(fs, f)
	}
	for i := range fs {
		ptrs = append(ptrs, &fs[i])
	}
	return fs, detect.RiskOf(ptrs, since), nil
}

// respond runs after findings are stored: a finding about an identity
// with an open incident joins it; otherwise the identity's risk (from
// the stored findings of every replica) is checked against the
// playbooks, and the first that matches opens an incident and runs,
// unless another replica opened one first: then the findings join that
// one. One response runs at a time on a replica; across replicas the
// store's open-incident claim decides.
func (s *Server) respond(ctx context.Context, fs []detect.Finding) {
	d := s.detect
	d.respMu.Lock()
	defer d.respMu.Unlock()
	now := s.now()
	byIdent := map[string][]*detect.Finding{}
	var order []string
	for i := range fs {
		f := &fs[i]
		if byIdent[f.Identity] == nil {
			order = append(order, f.Identity)
		}
		byIdent[f.Identity] = append(byIdent[f.Identity], f)
	}
	for _, id := range order {
		incID, err := s.db.OpenIncidentOf(ctx, s.db.SQL(), id)
		if err != nil {
			s.log.Error("read the open incident; no response", "identity", id, "err", err)
			continue
		}
		if incID != "" {
			s.attachFindings(ctx, incID, byIdent[id])
			s.recheckHeld(ctx, incID)
			continue
		}
		open, risk, err := s.storedFindings(ctx, id, now)
		if err != nil {
			s.log.Error("read findings; no response", "identity", id, "err", err)
			continue
		}
		var dets []string
		for _, f := range open {
			dets = append(dets, f.Detector)
		}
		version, pbs, err := s.currentPlaybooks(ctx)
		if err != nil {
			s.log.Error("read playbooks; no response", "identity", id, "err", err)
			continue
		}
		pb, ok := detect.Choose(pbs, id, risk, dets)
		if !ok {
			continue
		}
		trigger := fmt.Sprintf("risk %.2f reached %.2f (%s)", risk, pb.Trigger.Risk, strings.Join(uniq(dets), ", "))
		corr := s.corroborate(ctx, id, open, now, pb)
		_, err = s.openIncident(ctx, id, pb, version, "playbook:"+pb.Name, trigger, risk, open, IncidentRequest{}, &corr)
		if taken := (*incidentOpenError)(nil); errors.As(err, &taken) {
			s.attachFindings(ctx, taken.id, byIdent[id])
			s.recheckHeld(ctx, taken.id)
			continue
		}
		if err != nil {
			s.log.Error("incident response failed", "identity", id, "playbook", pb.Name, "err", err)
		}
	}
}

func uniq(l []string) []string {
	seen := map[string]bool{}
	var out []string
	for _, x := range l {
		if !seen[x] {
			seen[x] = true
			out = append(out, x)
		}
	}
	sort.Strings(out)
	return out
}

// attachFindings adds findings to an open incident.
func (s *Server) attachFindings(ctx context.Context, incID string, fs []*detect.Finding) {
	err := s.updateIncident(ctx, incID, func(tx *sql.Tx, inc *detect.Incident) error {
		for _, f := range fs {
			if !contains(inc.Findings, f.ID) {
				inc.Findings = append(inc.Findings, f.ID)
			}
			s.detect.engine.SetIncident(f.ID, inc.ID)
			f.IncidentID = inc.ID
			if err := s.db.LinkFinding(ctx, tx, f.ID, inc.ID); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		s.log.Error("attach findings to incident", "incident", incID, "err", err)
	}
}

func contains(l []string, x string) bool {
	for _, y := range l {
		if y == x {
			return true
		}
	}
	return false
}

// openIncident opens an incident for identity and runs pb's steps (or,
// with req.Action set, that one step by hand). Called with respMu held.
// When an incident is open for identity already (opened by another
// replica since the caller looked), it changes nothing and returns an
// *incidentOpenError naming that incident.
//
// corr is the judgement of the findings when a playbook acts by itself
// (nil when an admin acts): when the corroborated findings alone do not
// reach the playbook's trigger (risk, detectors), its destructive steps
// are held (Incident.Held), to run when corroborating evidence comes in
// (recheckHeld) or an admin confirms the incident; the others (notify,
// quarantine) run. When they run, block-pair blocks only what
// corroborated findings name (blockTargets).
func (s *Server) openIncident(ctx context.Context, identity string, pb detect.Playbook, version uint64, actor, trigger string,
	risk float64, fs []detect.Finding, req IncidentRequest, corr *detect.Corroboration) (*detect.Incident, error) {
	now := s.now()
	inc := &detect.Incident{ID: detect.NewID(), Identity: identity, State: detect.IncidentOpen, Playbook: pb.Name, PlaybookVersion: version,
		Trigger: trigger, Risk: risk, OpenedAt: now, Findings: []string{}, Steps: []detect.StepResult{}}
	hold := false
	if corr != nil {
		inc.Corroboration = corr.Why
		inc.CorroboratedRisk = &corr.Risk
		hold = !corr.Reaches(pb, identity)
		if hold {
			inc.Corroboration = corr.Why + "; " + corr.Short(pb, identity)
		}
	}
	for _, f := range fs {
		inc.Findings = append(inc.Findings, f.ID)
		if inc.DetectedAt.IsZero() || f.Time.Before(inc.DetectedAt) {
			inc.DetectedAt = f.Time
		}
		if !f.FirstRecord.IsZero() && (inc.FirstRecord.IsZero() || f.FirstRecord.Before(inc.FirstRecord)) {
			inc.FirstRecord = f.FirstRecord
		}
	}
	cause := ""
	if len(fs) > 0 {
		cause = fs[0].ID
	}
	ev := audit.Event{Kind: KindIncidentOpen, Actor: actor, Subject: identity, Outcome: audit.Success,
		Details: viaDashboard(ctx, map[string]string{"incident": inc.ID, "trigger": trigger, "risk": fmt.Sprintf("%.2f", risk), "findings": strings.Join(inc.Findings, ",")})}
	if pb.Name != "" {
		ev.Details["playbook"] = pb.Name
		ev.Details["playbook_version"] = fmt.Sprint(version)
	}
	if cause != "" {
		ev.Details["finding"] = cause
	}
	err := s.db.Tx(ctx, func(tx *sql.Tx) error {
		cur, claimed, err := s.db.ClaimOpenIncident(ctx, tx, identity, inc.ID)
		if err != nil {
			return err
		}
		if !claimed {
			return &incidentOpenError{id: cur}
		}
		if err := s.putIncident(ctx, tx, inc); err != nil {
			return err
		}
		return s.audit.AppendTx(ctx, tx, ev)
	})
	if err != nil {
		return nil, err
	}
	for i := range fs {
		s.detect.engine.SetIncident(fs[i].ID, inc.ID)
		fs[i].IncidentID = inc.ID
		if err := s.db.LinkFinding(ctx, s.db.SQL(), fs[i].ID, inc.ID); err != nil {
			s.log.Warn("link finding to incident", "finding", fs[i].ID, "err", err)
		}
	}
	s.log.Warn("incident opened", "incident", inc.ID, "identity", identity, "playbook", pb.Name, "trigger", trigger)
	steps := pb.Steps
	if req.Action != "" {
		steps = []detect.Step{{Action: req.Action, Duration: req.Duration}}
	}
	for _, st := range steps {
		if hold && detect.Destructive(st.Action) {
			s.holdStep(ctx, inc, st, actor, cause)
			continue
		}
		s.runStep(ctx, inc, st, actor, cause, req, corr)
	}
	if hold && inc.Uncorroborated() {
		s.detect.metrics.held.Inc()
		s.log.Warn("incident opened uncorroborated: containment held for corroboration or an admin's confirm", "incident", inc.ID,
			"identity", identity, "playbook", pb.Name, "why", inc.Corroboration)
	}
	if err := s.putIncident(ctx, s.db.SQL(), inc); err != nil {
		return inc, err
	}
	return inc, nil
}

// bearsOut reports whether what the source reported, got, is at least 80%
// of what a destination claims, want.
func bearsOut(got, want uint64) bool {
	return got >= want-want/5
}

// holdStep records a destructive step the playbook did not run for want
// of corroboration, in the incident and the audit log.
func (s *Server) holdStep(ctx context.Context, inc *detect.Incident, st detect.Step, actor, findingID string) {
	res := detect.StepResult{Action: st.Action, At: s.now(), Actor: actor, FindingID: findingID, Outcome: detect.OutcomeHeld,
		Detail: "held until the findings are corroborated, or on: moatless incident confirm " + inc.ID}
	inc.Held = append(inc.Held, st)
	inc.Steps = append(inc.Steps, res)
	details := withFinding(map[string]string{"incident": inc.ID, "action": st.Action, "outcome": res.Outcome, "detail": res.Detail}, findingID)
	ev := audit.Event{Kind: KindIncidentStep, Actor: actor, Subject: inc.Identity, Outcome: audit.Success, Details: details}
	if err := s.audit.AppendWith(ctx, func(ctx context.Context, tx *sql.Tx) error { return s.putIncident(ctx, tx, inc) }, ev); err != nil {
		s.log.Error("audit incident step", "incident", inc.ID, "err", err)
	}
}

// runHeld runs the incident's held steps, as actor, and notes why they
// run now; it reports whether there were any. The steps are taken from
// the stored incident in a transaction (its row locked where the store
// can), so that of two replicas corroborating it at once only one runs
// them. Called with respMu held.
//
// corr is the judgement that corroborated the findings when the playbook
// runs them by itself, nil when an admin confirms (runStep).
func (s *Server) runHeld(ctx context.Context, inc *detect.Incident, actor, findingID, why string, corr *detect.Corroboration) bool {
	var held []detect.Step
	err := s.updateIncident(ctx, inc.ID, func(_ *sql.Tx, cur *detect.Incident) error {
		held, cur.Held = cur.Held, nil
		if len(held) > 0 && cur.State != detect.IncidentReleased {
			cur.Corroboration = why
			if corr != nil {
				cur.CorroboratedRisk = &corr.Risk
			}
		} else {
			held = nil
		}
		*inc = *cur
		return nil
	})
	if err != nil {
		s.log.Error("take the incident's held steps", "incident", inc.ID, "err", err)
		return false
	}
	if len(held) == 0 {
		return false
	}
	for _, st := range held {
		s.runStep(ctx, inc, st, actor, findingID, IncidentRequest{}, corr)
	}
	if err := s.putIncident(ctx, s.db.SQL(), inc); err != nil {
		s.log.Error("record the held steps run", "incident", inc.ID, "err", err)
	}
	return true
}

// recheckHeld runs an open incident's held steps once its findings are
// corroborated, and blocks the held destinations that corroborated
// findings now name: after more findings joined it, and after its
// identity's own node reported traffic (the source's side of what the
// others reported often comes a reporting interval later). Called with
// respMu held.
func (s *Server) recheckHeld(ctx context.Context, incID string) {
	r, err := s.db.Incident(ctx, s.db.SQL(), incID)
	if err != nil {
		s.log.Warn("read incident for corroboration", "incident", incID, "err", err)
		return
	}
	inc, err := incidentOf(r)
	if err != nil || (!inc.Uncorroborated() && len(inc.HeldDestinations) == 0) || inc.State == detect.IncidentReleased {
		return
	}
	_, pbs, err := s.currentPlaybooks(ctx)
	if err != nil {
		s.log.Warn("read playbooks for corroboration", "incident", incID, "err", err)
		return
	}
	var pb detect.Playbook
	for _, p := range pbs {
		if p.Name == inc.Playbook {
			pb = p
		}
	}
	if pb.Name == "" || pb.Trigger.Risk == 0 {
		return // the playbook is gone or no longer triggers: only an admin acts
	}
	now := s.now()
	fs, _, err := s.storedFindings(ctx, inc.Identity, now)
	if err != nil {
		s.log.Warn("read findings for corroboration", "incident", incID, "err", err)
		return
	}
	corr := s.corroborate(ctx, inc.Identity, fs, now, pb)
	if !corr.Reaches(pb, inc.Identity) {
		return
	}
	cause := ""
	if len(corr.Findings) > 0 {
		cause = corr.Findings[0]
	}
	if inc.Uncorroborated() {
		s.log.Warn("incident corroborated: running its held steps", "incident", inc.ID, "identity", inc.Identity, "why", corr.Why)
		s.runHeld(ctx, &inc, "playbook:"+pb.Name, cause, corr.Why, &corr)
	}
	if len(inc.HeldDestinations) > 0 {
		s.blockCorroborated(ctx, &inc, pb, &corr)
	}
}

// blockCorroborated blocks, as the playbook, the incident's held
// destinations that a corroborated finding (of corr) now names, for the
// playbook's block-pair duration. Called with respMu held.
func (s *Server) blockCorroborated(ctx context.Context, inc *detect.Incident, pb detect.Playbook, corr *detect.Corroboration) {
	block, _ := s.blockTargets(ctx, inc, corr)
	st := detect.Step{Action: detect.ActionBlockPair}
	for _, x := range pb.Steps {
		if x.Action == detect.ActionBlockPair {
			st = x
			break
		}
	}
	cause := ""
	if len(corr.Findings) > 0 {
		cause = corr.Findings[0]
	}
	// Claim the destinations under the incident's row lock, as runHeld
	// claims held steps: of two replicas corroborating at once, only one
	// blocks each, and neither writes over the other's incident.
	var claimed []string
	err := s.updateIncident(ctx, inc.ID, func(_ *sql.Tx, cur *detect.Incident) error {
		if cur.State != detect.IncidentReleased {
			for _, d := range cur.HeldDestinations {
				if contains(block, d) {
					claimed = append(claimed, d)
				}
			}
			cur.HeldDestinations = slices.DeleteFunc(cur.HeldDestinations, func(d string) bool { return contains(claimed, d) })
			cur.CorroboratedRisk = &corr.Risk
		}
		*inc = *cur
		return nil
	})
	if err != nil {
		s.log.Error("take the incident's held destinations", "incident", inc.ID, "err", err)
		return
	}
	for _, d := range claimed {
		s.runStep(ctx, inc, st, "playbook:"+pb.Name, cause, IncidentRequest{Destination: d}, corr)
	}
}

// recheckReporter rechecks the held steps of the open incident about the
// node that just reported traffic: its own outbound records may be what
// corroborates what others reported about it.
func (s *Server) recheckReporter(ctx context.Context, reporter string) {
	incID, err := s.db.OpenIncidentOf(ctx, s.db.SQL(), reporter)
	if err != nil || incID == "" {
		return
	}
	d := s.detect
	d.respMu.Lock()
	defer d.respMu.Unlock()
	s.recheckHeld(ctx, incID)
}

// corroborate judges an identity's stored findings for pb
// (detect.Corroborate), its own traffic records read from the store.
func (s *Server) corroborate(ctx context.Context, identity string, fs []detect.Finding, now time.Time, pb detect.Playbook) detect.Corroboration {
	since := now.Add(-s.detect.engine.Settings().RiskWindow.Std())
	return detect.Corroborate(identity, fs, since, pb.Trigger.Witnesses, func(f *detect.Finding) bool {
		ok, err := s.sourceConfirms(ctx, identity, f)
		if err != nil {
			s.log.Warn("read the source's own records", "identity", identity, "finding", f.ID, "err", err)
		}
		return ok
	})
}

// sourceConfirms reports whether identity's own node bears out f: to
// every destination f names, over the minutes of f's records (and one
// either side: the two ends report in windows of their own), identity's
// outbound records count at least 80% of the requests and of the
// response bytes the destination's inbound records say it made. A node
// reporting calls identity never made, or more than a quarter more than
// it made, is not borne out; so a lie can lift an identity's numbers
// over a threshold only when they are within a quarter of it already.
// Until the source's window that matches the destination's arrives, the
// finding is not borne out: the playbook holds its steps and checks again
// on the source's next report (recheckReporter).
func (s *Server) sourceConfirms(ctx context.Context, identity string, f *detect.Finding) (bool, error) {
	dsts := map[string]bool{}
	add := func(d string) {
		if strings.HasPrefix(d, "spiffe://") && d != identity {
			dsts[d] = true
		}
	}
	add(f.Destination)
	for _, r := range f.Records {
		if r.Source == identity {
			add(r.Destination)
		}
	}
	if len(dsts) == 0 || !strings.HasPrefix(identity, "spiffe://") {
		return false, nil
	}
	from := f.FirstRecord
	if from.IsZero() || f.Time.Before(from) {
		from = f.Time
	}
	q := store.EdgeQuery{Since: from.UTC().Truncate(time.Minute).Add(-time.Minute), Until: f.LastSeen.UTC().Truncate(time.Minute).Add(2 * time.Minute), Source: identity}
	for d := range dsts {
		q.Destination = d
		var claimed, confirmed [2]uint64
		for _, dir := range []struct {
			name string
			sum  *[2]uint64
		}{{"inbound", &claimed}, {"outbound", &confirmed}} {
			q.Direction = dir.name
			ts, err := s.db.EdgeTotals(ctx, q)
			if err != nil {
				return false, err
			}
			for _, t := range ts {
				dir.sum[0] = detect.SatAdd(dir.sum[0], t.Requests)
				dir.sum[1] = detect.SatAdd(dir.sum[1], t.RespBytes)
			}
		}
		if confirmed[0] == 0 || !bearsOut(confirmed[0], claimed[0]) || !bearsOut(confirmed[1], claimed[1]) {
			return false, nil
		}
	}
	return true, nil
}

func (s *Server) putIncident(ctx context.Context, q store.Queryer, inc *detect.Incident) error {
	body, err := json.Marshal(inc)
	if err != nil {
		return err
	}
	upd := inc.OpenedAt
	if n := len(inc.Steps); n > 0 {
		upd = inc.Steps[n-1].At
	}
	return s.db.PutIncident(ctx, q, store.IncidentRow{ID: inc.ID, Identity: inc.Identity, State: inc.State, OpenedAt: inc.OpenedAt, UpdatedAt: upd, Body: body})
}

func incidentOf(r store.IncidentRow) (detect.Incident, error) {
	var inc detect.Incident
	if err := json.Unmarshal(r.Body, &inc); err != nil {
		return inc, fmt.Errorf("incident %s: %w", r.ID, err)
	}
	return inc, nil
}

// updateIncident reads an incident, lets fn change it and stores it, in
// one transaction.
func (s *Server) updateIncident(ctx context.Context, id string, fn func(*sql.Tx, *detect.Incident) error) error {
	return s.db.Tx(ctx, func(tx *sql.Tx) error {
		r, err := s.db.Incident(ctx, tx, id)
		if err != nil {
			return err
		}
		inc, err := incidentOf(r)
		if err != nil {
			return err
		}
		if err := fn(tx, &inc); err != nil {
			return err
		}
		return s.putIncident(ctx, tx, &inc)
	})
}

// runStep carries out one step and records it in the incident and the
// audit log (with the finding that caused it). corr is the judgement of
// the findings when a playbook runs the step by itself (nil when an
// admin acts): block-pair then blocks only the destinations corroborated
// findings name (blockTargets).
func (s *Server) runStep(ctx context.Context, inc *detect.Incident, st detect.Step, actor, findingID string, req IncidentRequest, corr *detect.Corroboration) {
	now := s.now()
	res := detect.StepResult{Action: st.Action, At: now, Actor: actor, FindingID: findingID, Outcome: detect.OutcomeDone}
	reason := "incident " + inc.ID
	if req.Reason != "" {
		reason += ": " + req.Reason
	}
	details := viaDashboard(ctx, withFinding(map[string]string{"incident": inc.ID, "action": st.Action}, findingID))
	var err error
	var extra []audit.Event
	isSPIFFE := strings.HasPrefix(inc.Identity, "spiffe://")
	switch st.Action {
	case detect.ActionIsolate:
		if !isSPIFFE {
			res.Outcome, res.Detail = detect.OutcomeSkipped, "not a SPIFFE ID: nothing to revoke"
			break
		}
		r := store.RevokedID{SPIFFEID: inc.Identity, Reason: reason, RevokedBy: actor, RevokedAt: now}
		err = s.db.Tx(ctx, func(tx *sql.Tx) error {
			if _, err := s.db.RevokeID(ctx, tx, r); err != nil {
				return err
			}
			return s.audit.AppendTx(ctx, tx, audit.Event{Kind: audit.KindRevoke, Actor: actor, Subject: inc.Identity, Outcome: audit.Success,
				Details: viaDashboard(ctx, withFinding(map[string]string{"reason": reason, "incident": inc.ID}, findingID))})
		})
		switch {
		case errors.Is(err, store.ErrConflict):
			err, res.Detail = nil, "already revoked (before this incident): left as it is"
		case err == nil:
			inc.Revoked = true
			res.Detail = "SPIFFE ID revoked: every sidecar refuses it and closes its connections, its own sidecar cuts its calls, tokens naming it are refused, its secrets leases are revoked"
			if inc.ContainedAt.IsZero() {
				inc.ContainedAt = now
			}
			inc.State = detect.IncidentContained
			s.changed(ctx)
		}
	case detect.ActionBlockPair:
		if !isSPIFFE {
			res.Outcome, res.Detail = detect.OutcomeSkipped, "not a SPIFFE ID: nothing to block"
			break
		}
		list, held := []string{req.Destination}, []string(nil)
		if req.Destination == "" {
			list, held = s.blockTargets(ctx, inc, corr)
		}
		for _, d := range held {
			if !contains(inc.HeldDestinations, d) {
				inc.HeldDestinations = append(inc.HeldDestinations, d)
			}
		}
		heldNote := ""
		if len(held) > 0 {
			heldNote = fmt.Sprintf("; held (only uncorroborated findings name them): %s → %s, until a corroborated finding names them, or on: moatless incident confirm %s",
				inc.Identity, strings.Join(held, ", "), inc.ID)
			details["held_destinations"] = strings.Join(held, " ")
		}
		if len(list) == 0 && len(held) > 0 {
			res.Outcome, res.Detail = detect.OutcomeHeld, "nothing blocked"+heldNote
			break
		}
		if len(list) == 0 {
			res.Outcome, res.Detail = detect.OutcomeSkipped, "no destination in the findings: nothing to block"
			break
		}
		dur := st.Duration.Std()
		if dur == 0 {
			dur = detect.DefaultBlockDuration
		}
		until := now.Add(dur)
		err = s.db.Tx(ctx, func(tx *sql.Tx) error {
			for _, dst := range list {
				b := store.Block{Source: inc.Identity, Destination: dst, IncidentID: inc.ID, Reason: reason, CreatedBy: actor, CreatedAt: now, ExpiresAt: until}
				if _, err := s.db.PutBlock(ctx, tx, b); err != nil {
					return err
				}
			}
			return nil
		})
		if err == nil {
			for _, dst := range list {
				inc.Blocks = append(inc.Blocks, wire.BlockedEdge{Source: inc.Identity, Destination: dst, ExpiresAt: until})
				inc.HeldDestinations = slices.DeleteFunc(inc.HeldDestinations, func(d string) bool { return d == dst })
			}
			res.Detail = fmt.Sprintf("blocked %s → %s until %s, then released unless confirmed%s", inc.Identity, strings.Join(list, ", "), until.UTC().Format(time.RFC3339), heldNote)
			details["destinations"] = strings.Join(list, " ")
			details["expires_at"] = until.UTC().Format(time.RFC3339)
			if inc.ContainedAt.IsZero() {
				inc.ContainedAt = now
			}
			inc.State = detect.IncidentContained
			s.changed(ctx)
		}
	case detect.ActionRevokeCertificate:
		var svids []store.IssuedSVID
		if isSPIFFE {
			svids, err = s.db.SVIDsOf(ctx, inc.Identity, now)
		}
		if err != nil {
			break
		}
		var pick *store.IssuedSVID
		for i := range svids {
			if svids[i].Kind == store.SVIDKindWorkload || svids[i].Kind == store.SVIDKindNode {
				pick = &svids[i]
				break
			}
		}
		if pick == nil {
			res.Outcome, res.Detail = detect.OutcomeSkipped, "no unexpired certificate issued to it"
			break
		}
		r := store.RevokedSerial{Serial: pick.Serial, SPIFFEID: pick.SPIFFEID, ExpiresAt: pick.NotAfter, Reason: reason, RevokedBy: actor, RevokedAt: now}
		err = s.db.Tx(ctx, func(tx *sql.Tx) error {
			if _, err := s.db.RevokeSerial(ctx, tx, r); err != nil {
				return err
			}
			return s.audit.AppendTx(ctx, tx, audit.Event{Kind: audit.KindRevoke, Actor: actor, Subject: pick.Serial, Outcome: audit.Success,
				Details: viaDashboard(ctx, withFinding(map[string]string{"spiffe_id": pick.SPIFFEID, "reason": reason, "incident": inc.ID}, findingID))})
		})
		if errors.Is(err, store.ErrConflict) {
			err, res.Detail = nil, "certificate "+pick.Serial+" was revoked already"
		} else if err == nil {
			inc.RevokedSerials = append(inc.RevokedSerials, pick.Serial)
			res.Detail = fmt.Sprintf("revoked certificate %s (%s, issued %s); the identity's other certificates stay valid, and its agent signs a new one at its next rotation",
				pick.Serial, pick.Kind, pick.IssuedAt.UTC().Format(time.RFC3339))
			details["serial"] = pick.Serial
			s.changed(ctx)
		}
	case detect.ActionQuarantine:
		res.Outcome = detect.OutcomeDryRun
		res.Detail = s.quarantineReport(ctx, inc)
	case detect.ActionNotify:
		if !s.detect.alerts.configured() {
			res.Detail = "no webhook configured: logged only"
		} else {
			res.Detail = "queued for " + strings.Join(s.detect.alerts.names(), ", ")
		}
		inc.Notified = true
		s.detect.alerts.incident(inc)
	case detect.ActionRelease:
		extra, err = s.undo(ctx, inc, actor, findingID, reason)
		res.Detail = "released what the incident did"
	default:
		err = fmt.Errorf("unknown action %q", st.Action)
	}
	if err != nil {
		res.Outcome, res.Detail = detect.OutcomeFailed, err.Error()
		s.log.Error("incident step failed", "incident", inc.ID, "action", st.Action, "err", err)
	}
	inc.Steps = append(inc.Steps, res)
	details["outcome"] = res.Outcome
	if res.Detail != "" {
		details["detail"] = res.Detail
	}
	outcome := audit.Success
	if res.Outcome == detect.OutcomeFailed {
		outcome = audit.Error
	}
	evs := append(extra, audit.Event{Kind: KindIncidentStep, Actor: actor, Subject: inc.Identity, Outcome: outcome, Details: details})
	if err := s.audit.AppendWith(ctx, func(ctx context.Context, tx *sql.Tx) error { return s.putIncident(ctx, tx, inc) }, evs...); err != nil {
		s.log.Error("audit incident step", "incident", inc.ID, "err", err)
	}
}

// blockTargets are the destinations the incident's findings name, the
// identity itself aside, sorted: what block-pair blocks. With corr (a
// playbook acting by itself), block are those a corroborated finding
// names and held the others: a destination only an uncorroborated
// finding names is that node's word about calls to itself, and one lying
// node must not cut a real call path once the identity has some
// unrelated corroborated finding. Without (an admin acts), every
// destination is blocked.
func (s *Server) blockTargets(ctx context.Context, inc *detect.Incident, corr *detect.Corroboration) (block, held []string) {
	if corr == nil {
		return s.incidentDestinations(ctx, inc, nil), nil
	}
	block = s.incidentDestinations(ctx, inc, func(id string) bool { return contains(corr.Findings, id) })
	for _, d := range s.incidentDestinations(ctx, inc, nil) {
		if !contains(block, d) {
			held = append(held, d)
		}
	}
	return block, held
}

// incidentDestinations are the destinations the incident's findings
// (those keep accepts; all when nil) name, the identity itself aside.
func (s *Server) incidentDestinations(ctx context.Context, inc *detect.Incident, keep func(id string) bool) []string {
	seen := map[string]bool{}
	var out []string
	add := func(d string) {
		if d != "" && d != inc.Identity && !seen[d] && strings.HasPrefix(d, "spiffe://") {
			seen[d] = true
			out = append(out, d)
		}
	}
	for _, id := range inc.Findings {
		if keep != nil && !keep(id) {
			continue
		}
		r, err := s.db.Finding(ctx, id)
		if err != nil {
			continue
		}
		f, err := findingOf(r)
		if err != nil {
			continue
		}
		add(f.Destination)
		for _, d := range strings.Fields(f.Evidence["destinations"]) {
			add(d)
		}
		for _, rec := range f.Records {
			if rec.Source == inc.Identity {
				add(rec.Destination)
			}
		}
	}
	sort.Strings(out)
	return out
}

// quarantineReport says what isolating the identity would refuse: its
// edges of the last hour.
func (s *Server) quarantineReport(ctx context.Context, inc *detect.Incident) string {
	ts, err := s.db.EdgeTotals(ctx, store.EdgeQuery{Since: s.now().Add(-time.Hour), Source: inc.Identity, Direction: "inbound"})
	if err != nil {
		return "dry run: could not read the identity's traffic: " + err.Error()
	}
	per := map[string]uint64{}
	for _, t := range ts {
		per[t.Destination] = detect.SatAdd(per[t.Destination], t.Requests)
	}
	dsts := make([]string, 0, len(per))
	for d := range per {
		dsts = append(dsts, d)
	}
	sort.Slice(dsts, func(i, j int) bool { return per[dsts[i]] > per[dsts[j]] })
	var b strings.Builder
	fmt.Fprintf(&b, "dry run: isolating %s would refuse its calls to %d destinations in the last hour", inc.Identity, len(dsts))
	for i, d := range dsts {
		if i == 10 {
			fmt.Fprintf(&b, ", …")
			break
		}
		fmt.Fprintf(&b, "; %s (%d requests)", d, per[d])
	}
	return b.String()
}

// undo lifts what an incident did: its revocation of the identity (only
// when the incident made it) and its blocks. Revoked certificates stay
// revoked. It returns the audit events of the lifts.
func (s *Server) undo(ctx context.Context, inc *detect.Incident, actor, findingID, reason string) ([]audit.Event, error) {
	var evs []audit.Event
	err := s.db.Tx(ctx, func(tx *sql.Tx) error {
		if inc.Revoked {
			if _, err := s.db.UnrevokeID(ctx, tx, inc.Identity); err != nil && !errors.Is(err, store.ErrNotFound) {
				return err
			}
			evs = append(evs, audit.Event{Kind: audit.KindUnrevoke, Actor: actor, Subject: inc.Identity, Outcome: audit.Success,
				Details: viaDashboard(ctx, withFinding(map[string]string{"reason": reason, "incident": inc.ID}, findingID))})
		}
		for _, b := range inc.Blocks {
			if _, err := s.db.DeleteBlock(ctx, tx, b.Source, b.Destination); err != nil && !errors.Is(err, store.ErrNotFound) {
				return err
			}
		}
		if err := s.db.ReleaseOpenIncident(ctx, tx, inc.Identity, inc.ID); err != nil {
			return err
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	inc.Revoked, inc.Blocks, inc.Held, inc.HeldDestinations = false, nil, nil, nil
	inc.State, inc.ReleasedAt = detect.IncidentReleased, s.now()
	s.changed(ctx)
	if inc.Notified {
		// Receivers that were told of the incident hear of its end
		// (Alertmanager resolves it).
		s.detect.alerts.incident(inc)
	}
	return evs, nil
}

// expireBlocks releases the blocks whose time is up (block-pair's
// automatic release), records it in their incidents and the audit log,
// and pushes the new revocations section.
func (s *Server) expireBlocks(ctx context.Context, now time.Time) {
	var gone []store.Block
	err := s.db.Tx(ctx, func(tx *sql.Tx) error {
		var err error
		gone, err = s.db.PruneBlocks(ctx, tx, now)
		return err
	})
	if err != nil {
		s.log.Warn("release expired blocks", "err", err)
		return
	}
	if len(gone) == 0 {
		return
	}
	s.changed(ctx)
	d := s.detect
	d.respMu.Lock()
	defer d.respMu.Unlock()
	for _, b := range gone {
		details := map[string]string{"incident": b.IncidentID, "action": "release", "outcome": detect.OutcomeDone,
			"detail": fmt.Sprintf("block %s → %s expired at %s and was not confirmed", b.Source, b.Destination, b.ExpiresAt.UTC().Format(time.RFC3339))}
		var inc detect.Incident
		if b.IncidentID != "" {
			err := s.updateIncident(ctx, b.IncidentID, func(tx *sql.Tx, i *detect.Incident) error {
				keep := i.Blocks[:0]
				for _, x := range i.Blocks {
					if x.Source != b.Source || x.Destination != b.Destination {
						keep = append(keep, x)
					}
				}
				i.Blocks = keep
				if len(i.Findings) > 0 {
					details["finding"] = i.Findings[0]
				}
				i.Steps = append(i.Steps, detect.StepResult{Action: detect.ActionRelease, At: now, Actor: s.id.String(), FindingID: details["finding"],
					Outcome: detect.OutcomeDone, Detail: details["detail"]})
				if len(i.Blocks) == 0 && !i.Revoked && i.State == detect.IncidentContained {
					i.State, i.ReleasedAt = detect.IncidentReleased, now
					if err := s.db.ReleaseOpenIncident(ctx, tx, i.Identity, i.ID); err != nil {
						return err
					}
				}
				inc = *i
				return nil
			})
			if err != nil {
				s.log.Warn("record block release in its incident", "incident", b.IncidentID, "err", err)
			}
		}
		ev := audit.Event{Kind: KindIncidentStep, Actor: s.id.String(), Subject: b.Source, Outcome: audit.Success, Details: details}
		if err := s.audit.Append(ctx, ev); err != nil {
			s.log.Error("audit block release", "err", err)
		}
		s.log.Info("block released: its time was up", "source", b.Source, "destination", b.Destination, "incident", b.IncidentID, "state", inc.State)
	}
}

// blockedEdges is the revocations section's blocked pairs.
func (s *Server) blockedEdges(ctx context.Context) ([]wire.BlockedEdge, error) {
	bs, err := s.db.Blocks(ctx, s.now())
	if err != nil {
		return nil, err
	}
	out := make([]wire.BlockedEdge, len(bs))
	for i, b := range bs {
		out[i] = wire.BlockedEdge{Source: b.Source, Destination: b.Destination, ExpiresAt: b.ExpiresAt}
	}
	return out, nil
}

func (s *Server) listIncidents(c *adminCall) {
	q, err := c.query("identity", "state", "before", "limit")
	if err != nil {
		c.fail(err)
		return
	}
	before, limit, err := cursorQuery(q, 100)
	if err != nil {
		c.fail(err)
		return
	}
	switch st := q.Get("state"); st {
	case "", detect.IncidentOpen, detect.IncidentContained, detect.IncidentReleased:
	default:
		c.fail(badf("state %q: want open, contained or released", st))
		return
	}
	rows, err := s.db.Incidents(c.ctx, store.IncidentQuery{Identity: q.Get("identity"), State: q.Get("state"), Before: before, Limit: limit})
	if err != nil {
		c.fail(err)
		return
	}
	p, err := pageOf(rows, limit, incidentOf, func(r store.IncidentRow) time.Time { return r.OpenedAt })
	if err != nil {
		c.fail(err)
		return
	}
	c.reply(http.StatusOK, p)
}

// pathIncident is the incident the request's {id} names.
func (s *Server) pathIncident(c *adminCall) (detect.Incident, error) {
	r, err := s.db.Incident(c.ctx, s.db.SQL(), c.r.PathValue("id"))
	if err != nil {
		return detect.Incident{}, err
	}
	return incidentOf(r)
}

func (s *Server) getIncident(c *adminCall) {
	if _, err := c.query(); err != nil {
		c.fail(err)
		return
	}
	inc, err := s.pathIncident(c)
	if err != nil {
		c.fail(err)
		return
	}
	c.reply(http.StatusOK, inc)
}

// createIncident acts on an identity by hand: one action, or a whole
// playbook. An identity with an open incident gets the step in that
// incident.
func (s *Server) createIncident(c *adminCall) {
	var in IncidentRequest
	if err := c.decode(&in); err != nil {
		c.fail(err)
		return
	}
	if (in.Action == "") == (in.Playbook == "") {
		c.fail(badf("give exactly one of action and playbook"))
		return
	}
	id, err := s.parseSPIFFEID("identity", in.Identity)
	if err != nil {
		c.fail(err)
		return
	}
	if id == s.id {
		c.fail(badf("identity: the server cannot be isolated"))
		return
	}
	if len(in.Reason) > 512 {
		c.fail(badf("reason: at most 512 characters"))
		return
	}
	var cause *detect.Finding
	if in.Finding != "" {
		f, err := s.findingAbout(c.ctx, in.Finding, in.Identity)
		if err != nil {
			c.fail(err)
			return
		}
		cause = &f
	}
	switch in.Action {
	case "", detect.ActionIsolate, detect.ActionQuarantine, detect.ActionRevokeCertificate, detect.ActionNotify:
		if in.Destination != "" || in.Duration != 0 {
			c.fail(badf("destination, duration: only for block-pair"))
			return
		}
	case detect.ActionBlockPair:
		if _, err := s.parseSPIFFEID("destination", in.Destination); err != nil {
			c.fail(err)
			return
		}
		if d := in.Duration.Std(); d != 0 && (d < time.Minute || d > 30*24*time.Hour) {
			c.fail(badf("duration %s: want 1m to 720h", d))
			return
		}
	default:
		c.fail(badf("action %q: want isolate, block-pair, quarantine, revoke-certificate or notify (release an incident with POST .../{id}/release)", in.Action))
		return
	}
	d := s.detect
	d.respMu.Lock()
	defer d.respMu.Unlock()
	var pb detect.Playbook
	var version uint64
	if in.Playbook != "" {
		var pbs []detect.Playbook
		version, pbs, err = s.currentPlaybooks(c.ctx)
		if err != nil {
			c.fail(err)
			return
		}
		found := false
		for _, p := range pbs {
			if p.Name == in.Playbook {
				pb, found = p, true
			}
		}
		if !found {
			c.fail(fmt.Errorf("%w: no playbook %q", store.ErrNotFound, in.Playbook))
			return
		}
	}
	fs, risk, err := s.storedFindings(c.ctx, in.Identity, s.now())
	if err != nil {
		c.fail(err)
		return
	}
	if cause != nil {
		// The finding acted on comes first: it is the steps' cause.
		fs = slices.DeleteFunc(fs, func(f detect.Finding) bool { return f.ID == cause.ID })
		fs = append([]detect.Finding{*cause}, fs...)
	}
	// join runs the step in the identity's open incident, which the
	// finding joins too.
	join := func(incID string) {
		if cause != nil {
			s.attachFindings(c.ctx, incID, []*detect.Finding{cause})
		}
		steps := pb.Steps
		if in.Action != "" {
			steps = []detect.Step{{Action: in.Action, Duration: in.Duration}}
		}
		var inc detect.Incident
		r, err := s.db.Incident(c.ctx, s.db.SQL(), incID)
		if err == nil {
			inc, err = incidentOf(r)
		}
		if err != nil {
			c.fail(err)
			return
		}
		for _, st := range steps {
			s.runStep(c.ctx, &inc, st, c.actor, in.Finding, in, nil)
		}
		c.audited = true
		c.reply(http.StatusOK, inc)
	}
	incID, err := s.db.OpenIncidentOf(c.ctx, s.db.SQL(), in.Identity)
	if err != nil {
		c.fail(err)
		return
	}
	if incID != "" {
		join(incID)
		return
	}
	trigger := "by hand: " + c.actor
	if in.Reason != "" {
		trigger += ": " + in.Reason
	}
	inc, err := s.openIncident(c.ctx, in.Identity, pb, version, c.actor, trigger, risk, fs, in, nil)
	if taken := (*incidentOpenError)(nil); errors.As(err, &taken) {
		// Another replica opened one since: the step joins it.
		join(taken.id)
		return
	}
	if err != nil {
		c.fail(err)
		return
	}
	c.audited = true
	c.reply(http.StatusCreated, inc)
}

// withFinding adds the finding that caused a step to an audit record's
// details, when there is one.
func withFinding(details map[string]string, finding string) map[string]string {
	if finding != "" {
		details["finding"] = finding
	}
	return details
}

// findingAbout returns the stored finding id, which must be about
// identity.
func (s *Server) findingAbout(ctx context.Context, id, identity string) (detect.Finding, error) {
	if len(id) > 128 {
		return detect.Finding{}, badf("finding: at most 128 characters")
	}
	r, err := s.db.Finding(ctx, id)
	if err != nil {
		return detect.Finding{}, err
	}
	f, err := findingOf(r)
	if err != nil {
		return detect.Finding{}, err
	}
	if f.Identity != identity {
		return detect.Finding{}, badf("finding %s is about %s, not %s", id, f.Identity, identity)
	}
	return f, nil
}

// releaseIncident undoes what an incident did and closes it.
func (s *Server) releaseIncident(c *adminCall) {
	var in ReleaseRequest
	if c.r.ContentLength != 0 {
		if err := c.decode(&in); err != nil {
			c.fail(err)
			return
		}
	} else if _, err := c.query(); err != nil {
		c.fail(err)
		return
	}
	d := s.detect
	d.respMu.Lock()
	defer d.respMu.Unlock()
	inc, err := s.pathIncident(c)
	if err != nil {
		c.fail(err)
		return
	}
	if inc.State == detect.IncidentReleased {
		c.fail(fmt.Errorf("%w: incident %s was released already", store.ErrConflict, inc.ID))
		return
	}
	finding := ""
	if len(inc.Findings) > 0 {
		finding = inc.Findings[0]
	}
	s.runStep(c.ctx, &inc, detect.Step{Action: detect.ActionRelease}, c.actor, finding, IncidentRequest{Reason: in.Reason}, nil)
	if err := s.audit.Append(c.ctx, audit.Event{Kind: KindIncidentRelease, Actor: c.actor, Subject: inc.Identity, Outcome: audit.Success,
		Details: viaDashboard(c.ctx, withFinding(map[string]string{"incident": inc.ID, "reason": in.Reason}, finding))}); err != nil {
		c.fail(err)
		return
	}
	c.audited = true
	c.reply(http.StatusOK, inc)
}

// confirmIncident is an admin endorsing an incident: the steps its
// playbook held for want of corroboration run (as the admin), and its
// blocks become permanent (until released): block-pair releases a block
// by itself unless it was confirmed.
func (s *Server) confirmIncident(c *adminCall) {
	if _, err := c.query(); err != nil {
		c.fail(err)
		return
	}
	d := s.detect
	d.respMu.Lock()
	defer d.respMu.Unlock()
	id := c.r.PathValue("id")
	ranHeld := false
	if inc, err := s.pathIncident(c); err == nil && inc.Uncorroborated() && inc.State != detect.IncidentReleased {
		finding := ""
		if len(inc.Findings) > 0 {
			finding = inc.Findings[0]
		}
		ranHeld = s.runHeld(c.ctx, &inc, c.actor, finding, "confirmed by "+c.actor+" (the findings were not corroborated)", nil)
	}
	var inc detect.Incident
	err := s.db.Tx(c.ctx, func(tx *sql.Tx) error {
		r, err := s.db.Incident(c.ctx, tx, id)
		if err != nil {
			return err
		}
		if inc, err = incidentOf(r); err != nil {
			return err
		}
		heldDsts := inc.HeldDestinations
		if inc.State == detect.IncidentReleased {
			heldDsts = nil
		}
		if len(inc.Blocks) == 0 && !ranHeld && len(heldDsts) == 0 {
			return badf("incident %s has no held step and no block in force to confirm", id)
		}
		now := s.now()
		// The destinations the playbook held (only uncorroborated findings
		// named them) are blocked now, on the admin's word.
		for _, d := range heldDsts {
			if !slices.ContainsFunc(inc.Blocks, func(b wire.BlockedEdge) bool { return b.Destination == d }) {
				inc.Blocks = append(inc.Blocks, wire.BlockedEdge{Source: inc.Identity, Destination: d})
			}
		}
		inc.HeldDestinations = nil
		if len(heldDsts) > 0 {
			ranHeld = true
			if inc.ContainedAt.IsZero() {
				inc.ContainedAt = now
			}
			inc.State = detect.IncidentContained
		}
		for i, b := range inc.Blocks {
			if _, err := s.db.PutBlock(c.ctx, tx, store.Block{Source: b.Source, Destination: b.Destination, IncidentID: inc.ID,
				Reason: "incident " + inc.ID + ": confirmed", CreatedBy: c.actor, CreatedAt: now}); err != nil {
				return err
			}
			inc.Blocks[i].ExpiresAt = time.Time{}
		}
		finding := ""
		if len(inc.Findings) > 0 {
			finding = inc.Findings[0]
		}
		detail := "blocks kept until the incident is released"
		if len(heldDsts) > 0 {
			detail = fmt.Sprintf("blocked the held destinations %s; %s", strings.Join(heldDsts, ", "), detail)
		}
		switch {
		case ranHeld && len(inc.Blocks) == 0:
			detail = "held steps run"
		case ranHeld:
			detail = "held steps run; " + detail
		}
		inc.Steps = append(inc.Steps, detect.StepResult{Action: "confirm", At: now, Actor: c.actor, FindingID: finding, Outcome: detect.OutcomeDone,
			Detail: detail})
		if err := s.putIncident(c.ctx, tx, &inc); err != nil {
			return err
		}
		return s.audit.AppendTx(c.ctx, tx, audit.Event{Kind: KindIncidentConfirm, Actor: c.actor, Subject: inc.Identity, Outcome: audit.Success,
			Details: viaDashboard(c.ctx, withFinding(map[string]string{"incident": inc.ID, "blocks": fmt.Sprint(len(inc.Blocks))}, finding))})
	})
	if err != nil {
		c.fail(err)
		return
	}
	c.audited = true
	s.changed(c.ctx)
	c.reply(http.StatusOK, inc)
}

// maxBundleAudit bounds how far back the forensics bundle looks in the
// audit log, in records.
const maxBundleAudit = 50_000

// exportIncident answers the forensics bundle of an incident.
func (s *Server) exportIncident(c *adminCall) {
	if _, err := c.query(); err != nil {
		c.fail(err)
		return
	}
	inc, err := s.pathIncident(c)
	if err != nil {
		c.fail(err)
		return
	}
	now := s.now()
	b := ForensicsBundle{Format: "moatless-forensics/v1", GeneratedAt: now.UTC(), GeneratedBy: c.actor, Incident: inc, Findings: []detect.Finding{}}
	from := inc.OpenedAt
	if !inc.FirstRecord.IsZero() && inc.FirstRecord.Before(from) {
		from = inc.FirstRecord
	}
	from = from.Add(-time.Hour)
	frows, err := s.db.Findings(c.ctx, store.FindingQuery{Identity: inc.Identity, Since: from.Add(-24 * time.Hour), Limit: 1000})
	if err != nil {
		c.fail(err)
		return
	}
	for _, fr := range frows {
		f, err := findingOf(fr)
		if err != nil {
			c.fail(err)
			return
		}
		b.Findings = append(b.Findings, f)
	}
	if b.Decisions, err = s.db.Samples(c.ctx, store.SampleQuery{Source: inc.Identity, Reporter: inc.Identity, Since: from, Limit: 1000}); err != nil {
		c.fail(err)
		return
	}
	ts, err := s.db.EdgeTotals(c.ctx, store.EdgeQuery{Since: from, Source: inc.Identity})
	if err != nil {
		c.fail(err)
		return
	}
	b.Traffic = edgeSummaries(ts)
	if b.Certificates, err = s.db.SVIDsOf(c.ctx, inc.Identity, from); err != nil {
		c.fail(err)
		return
	}
	revs, err := s.db.Revocations(c.ctx, now)
	if err != nil {
		c.fail(err)
		return
	}
	b.Revocations = store.RevocationList{IDs: []store.RevokedID{}, Serials: []store.RevokedSerial{}}
	for _, x := range revs.IDs {
		if x.SPIFFEID == inc.Identity {
			b.Revocations.IDs = append(b.Revocations.IDs, x)
		}
	}
	for _, x := range revs.Serials {
		if x.SPIFFEID == inc.Identity {
			b.Revocations.Serials = append(b.Revocations.Serials, x)
		}
	}
	blocks, err := s.db.Blocks(c.ctx, now)
	if err != nil {
		c.fail(err)
		return
	}
	b.Blocks = []store.Block{}
	for _, x := range blocks {
		if x.Source == inc.Identity || x.Destination == inc.Identity || x.IncidentID == inc.ID {
			b.Blocks = append(b.Blocks, x)
		}
	}
	head, hash, err := s.db.AuditHead(c.ctx)
	if err != nil {
		c.fail(err)
		return
	}
	b.AuditHead = AuditHeadRef{Seq: head, Hash: hex.EncodeToString(hash)}
	recs, err := s.auditScan(c.ctx, from.Add(-24*time.Hour), nil, func(rec audit.Record) bool {
		return rec.Actor == inc.Identity || rec.Subject == inc.Identity || rec.Details["incident"] == inc.ID ||
			rec.Details["source"] == inc.Identity || rec.Details["spiffe_id"] == inc.Identity
	})
	if err != nil {
		c.fail(err)
		return
	}
	b.AuditRecords = make([]AuditRecord, len(recs))
	for i, rec := range recs {
		b.AuditRecords[i] = AuditRecord{Seq: rec.Seq, Time: rec.Time, Kind: rec.Kind, Actor: rec.Actor, Subject: rec.Subject,
			Outcome: rec.Outcome, Details: rec.Details, Hash: hex.EncodeToString(rec.Hash), PrevHash: hex.EncodeToString(rec.PrevHash)}
	}
	c.reply(http.StatusOK, b)
}

// auditScan returns the audit records that match, newest first, reading
// back from the head at most maxBundleAudit records (of kinds starting
// with one of kinds; all with none) and stopping at the first page that
// reaches back before from.
func (s *Server) auditScan(ctx context.Context, from time.Time, kinds []string, match func(audit.Record) bool) ([]audit.Record, error) {
	var out []audit.Record
	var before uint64
	for scanned := 0; scanned < maxBundleAudit; {
		recs, err := audit.ListKinds(ctx, s.db, before, 1000, kinds)
		if err != nil {
			return nil, err
		}
		if len(recs) == 0 {
			break
		}
		scanned += len(recs)
		for _, rec := range recs {
			if match(rec) {
				out = append(out, rec)
			}
		}
		last := recs[len(recs)-1]
		if last.Seq <= 1 || last.Time.Before(from) {
			break
		}
		before = last.Seq
	}
	return out, nil
}

func (s *Server) listBlocks(c *adminCall) {
	if _, err := c.query(); err != nil {
		c.fail(err)
		return
	}
	bs, err := s.db.Blocks(c.ctx, s.now())
	if err != nil {
		c.fail(err)
		return
	}
	c.reply(http.StatusOK, Page[store.Block]{Items: bs})
}

func (s *Server) getPlaybooks(c *adminCall) {
	q, err := c.query("version")
	if err != nil {
		c.fail(err)
		return
	}
	var version uint64
	if v := q.Get("version"); v != "" {
		if _, err := fmt.Sscan(v, &version); err != nil || version == 0 {
			c.fail(badf("version %q: want a playbooks version number", v))
			return
		}
	}
	v, objs, err := s.db.PolicySetIn(c.ctx, s.db.SQL(), store.Playbooks, version)
	if err != nil {
		c.fail(err)
		return
	}
	set := PlaybookSet{Version: v, Items: make([]detect.Playbook, 0, len(objs))}
	for _, o := range objs {
		pb, err := detect.ParsePlaybookJSON(o.Raw)
		if err != nil {
			c.fail(err)
			return
		}
		set.Items = append(set.Items, pb)
	}
	c.reply(http.StatusOK, set)
}

// applyPlaybooks stores the playbooks of the files as a new playbooks
// version (one audit record for the version).
func (s *Server) applyPlaybooks(c *adminCall) {
	var in PlaybookApplyRequest
	if err := c.decode(&in); err != nil {
		c.fail(err)
		return
	}
	if len(in.Files) == 0 {
		c.fail(badf("files: at least one playbook file"))
		return
	}
	var writes []store.PolicyWrite
	seen := map[string]string{}
	for i, f := range in.Files {
		pbs, err := detect.ParsePlaybooks([]byte(f.Content))
		if err != nil {
			c.fail(badf("files[%d] (%s): %v", i, f.Name, err))
			return
		}
		for _, pb := range pbs {
			if prev, ok := seen[pb.Name]; ok {
				c.fail(badf("playbook %q is in both %s and %s", pb.Name, prev, f.Name))
				return
			}
			seen[pb.Name] = f.Name
			writes = append(writes, store.PolicyWrite{PolicyRef: store.PolicyRef{Kind: detect.PlaybookKind, Name: pb.Name}, Raw: pb.Document()})
		}
	}
	var pv store.PolicyVersion
	err := c.change(func(tx *sql.Tx) (audit.Event, error) {
		var err error
		pv, err = s.db.WritePoliciesIn(c.ctx, tx, store.Playbooks, c.actor, "apply", 0, writes, s.now())
		names := make([]string, 0, len(seen))
		for n := range seen {
			names = append(names, n)
		}
		sort.Strings(names)
		return c.event(KindPlaybookApply, fmt.Sprint(pv.Version), map[string]string{"playbooks": strings.Join(names, ","), "changes": fmt.Sprint(len(pv.Changes))}), err
	})
	if err != nil {
		c.fail(err)
		return
	}
	c.reply(http.StatusOK, pv)
}

func (s *Server) deletePlaybook(c *adminCall) {
	if _, err := c.query(); err != nil {
		c.fail(err)
		return
	}
	name := c.r.PathValue("name")
	var pv store.PolicyVersion
	err := c.change(func(tx *sql.Tx) (audit.Event, error) {
		var err error
		pv, err = s.db.WritePoliciesIn(c.ctx, tx, store.Playbooks, c.actor, "delete", 0,
			[]store.PolicyWrite{{PolicyRef: store.PolicyRef{Kind: detect.PlaybookKind, Name: name}}}, s.now())
		if errors.Is(err, store.ErrNotFound) {
			err = fmt.Errorf("%w: no playbook %q", store.ErrNotFound, name)
		}
		return c.event(KindPlaybookDelete, name, map[string]string{"version": fmt.Sprint(pv.Version)}), err
	})
	if err != nil {
		c.fail(err)
		return
	}
	c.reply(http.StatusOK, pv)
}

func (s *Server) playbookHistory(c *adminCall) {
	before, limit, err := c.pageQuery(100, "a playbooks version")
	if err != nil {
		c.fail(err)
		return
	}
	h, err := s.db.PolicyHistoryIn(c.ctx, store.Playbooks, before, limit)
	if err != nil {
		c.fail(err)
		return
	}
	p := Page[store.PolicyVersion]{Items: h}
	if len(h) == limit && h[len(h)-1].Version > 1 {
		p.Next = fmt.Sprint(h[len(h)-1].Version)
	}
	c.reply(http.StatusOK, p)
}
