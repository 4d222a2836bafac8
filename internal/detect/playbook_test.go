package detect

import (
	"strings"
	"testing"
	"time"
)

const contain = `# contain what exfiltrates
apiVersion: moatless.io/v1alpha1
kind: Playbook
metadata: {name: contain}
spec:
  trigger:
    risk: 0.75
    detectors: [exfiltration, probing]
    identities: ["spiffe://example.org/ns/prod/*"]
  steps:
  - action: notify
  - action: isolate
  - {action: block-pair, duration: 2h}
---
apiVersion: moatless.io/v1alpha1
kind: Playbook
metadata: {name: watch}
spec:
  trigger: {risk: 0.5}
  steps: [{action: quarantine}, {action: notify}]
---
apiVersion: moatless.io/v1alpha1
kind: Playbook
metadata: {name: by-hand}
spec:
  steps: [{action: revoke-certificate}]
`

func TestParsePlaybooks(t *testing.T) {
	pbs, err := ParsePlaybooks([]byte(contain))
	if err != nil {
		t.Fatal(err)
	}
	if len(pbs) != 3 || pbs[0].Name != "contain" || pbs[0].Steps[2].Duration.Std() != 2*time.Hour || pbs[2].Trigger.Risk != 0 {
		t.Fatalf("parsed %+v", pbs)
	}
	again, err := ParsePlaybookJSON(pbs[0].Document())
	if err != nil || again.Name != "contain" || len(again.Steps) != 3 || again.Trigger.Identities[0] != "spiffe://example.org/ns/prod/*" {
		t.Fatalf("round trip through the stored document: %+v %v", again, err)
	}
}

func TestParsePlaybooksRefuses(t *testing.T) {
	head := "apiVersion: moatless.io/v1alpha1\nkind: Playbook\nmetadata: {name: x}\n"
	for _, tc := range []struct {
		name, doc, want string
	}{
		{"empty", "# nothing\n", "no document"},
		{"wrong_kind", "apiVersion: moatless.io/v1alpha1\nkind: AuthorizationPolicy\nmetadata: {name: x}\nspec: {steps: [{action: notify}]}\n", "kind"},
		{"wrong_api_version", "apiVersion: v1\nkind: Playbook\nmetadata: {name: x}\nspec: {steps: [{action: notify}]}\n", "apiVersion"},
		{"unknown_field", head + "spec: {steps: [{action: notify}], tirgger: {risk: 1}}\n", "tirgger"},
		{"unknown_action", head + "spec: {steps: [{action: nuke}]}\n", "spec.steps[0].action"},
		{"no_steps", head + "spec: {trigger: {risk: 0.5}}\n", "spec.steps"},
		{"risk_above_one", head + "spec: {trigger: {risk: 1.5}, steps: [{action: notify}]}\n", "spec.trigger.risk"},
		{"unknown_detector", head + "spec: {trigger: {risk: 0.5, detectors: [vibes]}, steps: [{action: notify}]}\n", "detectors[0]"},
		{"bad_identity", head + "spec: {trigger: {risk: 0.5, identities: [\"prod/*\"]}, steps: [{action: notify}]}\n", "identities[0]"},
		{"duration_on_isolate", head + "spec: {steps: [{action: isolate, duration: 1h}]}\n", "duration"},
		{"block_too_long", head + "spec: {steps: [{action: block-pair, duration: 9000h}]}\n", "duration"},
		{"bad_name", "apiVersion: moatless.io/v1alpha1\nkind: Playbook\nmetadata: {name: Bad_Name}\nspec: {steps: [{action: notify}]}\n", "metadata.name"},
		{"name_twice", head + "spec: {steps: [{action: notify}]}\n---\n" + head + "spec: {steps: [{action: notify}]}\n", "used twice"},
		{"not_yaml", "{{{", "not YAML"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := ParsePlaybooks([]byte(tc.doc))
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("got %v, want an error naming %q", err, tc.want)
			}
		})
	}
}

func TestChoosePlaybook(t *testing.T) {
	pbs, err := ParsePlaybooks([]byte(contain))
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name     string
		identity string
		risk     float64
		open     []string
		want     string
	}{
		{"below_every_threshold", "spiffe://example.org/ns/prod/sa/a", 0.25, []string{"probing"}, ""},
		{"medium_risk", "spiffe://example.org/ns/prod/sa/a", 0.6, []string{"rate"}, "watch"},
		{"high_risk_exfiltration", "spiffe://example.org/ns/prod/sa/a", 0.85, []string{"rate", "exfiltration"}, "contain"},
		{"high_risk_other_detector", "spiffe://example.org/ns/prod/sa/a", 0.85, []string{"rate"}, "watch"},
		{"high_risk_other_namespace", "spiffe://example.org/ns/dev/sa/a", 0.85, []string{"exfiltration"}, "watch"},
		{"by_hand_never_runs_alone", "spiffe://example.org/ns/dev/sa/a", 1, nil, "watch"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			pb, ok := Choose(pbs, tc.identity, tc.risk, tc.open)
			if !ok && tc.want != "" || ok && pb.Name != tc.want {
				t.Fatalf("chose %q (%v), want %q", pb.Name, ok, tc.want)
			}
		})
	}
}

func FuzzParsePlaybooks(f *testing.F) {
	f.Add([]byte(contain))
	f.Add([]byte("---\n---\n"))
	f.Add([]byte(`{"apiVersion":"moatless.io/v1alpha1","kind":"Playbook","metadata":{"name":"a"},"spec":{"steps":[{"action":"block-pair","duration":60}]}}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		pbs, err := ParsePlaybooks(b)
		if err != nil {
			return
		}
		for _, pb := range pbs {
			if err := pb.validate(); err != nil {
				t.Fatalf("accepted an invalid playbook: %v", err)
			}
			again, err := ParsePlaybookJSON(pb.Document())
			if err != nil || again.Name != pb.Name || len(again.Steps) != len(pb.Steps) {
				t.Fatalf("stored form does not parse back: %v", err)
			}
		}
	})
}
