package waf

import (
	"regexp"
	"testing"
	"unicode/utf8"

	"github.com/corazawaf/coraza/v3/experimental/plugins/plugintypes"
)

// captureTx is the part of a transaction @rx uses.
type captureTx struct {
	plugintypes.TransactionState
	capturing bool
	fields    map[int]string
}

func (t *captureTx) Capturing() bool { return t.capturing }
func (t *captureTx) CaptureField(i int, v string) {
	if t.fields == nil {
		t.fields = map[int]string{}
	}
	t.fields[i] = v
}

func mustRX(t testing.TB, pattern string) plugintypes.Operator {
	t.Helper()
	op, err := newRX(plugintypes.OperatorOptions{Arguments: pattern})
	if err != nil {
		t.Fatal(err)
	}
	return op
}

// rxPatterns are Core Rule Set-style patterns: case-insensitive
// alternations, anchors (multi-line, as Coraza reads them), classes.
var rxPatterns = []string{
	`(?i)\b(?:union\b.{1,100}?\bselect|select\b.{1,100}?\bfrom)\b`,
	`(?i)<script[^>]*>[\s\S]*?`,
	`^[\d.:]+$`,
	`(?i)(?:\$\{|jndi:)`,
	`(?:^|[^\\\\])\\\\[cdeghijklmpqwxyz123456789]`,
	`\.\./`,
	`^(?:GET|HEAD)$`,
}

func TestRX(t *testing.T) {
	tests := []struct {
		name, pattern, value string
		match                bool
		captures             map[int]string
	}{
		{"sqli", rxPatterns[0], "1 UNION ALL SELECT pw", true, nil},
		{"benign", rxPatterns[0], "please select a size", false, nil},
		// A byte that is not UTF-8 in front of the payload: RE2 would stop
		// reading there; Go's regexp reads on, so the attack is found.
		{"invalid_utf8_before_payload", rxPatterns[0], "\xff\xfe 1 union select pw from users", true, nil},
		{"invalid_utf8_before_script", rxPatterns[1], "a\xc3<script>alert(1)</script>", true, nil},
		{"multiline_anchor", rxPatterns[2], "abc\n10.0.0.1", true, nil},
		{"dotall", `a.b`, "a\nb", true, nil},
		{"captures", `^(\w+)-(\d+)?(x)?`, "order-42", true, map[int]string{0: "order-42", 1: "order", 2: "42", 3: ""}},
		// A byte-wise pattern matches raw bytes, not code points.
		{"byte_pattern", `\xbc`, "\xbc", true, nil},
		{"byte_pattern_not_utf8_char", `\xbc`, "¼", true, nil}, // U+00BC is C2 BC
		{"byte_pattern_braced", `\x{ff}`, "a\xffb", true, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			op := mustRX(t, tt.pattern)
			if got := op.Evaluate(&captureTx{}, tt.value); got != tt.match {
				t.Fatalf("Evaluate(%q) = %v, want %v", tt.value, got, tt.match)
			}
			tx := &captureTx{capturing: true}
			if got := op.Evaluate(tx, tt.value); got != tt.match {
				t.Fatalf("capturing Evaluate(%q) = %v, want %v", tt.value, got, tt.match)
			}
			for i, want := range tt.captures {
				if got, ok := tx.fields[i]; !ok || got != want {
					t.Errorf("TX.%d = %q (set %v), want %q", i, got, ok, want)
				}
			}
		})
	}
}

func TestMatchesBytes(t *testing.T) {
	tests := []struct {
		pattern string
		want    bool
	}{
		{`abc`, false},
		{`\x41`, false},
		{`\x7f`, false},
		{`\x80`, true},
		{`[\xc0-\xff]`, true},
		{`\x{bc}`, true},
		{`\x{263a}`, false},
		{`\\x80`, false}, // an escaped backslash, then "x80"
		{`\x`, false},
		{`\x{8`, false},
		{`\xZZ`, false},
	}
	for _, tt := range tests {
		if got := matchesBytes(tt.pattern); got != tt.want {
			t.Errorf("matchesBytes(%q) = %v, want %v", tt.pattern, got, tt.want)
		}
	}
}

// FuzzRXAgreesWithGoRegexp: for every input, RE2's answer is Go regexp's
// (both implement RE2 syntax; invalid UTF-8 goes to Go's regexp anyway),
// so replacing Coraza's @rx changes what is detected in nothing.
func FuzzRXAgreesWithGoRegexp(f *testing.F) {
	for _, s := range []string{"1 UNION SELECT a FROM b", "<script>x", "${jndi:ldap://x}", "../../etc", "GET", "\xff union select x from y", "a\nb", "\\c"} {
		for i := range rxPatterns {
			f.Add(i, s)
		}
	}
	ops := make([]plugintypes.Operator, len(rxPatterns))
	std := make([]*regexp.Regexp, len(rxPatterns))
	for i, p := range rxPatterns {
		ops[i] = mustRX(f, p)
		std[i] = regexp.MustCompile("(?sm)" + p)
	}
	f.Fuzz(func(t *testing.T, i int, value string) {
		if i < 0 || len(value) > 4096 {
			return
		}
		i %= len(rxPatterns)
		want := std[i].MatchString(value)
		if got := ops[i].Evaluate(&captureTx{}, value); got != want {
			t.Fatalf("pattern %q on %q (valid UTF-8 %v): RE2 %v, Go regexp %v", rxPatterns[i], value, utf8.ValidString(value), got, want)
		}
	})
}
