package policy

import (
	"fmt"
	"regexp"
	"strings"
	"testing"
	"unicode/utf8"
)

// istioNamespaceRegex is the matcher Istio generates for a namespaces
// value (srcNamespaceGenerator): .*/ns/<v>/.* with "*" as .*, matched by
// Envoy (RE2, whole string) against the principal with its scheme. The
// tests hold nsSet to it.
func istioNamespaceRegex(v string) *regexp.Regexp {
	return regexp.MustCompile(`^(?:.*/ns/` + strings.ReplaceAll(v, "*", ".*") + `/.*)$`)
}

func istioNamespaceMatch(values []string, principal string) bool {
	if principal == "" {
		return false
	}
	full := "spiffe://" + strings.TrimPrefix(principal, "spiffe://")
	for _, v := range values {
		if istioNamespaceRegex(v).MatchString(full) {
			return true
		}
	}
	return false
}

func TestNamespaceMatchesIstio(t *testing.T) {
	many := []string{"a", "b", "c", "d", "e", "f", "g", "h", "prod"} // exact values in a map
	for _, tc := range []struct {
		name      string
		values    []string
		principal string
		want      bool
	}{
		{"first_segment", []string{"prod"}, "td/ns/prod/sa/web", true},
		{"later_segment", []string{"prod"}, "td/ns/dev/sa/x/ns/prod/y", true},
		{"no_trailing_segment", []string{"prod"}, "td/ns/prod", false},
		{"trailing_slash_only", []string{"prod"}, "td/ns/prod/", true},
		{"service_account_named_prod", []string{"prod"}, "td/ns/dev/sa/prod", false},
		{"namespace_prefix_is_not_enough", []string{"prod"}, "td/ns/production/sa/x", false},
		{"namespace_suffix_is_not_enough", []string{"prod"}, "td/ns/preprod/sa/x", false},
		{"with_scheme", []string{"prod"}, "spiffe://td/ns/prod/sa/web", true},
		{"trust_domain_named_ns", []string{"prod"}, "ns/prod/sa/web", true},
		{"ns_namespace_then_prod", []string{"prod"}, "td/ns/ns/prod/y", true},
		{"plaintext", []string{"prod"}, "", false},
		{"no_ns_segment", []string{"prod"}, "td/prod/sa/x", false},
		{"presence", []string{"*"}, "td/ns/x/sa/y", true},
		{"presence_needs_a_following_slash", []string{"*"}, "td/ns/x", false},
		{"presence_without_ns", []string{"*"}, "td/workload", false},
		{"prefix", []string{"team-*"}, "td/ns/team-a/sa/x", true},
		{"prefix_later_segment", []string{"team-*"}, "td/ns/x/sa/y/ns/team-b/z", true},
		{"prefix_no_trailing_segment", []string{"team-*"}, "td/ns/team-a", false},
		{"prefix_wildcard_spans_segments", []string{"team-*"}, "td/ns/team-/a", true},
		{"suffix", []string{"*-prod"}, "td/ns/eu-prod/sa/x", true},
		{"suffix_wildcard_spans_segments", []string{"*-prod"}, "td/ns/x/sa/eu-prod/y", true},
		{"suffix_miss", []string{"*-prod"}, "td/ns/eu-dev/sa/x", false},
		{"infix", []string{"a*b"}, "td/ns/axxb/sa/y", true},
		{"infix_overlap", []string{"ab*ba"}, "td/ns/aba/sa/y", false},
		{"double_star", []string{"**"}, "td/ns/x/y", true},
		{"value_with_slash", []string{"a/b"}, "td/ns/a/b/sa/y", true},
		{"value_with_slash_miss", []string{"a/b"}, "td/ns/a/sa/b", false},
		{"many_exact_values", many, "td/ns/x/sa/y/ns/prod/z", true},
		{"many_exact_values_miss", many, "td/ns/x/sa/prod", false},
		{"many_exact_values_no_trailing", many, "td/ns/prod", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if ref := istioNamespaceMatch(tc.values, tc.principal); ref != tc.want {
				t.Fatalf("the case disagrees with Istio's regex (%v); fix the case", ref)
			}
			s := newNSSet(tc.values)
			if got := s.match(tc.principal); got != tc.want {
				t.Fatalf("match(%q) with %q = %v, want %v", tc.principal, tc.values, got, tc.want)
			}
		})
	}
}

// Namespace values Istio would read as regular expressions are refused
// with an error naming the value, not matched differently.
func TestNamespaceRegexCharactersRefused(t *testing.T) {
	for _, v := range []string{"prod.v1", "a+", "(prod)", "pro[d]", "a|b", "^prod", "prod$", `pr\od`, "a?", "a{2}"} {
		t.Run(v, func(t *testing.T) {
			for _, yaml := range []string{
				fmt.Sprintf("apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: p, namespace: foo}\nspec:\n  rules:\n  - from: [{source: {namespaces: [%q]}}]\n", v),
				fmt.Sprintf("apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: p, namespace: foo}\nspec:\n  rules:\n  - when: [{key: source.namespace, notValues: [%q]}]\n", v),
			} {
				docs, err := Parse(strings.NewReader(yaml))
				if err == nil {
					_, err = Compile(docs, Options{})
				}
				if err == nil || !strings.Contains(err.Error(), "regular expression") || !strings.Contains(err.Error(), fmt.Sprintf("%q", v)) {
					t.Fatalf("got %v, want the value refused", err)
				}
			}
		})
	}
}

// FuzzNamespaceMatch holds nsSet to Istio's regular expression for any
// principal and any value without regular-expression operators.
func FuzzNamespaceMatch(f *testing.F) {
	for _, s := range [][2]string{
		{"prod", "td/ns/dev/sa/x/ns/prod/y"}, {"prod", "td/ns/prod"}, {"team-*", "td/ns/team-a/sa/x"},
		{"*", "ns/x/"}, {"a*b*c", "td/ns/abxbc/ns/c/"}, {"a/b", "td/ns/a/b/"}, {"*-prod", "spiffe://td/ns/x-prod/y"},
	} {
		f.Add(s[0], s[1])
	}
	f.Fuzz(func(t *testing.T, value, principal string) {
		if value == "" || len(value) > 64 || len(principal) > 256 || strings.ContainsAny(value, nsRegexMeta) ||
			strings.ContainsAny(value+principal, "\n\x00") || !utf8.ValidString(value) || !utf8.ValidString(principal) {
			return
		}
		s := newNSSet([]string{value})
		if got, want := s.match(principal), istioNamespaceMatch([]string{value}, principal); got != want {
			t.Fatalf("match(%q) with [%q] = %v, Istio's regex says %v", principal, value, got, want)
		}
	})
}
