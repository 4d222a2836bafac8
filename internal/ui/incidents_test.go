package ui_test

import (
	"encoding/json"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/moatless/moatless/internal/detect"
	"github.com/moatless/moatless/internal/server"
)

const (
	ordersID   = "spiffe://example.org/ns/prod/sa/orders"
	frontendID = "spiffe://example.org/ns/prod/sa/frontend"
)

func TestFindingsAndIncidentsPages(t *testing.T) {
	e := startServer(t)
	f := e.probe(e.attest(ordersID), frontendID)
	// An incident to list: quarantine (the dry run) by hand.
	inc := e.openIncident(server.IncidentRequest{Identity: frontendID, Action: detect.ActionQuarantine, Finding: f.ID})
	c := e.client()
	e.login(t, c)
	tests := []struct {
		name   string
		path   string
		status int
		want   []string // in the page
		not    []string // not in the page
	}{
		{name: "findings", path: "/ui/findings", status: 200,
			want: []string{f.ID, frontendID, "probing", "0.50", f.Summary, `data-isolate="` + frontendID + `"`, `hx-trigger="every 5s"`}},
		{name: "findings_of_the_identity", path: "/ui/findings?identity=" + url.QueryEscape(frontendID), status: 200, want: []string{f.ID}},
		{name: "findings_of_another_identity", path: "/ui/findings?identity=" + url.QueryEscape(ordersID), status: 200,
			want: []string{"No finding matches the filter"}, not: []string{`data-finding="`}},
		{name: "findings_medium_or_above", path: "/ui/findings?severity=medium", status: 200, want: []string{f.ID}},
		{name: "findings_critical_only", path: "/ui/findings?severity=critical", status: 200, not: []string{`data-finding="`}},
		{name: "findings_refresh_keeps_the_filter", path: "/ui/findings?severity=medium", status: 200,
			want: []string{`hx-get="/ui/findings?severity=medium"`}},
		{name: "unknown_severity", path: "/ui/findings?severity=extreme", status: 400, want: []string{"severity: want one of low, medium, high, critical"}},
		{name: "bad_cursor", path: "/ui/findings?before=yesterday", status: 400, want: []string{"before: want the cursor"}},
		{name: "identity_too_long", path: "/ui/findings?identity=" + strings.Repeat("a", 3000), status: 400, want: []string{"identity: too long"}},
		{name: "markup_in_the_identity_filter", path: "/ui/findings?identity=%3Cscript%3Ealert(1)%3C/script%3E", status: 200,
			not: []string{"<script>alert"}},
		{name: "finding", path: "/ui/findings/" + f.ID, status: 200,
			want: []string{f.Summary, "refusals_per_minute", "no_allow_match", `id="records"`, "0.50", "deny", ordersID, "/admin/{*}", inc.ID, `data-isolate="` + frontendID + `"`}},
		{name: "unknown_finding", path: "/ui/findings/nope", status: 404, want: []string{"There is no such finding."}},
		{name: "finding_id_too_long", path: "/ui/findings/" + strings.Repeat("f", 200), status: 404},
		{name: "incidents", path: "/ui/incidents", status: 200, want: []string{inc.ID, frontendID, "open", "by hand"}},
		{name: "incidents_released", path: "/ui/incidents?state=released", status: 200, not: []string{`data-incident="`}},
		{name: "unknown_state", path: "/ui/incidents?state=gone", status: 400, want: []string{"state: want one of open, contained, released"}},
		{name: "incident", path: "/ui/incidents/" + inc.ID, status: 200,
			want: []string{"dry run", "dry run: isolating " + frontendID, f.ID, "incident.open", "incident.step", `id="release"`, `data-isolate="` + frontendID + `"`}},
		{name: "unknown_incident", path: "/ui/incidents/nope", status: 404, want: []string{"There is no such incident."}},
		{name: "overview", path: "/ui/", status: 200, want: []string{"<b>1</b> incidents in force", "<b>0.50</b> highest risk", frontendID}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			resp, body := e.get(c, tt.path)
			if resp.StatusCode != tt.status {
				t.Fatalf("%s: %d, want %d\n%.600s", tt.path, resp.StatusCode, tt.status, body)
			}
			for _, w := range tt.want {
				if !strings.Contains(body, w) && !strings.Contains(body, htmlEscape(w)) {
					t.Errorf("%s: no %q in the page", tt.path, w)
				}
			}
			for _, n := range tt.not {
				if strings.Contains(body, n) {
					t.Errorf("%s: %q in the page", tt.path, n)
				}
			}
		})
	}
	// The forensics bundle, downloaded and audited.
	resp, body := e.get(c, "/ui/incidents/"+inc.ID+"/export")
	var b server.ForensicsBundle
	if resp.StatusCode != http.StatusOK || resp.Header.Get("Content-Disposition") != `attachment; filename="incident-`+inc.ID+`.json"` ||
		json.Unmarshal([]byte(body), &b) != nil || b.Format != "moatless-forensics/v1" || b.Incident.ID != inc.ID || len(b.Findings) == 0 {
		t.Fatalf("export: %d %v\n%.300s", resp.StatusCode, resp.Header, body)
	}
	exported := false
	for _, r := range e.auditRecords() {
		if r.Kind == "admin.call" && r.Subject == "GET "+server.PathAdminIncidents+"/"+inc.ID+"/export" {
			exported = r.Actor == "admin-token" && r.Details["via"] == "dashboard"
		}
	}
	if !exported {
		t.Error("the export is not audited as the admin's on the dashboard")
	}
	if resp, _ := e.get(c, "/ui/incidents/nope/export"); resp.StatusCode != http.StatusNotFound {
		t.Errorf("export of an unknown incident: %d", resp.StatusCode)
	}

	// Not logged in: the pages send the browser to the login page.
	for _, p := range []string{"/ui/findings", "/ui/findings/" + f.ID, "/ui/incidents", "/ui/incidents/" + inc.ID, "/ui/incidents/" + inc.ID + "/export"} {
		if resp, _ := e.get(e.client(), p); resp.StatusCode != http.StatusSeeOther || resp.Header.Get("Location") != "/ui/login" {
			t.Errorf("%s without a session: %d %s", p, resp.StatusCode, resp.Header.Get("Location"))
		}
	}
}

