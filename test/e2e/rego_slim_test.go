package e2e

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net/http"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/moatless/moatless/internal/opaapi/opaclient"
	"github.com/moatless/moatless/internal/policy/policytest"
)

// TestSidecarRegoByExecutable: the same Rego policy files in files mode
// through both executables. "moatless sidecar" evaluates them (the owner
// of d1 allowed, another user refused with the policy's 404);
// moatless-sidecar, built without OPA, denies every request the CUSTOM
// policy applies to (403, as Istio without its ext_authz provider),
// saying why in its decision log, its metrics and one warning per policy
// version, while the rest of the policy still applies; its OPA API
// answers 501, and -check refuses the same files naming "moatless
// sidecar".
func TestSidecarRegoByExecutable(t *testing.T) {
	jwks, token := regoIssuer(t)
	app := sidecarEchoApp(t)
	for _, exe := range []struct {
		name           string
		cmd            func() []string
		owner, another int
	}{
		{"moatless_sidecar", oneBinary, 200, 404},
		{"moatless-sidecar", slimBinary, 403, 403},
	} {
		t.Run(exe.name, func(t *testing.T) {
			// version says which executable evaluates Rego.
			out, err := exec.Command(exe.cmd()[0], "version", "-o", "json").Output()
			if want := fmt.Sprintf(`"rego": %v`, exe.owner == 200); err != nil || !strings.Contains(string(out), want) {
				t.Errorf("version -o json: %v: %s, want %s", err, out, want)
			}
			// /documents/* of orders under the ownership policy, nothing
			// else restricted.
			m := startSidecarMeshCmd(t, exe.cmd(), app, ownershipPolicyYAML(jwks, "orders", `[{to: [{operation: {paths: ["/documents/*"]}}]}]`), "", nil, nil)
			policytest.CopyRego(t, m.policyDir, "ownership.rego", "data.json")
			waitFor(t, 20*time.Second, "the Rego module to be loaded", func() bool {
				return strings.Contains(m.orders.out.String(), `"rego_modules":1,"data_documents":3`)
			})
			call := func(path, sub string) int {
				req, _ := http.NewRequest("GET", "http://"+m.outbound+path, nil)
				if sub != "" {
					req.Header.Set("Authorization", "Bearer "+token(sub))
				}
				resp, err := (&http.Client{Timeout: 10 * time.Second}).Do(req)
				if err != nil {
					t.Fatal(err)
				}
				resp.Body.Close()
				return resp.StatusCode
			}
			if code := call("/documents/d1", "alice"); code != exe.owner {
				t.Errorf("owner of d1: %d, want %d", code, exe.owner)
			}
			if code := call("/documents/d1", "bob"); code != exe.another {
				t.Errorf("another user: %d, want %d", code, exe.another)
			}
			if code := call("/public/x", ""); code != 200 {
				t.Errorf("a path no CUSTOM policy applies to: %d, want 200", code)
			}

			unavailable := m.orders.metric(t, `moatless_sidecar_custom_decisions_total{provider="ownership",result="unavailable"}`)
			side := &opaclient.Client{Base: "http://" + m.orders.admin}
			_, _, qerr := side.Query(context.Background(), "ownership/decision", map[string]any{})
			var oe *opaclient.Error
			cfg := filepath.Join(t.TempDir(), "check.yaml")
			of, _ := m.pki.files("orders-check", scOrdersID)
			writeTestFile(t, filepath.Dir(cfg), filepath.Base(cfg), fmt.Sprintf("identity:\n  files: {cert: %s, key: %s, bundle: %s}\nnamespace: prod\nlabels: {app: orders}\ninbound: [{listen: %q, app: %q}]\npolicy: {files: [%s]}\n", of.Cert, of.Key, of.Bundle, freeAddr(t), app, m.policyDir))
			check := exec.Command(exe.cmd()[0], append(exe.cmd()[1:], "-check", "-config", cfg)...)
			var stderr bytes.Buffer
			check.Stderr = &stderr
			checkErr := check.Run()
			log := m.orders.out.String()

			if exe.owner == 200 {
				if unavailable != 0 || strings.Contains(log, "cannot evaluate") {
					t.Errorf("the one binary reported Rego unavailable (%v):\n%s", unavailable, log)
				}
				if qerr != nil {
					t.Errorf("OPA API of the one binary: %v", qerr)
				}
				if checkErr != nil {
					t.Errorf("-check: %v\n%s", checkErr, stderr.String())
				}
				return
			}
			if unavailable != 2 {
				t.Errorf("custom decisions with result unavailable = %v, want 2", unavailable)
			}
			if !strings.Contains(log, `"result":"unavailable"`) || !strings.Contains(log, `run the sidecar as \"moatless sidecar\"`) {
				t.Errorf("decision log does not say Rego is unavailable here:\n%s", log)
			}
			// One warning per policy version: the first (no module yet)
			// and the one with the module.
			if n, v := strings.Count(log, "policy needs Rego, which this executable cannot evaluate"), strings.Count(log, `"msg":"policies loaded"`); n != v || n < 2 {
				t.Errorf("%d warnings for %d policy versions:\n%s", n, v, log)
			}
			if !errors.As(qerr, &oe) || oe.Status != http.StatusNotImplemented {
				t.Errorf("OPA API of moatless-sidecar: %v, want 501", qerr)
			}
			var ee *exec.ExitError
			if !errors.As(checkErr, &ee) || ee.ExitCode() != 2 || !strings.Contains(stderr.String(), `"moatless sidecar"`) || !strings.Contains(stderr.String(), "RegoProviders ownership") {
				t.Errorf("-check: %v\n%s", checkErr, stderr.String())
			}
		})
	}
}
