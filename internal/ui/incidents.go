package ui

// Findings and incidents: what the detection engine found, the incidents
// the playbooks (or an admin) opened, and the one-click containment
// actions. Every action is two POSTs: the first (from a button) changes
// nothing and answers a confirmation page saying what will happen; the
// second carries confirm=yes. Both pass the session, CSRF and Origin
// checks of every action, and the second runs the admin API's own
// incident handler (IncidentSource), so it is validated and audited as a
// CLI call is.

import (
	"errors"
	"net/http"
	"net/url"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/moatless/moatless/internal/audit"
	"github.com/moatless/moatless/internal/detect"
)

// Bounds of the findings and incidents pages.
const (
	listLimit = 100
	// otherFindings bounds the identity's other findings on a finding's
	// page.
	otherFindings = 50
	// maxReason bounds an action's reason (the server allows 512).
	maxReason = 512
	// maxIncidentID bounds an incident or finding ID from a form or path.
	maxIncidentID = 128
)

var incidentStates = []string{detect.IncidentOpen, detect.IncidentContained, detect.IncidentReleased}

// listQuery is a list page's validated filter.
type listQuery struct {
	Identity string
	// Choice is the enumerated filter: a severity or a state.
	Choice string
	Before time.Time
}

// query is the filter as a query string, for links and live refresh
// (without the cursor: a refresh shows the newest).
func (l listQuery) query(choiceKey string) string {
	v := url.Values{}
	if l.Identity != "" {
		v.Set("identity", l.Identity)
	}
	if l.Choice != "" {
		v.Set(choiceKey, l.Choice)
	}
	if len(v) == 0 {
		return ""
	}
	return "?" + v.Encode()
}

// listFilter reads a list page's filter (parseListQuery); a malformed
// one gets a 400 page naming it and ok false.
func (u *UI) listFilter(q *request, title, choiceKey string, choices []string) (listQuery, bool) {
	l, err := parseListQuery(q.r.URL.Query(), choiceKey, choices)
	if err != nil {
		u.show(q, http.StatusBadRequest, "error", &page{Title: title, FlashErr: err.Error()})
		return listQuery{}, false
	}
	return l, true
}

// parseListQuery reads ?identity= (at most maxIDParam bytes, trimmed),
// ?CHOICEKEY= (one of choices) and ?before= (a cursor: positive Unix
// nanoseconds). The error names the parameter.
func parseListQuery(p url.Values, choiceKey string, choices []string) (listQuery, error) {
	var l listQuery
	l.Identity = strings.TrimSpace(p.Get("identity"))
	if len(l.Identity) > maxIDParam {
		return listQuery{}, errors.New("identity: too long")
	}
	if l.Choice = p.Get(choiceKey); l.Choice != "" && !contains(choices, l.Choice) {
		return listQuery{}, errors.New(choiceKey + ": want one of " + strings.Join(choices, ", "))
	}
	if v := p.Get("before"); v != "" {
		n, err := strconv.ParseInt(v, 10, 64)
		if err != nil || n <= 0 {
			return listQuery{}, errors.New("before: want the cursor of the previous page")
		}
		l.Before = time.Unix(0, n).UTC()
	}
	return l, nil
}

func contains(l []string, s string) bool {
	for _, x := range l {
		if x == s {
			return true
		}
	}
	return false
}

func cursor(t time.Time) int64 {
	if t.IsZero() {
		return 0
	}
	return t.UnixNano()
}

type findingsData struct {
	Filter     listQuery
	Severities []detect.Severity
	Findings   []detect.Finding
	Risk       map[string]float64
	Next       int64
}

func severityNames() []string {
	out := make([]string, len(detect.Severities))
	for i, s := range detect.Severities {
		out[i] = string(s)
	}
	return out
}

// findings lists findings, newest first, filtered by identity and
// minimum severity; live.
func (u *UI) findings(q *request) { u.showFindings(q, http.StatusOK, "") }

