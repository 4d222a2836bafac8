package ui_test

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	"github.com/moatless/moatless/internal/audit"
	"github.com/moatless/moatless/internal/config"
)

// browser is a headless Chromium driven over the DevTools protocol. It
// keeps a screenshot of every page it visited; when the test fails they
// are written to a directory that outlives the test, named in the log.
type browser struct {
	t   *testing.T
	ctx context.Context

	mu       sync.Mutex
	console  []string // console messages and browser log entries
	shots    []shot
	shotsDir string
}

// stepTimeout bounds each browser step.
const stepTimeout = 20 * time.Second

type shot struct {
	name string
	png  []byte
}

// chromiumPath finds Debian's chromium. Outside CI the test is skipped
// without it; under CI=true its absence is a failure.
func chromiumPath(t *testing.T) string {
	for _, name := range []string{"chromium", "chromium-browser"} {
		if p, err := exec.LookPath(name); err == nil {
			return p
		}
	}
	if os.Getenv("CI") == "true" {
		t.Fatal("the Debian package chromium is not installed (.ci/run installs it)")
	}
	t.Skip("skipping: the Debian package chromium is not installed (apt-get install chromium)")
	return ""
}

func newBrowser(t *testing.T) *browser {
	path := chromiumPath(t)
	profile := t.TempDir()
	opts := []chromedp.ExecAllocatorOption{
		chromedp.ExecPath(path),
		chromedp.UserDataDir(profile),
		chromedp.Headless,
		chromedp.NoSandbox,
		chromedp.DisableGPU,
		chromedp.NoFirstRun,
		chromedp.NoDefaultBrowserCheck,
		// Without these Chromium reaches out to the network on its own
		// (updates, sync, safe browsing, field trials): on this closed
		// network that is a flood of refused connections.
		chromedp.Flag("disable-quic", true),
		chromedp.Flag("disable-background-networking", true),
		chromedp.Flag("disable-component-update", true),
		chromedp.Flag("disable-sync", true),
		chromedp.Flag("disable-default-apps", true),
		chromedp.Flag("disable-domain-reliability", true),
		chromedp.Flag("disable-client-side-phishing-detection", true),
		chromedp.Flag("metrics-recording-only", true),
		chromedp.Flag("no-pings", true),
		chromedp.Flag("disable-features", "Translate,OptimizationHints,MediaRouter,DialMediaRouteProvider,AutofillServerCommunication,CertificateTransparencyComponentUpdater"),
		// The server's certificate chains to the test's own CA, which
		// Chromium does not know; the connection is still TLS, so Secure
		// cookies and the page's CSP behave as in production.
		chromedp.Flag("ignore-certificate-errors", true),
		chromedp.WindowSize(1400, 1000),
	}
	actx, cancelA := chromedp.NewExecAllocator(context.Background(), opts...)
	ctx, cancelB := chromedp.NewContext(actx)
	ctx, cancelT := context.WithTimeout(ctx, 3*time.Minute)
	b := &browser{t: t, ctx: ctx}
	if err := chromedp.Do(ctx); err != nil { // starts the browser and its tab
		cancelT()
		cancelB()
		cancelA()
		t.Fatalf("start chromium: %v", err)
	}
	// Keep every console message and browser log entry (CSP violations
	// are browser log entries of source "security").
	messages := chromedp.Console(ctx)
	go func() {
		for m, err := range messages {
			if err != nil {
				return
			}
			b.mu.Lock()
			b.console = append(b.console, fmt.Sprintf("[%s] %s (%s)", m.Source, m.String(), m.URL))
			b.mu.Unlock()
		}
	}()
	t.Cleanup(func() {
		// MOATLESS_UI_SCREENSHOTS=1 keeps them from a passing run too.
		if t.Failed() || os.Getenv("MOATLESS_UI_SCREENSHOTS") != "" {
			b.saveShots()
		}
		cancelT()
		cancelB()
		cancelA()
	})
	return b
}

// run runs actions; on error it takes a screenshot and fails the test.
func (b *browser) run(what string, actions ...chromedp.Action[chromedp.Void]) {
	b.t.Helper()
	ctx, cancel := context.WithTimeout(b.ctx, stepTimeout)
	defer cancel()
	if err := chromedp.Do(ctx, actions...); err != nil {
		b.snap("failed-" + what)
		b.t.Fatalf("%s: %v\nbrowser log:\n%s", what, err, strings.Join(b.log(), "\n"))
	}
}

