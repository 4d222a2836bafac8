//go:build !norego

package proxy

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/moatless/moatless/internal/authn"
	"github.com/moatless/moatless/internal/policy"
	"github.com/moatless/moatless/internal/policy/policytest"
	"github.com/moatless/moatless/internal/testpki"
)

// regoDir copies internal/policy/testdata/rego (the example
// policy, a role-based and an ownership-based one, their data and
// providers) into a directory with a RequestAuthentication for the
// issuer of jwks: the policy files of a standalone sidecar.
func regoDir(t *testing.T, jwks string) string {
	t.Helper()
	dir := t.TempDir()
	policytest.CopyRego(t, dir)
	jwt := fmt.Sprintf(`apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {name: jwt, namespace: prod}
spec:
  jwtRules:
  - issuer: https://idp.example
    jwks: '%s'
`, jwks)
	if err := os.WriteFile(filepath.Join(dir, "jwt.yaml"), []byte(jwt), 0o600); err != nil {
		t.Fatal(err)
	}
	return dir
}

// headerEchoApp answers 200 with the request headers the policies may set.
func headerEchoApp(t *testing.T) string {
	t.Helper()
	l := listen(t)
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "owner=%s", r.Header.Get("X-Document-Owner"))
	})}
	go srv.Serve(l)
	t.Cleanup(func() { srv.Close() })
	return l.Addr().String()
}

