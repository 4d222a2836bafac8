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
		Mismatches  int `json:"mismatches"`
		Containment *struct {
			Incident         string   `json:"incident"`
			State            string   `json:"state"`
			Playbook         string   `json:"playbook"`
			Findings         []string `json:"findings"`
			Risk             float64  `json:"risk"`
			DetectedMS       int64    `json:"detected_ms"`
			ContainedMS      int64    `json:"contained_ms"`
			LastSidecarMS    int64    `json:"last_sidecar_refusing_ms"`
			Sidecars         int      `json:"sidecars"`
			ExportsBeforeCut int      `json:"exports_before_cut"`
		} `json:"containment"`
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
	if len(out.Rows) < 17 || code != 0 {
		t.Fatalf("demo exit %d with %d rows; stderr: %s", code, len(out.Rows), stderr)
	}
	// The compromised reports job: found by the detectors from the
	// sidecars' traffic records, isolated by the playbook, refused by
	// the three other sidecars; the timeline is measured, in order.
	c := out.Containment
	if c == nil || c.State != "contained" || c.Playbook != "contain-prod" || c.Sidecars != 3 || c.Risk < 0.75 || len(c.Findings) == 0 {
		t.Fatalf("containment: %+v", c)
	}
	if c.DetectedMS <= 0 || c.ContainedMS < c.DetectedMS || c.LastSidecarMS <= 0 {
		t.Fatalf("containment timeline out of order: %+v", c)
	}
	t.Logf("first bad request → detected %d ms, isolated %d ms, last sidecar refusing %d ms; %d exports left; findings %v",
		c.DetectedMS, c.ContainedMS, c.LastSidecarMS, c.ExportsBeforeCut, c.Findings)
}