func htmlEscape(s string) string {
	return strings.NewReplacer("&", "&amp;", "<", "&lt;", ">", "&gt;", `"`, "&#34;", "'", "&#39;", "+", "&#43;").Replace(s)
}

// TestIsolateAndReleaseActions: the dashboard's containment actions, the
// attacks on them (each changes nothing), and the audit trail of the
// ones that pass.
func TestIsolateAndReleaseActions(t *testing.T) {
	clk := &clock{}
	e := startServerAt(t, clk)
	f := e.probe(e.attest(ordersID), frontendID)
	// Another identity's finding, to name with the wrong identity.
	other := e.probe(e.attest("spiffe://example.org/ns/prod/sa/billing"), ordersID)
	c := e.client()
	csrf := e.login(t, c)
	self := map[string]string{"Origin": e.base}

	// Sessions that are no good any more: logged out, and expired.
	loggedOut := e.client()
	loggedOutCSRF := e.login(t, loggedOut)
	u, _ := url.Parse(e.base)
	kept := loggedOut.Jar.Cookies(u)
	if resp, _ := e.form(loggedOut, "/ui/logout", url.Values{"csrf_token": {loggedOutCSRF}}, self); resp.StatusCode != http.StatusSeeOther {
		t.Fatalf("logout: %d", resp.StatusCode)
	}
	loggedOut.Jar.SetCookies(u, kept)

	isolate := func(mod func(v url.Values)) url.Values {
		v := url.Values{"identity": {frontendID}, "finding": {f.ID}, "return": {"finding"}, "confirm": {"yes"}, "csrf_token": {csrf}}
		if mod != nil {
			mod(v)
		}
		return v
	}
	tests := []struct {
		name   string
		client *http.Client
		form   url.Values
		hdr    map[string]string
		status int
		want   string
	}{
		{name: "no_csrf_token", form: isolate(func(v url.Values) { v.Del("csrf_token") }), hdr: self, status: 403, want: "no valid CSRF token"},
		{name: "wrong_csrf_token", form: isolate(func(v url.Values) { v.Set("csrf_token", strings.Repeat("A", len(csrf))) }), hdr: self, status: 403},
		{name: "cross_site_origin", form: isolate(nil), hdr: map[string]string{"Origin": "https://evil.example"}, status: 403, want: "another site"},
		{name: "no_origin", form: isolate(nil), status: 403, want: "named no Origin"},
		{name: "cross_site_fetch_without_origin", form: isolate(nil), hdr: map[string]string{"Sec-Fetch-Site": "cross-site"}, status: 403},
		{name: "logged_out_session", client: loggedOut, form: isolate(func(v url.Values) { v.Set("csrf_token", loggedOutCSRF) }), hdr: self, status: 401},
		{name: "no_session", client: e.client(), form: isolate(nil), hdr: self, status: 401},
		{name: "not_confirmed", form: isolate(func(v url.Values) { v.Del("confirm") }), hdr: self, status: 200, want: "Isolate " + frontendID + "?"},
		{name: "confirm_not_yes", form: isolate(func(v url.Values) { v.Set("confirm", "1") }), hdr: self, status: 200, want: `name="confirm" value="yes"`},
		{name: "no_identity", form: isolate(func(v url.Values) { v.Del("identity") }), hdr: self, status: 400, want: "name the identity"},
		{name: "not_a_spiffe_id", form: isolate(func(v url.Values) { v.Set("identity", "reports-client") }), hdr: self, status: 400, want: "only a SPIFFE ID"},
		{name: "malformed_spiffe_id", form: isolate(func(v url.Values) { v.Set("identity", "spiffe://example.org/a/../b") }), hdr: self, status: 400},
		{name: "the_server_itself", form: isolate(func(v url.Values) { v.Set("identity", "spiffe://example.org/moatless/server"); v.Del("finding") }),
			hdr: self, status: 400, want: "cannot be isolated"},
		{name: "unknown_finding", form: isolate(func(v url.Values) { v.Set("finding", "nope") }), hdr: self, status: 404, want: "no finding"},
		{name: "finding_about_another_identity", form: isolate(func(v url.Values) { v.Set("finding", other.ID) }), hdr: self, status: 400,
			want: "is about " + ordersID},
		{name: "reason_too_long", form: isolate(func(v url.Values) { v.Set("reason", strings.Repeat("r", 600)) }), hdr: self, status: 400, want: "longer than 512"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cl := tt.client
			if cl == nil {
				cl = c
			}
			resp, body := e.form(cl, "/ui/incidents/isolate", tt.form, tt.hdr)
			if resp.StatusCode != tt.status {
				t.Fatalf("status %d, want %d\n%.800s", resp.StatusCode, tt.status, body)
			}
			if tt.want != "" && !strings.Contains(body, tt.want) && !strings.Contains(body, htmlEscape(tt.want)) {
				t.Errorf("no %q in\n%.800s", tt.want, body)
			}
			if e.revoked(frontendID) {
				t.Fatal("the identity was revoked")
			}
			if n := e.incidentCount(); n != 0 {
				t.Fatalf("%d incidents opened", n)
			}
		})
	}

	// Confirmed, by a live session: isolated, through the incident
	// handler, audited as the admin's with the finding as the cause.
	resp, body := e.form(c, "/ui/incidents/isolate", isolate(func(v url.Values) { v.Set("reason", "probing /admin") }), self)
	if resp.StatusCode != http.StatusSeeOther || !strings.HasPrefix(resp.Header.Get("Location"), "/ui/incidents/") {
		t.Fatalf("isolate: %d %s\n%.600s", resp.StatusCode, resp.Header.Get("Location"), body)
	}
	incPath := strings.TrimSuffix(resp.Header.Get("Location"), "?done=isolated")
	incID := strings.TrimPrefix(incPath, "/ui/incidents/")
	if !e.revoked(frontendID) {
		t.Fatal("not revoked after a confirmed isolate")
	}
	inc := e.incident(incID)
	if inc.State != detect.IncidentContained || !inc.Revoked || len(inc.Steps) != 1 || inc.Steps[0].Actor != "admin-token" || inc.Steps[0].FindingID != f.ID ||
		len(inc.Findings) == 0 || inc.Findings[0] != f.ID {
		t.Fatalf("incident after isolate: %+v", inc)
	}
	assertAudited(t, e, incID, f.ID, "incident.open", "revocation.create", "incident.step")
	_, page := e.get(c, resp.Header.Get("Location"))
	for _, w := range []string{"Isolated: the identity is revoked", `id="isolated"`, "revocation.create", "probing /admin"} {
		if !strings.Contains(page, w) {
			t.Errorf("incident page after isolate: no %q", w)
		}
	}
	// htmx: the incident page in place, with its URL to show.
	resp, body = e.form(c, "/ui/incidents/isolate", isolate(nil), map[string]string{"Origin": e.base, "HX-Request": "true"})
	if resp.StatusCode != http.StatusOK || resp.Header.Get("HX-Push-Url") != incPath || !strings.Contains(body, `id="content"`) {
		t.Fatalf("isolate again via htmx: %d %q\n%.400s", resp.StatusCode, resp.Header.Get("HX-Push-Url"), body)
	}

	// Release: the same attacks change nothing.
	rel := "/ui/incidents/" + incID + "/release"
	for _, tt := range []struct {
		name   string
		client *http.Client
		form   url.Values
		hdr    map[string]string
		status int
	}{
		{name: "no_csrf_token", form: url.Values{"confirm": {"yes"}}, hdr: self, status: 403},
		{name: "cross_site_origin", form: url.Values{"confirm": {"yes"}, "csrf_token": {csrf}}, hdr: map[string]string{"Origin": "https://evil.example"}, status: 403},
		{name: "logged_out_session", client: loggedOut, form: url.Values{"confirm": {"yes"}, "csrf_token": {loggedOutCSRF}}, hdr: self, status: 401},
		{name: "not_confirmed", form: url.Values{"csrf_token": {csrf}}, hdr: self, status: 200},
		{name: "unknown_incident", form: url.Values{"confirm": {"yes"}, "csrf_token": {csrf}}, hdr: self, status: 404},
	} {
		t.Run("release_"+tt.name, func(t *testing.T) {
			cl := tt.client
			if cl == nil {
				cl = c
			}
			path := rel
			if tt.name == "unknown_incident" {
				path = "/ui/incidents/nope/release"
			}
			resp, body := e.form(cl, path, tt.form, tt.hdr)
			if resp.StatusCode != tt.status {
				t.Fatalf("status %d, want %d\n%.600s", resp.StatusCode, tt.status, body)
			}
			if !e.revoked(frontendID) {
				t.Fatal("released")
			}
		})
	}
	resp, _ = e.form(c, rel, url.Values{"confirm": {"yes"}, "csrf_token": {csrf}, "reason": {"false positive"}}, self)
	if resp.StatusCode != http.StatusSeeOther || e.revoked(frontendID) {
		t.Fatalf("release: %d, revoked %v", resp.StatusCode, e.revoked(frontendID))
	}
	assertAudited(t, e, incID, f.ID, "incident.release", "revocation.delete")
	resp, body = e.form(c, rel, url.Values{"confirm": {"yes"}, "csrf_token": {csrf}}, self)
	if resp.StatusCode != http.StatusConflict || !strings.Contains(body, "was released already") {
		t.Fatalf("second release: %d\n%.600s", resp.StatusCode, body)
	}

	// Isolating from the incident's page: a refusal is shown there.
	resp, body = e.form(c, "/ui/incidents/isolate", isolate(func(v url.Values) {
		v.Set("return", "incident")
		v.Set("incident", incID)
		v.Set("finding", other.ID)
	}), self)
	if resp.StatusCode != http.StatusBadRequest || !strings.Contains(body, "Incident "+incID) || !strings.Contains(body, "is about "+ordersID) || e.revoked(frontendID) {
		t.Fatalf("refused isolate from the incident page: %d\n%.600s", resp.StatusCode, body)
	}

	// An expired session: the clock passes the session's lifetime.
	clk.Advance(31 * time.Minute)
	resp, _ = e.form(c, "/ui/incidents/isolate", isolate(nil), self)
	if resp.StatusCode != http.StatusUnauthorized || e.revoked(frontendID) {
		t.Fatalf("isolate with an expired session: %d, revoked %v", resp.StatusCode, e.revoked(frontendID))
	}
}

