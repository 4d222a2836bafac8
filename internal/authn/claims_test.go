package authn

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"reflect"
	"strings"
	"sync"
	"testing"

	"github.com/google/go-cmp/cmp"
	securityv1beta1 "istio.io/api/security/v1beta1"
)

// TestSpaceDelimitedClaims: the claims a rule names in
// spaceDelimitedClaims reach policy as word lists, on the first
// verification and on every cache hit alike; nothing else changes shape.
func TestSpaceDelimitedClaims(t *testing.T) {
	keys(t)
	tests := []struct {
		name  string
		names []string       // the rule's spaceDelimitedClaims
		set   map[string]any // claims added to the token
		want  map[string]any // claims expected in Auth.Claims (others: as sent)
	}{
		{"custom_claim_split", []string{"roles"},
			map[string]any{"roles": "admin editor"},
			map[string]any{"roles": []any{"admin", "editor"}}},
		{"single_word_is_a_list", []string{"roles"},
			map[string]any{"roles": "admin"},
			map[string]any{"roles": []any{"admin"}}},
		{"runs_of_whitespace_separate_once", []string{"roles"},
			map[string]any{"roles": "  admin \t editor  "},
			map[string]any{"roles": []any{"admin", "editor"}}},
		{"newline_separates", []string{"roles"},
			map[string]any{"roles": "admin\neditor"},
			map[string]any{"roles": []any{"admin", "editor"}}},
		{"several_claims", []string{"roles", "custom_scope"},
			map[string]any{"roles": "a b", "custom_scope": "x y z"},
			map[string]any{"roles": []any{"a", "b"}, "custom_scope": []any{"x", "y", "z"}}},
		{"duplicate_names_split_once", []string{"roles", "roles"},
			map[string]any{"roles": "a b"},
			map[string]any{"roles": []any{"a", "b"}}},
		{"unnamed_claim_stays_a_string", []string{"roles"},
			map[string]any{"roles": "a b", "groups": "c d"},
			map[string]any{"roles": []any{"a", "b"}, "groups": "c d"}},
		{"no_names_nothing_split", nil,
			map[string]any{"roles": "a b"},
			map[string]any{"roles": "a b"}},
		// The engine splits scope and permission itself; naming them
		// hands it a list it matches word by word just the same.
		{"scope_unnamed_left_to_the_engine", []string{"roles"},
			map[string]any{"scope": "read write", "permission": "p q"},
			map[string]any{"scope": "read write", "permission": "p q"}},
		{"scope_named_presplit", []string{"scope", "permission"},
			map[string]any{"scope": "read write", "permission": "p q"},
			map[string]any{"scope": []any{"read", "write"}, "permission": []any{"p", "q"}}},
		{"empty_string_unchanged", []string{"roles"},
			map[string]any{"roles": ""},
			map[string]any{"roles": ""}},
		{"whitespace_only_unchanged", []string{"roles"},
			map[string]any{"roles": "   "},
			map[string]any{"roles": "   "}},
		{"array_unchanged", []string{"roles"},
			map[string]any{"roles": []any{"a b", "c"}},
			map[string]any{"roles": []any{"a b", "c"}}},
		{"number_bool_object_unchanged", []string{"n", "b", "o"},
			map[string]any{"n": 5, "b": true, "o": map[string]any{"x": "a b"}},
			map[string]any{"n": float64(5), "b": true, "o": map[string]any{"x": "a b"}}},
		{"absent_claim_stays_absent", []string{"roles"},
			nil,
			map[string]any{"roles": nil}},
		// As in Envoy, names are top-level claim names: a dot is part of
		// the name, not a path into nested objects.
		{"dotted_name_is_top_level", []string{"realm.roles"},
			map[string]any{"realm.roles": "a b", "realm": map[string]any{"roles": "c d"}},
			map[string]any{"realm.roles": []any{"a", "b"}, "realm": map[string]any{"roles": "c d"}}},
		{"registered_claim_named", []string{"sub"},
			map[string]any{"sub": "alice"},
			map[string]any{"sub": []any{"alice"}}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			v, _ := newTestVerifier(t, Options{})
			rule := inlineRule(t, keyES256)
			rule.SpaceDelimitedClaims = tc.names
			rule.OutputClaimToHeaders = []*securityv1beta1.ClaimToHeader{{Header: "x-roles", Claim: "roles"}}
			tok := sign(t, keyES256, claims(tc.set))
			var first map[string]any
			for i, kind := range []string{"miss", "hit"} {
				auth, err := v.Verify(ruleList(rule), bearer(tok))
				if err != nil {
					t.Fatalf("%s: %v", kind, err)
				}
				for name, want := range tc.want {
					got, present := auth.Claims[name]
					if want == nil {
						if present {
							t.Errorf("%s: claim %s = %#v, want absent", kind, name, got)
						}
						continue
					}
					if diff := cmp.Diff(want, got); diff != "" {
						t.Errorf("%s: claim %s (-want +got):\n%s", kind, name, diff)
					}
				}
				// The principal still comes from the original sub.
				if auth.Principal != testIssuer+"/alice" {
					t.Errorf("%s: principal = %q", kind, auth.Principal)
				}
				// Headers copy the claim as sent, never the list (a value
				// with CR or LF is no header value: no header at all).
				if s, ok := tc.set["roles"].(string); ok && !strings.ContainsAny(s, "\r\n") && auth.SetHeaders["X-Roles"] != s {
					t.Errorf("%s: X-Roles = %q, want %q", kind, auth.SetHeaders["X-Roles"], s)
				}
				if i == 0 {
					first = auth.Claims
				} else if !sameMap(first, auth.Claims) {
					t.Errorf("a hit returned a different claims map than the verification it reuses")
				}
			}
			if s := v.Stats(); s.CacheHits != 1 || s.CacheMisses != 1 {
				t.Fatalf("stats = %+v, want one miss then one hit", s)
			}
		})
	}
}

