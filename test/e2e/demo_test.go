package e2e

import (
	"encoding/json"
	"testing"
)

// "moatless demo --once" is README command one and a smoke test of the
// whole product: server, four join-token sidecars, policies pushed and
// acknowledged, an OIDC login, a token exchange, two revocations, and the
// secrets service (orders' KV read and card encryption by SVID). Every
// row must come out as the demo expects.
//
// A second run in the same --dir (with --keep, as a user trying it again
// would) works as the first did.
func TestDemoOnce(t *testing.T) {
	dir := t.TempDir()
	for _, pass := range []string{"first_run", "second_run_same_dir"} {
		t.Run(pass, func(t *testing.T) { demoOnce(t, dir) })
	}
}

func demoOnce(t *testing.T, dir string) {
	code, stdout, stderr := run(t, nil, "", "demo", "--once", "-o", "json", "--dir", dir, "--keep")
	var out struct {
		Rows []struct {
			Step             int
			Caller, Callee   string
			Method, Path     string
			Expected, Result string
			Policy           string
			OK               bool
		} `json:"items"`
		Mismatches int `json:"mismatches"`
	}
	if err := json.Unmarshal([]byte(stdout), &out); err != nil {
		t.Fatalf("demo output is not the JSON table: %v\nstdout: %s\nstderr: %s", err, stdout, stderr)
	}
	for _, r := range out.Rows {
		if !r.OK {
			t.Errorf("step %d %s → %s %s %s: got %s, want %s (%s)", r.Step, r.Caller, r.Callee, r.Method, r.Path, r.Result, r.Expected, r.Policy)
		}
		if r.Result == "allow" && r.Policy == "-" {
			t.Errorf("step %d: allowed without a deciding policy in the sidecar's decision log", r.Step)
		}
	}
	if len(out.Rows) < 14 || code != 0 {
		t.Fatalf("demo exit %d with %d rows; stderr: %s", code, len(out.Rows), stderr)
	}
}
