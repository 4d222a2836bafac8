package policy

import (
	"net/url"
	"reflect"
	"regexp"
	"strings"
	"testing"
)

// TestRouteTemplateMatch: a RegoProvider route matches the normalized
// paths its template names and no others, with the rules of a policy's
// path templates (Envoy's uri_template matcher), {name} being a {*} that
// captures. A route declares the attributes Rego decides on, so a route
// that matches a path it does not name hands the policy another route's
// attributes.
func TestRouteTemplateMatch(t *testing.T) {
	tests := []struct {
		name, tmpl, path string
		want             bool
		caps             map[string]string
	}{
		{"root_route_matches_root", "/", "/", true, nil},
		{"root_route_is_not_any_segment", "/", "/admin", false, nil},
		{"trailing_slash_wants_a_trailing_slash", "/records/", "/records/", true, nil},
		{"trailing_slash_is_not_a_segment", "/records/", "/records/alice", false, nil},
		{"literal", "/records", "/records", true, nil},
		{"literal_not_prefix", "/records", "/records/alice", false, nil},
		{"capture_one_segment", "/records/{owner}/{id}", "/records/alice/7", true, map[string]string{"owner": "alice", "id": "7"}},
		{"capture_decoded", "/records/{owner}", "/records/a%2Fb", true, map[string]string{"owner": "a/b"}},
		{"capture_not_empty", "/records/{owner}/x", "/records//x", false, nil},
		{"capture_not_two_segments", "/records/{owner}", "/records/a/b", false, nil},
		{"one_segment_pchar_only", "/records/{*}", "/records/a*b", false, nil},
		{"rest_needs_the_slash", "/files/{**}", "/files", false, nil},
		{"rest_empty", "/files/{**}", "/files/", true, nil},
		{"rest_many", "/files/{**}", "/files/a/b/c", true, nil},
		{"rest_everything", "/{**}", "/a/b", true, nil},
		{"rest_after_capture", "/u/{user}/{**}", "/u/bob/x/y", true, map[string]string{"user": "bob"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			segs, _, err := parseRouteTemplate(tc.tmpl)
			if err != nil {
				t.Fatalf("parseRouteTemplate(%q): %v", tc.tmpl, err)
			}
			r := regoRoute{segs: segs}
			caps, ok := r.match(tc.path, false)
			if ok != tc.want {
				t.Fatalf("%q on %q: %v, want %v", tc.tmpl, tc.path, ok, tc.want)
			}
			if ok && len(tc.caps)+len(caps) > 0 && !reflect.DeepEqual(caps, tc.caps) {
				t.Fatalf("captures %v, want %v", caps, tc.caps)
			}
		})
	}
}

// TestRouteTemplateRefused: templates whose meaning is unclear are load
// errors, not routes that match something else.
func TestRouteTemplateRefused(t *testing.T) {
	tests := []struct{ name, tmpl, want string }{
		{"empty_segment", "/records//x", "empty path segment"},
		{"leading_empty_segment", "//records", "empty path segment"},
		{"no_slash", "records", "must start with /"},
		{"rest_not_last", "/a/{**}/b", "must be last"},
		{"rest_then_slash", "/a/{**}/", "must be last"},
		{"mixed_segment", "/a/x{id}", "mixes"},
		{"star_in_literal", "/a/b*", "only letters"},
		{"space_in_literal", "/a/b c", "only letters"},
		{"bad_name", "/a/{1x}", "not a name"},
		{"name_twice", "/a/{x}/{x}", "twice"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, _, err := parseRouteTemplate(tc.tmpl)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("parseRouteTemplate(%q): %v, want an error with %q", tc.tmpl, err, tc.want)
			}
		})
	}
}

// routeGrammar is the language of route templates, read independently of
// parseRouteTemplate: segments that are {*}, {name} or pchar literals,
// then optionally a last {**} or a trailing "/".
var routeGrammar = regexp.MustCompile(`^(/(\{\*\}|\{[A-Za-z_][A-Za-z0-9_]*\}|[` + envoyPCharClass + `]+))*(/\{\*\*\}|/)?$`)

