package ui_test

import (
	"net/http"
	"net/url"
	"strings"
	"testing"

	"github.com/moatless/moatless/internal/config"
	"github.com/moatless/moatless/internal/detect"
	"github.com/moatless/moatless/internal/server"
)

// What a browser says of a request another site made it send (Fetch
// Metadata; the browser sets these, no page can).
var (
	crossSiteForm  = map[string]string{"Origin": "https://evil.example", "Sec-Fetch-Site": "cross-site", "Sec-Fetch-Mode": "navigate", "Sec-Fetch-Dest": "document"}
	crossSiteImage = map[string]string{"Sec-Fetch-Site": "cross-site", "Sec-Fetch-Mode": "no-cors", "Sec-Fetch-Dest": "image"}
	sameSiteImage  = map[string]string{"Sec-Fetch-Site": "same-site", "Sec-Fetch-Mode": "no-cors", "Sec-Fetch-Dest": "image"}
	sameSiteFrame  = map[string]string{"Sec-Fetch-Site": "same-site", "Sec-Fetch-Mode": "navigate", "Sec-Fetch-Dest": "iframe"}
	crossSiteLink  = map[string]string{"Sec-Fetch-Site": "cross-site", "Sec-Fetch-Mode": "navigate", "Sec-Fetch-Dest": "document"}
)

// TestOtherSitesCannotLockTheAdminOut: any page the admin visits can make
// their browser post the login form or load /ui/oidc/start (an <img>),
// from the admin's own address. Those must not use up the address's
// login attempts. Fails on the parent commit: 15 of them, and the admin's
// own login got 429.
func TestOtherSitesCannotLockTheAdminOut(t *testing.T) {
	for _, tc := range []struct {
		name, method, path string
		hdr                map[string]string
	}{
		{"cross_site_login_form", "POST", "/ui/login", crossSiteForm},
		// a browser without Fetch Metadata: the Origin alone
		{"cross_site_login_form_origin_only", "POST", "/ui/login", map[string]string{"Origin": "https://evil.example"}},
		{"cross_site_image_of_oidc_start", "GET", "/ui/oidc/start", crossSiteImage},
		{"same_site_frame_of_oidc_start", "GET", "/ui/oidc/start", sameSiteFrame},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := startServer(t, func(s *config.Server) { s.Dashboard.OIDCClientID = "moatless-dashboard" })
			for range 15 {
				req, _ := http.NewRequest(tc.method, e.base+tc.path, strings.NewReader(url.Values{"token": {"mla_guess"}}.Encode()))
				req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
				if resp, _ := e.send(e.client(), req, tc.hdr); resp.StatusCode != http.StatusForbidden {
					t.Fatalf("%s %s from another site: %d, want 403", tc.method, tc.path, resp.StatusCode)
				}
			}
			e.login(t, e.client()) // fails the test unless the admin gets a session
		})
	}
}

// TestResourceIsolation: a logged-in admin's browser, made by another
// site to fetch a dashboard URL as a subresource or in a frame, gets a
// 403 and nothing runs. Same-site counts as another site: SameSite=Strict
// sends the session cookie to a sibling host's requests (another tool
// under the same registrable domain), and the forensics bundle is the
// costliest read there is (audited, the identity's whole record). A link
// followed from another site (a top-level navigation) still opens the
// page. Fails on the parent commit: the same-site <img> exported the
// bundle, as the admin, audited.
func TestResourceIsolation(t *testing.T) {
	e := startServer(t)
	f := e.probe(e.attest(ordersID), frontendID)
	inc := e.openIncident(server.IncidentRequest{Identity: frontendID, Action: detect.ActionIsolate, Finding: f.ID})
	c := e.client()
	e.login(t, c)
	export := "/ui/incidents/" + inc.ID + "/export"
	exports := func() int {
		n := 0
		for _, r := range e.auditRecords() {
			if r.Kind == "admin.call" && strings.HasSuffix(r.Subject, "/export") {
				n++
			}
		}
		return n
	}
	for _, tc := range []struct {
		name, path string
		hdr        map[string]string
		want       int
	}{
		{"same_site_image_of_the_export", export, sameSiteImage, http.StatusForbidden},
		{"cross_site_image_of_the_export", export, crossSiteImage, http.StatusForbidden},
		{"same_site_frame_of_the_export", export, sameSiteFrame, http.StatusForbidden},
		{"same_site_image_of_a_page", "/ui/graph", sameSiteImage, http.StatusForbidden},
		{"link_from_another_site", "/ui/incidents/" + inc.ID, crossSiteLink, http.StatusOK},
		// A download does not unload the page that started it: a sibling
		// page could navigate to the export again and again.
		{"same_site_navigation_to_the_export", export, map[string]string{"Sec-Fetch-Site": "same-site", "Sec-Fetch-Mode": "navigate", "Sec-Fetch-Dest": "document"}, http.StatusForbidden},
		{"same_origin_download", export, map[string]string{"Sec-Fetch-Site": "same-origin", "Sec-Fetch-Mode": "navigate", "Sec-Fetch-Dest": "empty"}, http.StatusOK},
		{"typed_in_the_address_bar", export, map[string]string{"Sec-Fetch-Site": "none", "Sec-Fetch-Mode": "navigate", "Sec-Fetch-Dest": "document"}, http.StatusOK},
		{"no_fetch_metadata", export, nil, http.StatusOK},
	} {
		t.Run(tc.name, func(t *testing.T) {
			before := exports()
			req, _ := http.NewRequest("GET", e.base+tc.path, nil)
			resp, body := e.send(c, req, tc.hdr)
			if resp.StatusCode != tc.want {
				t.Fatalf("GET %s: %d, want %d\n%.300s", tc.path, resp.StatusCode, tc.want, body)
			}
			if got := exports() - before; tc.want == http.StatusForbidden && got != 0 {
				t.Fatalf("a refused request exported the bundle (%d records)", got)
			}
		})
	}
}

// TestNoOpenRedirect: the dashboard redirects (to the login page, to the
// overview, to a cleaned path, after the OIDC callback) only to its own
// paths, whatever the request path or query says: a Location is never
// another host ("//host", "/\host", a scheme). There is no next= or
// return-URL parameter; these paths probe the mux's and our redirects.
func TestNoOpenRedirect(t *testing.T) {
	e := startServer(t, func(s *config.Server) { s.Dashboard.OIDCClientID = "moatless-dashboard" })
	logged := e.client()
	e.login(t, logged)
	paths := []string{"/ui", "/ui?next=//evil.example", "/ui/login?next=https://evil.example", "/ui//evil.example/", "/ui/..//evil.example",
		"/ui/%2F%2Fevil.example", "/ui/%5C%5Cevil.example", "/ui/./%2e%2e//evil.example", "/ui/incidents/x/..//evil.example",
		"/ui/oidc/callback?state=x&code=y&redirect_uri=https://evil.example", "/ui/nodes?next=//evil.example", "/ui/static//evil.example"}
	for _, c := range []*http.Client{e.client(), logged} {
		for _, p := range paths {
			resp, _ := e.raw(c, "GET", p, "", nil)
			loc := resp.Header.Get("Location")
			if loc == "" {
				continue
			}
			// A path on this host ("/evil.example" included) is fine.
			if !strings.HasPrefix(loc, "/") || strings.HasPrefix(loc, "//") || strings.HasPrefix(loc, "/\\") {
				t.Errorf("GET %s: %d to %q", p, resp.StatusCode, loc)
			}
		}
	}
}
