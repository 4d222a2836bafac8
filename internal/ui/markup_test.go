package ui_test

import (
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	"golang.org/x/net/html"

	"github.com/moatless/moatless/internal/audit"
	"github.com/moatless/moatless/internal/server"
	"github.com/moatless/moatless/internal/wire"
)

// hostile are strings an attacker plants where the dashboard shows them:
// breaking out of text, of quoted and unquoted attributes, of the SVG
// graph's <title> (HTML parses it as RCDATA, SVG as an element), of a
// URL (javascript:), and htmx's own attributes.
var hostile = []string{
	`"><script>alert(1)</script>`,
	`' onmouseover='alert(1)`,
	`x onfocus=alert(1) autofocus `,
	`</title></svg><img src=x onerror=alert(1)>`,
	`javascript:alert(1)`,
	`<a hx-get="//evil.example" hx-trigger="load">x</a>`,
	`]]><svg onload=alert(1)>`,
}

// TestStoredMarkupIsInert: what sidecars report (callers, paths, policy
// and rule names, reasons), what becomes a finding, a revocation reason
// and the audit records of them, full of markup, is shown on every page
// as text: the parsed page has no script but htmx, no event handler
// attribute, no link, form or htmx request leaving the dashboard, no
// element html/template did not write. html/template escapes by context
// (the CSP forbids inline script besides); this keeps it so as
// templates change.
func TestStoredMarkupIsInert(t *testing.T) {
	e := startServer(t)
	reporter := e.attest(ordersID)
	for i, h := range hostile {
		caller := h
		if i%2 == 0 {
			caller = "spiffe://example.org/ns/prod/sa/" + h
		}
		e.reportDecision(audit.KindDecisionDeny, caller, ordersID, h, "/"+h)
		e.reportDecision(audit.KindDecisionAudit, ordersID, caller, h, h)
	}
	// A finding from reported traffic whose path and caller carry markup.
	now := time.Now().UTC()
	var edges []wire.EdgeRecord
	for _, h := range hostile[:3] {
		edges = append(edges, wire.EdgeRecord{Direction: "inbound", Source: frontendID, Port: 8080, Protocol: "http", Method: "GET",
			Path: "/" + h, Decision: "deny", Reason: "no_allow_match", Status: 4, Requests: 40, RespBytes: 4000})
	}
	rep := wire.RecordReport{Component: "sidecar", Namespace: "prod", Ports: []int{8080}, Start: now.Add(-5 * time.Second), End: now, Edges: edges}
	if st, body := e.agent(reporter.http, "POST", wire.PathRecords, rep); st != http.StatusNoContent {
		t.Fatalf("report records: %d %s", st, body)
	}
	e.createEntry(frontendID)
	if st := e.admin("POST", server.PathAdminRevocations, map[string]string{"spiffe_id": frontendID, "reason": strings.Join(hostile, " ")}, nil); st >= 300 {
		t.Fatalf("revoke: %d", st)
	}
	c := e.client()
	e.login(t, c)
	pages := []string{"/ui/", "/ui/graph", "/ui/decisions", "/ui/audit", "/ui/activity", "/ui/findings", "/ui/incidents",
		"/ui/revocations", "/ui/certificates", "/ui/nodes", "/ui/policies"}
	for _, h := range hostile {
		pages = append(pages, "/ui/decisions?id="+url.QueryEscape(h), "/ui/findings?identity="+url.QueryEscape(h),
			"/ui/incidents?identity="+url.QueryEscape(h), "/ui/"+url.PathEscape(h))
	}
	_, list := e.get(c, "/ui/findings?identity="+url.QueryEscape(frontendID))
	if i := strings.Index(list, `data-finding="`); i >= 0 {
		id := list[i+len(`data-finding="`):]
		pages = append(pages, "/ui/findings/"+id[:strings.IndexByte(id, '"')])
	} else {
		t.Fatalf("no finding about %s from the reported traffic:\n%s", frontendID, list)
	}
	for _, p := range pages {
		resp, body := e.get(c, p)
		if resp.StatusCode >= 500 {
			t.Fatalf("%s: %d", p, resp.StatusCode)
		}
		if why := activeMarkup(body); why != "" {
			t.Errorf("%s: %s", p, why)
		}
	}
}

// activeMarkup parses page as a browser does and says what in it could
// run code or leave the dashboard ("" when nothing).
func activeMarkup(page string) string {
	doc, err := html.Parse(strings.NewReader(page))
	if err != nil {
		return "does not parse: " + err.Error()
	}
	var why string
	var walk func(n *html.Node)
	walk = func(n *html.Node) {
		if why != "" {
			return
		}
		if n.Type == html.ElementNode {
			why = activeElement(n)
		}
		for c := n.FirstChild; c != nil; c = c.NextSibling {
			walk(c)
		}
	}
	walk(doc)
	return why
}

// urlAttrs are the attributes that name a URL a browser or htmx loads.
var urlAttrs = map[string]bool{"href": true, "src": true, "action": true, "formaction": true, "xlink:href": true,
	"hx-get": true, "hx-post": true, "hx-put": true, "hx-delete": true, "hx-patch": true, "hx-push-url": true}

func activeElement(n *html.Node) string {
	switch n.Data {
	case "script":
		if n.FirstChild != nil || len(n.Attr) != 2 || attr(n, "src") != "/ui/static/htmx.min.js" {
			return "a script: " + render(n)
		}
	case "iframe", "frame", "object", "embed", "img", "image", "style", "base", "foreignobject", "animate", "set", "use":
		return "a <" + n.Data + "> element: " + render(n)
	}
	for _, a := range n.Attr {
		k := strings.ToLower(a.Key)
		switch {
		case strings.HasPrefix(k, "on"), strings.HasPrefix(k, "hx-on"), k == "style", k == "autofocus",
			k == "hx-vals" || k == "hx-vars" || k == "hx-trigger" && strings.Contains(a.Val, "load"):
			return "attribute " + a.Key + ": " + render(n)
		case urlAttrs[k]:
			if !sameDashboard(a.Val) {
				return "URL " + a.Key + "=" + a.Val + ": " + render(n)
			}
		}
	}
	return ""
}

// sameDashboard: a URL that stays on the dashboard (a path under /ui/,
// a fragment or a query of the page itself).
func sameDashboard(v string) bool {
	return v == "/ui/" || strings.HasPrefix(v, "/ui/") || strings.HasPrefix(v, "#") || strings.HasPrefix(v, "?") ||
		strings.HasPrefix(v, "url(#") // SVG's marker-end
}

func attr(n *html.Node, key string) string {
	for _, a := range n.Attr {
		if a.Key == key {
			return a.Val
		}
	}
	return ""
}

func render(n *html.Node) string {
	var b strings.Builder
	html.Render(&b, n)
	return b.String()[:min(b.Len(), 300)]
}