// routeRegexp is the regular expression a route template means: Envoy's
// uri_template reading (envoyTemplateRegexp), with a named group for each
// {name}.
func routeRegexp(tmpl string) *regexp.Regexp {
	if tmpl == "/" {
		return regexp.MustCompile(`^/$`)
	}
	var b strings.Builder
	b.WriteString("^")
	for _, seg := range strings.Split(tmpl[1:], "/") {
		b.WriteString("/")
		switch {
		case seg == "{*}":
			b.WriteString("[" + envoyPCharClass + "]+")
		case seg == "{**}":
			b.WriteString("[" + envoyPCharClass + "/]*")
		case strings.HasPrefix(seg, "{"):
			b.WriteString("(?P<" + seg[1:len(seg)-1] + ">[" + envoyPCharClass + "]+)")
		default:
			b.WriteString(regexp.QuoteMeta(seg))
		}
	}
	b.WriteString("$")
	return regexp.MustCompile(b.String())
}

// FuzzRouteTemplate: parseRouteTemplate accepts exactly the templates of
// routeGrammar (names once each, within the value limit), and an accepted
// route matches exactly the paths routeRegexp matches, capturing the
// percent-decoded segments.
func FuzzRouteTemplate(f *testing.F) {
	for _, s := range [][2]string{
		{"/records/{owner}/{id}", "/records/alice/7"},
		{"/", "/x"},
		{"/records/", "/records/alice"},
		{"/records//x", "/records/a/x"},
		{"/files/{**}", "/files"},
		{"/u/{user}/{**}", "/u/b%2Fob/x"},
		{"/a/{*}", "/a/k=v"},
		{"/a/{x}/{x}", "/a/b/c"},
		{"/{**}", "/"},
		{"/a/b*", "/a/b*"},
	} {
		f.Add(s[0], s[1])
	}
	f.Fuzz(func(t *testing.T, tmpl, path string) {
		segs, names, err := parseRouteTemplate(tmpl)
		grammar := strings.HasPrefix(tmpl, "/") && len(tmpl) <= maxValueLen && routeGrammar.MatchString(tmpl) && uniqueNames(tmpl)
		if (err == nil) != grammar {
			t.Fatalf("parseRouteTemplate(%q): %v; the grammar says valid=%v", tmpl, err, grammar)
		}
		if err != nil {
			return
		}
		re := routeRegexp(tmpl)
		r := &regoRoute{segs: segs}
		// Ignoring case, literal segments match as (?i) reads them, and
		// what {name} captures is the path's own text. (?i) folds Unicode
		// too (K and the Kelvin sign), so only ASCII paths compare.
		if isASCII(path) {
			caps, ok := r.match(path, true)
			m := regexp.MustCompile("(?i)" + re.String()).FindStringSubmatch(path)
			if ok != (m != nil) {
				t.Fatalf("route %q on %q ignoring case: %v, the template's (?i) regexp says %v", tmpl, path, ok, m != nil)
			}
			for i, n := range re.SubexpNames() {
				if ok && n != "" {
					want := m[i]
					if u, err := url.PathUnescape(want); err == nil {
						want = u
					}
					if caps[n] != want {
						t.Fatalf("route %q on %q ignoring case: {%s} = %q, want %q", tmpl, path, n, caps[n], want)
					}
				}
			}
		}
		caps, ok := r.match(path, false)
		m := re.FindStringSubmatch(path)
		if ok != (m != nil) {
			t.Fatalf("route %q on %q: %v, the template's regexp says %v", tmpl, path, ok, m != nil)
		}
		if !ok {
			return
		}
		for i, n := range re.SubexpNames() {
			if n == "" {
				continue
			}
			if !names[n] {
				t.Fatalf("route %q: {%s} not among the names %v", tmpl, n, names)
			}
			want := m[i]
			if u, err := url.PathUnescape(want); err == nil {
				want = u
			}
			if caps[n] != want {
				t.Fatalf("route %q on %q: {%s} = %q, want %q", tmpl, path, n, caps[n], want)
			}
		}
	})
}