// visit loads a page, waits for its content and keeps a screenshot.
func (b *browser) visit(name, url, wait string) {
	b.t.Helper()
	b.run("visit "+name, chromedp.Navigate(url), chromedp.WaitVisible(chromedp.CSS(wait)))
	b.snap(name)
}

// snap keeps a screenshot of the page as it is now.
func (b *browser) snap(name string) {
	ctx, cancel := context.WithTimeout(b.ctx, 10*time.Second)
	defer cancel()
	if png, err := chromedp.Run(ctx, chromedp.FullScreenshot(100)); err == nil {
		b.mu.Lock()
		b.shots = append(b.shots, shot{name: name, png: png})
		b.mu.Unlock()
	}
}

func (b *browser) saveShots() {
	dir, err := os.MkdirTemp("", "moatless-ui-"+strings.ReplaceAll(b.t.Name(), "/", "_")+"-")
	if err != nil {
		b.t.Logf("screenshots: %v", err)
		return
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	for i, s := range b.shots {
		os.WriteFile(filepath.Join(dir, fmt.Sprintf("%02d-%s.png", i, strings.ReplaceAll(s.name, " ", "_"))), s.png, 0o644)
	}
	b.t.Logf("screenshots of every page visited: %s", dir)
}

func (b *browser) log() []string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return append([]string(nil), b.console...)
}

// cspViolations are the browser's reports of content the page's CSP
// blocked.
func (b *browser) cspViolations() []string {
	var out []string
	for _, l := range b.log() {
		if strings.Contains(l, "Content Security Policy") || strings.Contains(l, "Content-Security-Policy") {
			out = append(out, l)
		}
	}
	return out
}

func (b *browser) text(sel string) string {
	b.t.Helper()
	return get(b, "read "+sel, chromedp.Text(chromedp.CSS(sel)))
}

// get runs an action that returns a value; on error it fails the test.
func get[T any](b *browser, what string, a chromedp.Action[T]) T {
	b.t.Helper()
	ctx, cancel := context.WithTimeout(b.ctx, stepTimeout)
	defer cancel()
	v, err := chromedp.Run(ctx, a)
	if err != nil {
		b.snap("failed-" + what)
		b.t.Fatalf("%s: %v\nbrowser log:\n%s", what, err, strings.Join(b.log(), "\n"))
	}
	return v
}

