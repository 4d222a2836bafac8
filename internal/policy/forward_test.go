package policy

import (
	"errors"
	"math/rand/v2"
	"net/url"
	"strings"
	"testing"
)

func TestNormalizeRequestPath(t *testing.T) {
	tests := []struct {
		name, path string
		mode       PathNormalization
		want       string // "" when unchanged
		wantErr    bool
	}{
		{"normal_path_unchanged", "/api/orders/42", NormalizeBase, "", false},
		{"query_kept_out_of_comparison", "/api/orders?x=1", NormalizeBase, "", false},
		{"dot_dot_resolved", "/api/../admin", NormalizeBase, "/admin", false},
		{"unreserved_escape_decoded", "/%61dmin", NormalizeBase, "/admin", false},
		{"backslash_turned", "/a\\b", NormalizeBase, "/a/b", false},
		{"double_slash_kept_in_base", "/a//b", NormalizeBase, "", false},
		{"double_slash_merged", "/a//b?q", NormalizeMergeSlashes, "/a/b", false},
		{"encoded_slash_kept", "/a%2fb", NormalizeBase, "/a%2Fb", false},
		{"encoded_slash_decoded", "/a%2Fb", NormalizeDecodeAndMergeSlashes, "/a/b", false},
		{"nul_refused", "/a%00", NormalizeBase, "", true},
		{"relative_refused", "a/b", NormalizeBase, "", true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			np, err := NormalizeRequestPath(tc.path, tc.mode)
			if tc.wantErr {
				if !errors.Is(err, ErrInvalidPath) {
					t.Fatalf("err = %v, want ErrInvalidPath", err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			// Unchanged, Path is the target without its query.
			want := tc.want
			if want == "" {
				want, _, _ = strings.Cut(tc.path, "?")
			}
			if np.Changed() != (tc.want != "") || np.Path() != want || np.Mode() != tc.mode {
				t.Fatalf("got (%q, %v, %v), want %q", np.Path(), np.Changed(), np.Mode(), tc.want)
			}
		})
	}
}

func TestNormalizeRequestPathUnchangedDoesNotAllocate(t *testing.T) {
	if n := testing.AllocsPerRun(100, func() { NormalizeRequestPath("/api/v1/orders/42?x=1", NormalizeBase) }); n != 0 {
		t.Fatalf("%v allocations for a normal path, want 0", n)
	}
}

// A path normalized ahead (as the sidecar does for forwarding) is matched
// as is when its mode is the Set's; in any other mode, or not set, the
// engine normalizes Request.Path itself, so a mismatched mode cannot
// weaken matching.
func TestDecideMatchesNormalizedPathOfSetMode(t *testing.T) {
	s := mustSet(t, `
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-admin, namespace: prod}
spec:
  action: DENY
  rules: [{to: [{operation: {paths: ["/admin"]}}]}]
`, Options{PathNormalization: NormalizeMergeSlashes})
	const raw = "//admin?x=1"
	tests := []struct {
		name string
		mode PathNormalization
		set  bool
		want Outcome
	}{
		{"not_set_engine_normalizes", 0, false, Deny},
		{"set_mode_matched_as_is", NormalizeMergeSlashes, true, Deny},
		{"other_mode_ignored", NormalizeBase, true, Deny},
		{"none_mode_ignored", NormalizeNone, true, Deny},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			req := &Request{Protocol: HTTP, Source: Source{Principal: "td/ns/prod/sa/a"}, Destination: Destination{Namespace: "prod"}, Method: "GET", Path: raw}
			if tc.set {
				np, err := NormalizeRequestPath(raw, tc.mode)
				if err != nil {
					t.Fatal(err)
				}
				req.NormalizedPath = np
			}
			if d := s.Decide(req); d.Outcome != tc.want {
				t.Fatalf("Decide = %+v, want %v", d, tc.want)
			}
		})
	}
	// The engine matches the handed-over path, not Path: a proxy forwards
	// what was matched.
	np, err := NormalizeRequestPath("/public", NormalizeMergeSlashes)
	if err != nil {
		t.Fatal(err)
	}
	req := &Request{Protocol: HTTP, Source: Source{Principal: "td/ns/prod/sa/a"}, Destination: Destination{Namespace: "prod"}, Method: "GET", Path: "/admin", NormalizedPath: np}
	if d := s.Decide(req); d.Outcome != Allow {
		t.Fatalf("Decide = %+v, want allow (the normalized path is matched)", d)
	}
}

