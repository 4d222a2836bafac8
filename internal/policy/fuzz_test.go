package policy

import (
	"bytes"
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"strings"
	"testing"
)

func addConformanceSeeds(f *testing.F, pattern string) {
	files, _ := filepath.Glob(filepath.Join("testdata", "conformance", "*", pattern))
	for _, file := range files {
		if b, err := os.ReadFile(file); err == nil {
			f.Add(b)
		}
	}
}

// FuzzParse: the loader never panics, and whatever it accepts compiles,
// and its canonical Raw reads back to the same bytes.
func FuzzParse(f *testing.F) {
	addConformanceSeeds(f, "*.yaml")
	f.Add([]byte("apiVersion: v1\nkind: List\nitems:\n- apiVersion: security.istio.io/v1\n  kind: PeerAuthentication\n  metadata: {name: a}\n"))
	f.Add([]byte("---\n---\n# c\n"))
	f.Add([]byte("a: &a [*a]"))
	f.Add([]byte(`{"apiVersion":"security.istio.io/v1","kind":"AuthorizationPolicy","metadata":{"name":"x"},"spec":{"rules":[{"when":[{"key":"request.auth.claims[a][b]","values":["*"]}]}]}}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		// ParseSourceEach (policy lint) keeps the valid documents of an
		// input with invalid ones: they must compile together, and with no
		// error they are exactly Parse's.
		each, eachErr := ParseSourceEach("", data)
		if _, err := Compile(each, Options{}); err != nil {
			t.Fatalf("documents ParseSourceEach kept do not compile: %v", err)
		}
		docs, err := Parse(bytes.NewReader(data))
		if (err == nil) != (eachErr == nil) || len(docs) != len(each) && err == nil {
			t.Fatalf("Parse: %d docs, %v; ParseSourceEach: %d docs, %v", len(docs), err, len(each), eachErr)
		}
		if err != nil {
			if docs != nil {
				t.Fatal("documents returned with an error")
			}
			return
		}
		if _, err := Compile(docs, Options{}); err != nil {
			t.Fatalf("accepted documents do not compile: %v", err)
		}
		for _, d := range docs {
			back, err := ParseJSON(d.Raw)
			if err != nil {
				t.Fatalf("Raw does not parse back: %v\n%s", err, d.Raw)
			}
			if !bytes.Equal(back.Raw, d.Raw) {
				t.Fatalf("Raw is not stable:\n%s\n%s", d.Raw, back.Raw)
			}
		}
	})
}

// FuzzParseJSON: one JSON document, as the watch stream carries them.
func FuzzParseJSON(f *testing.F) {
	f.Add([]byte(`{"apiVersion":"security.istio.io/v1","kind":"PeerAuthentication","metadata":{"name":"a"},"spec":{"selector":{"matchLabels":{"a":"b"}},"portLevelMtls":{"80":{"mode":"STRICT"}}}}`))
	f.Add([]byte(`{"apiVersion":"security.istio.io/v1","kind":"RequestAuthentication","metadata":{"name":"a"},"spec":{"jwtRules":[{"issuer":"i","timeout":"1s"}]}}`))
	f.Add([]byte(`{"apiVersion":"security.istio.io/v1","kind":"RequestAuthentication","metadata":{"name":"a"},"spec":{"jwtRules":[{"jwksUri":"https://k.example/jwks","timeout":"10ms"}]}}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		d, err := ParseJSON(data)
		if err != nil {
			return
		}
		if _, err := Compile([]Document{d}, Options{}); err != nil {
			t.Fatalf("accepted document does not compile: %v", err)
		}
	})
}