func (u *UI) showFindings(q *request, status int, flashErr string) {
	l, ok := u.listFilter(q, "Findings", "severity", severityNames())
	if !ok {
		return
	}
	fs, next, err := u.cfg.Findings.Findings(q.ctx, FindingQuery{Identity: l.Identity, MinSeverity: detect.Severity(l.Choice), Before: l.Before, Limit: listLimit})
	if err != nil {
		u.fail(q, "Findings", err)
		return
	}
	risk, err := u.cfg.Findings.Risks(q.ctx)
	if err != nil {
		u.fail(q, "Findings", err)
		return
	}
	d := findingsData{Filter: l, Severities: detect.Severities, Findings: fs, Risk: risk, Next: cursor(next)}
	p := &page{Title: "Findings", Nav: "findings", Path: Prefix + "/findings" + l.query("severity"), FlashErr: flashErr, Data: d}
	if l.Before.IsZero() {
		p.Refresh = 5 * time.Second
	}
	u.show(q, status, "findings", p)
}

type findingData struct {
	F        detect.Finding
	Evidence [][2]string
	Risk     float64
	Others   []detect.Finding
	// Incident is the identity's incident in force (open or contained),
	// if any.
	Incident *detect.Incident
}

// finding shows one finding: evidence, the records it came from, the
// identity's risk and other findings, and the isolate button.
func (u *UI) finding(q *request) {
	u.showFinding(q, http.StatusOK, q.r.PathValue("id"), "")
}

func (u *UI) showFinding(q *request, status int, id, flashErr string) {
	if len(id) > maxIncidentID {
		u.show(q, http.StatusNotFound, "error", &page{Title: "Finding", FlashErr: "There is no such finding."})
		return
	}
	f, err := u.cfg.Findings.Finding(q.ctx, id)
	if err != nil && flashErr != "" {
		// An action's refusal named a finding that is not there: the
		// refusal says why.
		u.show(q, status, "error", &page{Title: "Finding", FlashErr: flashErr})
		return
	}
	if err != nil {
		u.fail(q, "Finding", err)
		return
	}
	d := findingData{F: f}
	for k, v := range f.Evidence {
		d.Evidence = append(d.Evidence, [2]string{k, v})
	}
	sort.Slice(d.Evidence, func(i, j int) bool { return d.Evidence[i][0] < d.Evidence[j][0] })
	risk, err := u.cfg.Findings.Risks(q.ctx)
	if err != nil {
		u.fail(q, "Finding", err)
		return
	}
	d.Risk = risk[f.Identity]
	others, _, err := u.cfg.Findings.Findings(q.ctx, FindingQuery{Identity: f.Identity, Limit: otherFindings + 1})
	if err != nil {
		u.fail(q, "Finding", err)
		return
	}
	for _, o := range others {
		if o.ID != f.ID && len(d.Others) < otherFindings {
			d.Others = append(d.Others, o)
		}
	}
	if d.Incident, err = u.activeIncident(q, f.Identity); err != nil {
		u.fail(q, "Finding", err)
		return
	}
	u.show(q, status, "finding", &page{Title: "Finding " + f.ID, Nav: "findings", Path: Prefix + "/findings/" + url.PathEscape(f.ID),
		Refresh: 5 * time.Second, FlashErr: flashErr, Data: d})
}

// activeIncident is identity's incident in force (open or contained), or
// nil.
func (u *UI) activeIncident(q *request, identity string) (*detect.Incident, error) {
	for _, st := range []string{detect.IncidentContained, detect.IncidentOpen} {
		l, _, err := u.cfg.Incidents.Incidents(q.ctx, IncidentQuery{Identity: identity, State: st, Limit: 1})
		if err != nil {
			return nil, err
		}
		if len(l) > 0 {
			return &l[0], nil
		}
	}
	return nil, nil
}

type incidentsData struct {
	Filter    listQuery
	States    []string
	Incidents []detect.Incident
	Next      int64
}

// incidents lists incidents, newest first, filtered by identity and
// state; live.
func (u *UI) incidents(q *request) {
	l, ok := u.listFilter(q, "Incidents", "state", incidentStates)
	if !ok {
		return
	}
	incs, next, err := u.cfg.Incidents.Incidents(q.ctx, IncidentQuery{Identity: l.Identity, State: l.Choice, Before: l.Before, Limit: listLimit})
	if err != nil {
		u.fail(q, "Incidents", err)
		return
	}
	d := incidentsData{Filter: l, States: incidentStates, Incidents: incs, Next: cursor(next)}
	p := &page{Title: "Incidents", Nav: "incidents", Path: Prefix + "/incidents" + l.query("state"), Data: d}
	if l.Before.IsZero() {
		p.Refresh = 5 * time.Second
	}
	u.show(q, http.StatusOK, "incidents", p)
}

