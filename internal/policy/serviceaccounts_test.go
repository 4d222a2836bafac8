package policy

import (
	"fmt"
	"regexp"
	"slices"
	"strings"
	"testing"
	"unicode/utf8"
)

// istioServiceAccountRegex is the matcher Istio generates for a
// serviceAccounts value (srcServiceAccountGenerator, serviceAccountRegex):
// the value cut at its first "/" into namespace and name (the policy's
// namespace when there is no "/"), pasted unescaped into
// spiffe://.+/ns/<ns>/(.+/|)sa/<name>(/.+)?, matched by Envoy (RE2, whole
// string) against the principal with its scheme. The tests hold saSet to
// it.
func istioServiceAccountRegex(policyNS, v string) *regexp.Regexp {
	ns, sa, ok := strings.Cut(v, "/")
	if !ok {
		ns, sa = policyNS, v
	}
	return regexp.MustCompile(`^(?:spiffe://.+/ns/` + ns + `/(.+/|)sa/` + sa + `(/.+)?)$`)
}

func istioServiceAccountMatch(policyNS string, values []string, principal string) bool {
	if principal == "" {
		return false
	}
	full := "spiffe://" + strings.TrimPrefix(principal, "spiffe://")
	for _, v := range values {
		if istioServiceAccountRegex(policyNS, v).MatchString(full) {
			return true
		}
	}
	return false
}

func compileSASet(t testing.TB, policyNS string, values []string) saSet {
	t.Helper()
	accts := make([]serviceAccount, len(values))
	for i, v := range values {
		a, err := parseServiceAccount(v, policyNS)
		if err != nil {
			t.Fatalf("parseServiceAccount(%q): %v", v, err)
		}
		accts[i] = a
	}
	return newSASet(accts)
}

func TestServiceAccountMatchesIstio(t *testing.T) {
	web := []string{"prod/web"}
	many := []string{"a/b", "c/d", "e/f", "g/h", "i/j", "k/l", "m/n", "o/p", "prod/web"}
	for _, tc := range []struct {
		name      string
		values    []string
		principal string
		want      bool
	}{
		{"exact", web, "td/ns/prod/sa/web", true},
		{"with_scheme", web, "spiffe://td/ns/prod/sa/web", true},
		{"segments_between_namespace_and_sa", web, "td/ns/prod/pod/p-1/sa/web", true},
		{"segments_after_name", web, "td/ns/prod/sa/web/v2", true},
		{"trailing_slash", web, "td/ns/prod/sa/web/", false},
		{"two_trailing_slashes", web, "td/ns/prod/sa/web//", true},
		{"empty_segment_between", web, "td/ns/prod//sa/web", false},
		{"two_empty_segments_between", web, "td/ns/prod///sa/web", true},
		{"sa_in_a_later_segment", web, "td/ns/prod/sa/x/sa/web", true},
		{"repeated_ns", web, "td/ns/dev/ns/prod/sa/web", true},
		{"account_in_a_later_segment", web, "td/ns/dev/sa/x/ns/prod/sa/web", true},
		{"account_before_another", web, "td/ns/prod/sa/web/ns/tools/sa/scanner", true},
		{"later_ns_without_sa", web, "td/ns/prod/sa/web/ns/x", true},
		{"sa_of_an_earlier_namespace", web, "td/ns/prod/x/ns/dev/sa/web", true},
		{"name_prefix_is_not_enough", web, "td/ns/prod/sa/web-admin", false},
		{"name_suffix_is_not_enough", web, "td/ns/prod/sa/old-web", false},
		{"namespace_prefix_is_not_enough", web, "td/ns/production/sa/web", false},
		{"namespace_suffix_is_not_enough", web, "td/ns/preprod/sa/web", false},
		{"missing_name", web, "td/ns/prod/sa", false},
		{"missing_name_with_slash", web, "td/ns/prod/sa/", false},
		{"namespace_only", web, "td/ns/prod", false},
		{"sa_before_ns", web, "td/sa/web/ns/prod", false},
		{"sa_as_namespace_name", web, "td/ns/prod/ns/sa/web", true},
		{"trust_domain_named_ns", web, "ns/prod/sa/web", false},
		{"trust_domain_named_ns_then_more", web, "ns/ns/prod/sa/web", true},
		{"empty_trust_domain", web, "/ns/prod/sa/web", false},
		{"slash_as_trust_domain", web, "//ns/prod/sa/web", true},
		{"namespace_named_sa", []string{"sa/web"}, "td/ns/sa/web", false},
		{"namespace_and_name_sa", []string{"sa/sa"}, "td/ns/sa/x/sa/sa/sa", true},
		{"newline_after_name", web, "td/ns/prod/sa/web\n", false},
		{"newline_in_tail", web, "td/ns/prod/sa/web/\n", false},
		{"newline_in_trust_domain", web, "t\nd/ns/prod/sa/web", false},
		{"newline_between", web, "td/ns/prod/x\n/sa/web", false},
		{"plaintext", web, "", false},
		{"bare_name_in_policy_namespace", []string{"web"}, "td/ns/finance/sa/web", true},
		{"bare_name_other_namespace", []string{"web"}, "td/ns/prod/sa/web", false},
		{"unicode_name", []string{"prod/wéb"}, "td/ns/prod/sa/wéb/x", true},
		{"many_values", many, "td/ns/x/sa/y/ns/prod/sa/web", true},
		{"many_values_miss", many, "td/ns/prod/sa/webs", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if ref := istioServiceAccountMatch("finance", tc.values, tc.principal); ref != tc.want {
				t.Fatalf("the case disagrees with Istio's regex (%v); fix the case", ref)
			}
			s := compileSASet(t, "finance", tc.values)
			if got := s.match(tc.principal); got != tc.want {
				t.Fatalf("match(%q) with %q = %v, want %v", tc.principal, tc.values, got, tc.want)
			}
		})
	}
}