// FuzzNormalizePath: normalization never panics; its output is an
// absolute path without query, dot segments or (when merging) empty
// segments, and normalizing it again changes nothing.
func FuzzNormalizePath(f *testing.F) {
	for _, s := range []string{"/", "/a/../b", `/a\b`, "/%2e%2E/x", "/a%2fb%5C", "//a//b/", "/a?b#c", "/caf\xc3\xa9 x", "/%zz%4", "/a/.", "/..", "/a/%00"} {
		f.Add(s, uint8(0))
		f.Add(s, uint8(3))
	}
	f.Fuzz(func(t *testing.T, p string, m uint8) {
		mode := PathNormalization(m % 4)
		out, err := NormalizePath(p, mode)
		if err != nil {
			return
		}
		if !strings.HasPrefix(out, "/") || strings.ContainsAny(out, "?# ") {
			t.Fatalf("NormalizePath(%q, %v) = %q", p, mode, out)
		}
		if mode == NormalizeNone {
			return
		}
		for _, seg := range strings.Split(out[1:], "/") {
			if seg == "." || seg == ".." {
				t.Fatalf("NormalizePath(%q, %v) = %q keeps a dot segment", p, mode, out)
			}
		}
		if strings.ContainsRune(out, '\\') {
			t.Fatalf("NormalizePath(%q, %v) = %q keeps a backslash", p, mode, out)
		}
		if (mode == NormalizeMergeSlashes || mode == NormalizeDecodeAndMergeSlashes) && strings.Contains(out, "//") {
			t.Fatalf("NormalizePath(%q, %v) = %q keeps //", p, mode, out)
		}
		// Escapes are decoded once and "%25" is never decoded, so a
		// second pass finds nothing to do, in every mode.
		if again, err := NormalizePath(out, mode); err != nil || again != out {
			t.Fatalf("not idempotent: %q -> %q -> %q (%v)", p, out, again, err)
		}
	})
}

// FuzzConditionKey: the `when` key parser never panics and never accepts
// an empty header or claim name.
func FuzzConditionKey(f *testing.F) {
	for _, k := range []string{"request.headers[User-Agent]", "request.auth.claims[a][b]", "request.auth.claims[]", "request.headers[a][b]", "source.ip", "experimental.envoy.filters.a[b]", "request.auth.claims[[a]]"} {
		f.Add(k)
	}
	f.Fuzz(func(t *testing.T, key string) {
		k, err := parseConditionKey(key)
		if err != nil {
			return
		}
		switch k.kind {
		case attrHeader:
			if k.header == "" {
				t.Fatalf("%q: empty header", key)
			}
		case attrClaim:
			if len(k.claim) == 0 || len(k.claim) > maxClaimDepth {
				t.Fatalf("%q: claim path %q", key, k.claim)
			}
			for _, c := range k.claim {
				if c == "" || strings.ContainsAny(c, "[]") {
					t.Fatalf("%q: claim path %q", key, k.claim)
				}
			}
		}
	})
}

// envoyPCharClass is the character class of Envoy's uri_template
// operators (kLiteral in source/extensions/path/uri_template_lib/
// uri_template_internal.cc): RFC 3986 pchar without "*", with "=".
const envoyPCharClass = `a-zA-Z0-9\-._~%!$&'()+,;:@=`

// envoyTemplateRegexp is the regular expression Envoy's uri_template
// matcher compiles an accepted template to: "{*}" is [pchar]+, "{**}" is
// [pchar/]*, a literal segment is itself, and the segments are joined by
// "/". It is a second reading of the template, not parsePathTemplate's.
func envoyTemplateRegexp(tmpl string) *regexp.Regexp {
	var b strings.Builder
	b.WriteString("^")
	for _, seg := range strings.Split(tmpl[1:], "/") {
		b.WriteString("/")
		switch seg {
		case "{*}":
			b.WriteString("[" + envoyPCharClass + "]+")
		case "{**}":
			b.WriteString("[" + envoyPCharClass + "/]*")
		default:
			b.WriteString(regexp.QuoteMeta(seg))
		}
	}
	b.WriteString("$")
	return regexp.MustCompile(b.String())
}