// TestNormalizeRequestPathTarget: one call gives both the path policy
// matches and the request target a proxy forwards; the target is the path
// followed by the query, which is forwarded but never matched.
func TestNormalizeRequestPathTarget(t *testing.T) {
	tests := []struct {
		name, in   string
		mode       PathNormalization
		wantPath   string
		wantTarget string
		wantErr    string
	}{
		{name: "query_forwarded_as_received", in: "/a?x=1&y=%2F", wantPath: "/a", wantTarget: "/a?x=1&y=%2F"},
		{name: "empty_query_kept", in: "/a?", wantPath: "/a", wantTarget: "/a?"},
		{name: "path_normalized_query_kept", in: "/a/../b?x=/../admin", wantPath: "/b", wantTarget: "/b?x=/../admin"},
		// Everything after the first "?" is query: a second "?", slashes
		// or dot segments there never become path.
		{name: "question_mark_cannot_smuggle_path", in: "/public?/../admin", wantPath: "/public", wantTarget: "/public?/../admin"},
		{name: "encoded_question_mark_is_path", in: "/public%3F/../admin", wantPath: "/admin", wantTarget: "/admin"},
		{name: "encoded_question_mark_kept_encoded", in: "/a%3fb", wantPath: "/a%3Fb", wantTarget: "/a%3Fb"},
		{name: "unsafe_query_bytes_encoded", in: "/a?q=x y\"\xc3\xa9<>\\^`{|}", wantPath: "/a", wantTarget: "/a?q=x%20y%22%C3%A9%3C%3E%5C%5E%60%7B%7C%7D"},
		{name: "query_percent_kept", in: "/a?q=100%&r=%zz", wantPath: "/a", wantTarget: "/a?q=100%&r=%zz"},
		{name: "none_mode_encodes_only", in: "/a/../b c?x", mode: NormalizeNone, wantPath: "/a/../b%20c", wantTarget: "/a/../b%20c?x"},
		{name: "fragment_refused", in: "/api/x#/../internal/keys", wantErr: "fragment"},
		{name: "fragment_in_query_refused", in: "/api/x?a#/../internal/keys", wantErr: "fragment"},
		{name: "fragment_refused_in_none_mode", in: "/api/x#/../admin", mode: NormalizeNone, wantErr: "fragment"},
		{name: "control_in_query_refused", in: "/a?x\ny", wantErr: "control character"},
		{name: "empty_target_refused", in: "", wantErr: "must start with"},
		{name: "query_only_target_refused", in: "?x", wantErr: "must start with"},
		{name: "absolute_form_refused", in: "http://h/a", wantErr: "must start with"},
		{name: "asterisk_form_refused", in: "*", wantErr: "must start with"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			np, err := NormalizeRequestPath(tc.in, tc.mode)
			if tc.wantErr != "" {
				if !errors.Is(err, ErrInvalidPath) || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("err = %v, want ErrInvalidPath saying %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if np.Path() != tc.wantPath || np.Target() != tc.wantTarget || np.Changed() != (tc.wantTarget != tc.in) {
				t.Fatalf("got path %q target %q changed %v; want %q %q", np.Path(), np.Target(), np.Changed(), tc.wantPath, tc.wantTarget)
			}
		})
	}
}

// TestRequestTargetProperties checks checkRequestTarget's properties over
// generated request targets in every mode: random bytes, escapes, dot
// segments, "#", "?", ";", backslashes, %2F, non-ASCII. The generator is
// seeded, so a failure reproduces; FuzzRequestTarget explores further.
func TestRequestTargetProperties(t *testing.T) {
	pieces := []string{
		"/", "/", "/", "a", "admin", "internal", ".", "..", "%2e", "%2E", "%2e%2e", ".%2e", "%2f", "%2F", "%5c", "%5C",
		`\`, "#", "?", "?", ";", "=", "%3B", "%3f", "%23", "%25", "%252F", "%41", "%7e", "~", "+", " ", "//", "%00",
		"\xc3\xa9", "\xff", "\"", "<", "[", "]", "{", "|", "`", "^", "'", "!", "*", ":", "@", "&", "$", ",", "%", "%z", "%4",
		"\t", "\x7f",
	}
	rng := rand.New(rand.NewPCG(7, 7))
	for i := 0; i < 20000; i++ {
		var b strings.Builder
		b.WriteByte('/')
		for n := rng.IntN(12); n >= 0; n-- {
			if rng.IntN(20) == 0 {
				b.WriteByte(byte(rng.IntN(256)))
				continue
			}
			b.WriteString(pieces[rng.IntN(len(pieces))])
		}
		for _, mode := range []PathNormalization{NormalizeNone, NormalizeBase, NormalizeMergeSlashes, NormalizeDecodeAndMergeSlashes} {
			checkRequestTarget(t, b.String(), mode)
		}
	}
}

// FuzzRequestTarget: checkRequestTarget's properties hold for any input.
func FuzzRequestTarget(f *testing.F) {
	for _, s := range []string{"/", "/api/x#/../internal/keys", "/a?b#c", "/public?/../admin", "/public%3F/../admin", "/a/..%2fadmin", `/a\..\admin`,
		"/%2e%2e/x", "//a//b/", "/caf\xc3\xa9 x", "/%zz", "/a%00", "/a;b=c/../d", "/a?x y", "/%252F..%252F", "/a[0]?q={x}"} {
		for m := range uint8(4) {
			f.Add(s, m)
		}
	}
	f.Fuzz(func(t *testing.T, raw string, m uint8) {
		checkRequestTarget(t, raw, PathNormalization(m%4))
	})
}