// stepView is one step of an incident with the audit records it made.
type stepView struct {
	detect.StepResult
	Records []audit.Record
}

type incidentData struct {
	I     detect.Incident
	Risk  float64
	Steps []stepView
	// Audit is every audit record naming the incident, newest first,
	// among those from sequence number AuditFrom on.
	Audit     []audit.Record
	AuditFrom uint64
	// Expiring: a block lapses by itself unless confirmed.
	Expiring bool
	// Held are the destinations the playbook's block-pair holds (only
	// uncorroborated findings name them) until a corroborated finding
	// names them or an admin confirms.
	Held []string
}

// heldDestinations are the incident's held destinations while they can
// still be blocked: none once it is released (confirm then blocks
// nothing, as the server decides).
func heldDestinations(inc detect.Incident) []string {
	if inc.State == detect.IncidentReleased {
		return nil
	}
	return inc.HeldDestinations
}

// confirmable reports whether confirming the incident would do anything:
// keep its blocks, run the steps its playbook held, or block its held
// destinations (as the server's confirm does). The action refuses
// otherwise; the page offers it when there is something to decide: a
// block that lapses, a held step, a held destination.
func confirmable(inc detect.Incident) bool {
	return len(inc.Blocks) > 0 || len(heldDestinations(inc)) > 0 || (inc.Uncorroborated() && inc.State != detect.IncidentReleased)
}

// stepKinds are the audit kinds of the records a step makes besides its
// own (incident.step; incident.confirm for a confirmation).
var stepKinds = map[string][]string{
	detect.ActionIsolate:           {audit.KindRevoke},
	detect.ActionRevokeCertificate: {audit.KindRevoke},
	detect.ActionRelease:           {audit.KindUnrevoke, "incident.release"},
}

// ownRecord reports whether r is the record step st made of itself.
func ownRecord(st detect.StepResult, r audit.Record) bool {
	if st.Action == "confirm" {
		return r.Kind == "incident.confirm"
	}
	return r.Kind == "incident.step" && r.Details["action"] == st.Action
}

// incidentSteps pairs each step with its audit records, taking the
// records oldest first: a step's own record goes to the first step not
// yet paired that it fits (earlier steps whose records were not searched
// stay without); a record of another kind goes to the first step not yet
// paired whose kinds it is of (revocation.create before its isolate
// step), else to the step it follows (incident.release after the release
// step).
func incidentSteps(steps []detect.StepResult, recs []audit.Record) []stepView {
	asc := append([]audit.Record(nil), recs...)
	sort.Slice(asc, func(i, j int) bool { return asc[i].Seq < asc[j].Seq })
	out := make([]stepView, len(steps))
	for i, st := range steps {
		out[i].StepResult = st
	}
	// first is the first step from next on that fits r, or -1.
	first := func(next int, fits func(detect.StepResult) bool) int {
		for j := next; j < len(steps); j++ {
			if fits(steps[j]) {
				return j
			}
		}
		return -1
	}
	next := 0 // the first step without its own record yet
	for _, r := range asc {
		if j := first(next, func(st detect.StepResult) bool { return ownRecord(st, r) }); j >= 0 {
			out[j].Records = append(out[j].Records, r)
			next = j + 1
		} else if j := first(next, func(st detect.StepResult) bool { return contains(stepKinds[st.Action], r.Kind) }); j >= 0 {
			out[j].Records = append(out[j].Records, r)
		} else if next > 0 && contains(stepKinds[steps[next-1].Action], r.Kind) {
			out[next-1].Records = append(out[next-1].Records, r)
		}
	}
	return out
}

// incident shows one incident: its state, timeline, steps with their
// audit records, blocks with their expiry, and the actions.
func (u *UI) incident(q *request) { u.showIncident(q, http.StatusOK, q.r.PathValue("id"), "", "") }

// incidentDone are the messages of a finished action (?done=), a fixed
// set: nothing from the request is echoed.
var incidentDone = map[string]string{
	"isolated":  "Isolated: the identity is revoked; every sidecar refuses it and closes its connections.",
	"released":  "Released: what the incident did is lifted.",
	"confirmed": "Confirmed: held steps ran, and the blocked pairs stay until the incident is released.",
}