// The accounts an explanation lists are exactly those the matcher
// matches.
func TestPrincipalServiceAccounts(t *testing.T) {
	for _, tc := range []struct {
		principal string
		want      []string
	}{
		{"spiffe://td/ns/prod/sa/web", []string{"prod/web"}},
		{"td/ns/prod/sa/web/ns/tools/sa/scanner", []string{"prod/web", "prod/scanner", "tools/scanner"}},
		{"td/ns/dev/ns/prod/sa/web", []string{"dev/web", "prod/web"}},
		{"td/ns/prod/sa/web/", nil},
		{"td/ns/prod//sa/web", nil},
		{"ns/prod/sa/web", nil},
		{"td/workload", nil},
		{"", nil},
	} {
		t.Run(tc.principal, func(t *testing.T) {
			got := principalServiceAccounts(tc.principal)
			if !slices.Equal(got, tc.want) {
				t.Fatalf("principalServiceAccounts(%q) = %q, want %q", tc.principal, got, tc.want)
			}
			for _, a := range got {
				if s := compileSASet(t, "x", []string{a}); !s.match(tc.principal) {
					t.Errorf("listed %q, which does not match", a)
				}
			}
		})
	}
}

// Service accounts Istio would read as regular expressions are refused
// with an error naming the value, not matched differently; so are values
// no SPIFFE ID can hold.
func TestServiceAccountRegexCharactersRefused(t *testing.T) {
	for _, tc := range []struct{ value, want string }{
		{"prod/web.v1", "regular expression"},
		{"my.sa", "regular expression"},
		{"a+/web", "regular expression"},
		{"(prod)/web", "regular expression"},
		{"prod/w[e]b", "regular expression"},
		{"prod/a|b", "regular expression"},
		{"^prod/web", "regular expression"},
		{"prod/web$", "regular expression"},
		{`prod/w\eb`, "regular expression"},
		{"prod/web?", "regular expression"},
		{"prod/w{2}", "regular expression"},
		{"prod/*", "wildcards are not allowed"},
		{"prod/we\nb", "control character"},
		{"prod/we\x7fb", "control character"},
		{"prod/web/x", "must be <namespace>/<name> or <name>"},
		{"/web", "must be <namespace>/<name> or <name>"},
		{"prod/", "must be <namespace>/<name> or <name>"},
	} {
		t.Run(fmt.Sprintf("%q", tc.value), func(t *testing.T) {
			for _, field := range []string{
				fmt.Sprintf("  - from: [{source: {serviceAccounts: [%q]}}]\n", tc.value),
				fmt.Sprintf("  - from: [{source: {notServiceAccounts: [%q]}}]\n", tc.value),
				fmt.Sprintf("  - when: [{key: source.serviceAccount, values: [%q]}]\n", tc.value),
				fmt.Sprintf("  - when: [{key: source.serviceAccount, notValues: [%q]}]\n", tc.value),
			} {
				yaml := "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: p, namespace: foo}\nspec:\n  rules:\n" + field
				docs, err := Parse(strings.NewReader(yaml))
				if err == nil {
					_, err = Compile(docs, Options{})
				}
				if err == nil || !strings.Contains(err.Error(), tc.want) || !strings.Contains(err.Error(), fmt.Sprintf("%q", tc.value)) {
					t.Fatalf("%s: got %v, want the value refused (%s)", strings.TrimSpace(field), err, tc.want)
				}
			}
		})
	}
	// YAML cannot carry invalid UTF-8 ("\xff" is U+00FF there); a value
	// from elsewhere is refused all the same.
	if _, err := parseServiceAccount("prod/we\xffb", "foo"); err == nil || !strings.Contains(err.Error(), "invalid UTF-8") {
		t.Errorf("invalid UTF-8: got %v", err)
	}
}

