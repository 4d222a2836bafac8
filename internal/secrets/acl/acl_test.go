package acl

import (
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

func mustPolicy(t *testing.T, name, src string) *Policy {
	t.Helper()
	p, err := ParseDocument(name, []byte(src))
	if err != nil {
		t.Fatalf("parse %s: %v", name, err)
	}
	return &p
}

func TestCapabilities(t *testing.T) {
	app := mustPolicy(t, "app", `
# the app's own secrets
path "secret/data/app/*" { capabilities = ["read", "list"] }
path "secret/data/app/admin" { capabilities = ["deny"] }
path "secret/metadata/+/config" { capabilities = ["read"] }
path "transit/encrypt/orders" { capabilities = ["update"] }
`)
	ops := mustPolicy(t, "ops", `
path "secret/data/app/*" { capabilities = ["create", "update"] }
path "secret/data/app/pub*" { capabilities = ["read"] }
path "sys/*" { capabilities = ["sudo", "read"] }
`)
	a := New([]*Policy{app, ops})
	tests := []struct {
		name string
		path string
		want []string
	}{
		{"merged_same_glob", "secret/data/app/db", []string{"create", "read", "update", "list"}},
		{"exact_deny_wins_over_glob", "secret/data/app/admin", []string{}},
		{"longer_glob_outranks_shorter", "secret/data/app/public", []string{"read"}},
		{"plus_matches_one_segment", "secret/metadata/x/config", []string{"read"}},
		{"plus_needs_exactly_one_segment", "secret/metadata/x/y/config", []string{}},
		{"exact_path", "transit/encrypt/orders", []string{"update"}},
		{"exact_is_not_prefix", "transit/encrypt/orders2", []string{}},
		{"unmatched_is_denied", "secret/data/other", []string{}},
		{"glob_prefix_within_segment", "sys/policies/acl/x", []string{"read", "sudo"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if d := cmp.Diff(tc.want, a.Capabilities(tc.path).Names()); d != "" {
				t.Errorf("Capabilities(%q) (-want +got):\n%s", tc.path, d)
			}
		})
	}
	if !Root().Allowed("anything/at/all", Sudo|Delete) {
		t.Error("root denied")
	}
}

func TestApplies(t *testing.T) {
	p := mustPolicy(t, "", `
name: orders
subjects:
  spiffe_ids: [spiffe://example.org/ns/prod/sa/orders]
  spiffe_id_patterns: ["spiffe://example.org/ns/batch/sa/*"]
  approles: [legacy]
  jwt_roles: [ci]
paths:
  - path: secret/data/orders/*
    capabilities: [read]
`)
	tests := []struct {
		name string
		id   Identity
		want bool
	}{
		{"listed_id", Identity{SPIFFEID: "spiffe://example.org/ns/prod/sa/orders"}, true},
		{"pattern_one_segment", Identity{SPIFFEID: "spiffe://example.org/ns/batch/sa/nightly"}, true},
		{"pattern_does_not_cross_segments", Identity{SPIFFEID: "spiffe://example.org/ns/batch/sa/nightly/x"}, false},
		{"other_trust_domain", Identity{SPIFFEID: "spiffe://evil.org/ns/prod/sa/orders"}, false},
		{"approle", Identity{AppRole: "legacy"}, true},
		{"jwt_role", Identity{JWTRole: "ci"}, true},
		{"nobody", Identity{}, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if got := p.Applies(tc.id); got != tc.want {
				t.Errorf("Applies = %v", got)
			}
		})
	}
}