// FuzzPathTemplate: a template either fails to parse or matches exactly
// the paths Envoy's uri_template matcher (envoyTemplateRegexp) matches.
// A divergence is a policy bypass for DENY rules: a path Istio denies
// that Moatless lets through.
func FuzzPathTemplate(f *testing.F) {
	f.Add("/foo/{*}/bar/{**}", "/foo/x/bar/y/z")
	f.Add("/{**}/", "//")
	f.Add("/a/{*}", "/a/")
	f.Add("/users/{*}", "/users/a=b")
	f.Add("/admin/{**}", "/admin/x/k=v")
	f.Add("/a/{*}/b.c", "/a/x/bxc")
	f.Add("/{*}/foo/", "/x/foo/")
	f.Fuzz(func(t *testing.T, tmpl, path string) {
		pt, err := parsePathTemplate(tmpl)
		if err != nil {
			return
		}
		re := envoyTemplateRegexp(tmpl)
		if got, want := pt.match(path, false), re.MatchString(path); got != want {
			t.Fatalf("template %q on %q: %v, Envoy's matcher says %v", tmpl, path, got, want)
		}
		// Ignoring ASCII case: the same regular expression with (?i),
		// where Go's Unicode folding is ASCII's (no byte above 0x7F).
		if isASCII(tmpl) && isASCII(path) {
			if got, want := pt.match(path, true), regexp.MustCompile("(?i)"+re.String()).MatchString(path); got != want {
				t.Fatalf("template %q on %q ignoring case: %v, want %v", tmpl, path, got, want)
			}
		}
	})
}

func isASCII(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] >= 0x80 {
			return false
		}
	}
	return true
}