// sameMap reports whether a and b are one map (identity, not contents).
func sameMap(a, b map[string]any) bool {
	return reflect.ValueOf(a).UnsafePointer() == reflect.ValueOf(b).UnsafePointer()
}

// TestSplitClaimsCopyOnWrite: the input map is never written; a copy is
// made only when something is split.
func TestSplitClaimsCopyOnWrite(t *testing.T) {
	tests := []struct {
		name     string
		in       map[string]any
		names    []string
		wantCopy bool
	}{
		{"split_copies", map[string]any{"roles": "a b", "sub": "x"}, []string{"roles"}, true},
		{"nothing_named_shares", map[string]any{"roles": "a b"}, nil, false},
		{"named_absent_shares", map[string]any{"sub": "x"}, []string{"roles"}, false},
		{"named_not_string_shares", map[string]any{"roles": []any{"a"}}, []string{"roles"}, false},
		{"named_empty_shares", map[string]any{"roles": " "}, []string{"roles"}, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			before, _ := json.Marshal(tc.in)
			out := splitClaims(tc.in, tc.names)
			after, _ := json.Marshal(tc.in)
			if string(before) != string(after) {
				t.Fatalf("input modified: %s -> %s", before, after)
			}
			if copied := !sameMap(out, tc.in); copied != tc.wantCopy {
				t.Fatalf("copied = %v, want %v", copied, tc.wantCopy)
			}
			if len(out) != len(tc.in) {
				t.Fatalf("output has %d claims, input %d", len(out), len(tc.in))
			}
		})
	}
}

// TestCacheHitMatchesFullCheck: with several rules for one issuer, a
// cached token is reused only where the full check would pick the same
// rule, so the claims' shape (and headers, forwarding) never depends on
// which request came first.
func TestCacheHitMatchesFullCheck(t *testing.T) {
	keys(t)
	srv := newJWKSServer(t, jwksOf(t, keyRSA))
	split := func(r *securityv1beta1.JWTRule) *securityv1beta1.JWTRule {
		r.SpaceDelimitedClaims = []string{"roles"}
		return r
	}
	plain := inlineRule(t, keyES256)
	splitting := split(inlineRule(t, keyES256))
	splitOtherAud := split(&securityv1beta1.JWTRule{Issuer: testIssuer, Jwks: jwksOf(t, keyES256), Audiences: []string{"payments"}})
	splitRemote := split(&securityv1beta1.JWTRule{Issuer: testIssuer, JwksUri: srv.URL + "/jwks"})
	otherIssuer := split(&securityv1beta1.JWTRule{Issuer: "https://other.example", Jwks: jwksOf(t, keyES256)})

	type step struct {
		rules  []*securityv1beta1.JWTRule
		before func() // runs before this step's Verify
		want   any    // the roles claim
		hit    bool
	}
	words := []any{"admin", "editor"}
	tests := []struct {
		name  string
		steps []step
	}{
		{"earlier_accepting_rule_is_not_skipped", []step{
			{rules: ruleList(plain), want: "admin editor"},
			{rules: ruleList(splitting, plain), want: words},
			{rules: ruleList(splitting, plain), want: words, hit: true},
			{rules: ruleList(plain), want: "admin editor"},
		}},
		{"later_rule_still_hits", []step{
			{rules: ruleList(splitting), want: words},
			{rules: ruleList(splitting, plain), want: words, hit: true},
		}},
		{"rule_of_another_issuer_in_front_is_ignored", []step{
			{rules: ruleList(plain), want: "admin editor"},
			{rules: ruleList(otherIssuer, plain), want: "admin editor", hit: true},
		}},
		{"earlier_rule_that_refused_is_remembered", []step{
			{rules: ruleList(splitOtherAud, plain), want: "admin editor"},
			{rules: ruleList(splitOtherAud, plain), want: "admin editor", hit: true},
		}},
		{"refusal_counts_only_for_the_keys_it_was_made_with", []step{
			{rules: ruleList(splitRemote, plain), want: "admin editor"},
			{rules: ruleList(splitRemote, plain), want: "admin editor", hit: true},
			{rules: ruleList(splitRemote, plain), want: words, before: func() {
				srv.set(jwksOf(t, keyRSA, keyES256), http.StatusOK)
			}},
			{rules: ruleList(splitRemote, plain), want: words, hit: true},
		}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			srv.set(jwksOf(t, keyRSA), http.StatusOK)
			v, _ := newTestVerifier(t, Options{})
			if err := v.Prepare(context.Background(), ruleList(plain, splitting, splitOtherAud, splitRemote, otherIssuer)); err != nil {
				t.Fatal(err)
			}
			tok := sign(t, keyES256, claims(map[string]any{"roles": "admin editor"}))
			for i, s := range tc.steps {
				if s.before != nil {
					s.before()
					if err := v.Refresh(context.Background()); err != nil {
						t.Fatal(err)
					}
				}
				hits := v.Stats().CacheHits
				auth, err := v.Verify(s.rules, bearer(tok))
				if err != nil {
					t.Fatalf("step %d: %v", i, err)
				}
				if diff := cmp.Diff(s.want, auth.Claims["roles"]); diff != "" {
					t.Errorf("step %d: roles (-want +got):\n%s", i, diff)
				}
				if hit := v.Stats().CacheHits > hits; hit != s.hit {
					t.Errorf("step %d: cache hit = %v, want %v", i, hit, s.hit)
				}
			}
		})
	}
}

