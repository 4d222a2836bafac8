package ui

import (
	"bytes"
	"fmt"
	"html/template"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/moatless/moatless/internal/audit"
	"github.com/moatless/moatless/internal/ca"
	"github.com/moatless/moatless/internal/detect"
	"github.com/moatless/moatless/internal/store"
	"github.com/moatless/moatless/internal/wire"
)

// page is what every template gets.
type page struct {
	Title string
	// Nav is the active menu entry; Path the page's own path (htmx
	// refreshes fetch it).
	Nav, Path string
	// Refresh, when set, makes htmx re-fetch the page's content this often.
	Refresh     time.Duration
	CSRF        string
	Actor       string
	TrustDomain string
	Flash       string
	FlashErr    string
	Now         time.Time
	Data        any
	// OOB marks the menu of an htmx answer: htmx swaps it in beside the
	// content ("out of band"), so the menu follows the page shown.
	OOB bool
}

// WithOOB is the page with OOB set, for the menu of an htmx answer.
func (p page) WithOOB() *page {
	p.OOB = true
	return &p
}

// pageNames are the templates, each templates/NAME.html with layout.html.
var pageNames = []string{"login", "error", "overview", "graph", "decisions", "nodes", "certificates", "policies", "policy", "revocations", "audit", "findings", "finding", "incidents", "incident", "confirm"}

var funcs = template.FuncMap{
	"when": func(t time.Time) string {
		if t.IsZero() {
			return "—"
		}
		return t.UTC().Format("2006-01-02 15:04:05Z")
	},
	// in says how far t is from now: "in 59m", "3h ago".
	"in": func(now, t time.Time) string {
		if t.IsZero() {
			return "—"
		}
		d := t.Sub(now)
		if d < 0 {
			return roughDuration(-d) + " ago"
		}
		return "in " + roughDuration(d)
	},
	// soon marks an expiry within the hour (or past) for the template.
	"soon": func(now, t time.Time) bool { return !t.IsZero() && t.Sub(now) < time.Hour },
	"short": func(s string, n int) string {
		if len(s) > n {
			return s[:n] + "…"
		}
		return s
	},
	"join":      strings.Join,
	"selectors": func(sel []wire.Selector) string { return formatSelectors(sel) },
	"details":   formatDetails,
	"pct": func(f float64) string {
		return strconv.FormatFloat(f*100, 'f', 0, 64) + "%"
	},
	"seconds":       func(d time.Duration) string { return roughDuration(d) },
	"isolateButton": newIsolateButton,
	"risk":          func(f float64) string { return strconv.FormatFloat(f, 'f', 2, 64) },
	"spiffe":        func(s string) bool { return strings.HasPrefix(s, "spiffe://") },
	"cursor":        cursor,
	"held":          heldDestinations,
	"first": func(l []string) string {
		if len(l) == 0 {
			return ""
		}
		return l[0]
	},
}

func roughDuration(d time.Duration) string {
	switch {
	case d < time.Minute:
		return strconv.Itoa(int(d/time.Second)) + "s"
	case d < time.Hour:
		return strconv.Itoa(int(d/time.Minute)) + "m"
	case d < 48*time.Hour:
		return fmt.Sprintf("%dh%02dm", int(d/time.Hour), int(d%time.Hour/time.Minute))
	default:
		return strconv.Itoa(int(d/(24*time.Hour))) + "d"
	}
}

func formatSelectors(sel []wire.Selector) string {
	parts := make([]string, len(sel))
	for i, s := range sel {
		parts[i] = s.Type + ":" + s.Value
	}
	return strings.Join(parts, " ")
}

// formatDetails renders audit details as "k=v" pairs, sorted.
func formatDetails(d map[string]string) string {
	keys := make([]string, 0, len(d))
	for k := range d {
		keys = append(keys, k)
	}
	sortStrings(keys)
	var b strings.Builder
	for i, k := range keys {
		if i > 0 {
			b.WriteString("  ")
		}
		b.WriteString(k + "=" + d[k])
	}
	return b.String()
}