// checkRequestTarget asserts what makes the forwarded target safe:
//
//   - the path policy decides on is the forwarded target's path, byte for
//     byte, and the engine normalizing the raw target itself agrees;
//   - the target is a valid origin-form request target (RFC 9112 §3.2.1)
//     that Go's parser reads back unchanged, so no client re-encodes it;
//   - normalizing it again changes nothing;
//   - the query is forwarded with the same meaning it arrived with;
//   - outside NONE, an app that percent-decodes the path and resolves dot
//     segments (Python's http.server) serves the decoded path policy saw.
//     BASE and MERGE_SLASHES keep %2F and %5C encoded, as Istio does: an app
//     that decodes them into separators needs DECODE_AND_MERGE_SLASHES.
func checkRequestTarget(t *testing.T, raw string, mode PathNormalization) {
	t.Helper()
	np, err := NormalizeRequestPath(raw, mode)
	if err != nil {
		if !errors.Is(err, ErrInvalidPath) {
			t.Fatalf("NormalizeRequestPath(%q, %v): %v is not ErrInvalidPath", raw, mode, err)
		}
		if strings.HasPrefix(raw, "/") {
			if _, err2 := NormalizePath(raw, mode); err2 == nil {
				t.Fatalf("NormalizeRequestPath(%q, %v) refused (%v) but the engine accepts it", raw, mode, err)
			}
		}
		return
	}
	p, tgt := np.Path(), np.Target()
	if !strings.HasPrefix(tgt, p) || len(tgt) > len(p) && tgt[len(p)] != '?' {
		t.Fatalf("%q (%v): target %q does not start with path %q", raw, mode, tgt, p)
	}
	if eng, err := NormalizePath(raw, mode); err != nil || eng != p {
		t.Fatalf("%q (%v): engine matches %q (%v), proxy forwards %q", raw, mode, eng, err, p)
	}
	if np.Changed() != (tgt != raw) {
		t.Fatalf("%q (%v): Changed() = %v, target %q", raw, mode, np.Changed(), tgt)
	}
	for i := 0; i < len(tgt); i++ {
		c := tgt[i]
		switch {
		case c == '%' && i < len(p):
			if i+2 >= len(p) || !isHex(p[i+1]) || !isHex(p[i+2]) {
				t.Fatalf("%q (%v): path %q has a bad escape", raw, mode, p)
			}
		case c == '%', c == '?' && i >= len(p), c == '/':
		case !pathRaw[c]:
			t.Fatalf("%q (%v): target %q holds byte 0x%02x", raw, mode, tgt, c)
		}
	}
	u, err := url.ParseRequestURI(tgt)
	if err != nil || u.RequestURI() != tgt {
		t.Fatalf("%q (%v): Go reads target %q back as %v (%v)", raw, mode, tgt, u, err)
	}
	if again, err := NormalizeRequestPath(tgt, mode); err != nil || again.Target() != tgt || again.Changed() {
		t.Fatalf("%q (%v): not idempotent: %q -> %q (%v)", raw, mode, tgt, again.Target(), err)
	}
	if _, rq, ok := strings.Cut(raw, "?"); ok {
		if lenientUnescape(rq) != lenientUnescape(tgt[len(p)+1:]) {
			t.Fatalf("%q (%v): query changed meaning: %q", raw, mode, tgt[len(p)+1:])
		}
	}
	if mode == NormalizeNone {
		return
	}
	up := strings.ToUpper(p)
	if mode != NormalizeDecodeAndMergeSlashes && (strings.Contains(up, "%2F") || strings.Contains(up, "%5C")) {
		return
	}
	decoded := lenientUnescape(p)
	if served := refResolveDots(decoded); served != decoded {
		t.Fatalf("%q (%v): policy saw %q (decoded %q), an app resolving dots serves %q", raw, mode, p, decoded, served)
	}
}

// lenientUnescape decodes every valid %XX and leaves anything else, as
// Python's urllib.parse.unquote does.
func lenientUnescape(s string) string {
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '%' && i+2 < len(s) && isHex(s[i+1]) && isHex(s[i+2]) {
			b.WriteByte(unhex(s[i+1])<<4 | unhex(s[i+2]))
			i += 2
			continue
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

// refResolveDots is RFC 3986 §5.2.4 written the obvious way, independent
// of removeDotSegments: a reference for what an app resolves.
func refResolveDots(p string) string {
	segs := strings.Split(p[1:], "/")
	var out []string
	for i, s := range segs {
		last := i == len(segs)-1
		switch s {
		case ".":
		case "..":
			if len(out) > 0 {
				out = out[:len(out)-1]
			}
		default:
			out = append(out, s)
			continue
		}
		if last {
			out = append(out, "")
		}
	}
	return "/" + strings.Join(out, "/")
}