func (u *UI) showIncident(q *request, status int, id, flash, flashErr string) {
	if len(id) > maxIncidentID {
		u.show(q, http.StatusNotFound, "error", &page{Title: "Incident", FlashErr: "There is no such incident."})
		return
	}
	inc, err := u.cfg.Incidents.Incident(q.ctx, id)
	if err != nil && flashErr != "" {
		u.show(q, status, "error", &page{Title: "Incident", FlashErr: flashErr})
		return
	}
	if err != nil {
		u.fail(q, "Incident", err)
		return
	}
	recs, from, err := u.cfg.Incidents.IncidentAudit(q.ctx, inc)
	if err != nil {
		u.fail(q, "Incident", err)
		return
	}
	risk, err := u.cfg.Findings.Risks(q.ctx)
	if err != nil {
		u.fail(q, "Incident", err)
		return
	}
	d := incidentData{I: inc, Risk: risk[inc.Identity], Steps: incidentSteps(inc.Steps, recs), Audit: recs, AuditFrom: from, Held: heldDestinations(inc)}
	for _, b := range inc.Blocks {
		if !b.ExpiresAt.IsZero() {
			d.Expiring = true
		}
	}
	if flash == "" && q.r.Method == http.MethodGet {
		flash = incidentDone[q.r.URL.Query().Get("done")]
	}
	p := &page{Title: "Incident " + inc.ID, Nav: "incidents", Path: Prefix + "/incidents/" + url.PathEscape(inc.ID), Flash: flash, FlashErr: flashErr, Data: d}
	if inc.State != detect.IncidentReleased {
		// A released incident no longer changes.
		p.Refresh = 5 * time.Second
	}
	u.show(q, status, "incident", p)
}

// isolateButton is what the "isolate" template needs for a button that
// asks to isolate an identity: the finding acted on, and the page to
// show a refusal on ("finding", "incident" or the findings list).
type isolateButton struct {
	CSRF, Identity, Finding, Return, Incident string
}

func newIsolateButton(csrf, identity, finding, ret, incident string) isolateButton {
	return isolateButton{CSRF: csrf, Identity: identity, Finding: finding, Return: ret, Incident: incident}
}

// hidden is a hidden form field of a confirmation.
type hidden struct{ Name, Value string }

type confirmData struct {
	// Action names the button ("isolate", "release", "confirm").
	Action   string
	Question string
	Effects  []string
	Post     string
	Fields   []hidden
	Reason   bool
	Cancel   string
	Button   string
}

// confirmed reports whether the form confirms the action; if not, it
// shows the confirmation page and the caller must do nothing.
func (u *UI) confirmed(q *request, title string, c confirmData) bool {
	if q.r.PostFormValue("confirm") == "yes" {
		return true
	}
	u.show(q, http.StatusOK, "confirm", &page{Title: title, Nav: "incidents", Data: c})
	return false
}

// actionError shows the page an incident action came from with the
// refusal: status from the server's answer (400 for a bad form).
func (u *UI) actionError(q *request, what string, err error) {
	status := http.StatusInternalServerError
	if ae, ok := AsActionError(err); ok {
		status = ae.Status
	}
	msg := u.actionFailed(q, what, err)
	switch q.r.PostFormValue("return") {
	case "finding":
		if id := q.r.PostFormValue("finding"); id != "" && len(id) <= maxIncidentID {
			u.showFinding(q, status, id, msg)
			return
		}
	case "incident":
		id := q.r.PathValue("id")
		if id == "" {
			id = q.r.PostFormValue("incident")
		}
		if id != "" && len(id) <= maxIncidentID {
			u.showIncident(q, status, id, "", msg)
			return
		}
	}
	u.showFindings(q, status, msg)
}

// actionDone answers a finished action with the incident's page: a form
// post is redirected to it (so a reload does not post again); htmx gets
// the page in place and the URL to show.
func (u *UI) actionDone(q *request, inc detect.Incident, done string) {
	path := Prefix + "/incidents/" + url.PathEscape(inc.ID)
	if !q.htmx() {
		http.Redirect(q.w, q.r, path+"?done="+done, http.StatusSeeOther)
		return
	}
	q.w.Header().Set("HX-Push-Url", path)
	u.showIncident(q, http.StatusOK, inc.ID, incidentDone[done], "")
}