// FuzzPathReadings: Decide against a reference of the readings of a path
// (evalCtx.applies), written apart from pathReadings: the normalized
// path, with path parameters cut (";" up to the next "/") and slashes
// merged, with %2F and %5C replaced by "/" and slashes merged (BASE and
// MERGE_SLASHES), both in either order, with runs of "/" merged, each
// also lower-cased against lower-cased patterns. A DENY applies when any
// reading matches, the ALLOW only when every reading does.
func FuzzPathReadings(f *testing.F) {
	for _, s := range []string{"/admin", "/ADMIN/x", "/admin%2Fx", "/Admin;v=1%2Fx", "/x;a%2F/admin", "/files/a%2Fb",
		"/files/SECRET/k", "/files/secret;x/k", "/files/Private", "/api/v1/SECRET", "/index.Php", "//admin", "/%2FADMIN;", "/a%5c%2fadmin"} {
		for m := range uint8(4) {
			f.Add(s, m)
		}
	}
	const docs = `apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny, namespace: foo}
spec:
  action: DENY
  rules: [{to: [{operation: {paths: ["/admin", "/admin/*", "*.PHP", "/api/{*}/secret"]}}]}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: allow, namespace: foo}
spec:
  rules: [{to: [{operation: {paths: ["/files/*", "/Public"], notPaths: ["/files/secret/*", "/Files/Private"]}}]}]
`
	var sets [4]*Set
	for m := range sets {
		sets[m] = mustSet(f, docs, Options{PathNormalization: PathNormalization(m)})
	}
	tmpl := regexp.MustCompile("^/api/[" + envoyPCharClass + "]+/secret$")
	tmplFold := regexp.MustCompile("(?i)" + tmpl.String()) // paths are ASCII: Go's folding is ASCII's
	lower := func(s string) string {
		b := []byte(s)
		for i, c := range b {
			if 'A' <= c && c <= 'Z' {
				b[i] = c + 'a' - 'A'
			}
		}
		return string(b)
	}
	// match is Istio's string match of v against pattern, ignoring case
	// when fold.
	match := func(pattern, v string, fold bool) bool {
		if fold {
			pattern, v = lower(pattern), lower(v)
		}
		switch {
		case strings.HasPrefix(pattern, "*"):
			return strings.HasSuffix(v, pattern[1:])
		case strings.HasSuffix(pattern, "*"):
			return strings.HasPrefix(v, pattern[:len(pattern)-1])
		}
		return v == pattern
	}
	anyMatch := func(v string, fold bool, patterns ...string) bool {
		for _, p := range patterns {
			if match(p, v, fold) {
				return true
			}
		}
		return false
	}
	slashes := regexp.MustCompile("/+")
	params := regexp.MustCompile(";[^/]*")
	// Each reading exists only where its character is.
	cut := func(p string) string {
		if !strings.Contains(p, ";") {
			return p
		}
		if p = slashes.ReplaceAllString(params.ReplaceAllString(p, ""), "/"); p == "" {
			return "/"
		}
		return p
	}
	f.Fuzz(func(t *testing.T, raw string, m uint8) {
		mode := PathNormalization(m % 4)
		d := sets[mode].Decide(newReq(dst("foo"), path(raw)))
		p, err := NormalizePath(raw, mode)
		if err != nil {
			if d.Outcome != Deny || !strings.HasPrefix(d.Reason, "bad request: ") {
				t.Fatalf("%q (%v): %v (%s), want a bad request", raw, mode, d.Outcome, d.Reason)
			}
			return
		}
		decode := func(p string) string { return p }
		if mode == NormalizeBase || mode == NormalizeMergeSlashes {
			decode = func(p string) string {
				if !strings.Contains(p, "%2F") && !strings.Contains(p, "%5C") {
					return p
				}
				return slashes.ReplaceAllString(strings.NewReplacer("%2F", "/", "%5C", "/").Replace(p), "/")
			}
		}
		readings := []string{p, cut(p), decode(p), cut(decode(p)), decode(cut(p)), slashes.ReplaceAllString(p, "/")}
		denied, allowed := false, true
		for _, r := range readings {
			for _, fold := range []bool{false, true} {
				tm := tmpl.MatchString(r)
				if fold {
					tm = tmplFold.MatchString(r)
				}
				denied = denied || tm || anyMatch(r, fold, "/admin", "/admin/*", "*.PHP")
				allowed = allowed && anyMatch(r, fold, "/files/*", "/Public") && !anyMatch(r, fold, "/files/secret/*", "/Files/Private")
			}
		}
		want := Deny
		if !denied && allowed {
			want = Allow
		}
		if d.Outcome != want {
			t.Fatalf("%q (%v, normalized %q, readings %q): %v (%s), want %v", raw, mode, p, readings, d.Outcome, d.Reason, want)
		}
		// --explain traces the rules as Decide applied them.
		for _, pt := range sets[mode].Explain(newReq(dst("foo"), path(raw)), nil).Policies {
			if matched := pt.Matched >= 0; pt.Policy == "foo/deny" && matched != denied || pt.Policy == "foo/allow" && matched != allowed {
				t.Fatalf("%q (%v): --explain says %s matched=%v (%+v), Decide %v", raw, mode, pt.Policy, matched, pt.Rules, d.Outcome)
			}
		}
	})
}

// FuzzDecide: any request file against the conformance policies decides
// without panicking, and Explain agrees with Evaluate.
func FuzzDecide(f *testing.F) {
	addConformanceSeeds(f, filepath.Join("requests", "*.json"))
	var docs []Document
	files, _ := filepath.Glob(filepath.Join("testdata", "conformance", "*", "*.yaml"))
	for _, file := range files {
		b, err := os.ReadFile(file)
		if err != nil {
			f.Fatal(err)
		}
		d, err := Parse(bytes.NewReader(b))
		if err != nil {
			f.Fatal(err)
		}
		for _, doc := range d {
			doc.Name = strings.ReplaceAll(filepath.Base(filepath.Dir(file)), "_", "-") + "-" + doc.Name
			docs = append(docs, doc)
		}
	}
	s, err := Compile(docs, Options{})
	if err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		req, err := ParseCheckRequest(bytes.NewReader(data))
		if err != nil {
			return
		}
		d := s.Decide(req)
		if d.Reason == "" {
			t.Fatalf("decision without a reason: %+v", d)
		}
		if e := s.Explain(req, nil); !reflect.DeepEqual(e.Decision, s.Evaluate(req, nil)) {
			t.Fatalf("Explain and Evaluate disagree")
		}
	})
}