// TestRegoThroughSidecarPair runs the example policy, a
// role-based and an ownership-based policy through a real sidecar pair:
// the caller's app talks plaintext to its sidecar's outbound port, which
// carries the request over mTLS to the callee's sidecar, which verifies
// the real JWT (RequestAuthentication) and decides with Rego (CUSTOM),
// its clock injected. The policy files are loaded by the FileWatcher as
// a standalone sidecar loads them, and a data update reaches the running
// sidecar and changes its next decision.
func TestRegoThroughSidecarPair(t *testing.T) {
	jwks, sign := newTestIssuer(t)
	dir := regoDir(t, jwks)
	ca := testpki.NewCA(t, "example.org")
	app := headerEchoApp(t)
	// The callee sidecars' clock is set to the next h:m (UTC) after now,
	// so it stays within the test certificates' validity (a day).
	var clock atomic.Pointer[time.Time]
	start := time.Now().UTC()
	setClock := func(h, m int) {
		at := time.Date(start.Year(), start.Month(), start.Day(), h, m, 0, 0, time.UTC)
		if !at.After(start) {
			at = at.Add(24 * time.Hour)
		}
		clock.Store(&at)
	}
	setClock(10, 30)
	now := func() time.Time { return *clock.Load() }
	logs := &syncBuf{}
	reg := prometheus.NewRegistry()

	// One sidecar per workload (app=records, reports, documents), all
	// loading the same policy files.
	ids, url := map[string]string{}, map[string]string{}
	var outbounds []Outbound
	var watchers []*FileWatcher
	for _, w := range []string{"records", "reports", "documents"} {
		id := "spiffe://example.org/ns/prod/sa/" + w
		ids[w] = id
		v := authn.NewVerifier(authn.Options{Logger: discardLogger(), Now: now})
		t.Cleanup(func() { v.Close() })
		inL := listen(t)
		cfg := Config{
			Identity: newStaticIdentity(ca, ca.SVID(t, id, 25*time.Hour)), Namespace: "prod", Labels: map[string]string{"app": w},
			Inbound: []Inbound{{Name: "in", Listener: inL, App: app}}, Verifier: v, Now: now,
			Logger: discardLogger(), DecisionLog: slog.New(slog.NewJSONHandler(logs, nil)),
		}
		if w == "records" {
			cfg.Registerer = reg
		}
		s := startSidecar(t, cfg)
		fw := &FileWatcher{Sidecar: s, PolicyFiles: []string{dir}, Logger: discardLogger()}
		if err := fw.Load(context.Background()); err != nil {
			t.Fatalf("%s: %v", w, err)
		}
		watchers = append(watchers, fw)
		outL := listen(t)
		url[w] = "http://" + outL.Addr().String()
		outbounds = append(outbounds, Outbound{Name: w, Listener: outL, Upstream: inL.Addr().String(), ID: spiffeid.RequireFromString(id)})
	}
	startSidecar(t, Config{Identity: newStaticIdentity(ca, ca.SVID(t, frontendID, 25*time.Hour)), Outbound: outbounds})

	token := func(claims map[string]any) string {
		claims["iss"], claims["iat"], claims["exp"] = "https://idp.example", start.Unix(), start.Add(48*time.Hour).Unix()
		return sign(claims)
	}
	alice := token(map[string]any{"sub": "alice", "role": "user", "roles": []string{"viewer"}})
	bob := token(map[string]any{"sub": "bob", "role": "user"})
	carol := token(map[string]any{"sub": "carol", "role": "admin", "roles": []string{"editor"}})
	admin := token(map[string]any{"sub": "zed", "roles": []string{"admin"}})
	call := func(t *testing.T, workload, method, path, tok, level string) (int, string) {
		t.Helper()
		req, _ := http.NewRequest(method, url[workload]+path, nil)
		req.Header.Set("Authorization", "Bearer "+tok)
		if level != "" {
			// The calling app declares the record's sensitivity.
			req.Header.Set("X-Sensitivity-Level", level)
		}
		req.Header.Set("X-Document-Owner", "forged")
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}

	cases := []struct {
		name                        string
		clock                       [2]int
		workload, method, path, tok string
		level                       string
		status                      int
		body                        string
	}{
		{"example_owner_in_hours", [2]int{10, 30}, "records", "GET", "/records/alice/7", alice, "2", 200, ""},
		{"example_owner_out_of_hours", [2]int{20, 0}, "records", "GET", "/records/alice/7", alice, "2", 403, ""},
		{"example_user_above_clearance", [2]int{10, 30}, "records", "GET", "/records/bob/7", bob, "2", 403, ""},
		{"example_non_owner", [2]int{10, 30}, "records", "GET", "/records/alice/7", carol, "1", 403, ""},
		{"example_invalid_token_is_401", [2]int{10, 30}, "records", "GET", "/records/alice/7", alice[:len(alice)-4] + "AAAA", "1", 401, ""},
		{"role_viewer_reads", [2]int{10, 30}, "reports", "GET", "/reports/q1", alice, "", 200, ""},
		{"role_viewer_cannot_write", [2]int{10, 30}, "reports", "PUT", "/reports/q1", alice, "", 403, ""},
		{"role_editor_writes", [2]int{10, 30}, "reports", "PUT", "/reports/q1", carol, "", 200, ""},
		{"role_none", [2]int{10, 30}, "reports", "GET", "/reports/q1", bob, "", 403, ""},
		{"owner_reads_and_is_named_upstream", [2]int{10, 30}, "documents", "GET", "/documents/d1", alice, "", 200, "owner=alice"},
		{"non_owner_gets_404", [2]int{10, 30}, "documents", "GET", "/documents/d1", bob, "", 404, ""},
		{"admin_reads_any", [2]int{10, 30}, "documents", "GET", "/documents/d2", admin, "", 200, "owner=bob"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			setClock(c.clock[0], c.clock[1])
			code, body := call(t, c.workload, c.method, c.path, c.tok, c.level)
			if code != c.status || (c.body != "" && body != c.body) {
				t.Fatalf("%d %q, want %d %q", code, body, c.status, c.body)
			}
		})
	}

	t.Run("data_update_reaches_the_running_sidecar", func(t *testing.T) {
		setClock(11, 0)
		if code, _ := call(t, "records", "GET", "/records/bob/1", bob, "2"); code != 403 {
			t.Fatalf("bob at level 2 before the update: %d", code)
		}
		data := `{"clearance": {"alice": 3, "bob": 2, "carol": 5},
 "roles": {"viewer": [{"methods": ["GET"], "prefix": "/reports/"}]},
 "documents": {"d1": {"owner": "alice"}, "d2": {"owner": "bob"}}}`
		if err := os.WriteFile(filepath.Join(dir, "data.json"), []byte(data), 0o600); err != nil {
			t.Fatal(err)
		}
		before := watchers[0].Sidecar.PolicyVersion()
		// The watcher applies a change once two checks read the same content.
		for i := 0; i < 2; i++ {
			if err := watchers[0].Check(context.Background()); err != nil {
				t.Fatal(err)
			}
		}
		if watchers[0].Sidecar.PolicyVersion() == before {
			t.Fatal("the data update was not applied")
		}
		if code, _ := call(t, "records", "GET", "/records/bob/1", bob, "2"); code != 200 {
			t.Fatalf("bob at level 2 after his clearance was raised: %d", code)
		}
	})

	// Every CUSTOM decision is logged with its query, result and input
	// digest, never the token; and counted.
	out := logs.String()
	if !strings.Contains(out, `"query":"data.microservices.authz.allow","result":"allow","input_sha256":"`) ||
		!strings.Contains(out, `"query":"data.ownership.decision","result":"deny"`) {
		t.Fatalf("decision log lacks the CUSTOM records:\n%s", out)
	}
	if strings.Contains(out, alice[30:70]) || strings.Contains(out, bob[30:70]) {
		t.Fatal("a token reached the decision log")
	}
	for _, line := range strings.Split(strings.TrimSpace(out), "\n") {
		var ev map[string]any
		if err := json.Unmarshal([]byte(line), &ev); err != nil {
			t.Fatalf("log line %q: %v", line, err)
		}
	}
	if n := testutil.ToFloat64(newCustomCounter(t, reg, "records-authz", "deny")); n < 3 {
		t.Fatalf("records-authz denials counted: %v", n)
	}
}

