package cli

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/moatless/moatless/internal/detect"
	"github.com/moatless/moatless/internal/server"
)

func TestIncidentCommandsHelp(t *testing.T) {
	for _, args := range [][]string{
		{"incident", "list", "-h"}, {"incident", "show", "-h"}, {"incident", "isolate", "-h"}, {"incident", "release", "-h"},
		{"incident", "confirm", "-h"}, {"incident", "export", "-h"}, {"incident", "findings", "-h"}, {"incident", "risk", "-h"},
		{"incident", "help"}, {"playbook", "apply", "-h"}, {"playbook", "get", "-h"}, {"playbook", "delete", "-h"}, {"playbook", "history", "-h"},
	} {
		t.Run(strings.Join(args, "_"), func(t *testing.T) {
			if code, _, stderr := runCLI(t, nil, args...); code != ExitOK {
				t.Fatalf("exit %d: %s", code, stderr)
			}
		})
	}
}

func TestIncidentCommandsAgainstServer(t *testing.T) {
	env := startServer(t)
	dir := env["HOME"]
	run := func(want int, args ...string) string {
		t.Helper()
		code, out, stderr := runCLI(t, env, args...)
		if code != want {
			t.Fatalf("%v: exit %d (want %d): %s %s", args, code, want, out, stderr)
		}
		return out + stderr
	}
	reports := "spiffe://example.org/ns/prod/sa/reports"
	pb := filepath.Join(dir, "contain.yaml")
	os.WriteFile(pb, []byte("apiVersion: moatless.io/v1alpha1\nkind: Playbook\nmetadata: {name: contain}\nspec:\n  trigger: {risk: 0.75}\n  steps: [{action: notify}, {action: isolate}]\n"), 0o600)
	if out := run(ExitOK, "playbook", "apply", "-f", pb); !strings.Contains(out, "create playbook contain") || !strings.Contains(out, "version 1") {
		t.Fatalf("apply: %s", out)
	}
	if out := run(ExitOK, "playbook", "get"); !strings.Contains(out, "notify, isolate") || !strings.Contains(out, "0.75") {
		t.Fatalf("get: %s", out)
	}
	bad := filepath.Join(dir, "bad.yaml")
	os.WriteFile(bad, []byte("apiVersion: moatless.io/v1alpha1\nkind: Playbook\nmetadata: {name: x}\nspec: {steps: [{action: nuke}]}\n"), 0o600)
	if out := run(ExitUsage, "playbook", "apply", "-f", bad, "--addr", "127.0.0.1:1"); !strings.Contains(out, "spec.steps[0].action") {
		t.Fatalf("bad playbook: %s", out)
	}

	run(ExitUsage, "incident", "isolate")
	run(ExitUsage, "incident", "isolate", "--spiffe-id", reports, "--action", "nuke")
	run(ExitNotFound, "incident", "isolate", "--spiffe-id", reports, "--finding", "nope") // no such finding: nothing done
	run(ExitUsage, "incident", "findings", "--severity", "extreme")
	run(ExitOK, "incident", "findings", "--severity", "high")
	out := run(ExitOK, "incident", "isolate", "--spiffe-id", reports, "--reason", "test", "-o", "json")
	var inc detect.Incident
	if err := json.Unmarshal([]byte(out), &inc); err != nil || inc.State != detect.IncidentContained || !inc.Revoked {
		t.Fatalf("isolate: %s", out)
	}
	if out := run(ExitOK, "revoke", "list"); !strings.Contains(out, reports) {
		t.Fatalf("revoke list after isolate: %s", out)
	}
	if out := run(ExitOK, "incident", "list"); !strings.Contains(out, inc.ID) || !strings.Contains(out, "contained") || !strings.Contains(out, "(by hand)") {
		t.Fatalf("list: %s", out)
	}
	if out := run(ExitOK, "incident", "show", inc.ID); !strings.Contains(out, "isolate") || !strings.Contains(out, "Contained:") {
		t.Fatalf("show: %s", out)
	}
	run(ExitNotFound, "incident", "show", "nope")
	bundle := filepath.Join(dir, "bundle.json")
	run(ExitOK, "incident", "export", inc.ID, "-f", bundle)
	var b server.ForensicsBundle
	raw, _ := os.ReadFile(bundle)
	if err := json.Unmarshal(raw, &b); err != nil || b.Incident.ID != inc.ID || len(b.AuditRecords) == 0 {
		t.Fatalf("bundle: %v %d records", err, len(b.AuditRecords))
	}
	if fi, _ := os.Stat(bundle); fi.Mode().Perm() != 0o600 {
		t.Fatalf("bundle mode %v", fi.Mode().Perm())
	}
	run(ExitFailure, "incident", "export", inc.ID, "-f", bundle) // never overwritten
	if out := run(ExitOK, "incident", "release", inc.ID, "--reason", "done"); !strings.Contains(out, "released") {
		t.Fatalf("release: %s", out)
	}
	run(ExitUsage, "incident", "release", inc.ID) // released already: 409
	if out := run(ExitOK, "revoke", "list"); strings.Contains(out, reports) {
		t.Fatalf("still revoked after release: %s", out)
	}
	if out := run(ExitOK, "incident", "list", "--state", "released", "-o", "json"); !strings.Contains(out, `"items"`) || !strings.Contains(out, inc.ID) {
		t.Fatalf("list -o json: %s", out)
	}
	run(ExitOK, "incident", "findings")
	run(ExitOK, "incident", "risk")
	if out := run(ExitOK, "playbook", "history"); !strings.Contains(out, "apply") {
		t.Fatalf("history: %s", out)
	}
	run(ExitOK, "playbook", "delete", "contain")
	run(ExitNotFound, "playbook", "delete", "contain")
}