// formReason is the form's reason, trimmed; ok false (and the refusal
// shown) when too long.
func (u *UI) formReason(q *request, what string) (string, bool) {
	r := strings.TrimSpace(q.r.PostFormValue("reason"))
	if len(r) > maxReason {
		u.actionError(q, what, &ActionError{Status: http.StatusBadRequest, Msg: what + ": the reason is longer than 512 characters."})
		return "", false
	}
	return r, true
}

// isolate revokes an identity everywhere through an incident: the
// identity's open one, or a new one with the finding (if given) as its
// cause.
func (u *UI) isolate(q *request) {
	const what = "Isolate"
	identity := strings.TrimSpace(q.r.PostFormValue("identity"))
	finding := strings.TrimSpace(q.r.PostFormValue("finding"))
	switch {
	case identity == "":
		u.actionError(q, what, &ActionError{Status: http.StatusBadRequest, Msg: "Isolate: name the identity (a SPIFFE ID)."})
		return
	case len(identity) > maxIDParam || !strings.HasPrefix(identity, "spiffe://"):
		u.actionError(q, what, &ActionError{Status: http.StatusBadRequest, Msg: "Isolate: only a SPIFFE ID can be isolated."})
		return
	case len(finding) > maxIncidentID:
		u.actionError(q, what, &ActionError{Status: http.StatusBadRequest, Msg: "Isolate: there is no such finding."})
		return
	}
	reason, ok := u.formReason(q, what)
	if !ok {
		return
	}
	cancel := Prefix + "/findings"
	if inc := q.r.PostFormValue("incident"); q.r.PostFormValue("return") == "incident" && inc != "" {
		cancel = Prefix + "/incidents/" + url.PathEscape(inc)
	} else if finding != "" {
		cancel += "/" + url.PathEscape(finding)
	}
	c := confirmData{Action: "isolate", Question: "Isolate " + identity + "?", Post: Prefix + "/incidents/isolate",
		Effects: []string{
			"Its SPIFFE ID is revoked: every sidecar refuses it and closes its live connections, its own sidecar cuts its calls.",
			"Access tokens naming it are refused and its secrets leases are revoked.",
			"The step is recorded in an incident (its open one, or a new one) and in the audit log as yours.",
			"Release the incident to lift it.",
		},
		Fields: []hidden{{"identity", identity}, {"finding", finding}, {"return", q.r.PostFormValue("return")}, {"incident", q.r.PostFormValue("incident")}},
		Reason: true, Cancel: cancel, Button: "Isolate " + identity}
	if finding != "" {
		c.Effects = append(c.Effects, "Finding "+finding+" is recorded as the cause.")
	}
	if !u.confirmed(q, "Confirm isolation", c) {
		return
	}
	inc, err := u.cfg.Incidents.Isolate(q.ctx, q.actor(), identity, finding, reason)
	if err != nil {
		u.actionError(q, what, err)
		return
	}
	u.actionDone(q, inc, "isolated")
}

// incidentForAction loads the incident an action's path names; ok false
// (and the refusal shown) when there is none.
func (u *UI) incidentForAction(q *request, what string) (detect.Incident, bool) {
	id := q.r.PathValue("id")
	if len(id) > maxIncidentID {
		u.actionError(q, what, &ActionError{Status: http.StatusNotFound, Msg: "There is no such incident."})
		return detect.Incident{}, false
	}
	inc, err := u.cfg.Incidents.Incident(q.ctx, id)
	if err != nil {
		u.actionError(q, what, err)
		return detect.Incident{}, false
	}
	return inc, true
}

// release undoes what an incident did (its revocation, its blocks) and
// closes it.
func (u *UI) release(q *request) {
	const what = "Release"
	inc, ok := u.incidentForAction(q, what)
	if !ok {
		return
	}
	if inc.State == detect.IncidentReleased {
		u.actionError(q, what, &ActionError{Status: http.StatusConflict, Msg: "Incident " + inc.ID + " was released already."})
		return
	}
	reason, ok := u.formReason(q, what)
	if !ok {
		return
	}
	c := confirmData{Action: "release", Question: "Release incident " + inc.ID + " of " + inc.Identity + "?",
		Post: Prefix + "/incidents/" + url.PathEscape(inc.ID) + "/release", Fields: []hidden{{"return", "incident"}},
		Reason: true, Cancel: Prefix + "/incidents/" + url.PathEscape(inc.ID), Button: "Release " + inc.ID}
	if inc.Revoked {
		c.Effects = append(c.Effects, "The revocation of "+inc.Identity+" that this incident made is lifted: sidecars accept it again.")
	}
	for _, b := range inc.Blocks {
		c.Effects = append(c.Effects, "The block "+b.Source+" → "+b.Destination+" is lifted.")
	}
	c.Effects = append(c.Effects, "Certificates the incident revoked stay revoked.", "The incident is closed; the release is audited as yours.")
	if !u.confirmed(q, "Confirm release", c) {
		return
	}
	inc, err := u.cfg.Incidents.Release(q.ctx, q.actor(), inc.ID, reason)
	if err != nil {
		u.actionError(q, what, err)
		return
	}
	u.actionDone(q, inc, "released")
}

