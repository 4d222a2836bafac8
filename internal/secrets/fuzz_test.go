package secrets

import (
	"bytes"
	"encoding/json"
	"strings"
	"testing"
	"time"
)

// FuzzParams feeds request bodies through the parameter reader every
// handler uses: it must never panic, and a body it accepts must give
// typed values within their bounds.
func FuzzParams(f *testing.F) {
	for _, s := range []string{
		`{"data":{"a":"b"},"options":{"cas":1}}`, `{"a":1,"a":2}`, `{"a":1,"b":{"a":2}}`, ` {} `, `null`,
		`{"ttl":"1h","increment":3600,"num_uses":"5","policies":"a,b","meta":"{\"k\":\"v\"}"}`,
		`{"batch_input":[{"plaintext":"aGk="}]}`, `{}`, ``, `[]`, `{"a":1}{"b":2}`, `{"ttl":"99999999999d"}`,
		// Names equal only once decoded: escapes, invalid UTF-8 (U+FFFD
		// for encoding/json), a lone surrogate; a BOM, NUL, huge numbers.
		`{"p\u0061ssword":1,"password":2}`, "{\"a\xff\":1,\"a\xfe\":2}", `{"\ud800":1,"\ufffd":2}`,
		"\xef\xbb\xbf{}", `{"\u0000":1}`, `{"a":1e999999,"b":-0}`, `{"a":1} x`, " null ",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, body string) {
		p, err := parseParams([]byte(body))
		if err != nil {
			// Refused: the standard reader refuses it too, or it repeats
			// a member or holds more than MaxParams.
			var std map[string]json.RawMessage
			if json.Unmarshal([]byte(body), &std) == nil {
				if written := membersWritten(body); written == len(std) && written <= MaxParams {
					t.Fatalf("refused %q (%v), which the standard reader takes as %d members", body, err, written)
				}
			}
			return
		}
		// Accepted: at most MaxParams members, each once, so the standard
		// reader (last one wins) sees exactly the same members.
		if len(p.m) > MaxParams {
			t.Fatalf("%d members accepted", len(p.m))
		}
		if tr := bytes.TrimSpace([]byte(body)); len(tr) > 0 && string(tr) != "null" {
			var std map[string]json.RawMessage
			if err := json.Unmarshal([]byte(body), &std); err != nil || len(std) != len(p.m) {
				t.Fatalf("accepted %q: the standard reader sees %d members (%v), we %d", body, len(std), err, len(p.m))
			}
			// Every member written is one member read: a name repeated
			// (however it is spelled) is refused, not deduplicated.
			if written := membersWritten(body); written != len(p.m) {
				t.Fatalf("accepted %q: %d members written, %d read", body, written, len(p.m))
			}
			for k, v := range std {
				if !bytes.Equal(v, p.m[k]) {
					t.Fatalf("member %q: %s here, %s for the standard reader", k, p.m[k], v)
				}
			}
		}
		if d := p.duration("ttl"); p.err == nil && (d < 0 || d > MaxDuration) {
			t.Fatalf("duration %v out of bounds", d)
		}
		p.integer("num_uses")
		p.boolean("renewable")
		p.strList("policies")
		p.strMap("meta")
		p.str("data")
		p.b64("plaintext", true)
		p.done()
	})
}

// membersWritten counts the members of a JSON object as written, a
// repeated name as often as it is written.
func membersWritten(body string) int {
	dec := json.NewDecoder(strings.NewReader(body))
	written := 0
	if tok, _ := dec.Token(); tok == json.Delim('{') {
		for dec.More() {
			dec.Token()
			var v json.RawMessage
			if dec.Decode(&v) != nil {
				break
			}
			written++
		}
	}
	return written
}

// FuzzCleanPath: an accepted path has no empty, "." or ".." segment, no
// glob characters and no control characters, so the ACL and the handler
// read it the same way.
func FuzzCleanPath(f *testing.F) {
	for _, s := range []string{"secret/data/a", "secret/../sys", "a//b", "a/./b", "a/+/b", "a/*", "a\x00b", "sys/policies/acl/x/"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, p string) {
		c, err := cleanPath(p)
		if err != nil {
			return
		}
		for _, seg := range strings.Split(c, "/") {
			if seg == "" || seg == "." || seg == ".." || strings.ContainsAny(seg, "*+\x00\n\r") {
				t.Fatalf("accepted %q (segment %q)", c, seg)
			}
		}
	})
}

func FuzzDurationString(f *testing.F) {
	for _, s := range []string{"1h", "90", "7d", "-1", "1e9", "3651d", "1h30m"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		if d, err := parseDurationString(s); err == nil && (d < 0 || d > MaxDuration) {
			t.Fatalf("%q -> %v", s, d)
		}
	})
}

