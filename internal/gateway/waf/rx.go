package waf

import (
	"regexp"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
	"unicode/utf8"

	"github.com/corazawaf/coraza/v3"
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
	// set is the engine's prefilter and id this pattern's index in it;
	// nil when the pattern is byte-wise or was compiled outside New.
	set *rxSet
	id  int
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
	op := &rx{re: re, std: std}
	if c := collecting.Load(); c != nil {
		c.add(op, expr)
	}
	return op, nil
}

// The Core Rule Set runs about 300 @rx patterns, each over every
// argument, argument name, header and cookie a rule names, after that
// rule's transformations: a 1 KB JSON body with 43 fields makes about
// 7,900 @rx evaluations, each a crossing into RE2 (docs/benchmarks.md).
// Yet those evaluations see only about 100 distinct strings: many fields
// repeat a value, and most transformation chains leave a plain value
// as it is. So an engine compiles all its UTF-8 patterns once more into
// one RE2 Set, and each transaction asks the Set, once per distinct
// string, which patterns match it anywhere (one pass of one DFA). A
// pattern the Set did not report does not match, and @rx answers false
// without running it; a reported one runs on its own, for the captures.
// Nothing is decided differently: the Set runs the same patterns with
// the same flags, a string that is not valid UTF-8 still goes to Go's
// regexp, and when the Set cannot decide (RE2 ran out of DFA memory)
// every pattern runs on its own as before.

// The Set's DFA is fast on strings like those it has seen (its states
// are cached) but builds a new state for nearly every byte of a string
// unlike any before, and with all the patterns in one automaton a state
// costs far more than one pattern's: crafted values of 60-120 bytes cost
// the Set 0.04-0.3 ms per byte, when the patterns run one by one read
// them at a few microseconds per byte. So that a crafted body cannot buy
// more CPU through the Set than without it, the Set only sees strings of
// up to setScanMaxValue bytes, setScanBudget bytes per transaction, and
// only until its scans in the transaction have taken setScanTime; past
// any of these, patterns run one by one as before. (A benign JSON order
// of 43 fields asks the Set about ~90 strings, 1.3 KiB, in ~0.15 ms.)
// The limits change what a request costs, never what is detected.
const (
	setScanMaxValue = 64
	setScanBudget   = 2048
	setScanTime     = 2 * time.Millisecond
)

// collecting gathers the patterns of the engine New is compiling; New
// holds collectMu while it is set (an atomic so that an operator built
// outside New, as tests do, reads it safely).
var (
	collectMu  sync.Mutex
	collecting atomic.Pointer[rxSetBuilder]
)

type rxSetBuilder struct {
	exprs []string
	ids   map[string]int
	ops   []*rx
}

func (b *rxSetBuilder) add(op *rx, expr string) {
	id, ok := b.ids[expr]
	if !ok {
		id = len(b.exprs)
		b.ids[expr] = id
		b.exprs = append(b.exprs, expr)
	}
	op.id = id
	b.ops = append(b.ops, op)
}

// compileRules runs compile (which builds one Coraza WAF) while
// collecting its @rx patterns, and compiles them into one Set. A Set
// that does not compile (nil) leaves every pattern running on its own.
func compileRules(compile func() (coraza.WAF, error)) (coraza.WAF, *rxSet, error) {
	collectMu.Lock()
	defer collectMu.Unlock()
	b := &rxSetBuilder{ids: map[string]int{}}
	collecting.Store(b)
	w, err := compile()
	collecting.Store(nil)
	if err != nil || len(b.exprs) == 0 {
		return w, nil, err
	}
	set, err := re2x.CompileSet(b.exprs)
	if err != nil {
		return w, nil, nil
	}
	s := &rxSet{set: set, exprs: b.exprs, n: len(b.exprs)}
	for _, op := range b.ops {
		op.set = s
	}
	return w, s, nil
}

// rxSet is one engine's @rx patterns as one RE2 Set, with the scans of
// the transactions in flight.
type rxSet struct {
	set   *re2x.Set
	exprs []string
	n     int
	txs   sync.Map // plugintypes.TransactionState → *rxScan
}

// begin starts the scan of one transaction; end must follow.
func (s *rxSet) begin(tx any) {
	if s != nil {
		s.txs.Store(tx, &rxScan{set: s, seen: map[string][]uint64{}, budget: setScanBudget})
	}
}

func (s *rxSet) end(tx any) {
	if s != nil {
		s.txs.Delete(tx)
	}
}

// rxScan is what the Set said about each string one transaction has
// shown @rx so far. Only the transaction's goroutine uses it.
type rxScan struct {
	set    *rxSet
	seen   map[string][]uint64 // bit i: pattern i matches; nil: undecided
	budget int                 // bytes the Set may still scan
	spent  time.Duration       // time the Set's scans have taken
}

// lookup reports whether pattern id may match value (the Set reported
// it, or the Set cannot decide) and whether the Set decided.
func (c *rxScan) lookup(value string, id int) (match, decided bool) {
	bits, ok := c.seen[value]
	if !ok {
		bits = c.scan(value)
		c.seen[value] = bits
	}
	if bits == nil {
		return true, false
	}
	return bits[id/64]&(1<<(id%64)) != 0, true
}

func (c *rxScan) scan(value string) []uint64 {
	if len(value) > setScanMaxValue || len(value) > c.budget || c.spent >= setScanTime || !utf8.ValidString(value) {
		return nil
	}
	c.budget -= len(value)
	start := time.Now()
	ids, err := c.set.set.FindAllStringWithError(value, -1)
	c.spent += time.Since(start)
	if err != nil {
		return nil
	}
	bits := make([]uint64, (c.set.n+63)/64)
	for _, id := range ids {
		bits[id/64] |= 1 << (id % 64)
	}
	return bits
}

// maxCaptures is how many groups fill TX.0-9 (ModSecurity's limit).
const maxCaptures = 10

func (o *rx) Evaluate(tx plugintypes.TransactionState, value string) bool {
	if o.set != nil {
		if c, ok := o.set.txs.Load(tx); ok {
			match, decided := c.(*rxScan).lookup(value, o.id)
			switch {
			case !match:
				return false
			case decided && !tx.Capturing():
				return true
			}
		}
	}
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