// TestConfirmBlocks: a block-pair (opened through the admin API, as a
// playbook would) kept from the dashboard.
func TestConfirmBlocks(t *testing.T) {
	e := startServer(t)
	f := e.probe(e.attest(ordersID), frontendID)
	inc := e.openIncident(server.IncidentRequest{Identity: frontendID, Action: detect.ActionBlockPair, Destination: ordersID, Finding: f.ID})
	if len(inc.Blocks) != 1 || inc.Blocks[0].ExpiresAt.IsZero() {
		t.Fatalf("blocks: %+v", inc.Blocks)
	}
	c := e.client()
	csrf := e.login(t, c)
	self := map[string]string{"Origin": e.base}
	_, page := e.get(c, "/ui/incidents/"+inc.ID)
	if !strings.Contains(page, `id="confirm-blocks"`) || !strings.Contains(page, "then lifted unless confirmed") {
		t.Fatalf("incident page offers no confirmation of the block:\n%s", page)
	}
	path := "/ui/incidents/" + inc.ID + "/confirm"
	if resp, body := e.form(c, path, url.Values{"confirm": {"yes"}}, self); resp.StatusCode != http.StatusForbidden {
		t.Fatalf("without CSRF token: %d\n%.400s", resp.StatusCode, body)
	}
	if resp, body := e.form(c, path, url.Values{"csrf_token": {csrf}}, self); resp.StatusCode != http.StatusOK || !strings.Contains(body, "stays blocked until the incident is released") {
		t.Fatalf("first click: %d\n%.400s", resp.StatusCode, body)
	}
	inc = e.incident(inc.ID)
	if inc.Blocks[0].ExpiresAt.IsZero() {
		t.Fatal("confirmed without confirmation")
	}
	if resp, _ := e.form(c, path, url.Values{"csrf_token": {csrf}, "confirm": {"yes"}}, self); resp.StatusCode != http.StatusSeeOther {
		t.Fatalf("confirm: %d", resp.StatusCode)
	}
	inc = e.incident(inc.ID)
	if !inc.Blocks[0].ExpiresAt.IsZero() || inc.Steps[len(inc.Steps)-1].Action != "confirm" || inc.Steps[len(inc.Steps)-1].Actor != "admin-token" {
		t.Fatalf("after confirm: %+v", inc)
	}
	assertAudited(t, e, inc.ID, f.ID, "incident.confirm")
	// Release lifts the block; then there is none to confirm.
	if resp, _ := e.form(c, "/ui/incidents/"+inc.ID+"/release", url.Values{"csrf_token": {csrf}, "confirm": {"yes"}}, self); resp.StatusCode != http.StatusSeeOther {
		t.Fatalf("release: %d", resp.StatusCode)
	}
	if resp, body := e.form(c, path, url.Values{"csrf_token": {csrf}, "confirm": {"yes"}}, self); resp.StatusCode != http.StatusBadRequest || !strings.Contains(body, "no block in force") {
		t.Fatalf("confirm after release: %d\n%.400s", resp.StatusCode, body)
	}
	var blocks server.Page[struct{ Source string }]
	e.admin("GET", server.PathAdminBlocks, nil, &blocks)
	if len(blocks.Items) != 0 {
		t.Fatalf("blocks after release: %+v", blocks.Items)
	}
}