func parsePages() (map[string]*template.Template, error) {
	out := map[string]*template.Template{}
	for _, n := range pageNames {
		t, err := template.New("").Funcs(funcs).ParseFS(templateFS, "templates/layout.html", "templates/"+n+".html")
		if err != nil {
			return nil, fmt.Errorf("ui: template %s: %w", n, err)
		}
		out[n] = t
	}
	return out, nil
}

// render writes the page. An htmx request gets only the content (the
// <main> element), for swapping in place, and the menu to swap out of
// band.
func (u *UI) render(w http.ResponseWriter, r *http.Request, status int, name string, p *page) {
	t := u.pages[name]
	p.Now = u.now()
	if p.TrustDomain == "" {
		p.TrustDomain = u.cfg.TrustDomain
	}
	var buf bytes.Buffer
	root := "layout"
	if r.Header.Get("HX-Request") == "true" && r.Header.Get("HX-Boosted") == "" {
		root = "fragment"
	}
	if err := t.ExecuteTemplate(&buf, root, p); err != nil {
		u.log.Error("ui: render page", "page", name, "err", err)
		http.Error(w, "the page could not be rendered", http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.WriteHeader(status)
	w.Write(buf.Bytes())
}

func (u *UI) errorPage(w http.ResponseWriter, r *http.Request, status int, msg string) {
	u.render(w, r, status, "error", &page{Title: http.StatusText(status), FlashErr: msg})
}

// show renders an authenticated page.
func (u *UI) show(q *request, status int, name string, p *page) {
	p.CSRF, p.Actor = q.sess.CSRF, q.sess.Actor
	if p.Path == "" {
		p.Path = q.r.URL.Path
	}
	u.render(q.w, q.r, status, name, p)
}

// fail shows a page that could not load its data: the reason for the
// user when it is theirs to fix, "internal error" otherwise.
func (u *UI) fail(q *request, name string, err error) {
	if ae, ok := AsActionError(err); ok {
		u.show(q, ae.Status, "error", &page{Title: name, FlashErr: ae.Msg})
		return
	}
	u.log.Error("ui: page data", "page", name, "err", err)
	u.show(q, http.StatusInternalServerError, "error", &page{Title: name, FlashErr: "Internal error; see the server log."})
}

// overviewData summarizes the mesh.
type overviewData struct {
	Nodes, Connected, InSync int
	PolicyVersion            uint64
	Enforcing, AtVersion     int
	Entries                  int
	SVIDs                    int
	NextExpiry               *store.IssuedSVID
	CA                       CAState
	ActiveCA                 *ca.Authority
	RevokedIDs, RevokedCerts int
	RevokedTokens            int
	// Incidents in force (open or contained), at most listLimit of each
	// state counted; the identity most at risk now.
	Incidents       int
	TopRisk         float64
	TopRiskIdentity string
	Recent          []audit.Record
}

func (u *UI) overview(q *request) {
	var d overviewData
	nodes, conv, err := u.cfg.Nodes.Nodes(q.ctx)
	if err != nil {
		u.fail(q, "Overview", err)
		return
	}
	d.Nodes, d.PolicyVersion, d.Enforcing, d.AtVersion = len(nodes), conv.Version, conv.Connected, conv.AtVersion
	for _, n := range nodes {
		if n.Connected {
			d.Connected++
		}
		if n.InSync {
			d.InSync++
		}
	}
	entries, err := u.cfg.Certs.Entries(q.ctx)
	if err != nil {
		u.fail(q, "Overview", err)
		return
	}
	d.Entries = len(entries)
	svids, total, err := u.cfg.Certs.SVIDs(q.ctx, 1)
	if err != nil {
		u.fail(q, "Overview", err)
		return
	}
	d.SVIDs = total
	if len(svids) > 0 {
		d.NextExpiry = &svids[0]
	}
	if d.CA, err = u.cfg.Certs.CA(q.ctx); err != nil {
		u.fail(q, "Overview", err)
		return
	}
	for i, a := range d.CA.Authorities {
		if a.Kind == ca.KindX509 && a.State == ca.StateActive {
			d.ActiveCA = &d.CA.Authorities[i]
		}
	}
	revs, toks, err := u.cfg.Revocations.Revocations(q.ctx)
	if err != nil {
		u.fail(q, "Overview", err)
		return
	}
	d.RevokedIDs, d.RevokedCerts, d.RevokedTokens = len(revs.IDs), len(revs.Serials), len(toks)
	for _, st := range []string{detect.IncidentOpen, detect.IncidentContained} {
		incs, _, err := u.cfg.Incidents.Incidents(q.ctx, IncidentQuery{State: st, Limit: listLimit})
		if err != nil {
			u.fail(q, "Overview", err)
			return
		}
		d.Incidents += len(incs)
	}
	risks, err := u.cfg.Findings.Risks(q.ctx)
	if err != nil {
		u.fail(q, "Overview", err)
		return
	}
	for id, r := range risks {
		if r > d.TopRisk || (r == d.TopRisk && id < d.TopRiskIdentity) {
			d.TopRisk, d.TopRiskIdentity = r, id
		}
	}
	if d.Recent, _, err = u.cfg.Records.AuditRecords(q.ctx, 0, 10, nil); err != nil {
		u.fail(q, "Overview", err)
		return
	}
	u.show(q, http.StatusOK, "overview", &page{Title: "Overview", Nav: "overview", Refresh: 5 * time.Second, Data: d})
}

type nodesData struct {
	PolicyVersion        uint64
	Enforcing, AtVersion int
	Nodes                []Node
}

func (u *UI) nodes(q *request) {
	nodes, conv, err := u.cfg.Nodes.Nodes(q.ctx)
	if err != nil {
		u.fail(q, "Nodes", err)
		return
	}
	d := nodesData{PolicyVersion: conv.Version, Enforcing: conv.Connected, AtVersion: conv.AtVersion, Nodes: nodes}
	u.show(q, http.StatusOK, "nodes", &page{Title: "Nodes", Nav: "nodes", Refresh: 5 * time.Second, Data: d})
}

// maxListedSVIDs bounds the inventory's certificate table.
const maxListedSVIDs = 500

type certsData struct {
	CA      CAState
	Entries []wire.Entry
	SVIDs   []store.IssuedSVID
	Total   int
	Revoked map[string]bool
}

func (u *UI) certificates(q *request) { u.showCertificates(q, "", "") }

func (u *UI) showCertificates(q *request, flash, flashErr string) {
	var d certsData
	var err error
	if d.CA, err = u.cfg.Certs.CA(q.ctx); err != nil {
		u.fail(q, "Certificates", err)
		return
	}
	if d.Entries, err = u.cfg.Certs.Entries(q.ctx); err != nil {
		u.fail(q, "Certificates", err)
		return
	}
	if d.SVIDs, d.Total, err = u.cfg.Certs.SVIDs(q.ctx, maxListedSVIDs); err != nil {
		u.fail(q, "Certificates", err)
		return
	}
	if d.Revoked, err = u.revoked(q); err != nil {
		u.fail(q, "Certificates", err)
		return
	}
	u.show(q, http.StatusOK, "certificates", &page{Title: "Certificates", Nav: "certificates", Path: Prefix + "/certificates",
		Flash: flash, FlashErr: flashErr, Data: d})
}

type revocationsData struct {
	List   store.RevocationList
	Tokens []RevokedToken
}

func (u *UI) revocations(q *request) { u.showRevocations(q, "", "") }

func (u *UI) showRevocations(q *request, flash, flashErr string) {
	list, toks, err := u.cfg.Revocations.Revocations(q.ctx)
	if err != nil {
		u.fail(q, "Revocations", err)
		return
	}
	u.show(q, http.StatusOK, "revocations", &page{Title: "Revocations", Nav: "revocations", Path: Prefix + "/revocations",
		Flash: flash, FlashErr: flashErr, Data: revocationsData{List: list, Tokens: toks}})
}

// returnTo shows the page an action came from: the form's "return" field,
// one of a fixed set (never a URL from the request).
func (u *UI) returnTo(q *request, flash, flashErr string) {
	switch q.r.PostFormValue("return") {
	case "certificates":
		u.showCertificates(q, flash, flashErr)
	case "policies":
		u.showPolicies(q, flash, flashErr)
	default:
		u.showRevocations(q, flash, flashErr)
	}
}

// actionFailed turns an action's error into the message shown.
func (u *UI) actionFailed(q *request, what string, err error) string {
	if ae, ok := AsActionError(err); ok {
		return ae.Msg
	}
	u.log.Error("ui: action failed", "action", what, "err", err)
	return what + " failed: internal error; see the server log."
}

// revoke revokes a SPIFFE ID or a serial with one click.
func (u *UI) revoke(q *request) {
	id, serial := strings.TrimSpace(q.r.PostFormValue("spiffe_id")), strings.TrimSpace(q.r.PostFormValue("serial"))
	reason := strings.TrimSpace(q.r.PostFormValue("reason"))
	if reason == "" {
		reason = "revoked from the dashboard"
	}
	if err := u.cfg.Revocations.Revoke(q.ctx, q.actor(), id, serial, reason); err != nil {
		u.returnTo(q, "", u.actionFailed(q, "Revoke", err))
		return
	}
	what := id
	if what == "" {
		what = "certificate " + serial
	}
	u.returnTo(q, "Revoked "+what+": every sidecar refuses it from now on.", "")
}

func (u *UI) unrevoke(q *request) {
	id := strings.TrimSpace(q.r.PostFormValue("spiffe_id"))
	if err := u.cfg.Revocations.Unrevoke(q.ctx, q.actor(), id); err != nil {
		u.returnTo(q, "", u.actionFailed(q, "Unrevoke", err))
		return
	}
	u.returnTo(q, "Lifted the revocation of "+id+".", "")
}

// auditData is a page of audit records.
type auditData struct {
	Records []audit.Record
	Next    uint64
	// Kinds is the filter shown ("" for everything).
	Kinds string
}

// activityKinds are the records of the token and secrets services and of
// dashboard logins.
var activityKinds = []string{"oauth.", "secrets.", "ui."}

func (u *UI) activity(q *request) {
	u.auditPage(q, "activity", "Token and secret activity", activityKinds)
}

func (u *UI) auditLog(q *request) { u.auditPage(q, "audit", "Audit log", nil) }

func (u *UI) auditPage(q *request, nav, title string, kinds []string) {
	before, ok := u.beforeParam(q, title)
	if !ok {
		return
	}
	recs, next, err := u.cfg.Records.AuditRecords(q.ctx, before, 100, kinds)
	if err != nil {
		u.fail(q, title, err)
		return
	}
	u.show(q, http.StatusOK, "audit", &page{Title: title, Nav: nav, Data: auditData{Records: recs, Next: next, Kinds: strings.Join(kinds, " ")}})
}

// beforeParam reads the "before" query parameter of a paged list (0 when
// absent). A malformed one gets a 400 page and ok false.
func (u *UI) beforeParam(q *request, title string) (before uint64, ok bool) {
	v := q.r.URL.Query().Get("before")
	if v == "" {
		return 0, true
	}
	b, err := strconv.ParseUint(v, 10, 63)
	if err != nil {
		u.show(q, http.StatusBadRequest, "error", &page{Title: title, FlashErr: "before: want a positive number"})
		return 0, false
	}
	return b, true
}

// revoked is the set of revoked SPIFFE IDs and certificate serials.
func (u *UI) revoked(q *request) (map[string]bool, error) {
	revs, _, err := u.cfg.Revocations.Revocations(q.ctx)
	if err != nil {
		return nil, err
	}
	set := map[string]bool{}
	for _, r := range revs.IDs {
		set[r.SPIFFEID] = true
	}
	for _, r := range revs.Serials {
		set[r.Serial] = true
	}
	return set, nil
}