// TestSharedClaimsNeverMutated: concurrent requests with one token share
// its cached claims map while the policy engine reads it and other rules
// verify the same token; -race reports any write to a shared map, and the
// map ends as it began.
func TestSharedClaimsNeverMutated(t *testing.T) {
	keys(t)
	v, _ := newTestVerifier(t, Options{})
	splitting := inlineRule(t, keyES256)
	splitting.SpaceDelimitedClaims = []string{"roles", "scope"}
	plain := inlineRule(t, keyES256)
	tok := sign(t, keyES256, claims(map[string]any{"roles": "admin editor", "scope": "read write", "nested": map[string]any{"roles": "x y"}}))

	first, err := v.Verify(ruleList(splitting), bearer(tok))
	if err != nil {
		t.Fatal(err)
	}
	snapshot := func(m map[string]any) string {
		b, err := json.Marshal(m)
		if err != nil {
			t.Fatal(err)
		}
		return string(b)
	}
	want := snapshot(first.Claims)
	if !strings.Contains(want, `"roles":["admin","editor"]`) {
		t.Fatalf("claims = %s", want)
	}
	var wg sync.WaitGroup
	for g := range 4 {
		wg.Go(func() {
			rules := ruleList(splitting)
			if g%2 == 1 {
				rules = ruleList(plain) // replaces the cache entry back and forth
			}
			for range 200 {
				auth, err := v.Verify(rules, bearer(tok))
				if err != nil {
					t.Error(err)
					return
				}
				_ = snapshot(auth.Claims) // reads every value, nested ones included
			}
		})
	}
	wg.Wait()
	if got := snapshot(first.Claims); got != want {
		t.Fatalf("claims handed out earlier changed:\n got %s\nwant %s", got, want)
	}
	again, err := v.Verify(ruleList(plain), bearer(tok))
	if err != nil {
		t.Fatal(err)
	}
	if again.Claims["roles"] != "admin editor" {
		t.Fatalf("plain rule sees roles = %#v", again.Claims["roles"])
	}
}

// TestValidateSpaceDelimitedClaims: the limits ValidateRule applies.
func TestValidateSpaceDelimitedClaims(t *testing.T) {
	keys(t)
	many := make([]string, maxSpaceDelimited+1)
	for i := range many {
		many[i] = "c" + strings.Repeat("x", i)
	}
	tests := []struct {
		name    string
		names   []string
		wantErr string
	}{
		{"none", nil, ""},
		{"some", []string{"roles", "custom_scope", "provider.login.scope"}, ""},
		{"duplicates_allowed", []string{"roles", "roles"}, ""},
		{"at_limit", many[:maxSpaceDelimited], ""},
		{"too_many", many, "at most 64"},
		{"empty_name", []string{"roles", ""}, "spaceDelimitedClaims[1] is empty"},
		{"name_too_long", []string{strings.Repeat("r", maxSpaceDelimitedLen+1)}, "spaceDelimitedClaims[0] is longer than 1024 bytes"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			r := inlineRule(t, keyES256)
			r.SpaceDelimitedClaims = tc.names
			err := ValidateRule(r)
			if tc.wantErr == "" {
				if err != nil {
					t.Fatalf("ValidateRule: %v", err)
				}
				return
			}
			if !errors.Is(err, ErrInvalidRule) || !strings.Contains(err.Error(), tc.wantErr) {
				t.Fatalf("err = %v, want ErrInvalidRule containing %q", err, tc.wantErr)
			}
			// An unenforceable rule fails closed for its tokens.
			v, _ := newTestVerifier(t, Options{})
			if _, err := v.Verify(ruleList(r), bearer(sign(t, keyES256, claims(nil)))); !errors.Is(err, ErrRuleInvalid) {
				t.Fatalf("Verify err = %v, want ErrRuleInvalid", err)
			}
		})
	}
}