// confirmBlocks confirms an incident: the steps its playbook held for
// want of corroboration run, and its blocked pairs stay until it is
// released.
func (u *UI) confirmBlocks(q *request) {
	const what = "Confirm the incident"
	inc, ok := u.incidentForAction(q, what)
	if !ok {
		return
	}
	if !confirmable(inc) {
		u.actionError(q, what, &ActionError{Status: http.StatusBadRequest, Msg: "Incident " + inc.ID + " has no held step or destination and no block in force to confirm."})
		return
	}
	c := confirmData{Action: "confirm", Question: "Keep the blocks of incident " + inc.ID + "?",
		Post: Prefix + "/incidents/" + url.PathEscape(inc.ID) + "/confirm", Fields: []hidden{{"return", "incident"}},
		Cancel: Prefix + "/incidents/" + url.PathEscape(inc.ID), Button: "Keep the blocks"}
	if inc.Uncorroborated() {
		c.Question, c.Button = "Confirm incident "+inc.ID+" and run the steps its playbook held?", "Run the held steps"
		c.Effects = append(c.Effects, inc.Corroboration+".")
		for _, h := range inc.Held {
			c.Effects = append(c.Effects, "Runs "+h.Action+" against "+inc.Identity+", as you.")
		}
	}
	if held := heldDestinations(inc); len(held) > 0 {
		if !inc.Uncorroborated() {
			c.Question, c.Button = "Confirm incident "+inc.ID+" and block the destinations its playbook held?", "Block the held destinations"
		}
		for _, d := range held {
			c.Effects = append(c.Effects, inc.Identity+" → "+d+" is blocked until the incident is released: the playbook held it, as only uncorroborated findings name it.")
		}
	}
	for _, b := range inc.Blocks {
		c.Effects = append(c.Effects, b.Source+" → "+b.Destination+" stays blocked until the incident is released, instead of lapsing on its own.")
	}
	if !u.confirmed(q, "Confirm the blocks", c) {
		return
	}
	inc, err := u.cfg.Incidents.ConfirmBlocks(q.ctx, q.actor(), inc.ID)
	if err != nil {
		u.actionError(q, what, err)
		return
	}
	u.actionDone(q, inc, "confirmed")
}

// exportIncident downloads the incident's forensics bundle (one JSON
// file, as "moatless incident export" writes it). It only reads, but the
// bundle is the identity's whole record, so the server audits the export
// as the admin's.
func (u *UI) exportIncident(q *request) {
	// Not even a link from another site: a download does not unload the
	// page that started it, which could start it again and again (the
	// incident page's link is same-origin).
	if s := q.r.Header.Get("Sec-Fetch-Site"); s == "same-site" || s == "cross-site" {
		u.show(q, http.StatusForbidden, "error", &page{Title: "Incident",
			FlashErr: "Refused: another site linked to the forensics bundle; download it from the incident's page."})
		return
	}
	id := q.r.PathValue("id")
	if len(id) > maxIncidentID {
		u.show(q, http.StatusNotFound, "error", &page{Title: "Incident", FlashErr: "There is no such incident."})
		return
	}
	b, err := u.cfg.Incidents.Export(q.ctx, q.actor(), id)
	if err != nil {
		u.fail(q, "Incident", err)
		return
	}
	h := q.w.Header()
	h.Set("Content-Type", "application/json")
	// The ID is the server's (hex); quoted and checked anyway.
	name := "incident-" + strings.Map(func(r rune) rune {
		if r >= '0' && r <= '9' || r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r == '-' {
			return r
		}
		return '_'
	}, id) + ".json"
	h.Set("Content-Disposition", `attachment; filename="`+name+`"`)
	q.w.WriteHeader(http.StatusOK)
	q.w.Write(b)
}
