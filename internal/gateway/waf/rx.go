package waf

import (
	"regexp"
	"strconv"
	"strings"
	"unicode/utf8"

	"github.com/corazawaf/coraza/v3/experimental/plugins"
	"github.com/corazawaf/coraza/v3/experimental/plugins/plugintypes"
	re2 "github.com/wasilibs/go-re2"
	re2x "github.com/wasilibs/go-re2/experimental"
)

// The Core Rule Set's cost is its @rx rules: hundreds of large
// alternations run over every argument, header and cookie of a request.
// Go's regexp runs a pattern too large for its backtracker as an NFA,
// state by state; RE2 runs it as a DFA. Profiles of a 1 KB JSON request
// spent half their time in regexp.(*machine).add/step (docs/benchmarks.md),
// so @rx is served by RE2 (go-re2: the C++ library compiled to WebAssembly
// and from there to Go, no cgo), as coraza-wasilibs does.
//
// Coraza's own semantics are kept: patterns get the (?sm) flags Coraza
// adds, captures fill TX.0-9, and a pattern that matches bytes rather
// than UTF-8 (a \x80-\xff escape) matches byte-wise (Latin-1), as
// Coraza's binaryregexp does. RE2 stops reading at invalid UTF-8, where
// Go's regexp reads on (as U+FFFD): a value that is not valid UTF-8 is
// therefore matched by Go's regexp, so that a stray byte in front of a
// payload cannot hide it.

func init() {
	// Replaces Coraza's @rx for every WAF in this process: the gateway's.
	plugins.RegisterOperator("rx", newRX)
}

type rx struct {
	re  *re2.Regexp
	std *regexp.Regexp // invalid UTF-8 input; nil for a byte-wise pattern
}

func newRX(o plugintypes.OperatorOptions) (plugintypes.Operator, error) {
	expr := "(?sm)" + o.Arguments
	if matchesBytes(o.Arguments) {
		re, err := re2x.CompileLatin1(expr)
		if err != nil {
			return nil, err
		}
		return &rx{re: re}, nil
	}
	re, err := re2.Compile(expr)
	if err != nil {
		return nil, err
	}
	std, err := regexp.Compile(expr)
	if err != nil {
		return nil, err
	}
	return &rx{re: re, std: std}, nil
}

// maxCaptures is how many groups fill TX.0-9 (ModSecurity's limit).
const maxCaptures = 10

func (o *rx) Evaluate(tx plugintypes.TransactionState, value string) bool {
	var m []int
	switch {
	case o.std != nil && !utf8.ValidString(value):
		if !tx.Capturing() {
			return o.std.MatchString(value)
		}
		m = o.std.FindStringSubmatchIndex(value)
	case !tx.Capturing():
		return o.re.MatchString(value)
	default:
		m = o.re.FindStringSubmatchIndex(value)
	}
	if m == nil {
		return false
	}
	for i := 0; i < len(m)/2 && i < maxCaptures; i++ {
		if m[2*i] >= 0 {
			tx.CaptureField(i, value[m[2*i]:m[2*i+1]])
		} else {
			tx.CaptureField(i, "")
		}
	}
	return true
}

// matchesBytes reports whether a pattern names a byte that is not UTF-8
// on its own (\x80 to \xff, or \x{80} to \x{ff}): such a pattern matches
// raw bytes.
func matchesBytes(expr string) bool {
	for i := 0; i+3 < len(expr); i++ {
		if expr[i] != '\\' {
			continue
		}
		if expr[i+1] != 'x' {
			i++ // an escaped character, possibly a backslash
			continue
		}
		hex := expr[i+2:]
		if hex[0] == '{' {
			end := strings.IndexByte(hex, '}')
			if end < 0 {
				continue
			}
			hex = hex[1:end]
		} else {
			hex = hex[:2]
		}
		if v, err := strconv.ParseUint(hex, 16, 32); err == nil && v >= 0x80 && v <= 0xff {
			return true
		}
	}
	return false
}