// assertAudited checks that each kind has a record naming the incident,
// made by the admin on the dashboard, with the finding as the cause.
func assertAudited(t *testing.T, e *env, incID, findingID string, kinds ...string) {
	t.Helper()
	recs := e.auditRecords()
	for _, k := range kinds {
		ok := false
		for _, r := range recs {
			if r.Kind == k && r.Details["incident"] == incID {
				ok = r.Actor == "admin-token" && r.Details["via"] == "dashboard" && r.Details["session"] != "" && r.Details["finding"] == findingID
				if !ok {
					t.Errorf("%s record: %+v", k, r)
				}
				break
			}
		}
		if !ok {
			t.Errorf("no %s record of incident %s by admin-token via the dashboard with finding %s", k, incID, findingID)
		}
	}
}

// openIncident acts by hand through the admin API, as the CLI does, and
// returns the new incident.
func (e *env) openIncident(req server.IncidentRequest) detect.Incident {
	e.t.Helper()
	var inc detect.Incident
	if st := e.admin("POST", server.PathAdminIncidents, req, &inc); st != http.StatusCreated {
		e.t.Fatalf("%s %s by hand: %d", req.Action, req.Identity, st)
	}
	return inc
}

// incident reads an incident with the admin API (into a fresh value:
// decoding into a used one keeps fields the JSON omits).
func (e *env) incident(id string) detect.Incident {
	e.t.Helper()
	var inc detect.Incident
	if st := e.admin("GET", server.PathAdminIncidents+"/"+id, nil, &inc); st != http.StatusOK {
		e.t.Fatalf("incident %s: %d", id, st)
	}
	return inc
}