func TestPolicyRecommendWhatIfAgainstServer(t *testing.T) {
	env := startServer(t)
	dir := env["HOME"]
	run := func(want int, args ...string) string {
		t.Helper()
		code, out, stderr := runCLI(t, env, args...)
		if code != want {
			t.Fatalf("%v: exit %d (want %d): %s %s", args, code, want, out, stderr)
		}
		return out + stderr
	}
	run(ExitOK, "policy", "recommend", "-h")
	run(ExitOK, "policy", "what-if", "-h")
	if out := run(ExitUsage, "policy", "recommend"); !strings.Contains(out, "--namespace is required") {
		t.Fatal(out)
	}
	if out := run(ExitUsage, "policy", "recommend", "--namespace", "istio-system"); !strings.Contains(out, "root namespace") {
		t.Fatal(out)
	}
	if out := run(ExitFailure, "policy", "recommend", "--namespace", "prod"); !strings.Contains(out, "no allowed traffic recorded in namespace prod") {
		t.Fatal(out)
	}
	run(ExitUsage, "policy", "what-if")
	bad := filepath.Join(dir, "bad.yaml")
	os.WriteFile(bad, []byte("apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: x, namespace: prod}\nspec: {action: NUKE}\n"), 0o600)
	if out := run(ExitUsage, "policy", "what-if", "-f", bad, "--addr", "127.0.0.1:1"); !strings.Contains(out, "bad.yaml") {
		t.Fatalf("a bad policy must be refused before anything is sent: %s", out)
	}
	good := filepath.Join(dir, "deny.yaml")
	os.WriteFile(good, []byte("apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: allow-nothing, namespace: prod}\nspec: {}\n"), 0o600)
	if out := run(ExitOK, "policy", "what-if", "-f", good, "--fail-on-deny"); !strings.Contains(out, "0 recorded edges since") || !strings.Contains(out, "0 newly denied") {
		t.Fatal(out)
	}
	var res server.WhatIfResponse
	if err := json.Unmarshal([]byte(run(ExitOK, "policy", "what-if", "-f", good, "-o", "json")), &res); err != nil || res.Items == nil {
		t.Fatalf("json: %v %+v", err, res)
	}
}

// An incident whose playbook held its containment says so, with what
// would run and how to confirm, and each finding says whose word it is.
func TestIncidentShowUncorroborated(t *testing.T) {
	const orders = "spiffe://example.org/ns/prod/sa/orders"
	// As the server opens it for one node's claims (TestDetectionCannotFrame).
	inc := detect.Incident{ID: "abc", Identity: "spiffe://example.org/ns/prod/sa/payments", State: detect.IncidentOpen, Playbook: "contain",
		PlaybookVersion: 1, Trigger: "risk 0.75 reached 0.75 (probing)", Risk: 0.75, CorroboratedRisk: new(0.0),
		Corroboration: "uncorroborated: reported only by " + orders + " (1 of the 2 nodes needed), and its own records do not bear it out; corroborated risk 0.00 < 0.75",
		Held:          []detect.Step{{Action: detect.ActionIsolate}, {Action: detect.ActionBlockPair}}}
	fs := []detect.Finding{
		{ID: "f1", Detector: detect.DetectorProbing, Severity: detect.High, Count: 1, Records: []detect.Record{{Reporter: orders}},
			Summary: "spiffe://example.org/ns/prod/sa/payments was refused 120 times in a minute"},
		{ID: "f2", Detector: detect.DetectorToken, Severity: detect.High},
	}
	var out strings.Builder
	printIncident(&Env{Stdout: &out}, inc, fs)
	t.Log("\n" + out.String())
	for _, want := range []string{
		"State:          open, uncorroborated",
		"Risk:           0.75 (corroborated 0.00)",
		"Corroboration:  uncorroborated: reported only by " + orders,
		"Held:           isolate, block-pair, until corroborated or: moatless incident confirm abc",
		"REPORTED BY", "f1  probing        high      1      " + orders, "f2  token_anomaly  high      0      server ",
	} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("missing %q in:\n%s", want, out.String())
		}
	}

	// Contained on a corroborated finding, with a destination only
	// frontend's word names held (TestBlockPairOnlyCorroborated).
	inc.State, inc.Held, inc.CorroboratedRisk = detect.IncidentContained, nil, new(0.75)
	inc.HeldDestinations = []string{"spiffe://example.org/ns/prod/sa/frontend"}
	out.Reset()
	printIncident(&Env{Stdout: &out}, inc, fs)
	for _, want := range []string{
		"Risk:           0.75 (corroborated 0.75)",
		"Held blocks:    spiffe://example.org/ns/prod/sa/payments → spiffe://example.org/ns/prod/sa/frontend, until a corroborated finding names them or: moatless incident confirm abc",
	} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("missing %q in:\n%s", want, out.String())
		}
	}
}