// newCustomCounter reads one series of moatless_sidecar_custom_decisions_total.
func newCustomCounter(t *testing.T, reg *prometheus.Registry, provider, result string) prometheus.Collector {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != "moatless_sidecar_custom_decisions_total" {
			continue
		}
		for _, m := range mf.GetMetric() {
			labels := map[string]string{}
			for _, l := range m.GetLabel() {
				labels[l.GetName()] = l.GetValue()
			}
			if labels["provider"] == provider && labels["result"] == result {
				c := prometheus.NewCounter(prometheus.CounterOpts{Name: "x"})
				c.Add(m.GetCounter().GetValue())
				return c
			}
		}
	}
	t.Fatalf("no series provider=%q result=%q", provider, result)
	return nil
}

// TestProviderHeaderTwinsAreDropped: the headers an allowing Rego
// provider sets for the app replace the caller's under their name, and
// their "_" spellings are dropped: "X_User_Id: mallory" next to the
// provider's "X-User-Id: alice" reached the app, sorted after it, and a
// CGI-style app keeping the last of two folded names read mallory.
func TestProviderHeaderTwinsAreDropped(t *testing.T) {
	forServerPaths(t, testProviderHeaderTwinsAreDropped)
}

func testProviderHeaderTwinsAreDropped(t *testing.T, sp serverPath) {
	var b policy.Bundle
	if err := b.Add("m.rego", []byte("package m\nimport rego.v1\nresult := {\"allow\": true, \"headers\": {\"x-user-id\": \"alice\"}}\n")); err != nil {
		t.Fatal(err)
	}
	if err := b.Add("p.yaml", []byte(`apiVersion: moatless.io/v1
kind: RegoProvider
metadata: {name: m}
spec: {query: data.m.result}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: x, namespace: prod}
spec:
  action: CUSTOM
  provider: {name: m}
  rules: [{}]
`)); err != nil {
		t.Fatal(err)
	}
	set, err := b.Compile(policy.Options{})
	if err != nil {
		t.Fatal(err)
	}
	ca := testpki.NewCA(t, "example.org")
	app := newRecordingApp(t)
	_, inL := startEngineSidecar(t, ca, set, app.addr, true, sp.edit)
	for _, tr := range attackTransports(ca) {
		t.Run(tr.name, func(t *testing.T) {
			app.take()
			if code := tr.do(t, inL.Addr().String(), "/api/x", [][2]string{{"X_User_Id", "mallory"}, {"x-user-id", "eve"}, {"X_Other", "kept"}}); code != 200 {
				t.Fatalf("status %d, want 200", code)
			}
			seen := app.take()
			if len(seen) != 1 {
				t.Fatalf("app saw %d requests", len(seen))
			}
			var got []string
			for k, vv := range seen[0].header {
				if foldName(k) == "x-user-id" {
					got = append(got, vv...)
				}
			}
			if len(got) != 1 || got[0] != "alice" || firstValue(seen[0].header, "X_Other") != "kept" {
				t.Fatalf("app saw x-user-id %q, headers %v", got, seen[0].header)
			}
		})
	}
}