// incidentCount is how many incidents the server has.
func (e *env) incidentCount() int {
	e.t.Helper()
	var p server.Page[detect.Incident]
	if st := e.admin("GET", server.PathAdminIncidents, nil, &p); st != http.StatusOK {
		e.t.Fatalf("list incidents: %d", st)
	}
	return len(p.Items)
}

// TestIncidentPathAttacks: the incident actions' paths, bent. None of
// them may act (the identity stays unrevoked, no incident is released).
func TestIncidentPathAttacks(t *testing.T) {
	e := startServer(t)
	f := e.probe(e.attest(ordersID), frontendID)
	inc := e.openIncident(server.IncidentRequest{Identity: frontendID, Action: detect.ActionIsolate, Finding: f.ID})
	c := e.client()
	csrf := e.login(t, c)
	form := map[string]string{"Origin": e.base, "Content-Type": "application/x-www-form-urlencoded", "X-CSRF-Token": csrf}
	confirm := "confirm=yes"
	tests := []struct {
		name, method, path, body string
		hdr                      map[string]string
		want                     int
	}{
		// The mux redirects to the clean path (307 keeps the method): the
		// action runs only there, with every check.
		{name: "dot_segments_to_release", method: "POST", path: "/ui/incidents/x/../" + inc.ID + "/release", body: confirm, hdr: form, want: http.StatusTemporaryRedirect},
		{name: "encoded_dot_segments", method: "POST", path: "/ui/incidents/%2e%2e/incidents/" + inc.ID + "/release", body: confirm, hdr: form, want: http.StatusNotFound},
		{name: "encoded_slash_in_the_id", method: "POST", path: "/ui/incidents/" + inc.ID + "%2Frelease/release", body: confirm, hdr: form, want: http.StatusNotFound},
		{name: "id_too_long", method: "POST", path: "/ui/incidents/" + strings.Repeat("a", 300) + "/release", body: confirm, hdr: form, want: http.StatusNotFound},
		{name: "release_by_get", method: "GET", path: "/ui/incidents/" + inc.ID + "/release?confirm=yes&csrf_token=" + csrf, want: http.StatusNotFound},
		{name: "release_by_put", method: "PUT", path: "/ui/incidents/" + inc.ID + "/release", body: confirm, hdr: form, want: http.StatusNotFound},
		{name: "trailing_slash", method: "POST", path: "/ui/incidents/" + inc.ID + "/release/", body: confirm, hdr: form, want: http.StatusNotFound},
		{name: "underscore_csrf_header", method: "POST", path: "/ui/incidents/" + inc.ID + "/release", body: confirm,
			hdr: map[string]string{"Origin": e.base, "Content-Type": "application/x-www-form-urlencoded", "X_CSRF_Token": csrf}, want: http.StatusForbidden},
		// Only a form's confirm=yes confirms: these get the confirmation page.
		{name: "json_body", method: "POST", path: "/ui/incidents/" + inc.ID + "/release", body: `{"confirm":"yes"}`,
			hdr: map[string]string{"Origin": e.base, "Content-Type": "application/json", "X-CSRF-Token": csrf}, want: http.StatusOK},
		{name: "confirm_in_query_only", method: "POST", path: "/ui/incidents/" + inc.ID + "/release?confirm=yes", body: "", hdr: form, want: http.StatusOK},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			resp, body := e.raw(c, tt.method, tt.path, tt.body, tt.hdr)
			if resp.StatusCode != tt.want {
				t.Fatalf("%s %s: %d, want %d\n%.400s", tt.method, tt.path, resp.StatusCode, tt.want, body)
			}
			if got := e.incident(inc.ID); got.State == detect.IncidentReleased || !e.revoked(frontendID) {
				t.Fatalf("%s %s released the incident", tt.method, tt.path)
			}
		})
	}
}