func uniqueNames(tmpl string) bool {
	seen := map[string]bool{}
	for _, seg := range strings.Split(tmpl, "/") {
		if strings.HasPrefix(seg, "{") && seg != "{*}" && seg != "{**}" {
			if seen[seg] {
				return false
			}
			seen[seg] = true
		}
	}
	return true
}

// inputPathGrammar is the language of input mapping sources, read
// independently of parseInputPath: a root field, then .name or [name]
// parts (a bracketed name holds no bracket).
var inputPathGrammar = regexp.MustCompile(`^(source|destination|request|connection|auth|time|attributes)(\.[A-Za-z0-9_-]+|\[[^\[\]]+\])*$`)

// inputPathParts splits a path of inputPathGrammar into its names.
var inputPathParts = regexp.MustCompile(`^[a-z]+|\.[A-Za-z0-9_-]+|\[[^\[\]]+\]`)

// TestParseInputPath: sources that read as something else than they say
// are refused.
func TestParseInputPath(t *testing.T) {
	tests := []struct {
		name, in string
		want     []string // nil: refused
	}{
		{"dotted", "auth.claims.sub", []string{"auth", "claims", "sub"}},
		{"bracket", "request.headers[x-user]", []string{"request", "headers", "x-user"}},
		{"bracket_url", "auth.claims[https://example.com/roles]", []string{"auth", "claims", "https://example.com/roles"}},
		{"brackets_nested", "auth.claims[a.b][c]", []string{"auth", "claims", "a.b", "c"}},
		{"bracket_then_dot", "auth.claims[a].b", []string{"auth", "claims", "a", "b"}},
		{"name_glued_after_bracket", "auth.claims[a]b", nil},
		{"root_in_brackets", "[auth].claims", nil},
		{"unknown_root", "input.x", nil},
		{"empty_part", "auth..sub", nil},
		{"trailing_dot", "auth.claims.", nil},
		{"unclosed", "auth.claims[sub", nil},
		{"nested_bracket", "auth.claims[a[b]]", nil},
		{"empty_bracket", "auth.claims[]", nil},
		{"too_deep", "auth" + strings.Repeat(".a", maxInputPathDepth+maxClaimDepth), nil},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := parseInputPath(tc.in)
			if tc.want == nil {
				if err == nil {
					t.Fatalf("parseInputPath(%q) = %q, want an error", tc.in, got)
				}
				return
			}
			if err != nil || !reflect.DeepEqual(got, tc.want) {
				t.Fatalf("parseInputPath(%q) = %q, %v; want %q", tc.in, got, err, tc.want)
			}
		})
	}
}

// FuzzInputPath: parseInputPath accepts exactly the sources of
// inputPathGrammar (up to the depth limit) and returns their names in
// order.
func FuzzInputPath(f *testing.F) {
	for _, s := range []string{
		"auth.claims.sub", "request.headers[x-user]", "auth.claims[https://example.com/roles]",
		"auth.claims[a]b", "[auth]", "auth..b", "auth.", "auth[", "auth[a[b]]", "attributes.owner",
		"time.hour", "source.principal", "auth.claims[a]]", "auth.claims[\x00]",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		got, err := parseInputPath(s)
		var want []string
		if inputPathGrammar.MatchString(s) {
			for _, p := range inputPathParts.FindAllString(s, -1) {
				switch p[0] {
				case '.':
					p = p[1:]
				case '[':
					p = p[1 : len(p)-1]
				}
				want = append(want, p)
			}
			if len(want) > maxInputPathDepth+maxClaimDepth {
				want = nil
			}
		}
		if want == nil {
			if err == nil {
				t.Fatalf("parseInputPath(%q) = %q; the grammar refuses it", s, got)
			}
			return
		}
		if err != nil || !reflect.DeepEqual(got, want) {
			t.Fatalf("parseInputPath(%q) = %q, %v; want %q", s, got, err, want)
		}
	})
}