func TestParseDuration(t *testing.T) {
	tests := []struct {
		in   string
		want time.Duration
		ok   bool
	}{
		{`3600`, time.Hour, true},
		{`"3600"`, time.Hour, true},
		{`"90m"`, 90 * time.Minute, true},
		{`"7d"`, 7 * 24 * time.Hour, true},
		{`"-5s"`, 0, false},
		{`-5`, 0, false},
		{`"3651d"`, 0, false},
		{`true`, 0, false},
	}
	for _, tc := range tests {
		t.Run(tc.in, func(t *testing.T) {
			d, err := parseDuration([]byte(tc.in))
			if (err == nil) != tc.ok || (tc.ok && d != tc.want) {
				t.Fatalf("parseDuration(%s) = %v, %v", tc.in, d, err)
			}
		})
	}
}

func TestCleanPath(t *testing.T) {
	tests := []struct {
		name, in string
		ok       bool
	}{
		{"plain", "secret/data/app", true},
		{"trailing_slash", "secret/metadata/", true},
		{"dot_dot", "secret/data/../../sys/policies/acl/x", false},
		{"dot", "secret/./data", false},
		{"empty_segment", "secret//data", false},
		{"glob", "secret/data/*", false},
		{"plus", "secret/data/+", false},
		{"control", "secret/data/a\nb", false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := cleanPath(tc.in); (err == nil) != tc.ok {
				t.Fatalf("cleanPath(%q) err = %v", tc.in, err)
			}
		})
	}
}

func TestMergePatch(t *testing.T) {
	got := mergePatch(map[string]any{"a": "1", "b": map[string]any{"c": "2", "d": "3"}, "e": "4"},
		map[string]any{"a": nil, "b": map[string]any{"c": "x"}, "f": "5"})
	if _, ok := got["a"]; ok || got["b"].(map[string]any)["c"] != "x" || got["b"].(map[string]any)["d"] != "3" || got["f"] != "5" || got["e"] != "4" {
		t.Fatalf("merge patch = %v", got)
	}
}

// TestParamsErrors: the first malformed field is what done reports, before
// unknown fields.
func TestParamsErrors(t *testing.T) {
	tests := []struct {
		name, body, want string
		read             func(p *params)
	}{
		{"bad_integer", `{"n":"x","zz":1}`, "n: want an integer", func(p *params) { p.integer("n") }},
		{"bad_bool", `{"b":"maybe"}`, "b: want true or false", func(p *params) { p.boolean("b") }},
		{"bad_duration", `{"ttl":"soon"}`, "ttl: want seconds", func(p *params) { p.duration("ttl") }},
		{"bad_base64", `{"plaintext":"!!"}`, "plaintext: not base64", func(p *params) { p.b64("plaintext", true) }},
		{"missing_required", `{}`, "missing plaintext", func(p *params) { p.b64("plaintext", true) }},
		{"first_error_wins", `{"a":1,"b":"x"}`, "a: want a string", func(p *params) { p.str("a"); p.integer("b") }},
		{"unknown_sorted", `{"zz":1,"aa":2}`, "unknown parameters: aa, zz", func(p *params) {}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			p, err := parseParams([]byte(tc.body))
			if err != nil {
				t.Fatal(err)
			}
			tc.read(p)
			if err := p.done(); err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("done() = %v, want %q", err, tc.want)
			}
		})
	}
}

// FuzzMaskedURL: a password written into a connection URL's userinfo or
// password parameter never survives masking, whatever it holds; and
// masking never panics on any string.
func FuzzMaskedURL(f *testing.F) {
	for _, s := range []string{"hunter2", "p@ss", "a:b", "yourStrong%28%21%29", "{{password}}", "x/y", "*"} {
		f.Add(s, "postgres://u:{{password}}@h/db")
	}
	f.Fuzz(func(t *testing.T, pw, raw string) {
		maskedURL(raw)
		urlPasswords(raw)
		if pw == "" || pw == "{{password}}" || strings.ContainsAny(pw, "?#") {
			return
		}
		for _, u := range []string{"postgres://admin:" + pw + "@127.0.0.1:5432/app?sslmode=disable", "postgres://127.0.0.1/app?password=" + strings.ReplaceAll(pw, "&", "%26")} {
			m := maskedURL(u)
			if !strings.Contains(m, "*****") {
				t.Fatalf("%q masked as %q", u, m)
			}
			if strings.Contains(pw, "&") || strings.Contains(pw, "*") {
				continue
			}
			if strings.Contains(strings.TrimPrefix(m, "postgres://"), ":"+pw+"@") || strings.Contains(m, "password="+pw) {
				t.Fatalf("%q masked as %q", u, m)
			}
		}
	})
}

// FuzzBatchItems: batch_input is read item by item; whatever it holds,
// an accepted list has 1 to MaxBatch objects.
func FuzzBatchItems(f *testing.F) {
	for _, s := range []string{`[{"plaintext":"aGk="}]`, `[]`, `[{},{}]`, `[1]`, `[{"a":1,"a":2}]`, `[null]`, `{}`} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, raw string) {
		items, err := batchItems(json.RawMessage(raw))
		if err == nil && (len(items) == 0 || len(items) > MaxBatch) {
			t.Fatalf("%d items accepted", len(items))
		}
	})
}