// TestConfirmHeldSteps: one node's claims about frontend open an incident
// whose isolate step the playbook holds (uncorroborated); the page says
// so, and an admin's confirmation runs it.
func TestConfirmHeldSteps(t *testing.T) {
	e := startServer(t)
	const pb = "apiVersion: moatless.io/v1alpha1\nkind: Playbook\nmetadata: {name: contain}\nspec:\n  trigger: {risk: 0.5}\n  steps: [{action: notify}, {action: isolate}]\n"
	if st := e.admin("POST", server.PathAdminPlaybooks, server.PlaybookApplyRequest{Files: []server.PolicyFile{{Name: "c.yaml", Content: pb}}}, nil); st != http.StatusOK {
		t.Fatalf("apply playbook: %d", st)
	}
	e.probe(e.attest(ordersID), frontendID)
	var page server.Page[detect.Incident]
	e.admin("GET", server.PathAdminIncidents, nil, &page)
	if len(page.Items) != 1 || !page.Items[0].Uncorroborated() || e.revoked(frontendID) {
		t.Fatalf("incidents: %+v", page.Items)
	}
	inc := page.Items[0]
	c := e.client()
	csrf := e.login(t, c)
	self := map[string]string{"Origin": e.base}
	_, html := e.get(c, "/ui/incidents/"+inc.ID)
	for _, want := range []string{`id="uncorroborated"`, "the playbook holds isolate", `id="corroboration"`, "reported only by " + ordersID, "Confirm: run the held steps"} {
		if !strings.Contains(html, want) {
			t.Fatalf("incident page lacks %q:\n%s", want, html)
		}
	}
	path := "/ui/incidents/" + inc.ID + "/confirm"
	if resp, body := e.form(c, path, url.Values{"csrf_token": {csrf}}, self); resp.StatusCode != http.StatusOK || !strings.Contains(body, "Runs isolate against "+frontendID) {
		t.Fatalf("first click: %d\n%.600s", resp.StatusCode, body)
	}
	if e.revoked(frontendID) {
		t.Fatal("isolated without confirmation")
	}
	if resp, _ := e.form(c, path, url.Values{"csrf_token": {csrf}, "confirm": {"yes"}}, self); resp.StatusCode != http.StatusSeeOther {
		t.Fatalf("confirm: %d", resp.StatusCode)
	}
	if inc = e.incident(inc.ID); inc.Uncorroborated() || !inc.Revoked || !e.revoked(frontendID) {
		t.Fatalf("after confirm: %+v", inc)
	}
}