func TestDashboardInChromium(t *testing.T) {
	b := newBrowser(t)
	e := startServer(t)
	const reports = "spiffe://example.org/ns/prod/sa/reports"
	e.createEntry(reports)
	const orders = "spiffe://example.org/ns/prod/sa/orders"
	e.createEntry(orders)
	const web = "spiffe://example.org/ns/prod/sa/web"
	e.reportDecision(audit.KindDecisionAudit, web, orders, "prod/audit-orders", "/orders")
	e.reportDecision(audit.KindDecisionDeny, reports, orders, "prod/orders-deny", "/orders/export")

	// Not logged in: every page sends the browser to the login page.
	b.visit("login", e.base+"/ui/nodes", "#token")

	// Log in with the admin token.
	b.run("log in",
		chromedp.SendKeys(chromedp.CSS("#token"), e.token),
		chromedp.Click(chromedp.CSS("#login")),
		chromedp.WaitVisible(chromedp.CSS("#actor")),
	)
	if got := b.text("#actor"); got != "admin-token" {
		t.Fatalf("logged in as %q", got)
	}
	if !get(b, "htmx", chromedp.Evaluate[bool](`typeof htmx === "object" && htmx.version.startsWith("2.")`)) {
		t.Fatal("htmx did not load")
	}

	// Every page renders.
	pages := []struct{ name, path, wait string }{
		{"overview", "/ui/", ".cards"},
		{"graph", "/ui/graph", "#graph"},
		{"decisions", "/ui/decisions", "#decisions"},
		{"nodes", "/ui/nodes", "#nodes"},
		{"certificates", "/ui/certificates", "#entries"},
		{"policies", "/ui/policies", "#versions"},
		{"revocations", "/ui/revocations", "#revoked-ids"},
		{"findings", "/ui/findings", "#findings"},
		{"incidents", "/ui/incidents", "#incidents"},
		{"activity", "/ui/activity", "#audit"},
		{"audit", "/ui/audit", "#audit"},
	}
	for _, p := range pages {
		b.visit(p.name, e.base+p.path, p.wait)
	}
	if !strings.Contains(b.text("#audit"), "ui.login") {
		t.Error("the audit page does not show the login")
	}

	// The graph draws both edges, the denied one as denied.
	b.visit("graph", e.base+"/ui/graph", "#graph")
	for _, c := range []struct{ from, to, class string }{{web, orders, "allowed"}, {reports, orders, "denied"}} {
		sel := `g.edge-g[data-from="` + c.from + `"][data-to="` + c.to + `"] path.edge.` + c.class
		if n := get(b, "edge "+c.from, chromedp.Nodes(chromedp.CSS(sel), chromedp.AtLeast(0))); len(n) != 1 {
			t.Errorf("graph: no %s edge %s -> %s", c.class, c.from, c.to)
		}
	}
	if got := b.text("#edges"); !strings.Contains(got, "prod/orders-deny") {
		t.Errorf("edge table names no deciding policy:\n%s", got)
	}
	// A click on a node lists that identity's decisions only.
	b.run("click a node", chromedp.Click(chromedp.CSS(`g.node[data-id="`+web+`"] rect`)), chromedp.WaitVisible(chromedp.CSS("#filter")))
	b.snap("decisions of web")
	if got := b.text("#decisions"); !strings.Contains(got, "/orders") || strings.Contains(got, "/orders/export") {
		t.Errorf("decisions of %s:\n%s", web, got)
	}
	b.visit("decisions", e.base+"/ui/decisions", "#decisions")
	if got := b.text("#decisions"); !strings.Contains(got, "/orders/export") || !strings.Contains(got, "prod/audit-orders") ||
		!strings.Contains(got, "4bf92f3577b34da6a3ce929d0e0e4736") {
		t.Errorf("decision log:\n%s", got)
	}

	// Revoke with one click on the inventory: htmx swaps the content in
	// place (the URL stays), and the server has the revocation.
	b.visit("certificates", e.base+"/ui/certificates", "#entries")
	b.run("revoke", chromedp.Click(chromedp.CSS(`button[data-revoke="`+reports+`"]`)), chromedp.WaitVisible(chromedp.CSS("#flash")))
	b.snap("revoked")
	if got := b.text("#flash"); !strings.Contains(got, "Revoked "+reports) {
		t.Fatalf("after revoke: %q", got)
	}
	if loc := get(b, "location", chromedp.Location()); !strings.HasSuffix(loc, "/ui/certificates") {
		t.Errorf("revoke navigated to %s: htmx did not handle the click", loc)
	}
	if !e.revoked(reports) {
		t.Fatal("the server has no revocation after the click")
	}

	// Unrevoke with one click.
	b.visit("revocations", e.base+"/ui/revocations", "#revoked-ids")
	b.run("unrevoke", chromedp.Click(chromedp.CSS(`button[data-unrevoke="`+reports+`"]`)), chromedp.WaitVisible(chromedp.CSS("#flash")))
	b.snap("unrevoked")
	if e.revoked(reports) {
		t.Fatal("still revoked after the unrevoke click")
	}

	// A POST from script on our own page without the CSRF token (as an
	// injected script or a confused page would send it) is refused.
	status := get(b, "post without CSRF token", chromedp.Evaluate[int](`fetch("/ui/revocations/revoke", {method: "POST",
		headers: {"Content-Type": "application/x-www-form-urlencoded"}, body: "spiffe_id=`+reports+`"}).then(r => r.status)`,
		chromedp.EvalAwaitPromise))
	if status != http.StatusForbidden || e.revoked(reports) {
		t.Fatalf("POST without CSRF token: %d, revoked %v", status, e.revoked(reports))
	}

	// A forged cross-site form post: a page on another origin submits a
	// revoke form to the dashboard. SameSite=Strict keeps the session
	// cookie off it and the Origin check refuses it anyway.
	evil := evilSite(t, e.base+"/ui/revocations/revoke", reports)
	b.run("forged cross-site post", chromedp.Navigate(evil), chromedp.WaitReady(chromedp.CSS("body")))
	deadline := time.Now().Add(5 * time.Second)
	for {
		href, _ := chromedp.Run(b.ctx, chromedp.Location())
		if strings.Contains(href, "/ui/") || time.Now().After(deadline) {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	b.snap("forged post")
	if e.revoked(reports) {
		t.Fatal("a forged cross-site POST revoked the identity")
	}

	// The page's CSP is in force and nothing on our pages broke it.
	if v := b.cspViolations(); len(v) > 0 {
		t.Errorf("CSP violations:\n%s", strings.Join(v, "\n"))
	}

	// Log out: the session is gone.
	b.visit("overview", e.base+"/ui/", ".cards")
	b.run("log out", chromedp.Click(chromedp.CSS("#logout")), chromedp.WaitVisible(chromedp.CSS("#token")))
	b.run("after logout", chromedp.Navigate(e.base+"/ui/nodes"), chromedp.WaitVisible(chromedp.CSS("#token")))
	if nodes := get(b, "actor after logout", chromedp.Nodes(chromedp.CSS("#actor"), chromedp.AtLeast(0))); len(nodes) != 0 {
		t.Error("still logged in after logout")
	}
}

// TestIncidentResponseInChromium is the dashboard's containment story in
// a real browser: a sidecar reports a burst of denied requests from
// frontend through the server's records endpoint, the probing detector
// raises a finding; the admin logs in, sees frontend in the graph, opens
// the finding, isolates frontend (confirming on the page the button
// leads to), and the server's revocation list and a sidecar's watch
// stream have the revocation; releasing the incident lifts it from both.
func TestIncidentResponseInChromium(t *testing.T) {
	b := newBrowser(t)
	e := startServer(t)
	orders := e.attest(ordersID)
	f := e.probe(orders, frontendID)
	e.reportDecision(audit.KindDecisionDeny, frontendID, ordersID, "prod/orders-deny", "/admin/users")
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	updates := e.watch(ctx, orders)

	b.visit("login", e.base+"/ui/", "#token")
	b.run("log in", chromedp.SendKeys(chromedp.CSS("#token"), e.token), chromedp.Click(chromedp.CSS("#login")), chromedp.WaitVisible(chromedp.CSS("#actor")))

	// The graph shows frontend's denied calls to orders.
	b.visit("graph", e.base+"/ui/graph", "#graph")
	sel := `g.edge-g[data-from="` + frontendID + `"][data-to="` + ordersID + `"] path.edge.denied`
	if n := get(b, "frontend's edge", chromedp.Nodes(chromedp.CSS(sel), chromedp.AtLeast(0))); len(n) != 1 {
		t.Fatalf("graph: no denied edge %s -> %s", frontendID, ordersID)
	}
	if got := get(b, "frontend's node", chromedp.TextContent(chromedp.CSS(`g.node.at-risk[data-id="`+frontendID+`"] text`))); !strings.Contains(got, "0.50") {
		t.Errorf("graph: frontend is not marked at risk: %q", got)
	}

	// The finding is listed; its page shows the evidence and records.
	b.visit("findings", e.base+"/ui/findings", `tr[data-finding="`+f.ID+`"]`)
	if got := b.text(`tr[data-finding="` + f.ID + `"]`); !strings.Contains(got, "probing") || !strings.Contains(got, frontendID) || !strings.Contains(got, "0.50") {
		t.Errorf("findings row: %q", got)
	}
	b.run("open the finding", chromedp.Click(chromedp.CSS(`tr[data-finding="`+f.ID+`"] a[href="/ui/findings/`+f.ID+`"]`)), chromedp.WaitVisible(chromedp.CSS("#finding")))
	b.snap("finding")
	if got := b.text("#records"); !strings.Contains(got, ordersID) || !strings.Contains(got, "/admin/{*}") {
		t.Errorf("records of the finding: %q", got)
	}

	// Isolate: the button leads to a confirmation; confirming isolates.
	b.run("isolate", chromedp.Click(chromedp.CSS(`button[data-isolate="`+frontendID+`"]`)), chromedp.WaitVisible(chromedp.CSS("#confirm")))
	b.snap("confirm isolation")
	if e.revoked(frontendID) {
		t.Fatal("revoked before the confirmation")
	}
	b.run("confirm isolation", chromedp.SendKeys(chromedp.CSS("#reason"), "probing /admin"), chromedp.Click(chromedp.CSS("#confirm-isolate")),
		chromedp.WaitVisible(chromedp.CSS("#isolated")))
	b.snap("isolated")
	if got := b.text("#flash"); !strings.HasPrefix(got, "Isolated") {
		t.Errorf("flash after isolate: %q", got)
	}
	loc := get(b, "location", chromedp.Location())
	if !strings.Contains(loc, "/ui/incidents/") {
		t.Errorf("after isolate the address bar shows %s", loc)
	}
	if got := b.text("#nav a.on"); got != "Incidents" {
		t.Errorf("after isolate the menu marks %q", got)
	}
	if !e.revoked(frontendID) {
		t.Fatal("the server's revocation list does not have the isolated identity")
	}
	waitRevoked(t, updates, frontendID, true)
	if got := b.text("#steps"); !strings.Contains(got, "isolate") || !strings.Contains(got, "revocation.create") || !strings.Contains(got, "admin-token") {
		t.Errorf("steps: %q", got)
	}

	// Release, confirmed the same way.
	b.run("release", chromedp.Click(chromedp.CSS("#release")), chromedp.WaitVisible(chromedp.CSS("#confirm-release")))
	b.snap("confirm release")
	b.run("confirm release", chromedp.Click(chromedp.CSS("#confirm-release")), chromedp.WaitVisible(chromedp.CSS(".st-released")))
	b.snap("released")
	if e.revoked(frontendID) {
		t.Fatal("still on the revocation list after the release")
	}
	waitRevoked(t, updates, frontendID, false)
	b.visit("incidents", e.base+"/ui/incidents", "#incidents")
	if got := b.text("#incidents"); !strings.Contains(got, "released") {
		t.Errorf("incidents after release: %q", got)
	}
	if v := b.cspViolations(); len(v) > 0 {
		t.Errorf("CSP violations:\n%s", strings.Join(v, "\n"))
	}
}

// evilSite serves, on another origin (plain HTTP on another port), a page
// that posts a revoke form to target as soon as it loads.
func evilSite(t *testing.T, target, id string) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	page := `<!doctype html><html><body><form id="f" method="post" action="` + target + `">
<input name="spiffe_id" value="` + id + `"><input name="csrf_token" value="guessed"></form>
<script>document.getElementById("f").submit()</script></body></html>`
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/html")
		w.Write([]byte(page))
	})}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	return "http://" + ln.Addr().String() + "/"
}