func TestParseErrors(t *testing.T) {
	tests := []struct {
		name, src, want string
	}{
		{"allowed_parameters_refused", `path "a/*" { capabilities = ["read"] allowed_parameters = {} }`, "allowed_parameters"},
		{"legacy_policy_refused", `path "a" { policy = "read" }`, `"policy" is not supported`},
		{"unknown_capability", `path "a" { capabilities = ["root"] }`, "unknown capability"},
		{"glob_in_middle", `path "a/*/b" { capabilities = ["read"] }`, "may only end"},
		{"dot_segment", `path "secret/../sys" { capabilities = ["read"] }`, `".." segment`},
		{"unterminated_string", `path "a { capabilities = ["read"] }`, "line 1"},
		{"template", `path "secret/{{identity.entity.id}}/${x}" { capabilities = ["read"] }`, "templated"},
		{"missing_caps", `path "a" { }`, "capabilities: required"},
		{"duplicate_path", "path \"a\" { capabilities = [\"read\"] }\npath \"a\" { capabilities = [\"list\"] }", "listed twice"},
		{"yaml_unknown_field", "name: x\npath: []\n", "unknown field"},
		{"yaml_pattern_trust_domain", "name: x\nsubjects: {spiffe_id_patterns: ['spiffe://*/ns']}\npaths: [{path: a, capabilities: [read]}]", "literal"},
		{"no_name_for_hcl", `path "a" { capabilities = ["read"] }`, "name: required"},
		{"reserved_root", "name: root\npaths: [{path: a, capabilities: [read]}]", "reserved"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			name := "p"
			if tc.name == "no_name_for_hcl" || strings.HasPrefix(tc.name, "yaml") || tc.name == "reserved_root" {
				name = ""
			}
			_, err := ParseDocument(name, []byte(tc.src))
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err = %v, want one containing %q", err, tc.want)
			}
		})
	}
}

func TestVaultJSONAndHCLRoundTrip(t *testing.T) {
	p := mustPolicy(t, "j", `{"path": {"secret/data/*": {"capabilities": ["read", "create"]}}}`)
	h := HCL(p.Paths)
	q := mustPolicy(t, "j", h)
	if d := cmp.Diff(p.Paths, q.Paths); d != "" {
		t.Fatalf("round trip (-json +hcl):\n%s", d)
	}
	if p.Paths[0].Capabilities[0] != "create" {
		t.Fatalf("capabilities not canonical: %v", p.Paths[0].Capabilities)
	}
}

func FuzzParseDocument(f *testing.F) {
	for _, s := range []string{
		`path "secret/*" { capabilities = ["read"] }`,
		"/* c */ path \"a/+/b\" {\n capabilities = [\"list\",]\n}",
		`{"path": {"a": {"capabilities": ["deny"]}}}`,
		"name: x\npaths: [{path: a, capabilities: [read]}]",
		`path "a\"b" { capabilities = ["sudo"] }`,
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, src string) {
		p, err := ParseDocument("fz", []byte(src))
		if err != nil {
			return
		}
		// A policy that parsed re-parses from its HCL rendering unchanged.
		q, err := ParseDocument("fz", []byte(HCL(p.Paths)))
		if err != nil {
			t.Fatalf("rendered HCL does not parse: %v\n%s", err, HCL(p.Paths))
		}
		if d := cmp.Diff(p.Paths, q.Paths); d != "" {
			t.Fatalf("round trip differs:\n%s", d)
		}
		New([]*Policy{&p}).Capabilities("secret/data/x")
	})
}

// TestAnyUnder: a mount is described (sys/internal/ui/mounts) only to a
// caller with some capability under it, as Vault's hasMountAccess does.
func TestAnyUnder(t *testing.T) {
	tests := []struct {
		name, policy, mount string
		want                bool
	}{
		{"exact_path_under", `path "team/data/x" { capabilities = ["read"] }`, "team", true},
		{"exact_path_elsewhere", `path "secret/data/x" { capabilities = ["read"] }`, "team", false},
		{"exact_path_of_a_longer_mount", `path "teams/data/x" { capabilities = ["read"] }`, "team", false},
		{"glob_under", `path "team/metadata/*" { capabilities = ["list"] }`, "team", true},
		{"plus_first_segment", `path "+/data/*" { capabilities = ["read"] }`, "team", true},
		{"star", `path "*" { capabilities = ["read"] }`, "team", true},
		{"prefix_of_the_mount", `path "te*" { capabilities = ["read"] }`, "team", true},
		{"prefix_of_another", `path "tx*" { capabilities = ["read"] }`, "team", false},
		{"deny_only", `path "team/*" { capabilities = ["deny"] }`, "team", false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if got := New([]*Policy{mustPolicy(t, "p", tc.policy)}).AnyUnder(tc.mount); got != tc.want {
				t.Errorf("AnyUnder(%q) = %v, want %v", tc.mount, got, tc.want)
			}
		})
	}
	if !Root().AnyUnder("x") {
		t.Error("root")
	}
}