const paymentsID = "spiffe://example.org/ns/prod/sa/payments"

// TestConfirmHeldDestinations: frontend, a node an attacker holds, claims
// payments pulled 128 MiB from it (uncorroborated), and payments' own
// node reports it probing itself (corroborated: its own node's word). The
// playbook's block-pair then blocks nothing and holds payments →
// frontend, on frontend's word alone: the incident's one pending action.
// The page lists the held destination and offers the confirmation, whose
// page says what it blocks; confirming blocks it. Fails on the parent
// commit: there, the page named no held destination and offered no
// confirmation, and a confirm from the dashboard was refused as having
// nothing to confirm (only "moatless incident confirm" could).
func TestConfirmHeldDestinations(t *testing.T) {
	e := startServer(t)
	const pb = "apiVersion: moatless.io/v1alpha1\nkind: Playbook\nmetadata: {name: pair}\nspec:\n  trigger: {risk: 0.5}\n  steps: [{action: notify}, {action: block-pair, duration: 1h}]\n"
	if st := e.admin("POST", server.PathAdminPlaybooks, server.PlaybookApplyRequest{Files: []server.PolicyFile{{Name: "p.yaml", Content: pb}}}, nil); st != http.StatusOK {
		t.Fatalf("apply playbook: %d", st)
	}
	payments := e.attest(paymentsID)
	e.pulledBy(e.attest(frontendID), paymentsID) // the lie: the incident opens, block-pair held
	e.probe(payments, paymentsID)                // its own node's word: corroborated, names no other destination
	var list server.Page[detect.Incident]
	e.admin("GET", server.PathAdminIncidents, nil, &list)
	if len(list.Items) != 1 {
		t.Fatalf("incidents: %+v", list.Items)
	}
	inc := list.Items[0]
	if inc.Uncorroborated() || len(inc.Blocks) != 0 || !slices.Equal(inc.HeldDestinations, []string{frontendID}) {
		t.Fatalf("want an incident whose only pending action is the held destination %s: %+v", frontendID, inc)
	}
	c := e.client()
	csrf := e.login(t, c)
	self := map[string]string{"Origin": e.base}
	_, html := e.get(c, "/ui/incidents/"+inc.ID)
	for _, want := range []string{`id="held-destinations"`, "<code>" + frontendID + "</code>", `id="confirm-blocks"`, "Confirm: block the held destinations"} {
		if !strings.Contains(html, want) {
			t.Fatalf("incident page lacks %q:\n%s", want, html)
		}
	}
	if _, html := e.get(c, "/ui/incidents"); !strings.Contains(html, "held → <code>"+frontendID+"</code>") {
		t.Fatalf("incident list does not show the held destination:\n%s", html)
	}
	path := "/ui/incidents/" + inc.ID + "/confirm"
	resp, body := e.form(c, path, url.Values{"csrf_token": {csrf}}, self)
	if resp.StatusCode != http.StatusOK || !strings.Contains(body, paymentsID+" → "+frontendID+" is blocked until the incident is released") {
		t.Fatalf("first click: %d\n%.800s", resp.StatusCode, body)
	}
	if got := e.incident(inc.ID); len(got.Blocks) != 0 {
		t.Fatalf("blocked without confirmation: %+v", got.Blocks)
	}
	if resp, _ := e.form(c, path, url.Values{"csrf_token": {csrf}, "confirm": {"yes"}}, self); resp.StatusCode != http.StatusSeeOther {
		t.Fatalf("confirm: %d", resp.StatusCode)
	}
	inc = e.incident(inc.ID)
	if len(inc.HeldDestinations) != 0 || len(inc.Blocks) != 1 || inc.Blocks[0].Destination != frontendID || !inc.Blocks[0].ExpiresAt.IsZero() ||
		inc.State != detect.IncidentContained {
		t.Fatalf("after confirm: %+v", inc)
	}
	if _, html := e.get(c, "/ui/incidents/"+inc.ID); strings.Contains(html, `id="held-destinations"`) || strings.Contains(html, `id="confirm-blocks"`) {
		t.Fatalf("after confirm the page still lists held destinations or offers a confirmation:\n%s", html)
	}
}