// TestOIDCLoginInChromium signs in through the server's own token service:
// the dashboard's public client, a user holding the admin role, the token
// service's login form, back to the dashboard with a session. A user
// without the role is turned away; deleting the user ends the session.
func TestOIDCLoginInChromium(t *testing.T) {
	b := newBrowser(t)
	e := startServer(t, func(s *config.Server) { s.Dashboard.OIDCClientID = "moatless-dashboard" })
	client := map[string]any{"name": "moatless-dashboard", "token_endpoint_auth_method": "none", "grant_types": []string{"authorization_code"},
		"scopes": []string{"openid"}, "redirect_uris": []string{e.base + "/ui/oidc/callback"}}
	if st := e.admin("POST", "/v1/admin/oauth/clients", client, nil); st != http.StatusCreated {
		t.Fatalf("create client: %d", st)
	}
	for _, u := range []map[string]any{
		{"name": "alice", "password": "correct horse battery staple", "roles": []string{"moatless-admin"}},
		{"name": "bob", "password": "correct horse battery staple", "roles": []string{"viewer"}},
	} {
		if st := e.admin("POST", "/v1/admin/oauth/users", u, nil); st != http.StatusCreated {
			t.Fatalf("create user %s: %d", u["name"], st)
		}
	}
	signIn := func(user string) {
		b.visit("login "+user, e.base+"/ui/login", "#oidc")
		b.run("sign in as "+user,
			chromedp.Click(chromedp.CSS("#oidc")),
			chromedp.WaitVisible(chromedp.CSS("#username")),
			chromedp.SendKeys(chromedp.CSS("#username"), user),
			chromedp.SendKeys(chromedp.CSS("#password"), "correct horse battery staple"),
			chromedp.Submit(chromedp.CSS("#password")),
		)
	}
	// Without the role: back on the login page with the reason.
	signIn("bob")
	b.run("bob refused", chromedp.WaitVisible(chromedp.CSS("#login-error")))
	b.snap("bob refused")
	if got := b.text("#login-error"); !strings.Contains(got, "admin role") {
		t.Fatalf("bob: %q", got)
	}
	// With it: the dashboard, as the user.
	signIn("alice")
	b.run("alice signed in", chromedp.WaitVisible(chromedp.CSS("#actor")))
	b.snap("alice signed in")
	if got := b.text("#actor"); got != "user:alice" {
		t.Fatalf("signed in as %q", got)
	}
	var login *struct{ outcome, method string }
	for _, r := range e.auditRecords() {
		if r.Kind == "ui.login" && r.Actor == "user:alice" {
			login = &struct{ outcome, method string }{r.Outcome, r.Details["method"]}
		}
	}
	if login == nil || login.outcome != "success" || login.method != "oidc" {
		t.Fatalf("audit of alice's login: %+v", login)
	}
	// The role is checked on every request: deleting the user ends the
	// session at once.
	if st := e.admin("DELETE", "/v1/admin/oauth/users/alice", nil, nil); st != http.StatusNoContent && st != http.StatusOK {
		t.Fatalf("delete alice: %d", st)
	}
	b.run("after delete", chromedp.Navigate(e.base+"/ui/nodes"), chromedp.WaitVisible(chromedp.CSS("#oidc")))
}