// FuzzServiceAccountMatch holds saSet to Istio's regular expression, and
// explanations to saSet, for any value the loader accepts and any
// principal. So that near misses are common, the principal is also tried
// with every "@" replaced by "/ns/<ns>/" and every "%" by "sa/<name>" of
// the value.
func FuzzServiceAccountMatch(f *testing.F) {
	for _, s := range [][2]string{
		{"prod/web", "td/ns/prod/sa/web"}, {"prod/web", "td@%/"}, {"prod/web", "td@/%"}, {"prod/web", "td@x/%/y"},
		{"prod/web", "td/ns/dev@x/%/y"}, {"web", "ns@%"}, {"sa/sa", "td@x/%/sa"}, {"prod/web", "spiffe://td@%//"},
		{"a/b", "x@\n/%"}, {"prod/web", "@%"}, {"prod/web", "/@%"}, {"prod/web", "td@%-x"},
	} {
		f.Add(s[0], s[1])
	}
	f.Fuzz(func(t *testing.T, value, principal string) {
		// The request checker and go-spiffe admit only valid UTF-8
		// principals; RE2 and Go's regexp differ on invalid bytes.
		if len(value) > 64 || len(principal) > 128 {
			return
		}
		acct, err := parseServiceAccount(value, "foo")
		if err != nil {
			return
		}
		s := newSASet([]serviceAccount{acct})
		derived := strings.NewReplacer("@", "/ns/"+acct.ns+"/", "%", "sa/"+acct.name).Replace(principal)
		for _, p := range []string{principal, derived} {
			if !utf8.ValidString(p) {
				continue
			}
			got, want := s.match(p), istioServiceAccountMatch("foo", []string{value}, p)
			if got != want {
				t.Fatalf("match(%q) with [%q] = %v, Istio's regex says %v", p, value, got, want)
			}
			if listed := slices.Contains(principalServiceAccounts(p), acct.ns+"/"+acct.name); listed != got {
				t.Fatalf("principalServiceAccounts(%q) lists %s/%s: %v, match says %v", p, acct.ns, acct.name, listed, got)
			}
		}
	})
}
