package waf

import (
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"slices"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	re2 "github.com/wasilibs/go-re2"

	"github.com/moatless/moatless/internal/gateway/corpustest"
)

// TestSetPrefilterSameVerdicts: with and without the Set in front of
// @rx, every request of the attack and benign corpora gets the same
// verdict and the same matched rules, so the prefilter changes what it
// costs and nothing of what is detected.
func TestSetPrefilterSameVerdicts(t *testing.T) {
	e := testEngine(t)
	if e.rx == nil {
		t.Fatal("the Core Rule Set's @rx patterns did not compile into a Set")
	}
	plain := *e
	plain.rx = nil // the operators find no scan: each pattern runs on its own
	reqs := append(corpustest.Read(t, "../testdata/corpus/attacks.tsv", true), corpustest.Read(t, "../testdata/corpus/benign.tsv", false)...)
	if len(reqs) < 400 {
		t.Fatalf("corpus has %d requests", len(reqs))
	}
	step := 1
	if raceEnabled {
		// Every 48th request, for the race detector's sake: without the
		// Set each @rx pattern runs on its own, minutes of CPU under
		// -race for the whole corpus; make test runs it whole without.
		step = 48
	}
	for i := 0; i < len(reqs); i += step {
		r := reqs[i]
		got := inspect(t, e, r.Method, r.Target, r.ContentType, r.Body)
		want := inspect(t, &plain, r.Method, r.Target, r.ContentType, r.Body)
		if got.Blocked != want.Blocked || got.WouldBlock != want.WouldBlock || !slices.Equal(got.RuleIDs, want.RuleIDs) {
			t.Errorf("%s %s: with the Set %+v, without %+v", r.Method, r.Target, got, want)
		}
	}
	n := 0
	e.rx.txs.Range(func(any, any) bool { n++; return true })
	if n != 0 {
		t.Fatalf("%d transactions' scans left behind", n)
	}
}

func TestSetScanLimits(t *testing.T) {
	s := testEngine(t).rx
	tests := []struct {
		name    string
		budget  int
		spent   time.Duration
		value   string
		decided bool
	}{
		{"short_value", setScanBudget, 0, "Ada Lovelace", true},
		{"empty_value", setScanBudget, 0, "", true},
		{"longest_value", setScanBudget, 0, strings.Repeat("a", setScanMaxValue), true},
		{"value_too_long", setScanBudget, 0, strings.Repeat("a", setScanMaxValue+1), false},
		{"bytes_spent", 5, 0, "Ada Lovelace", false},
		{"time_spent", setScanBudget, setScanTime, "Ada Lovelace", false},
		{"invalid_utf8", setScanBudget, 0, "a\xffb", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := &rxScan{set: s, seen: map[string][]uint64{}, budget: tt.budget, spent: tt.spent}
			if _, decided := c.lookup(tt.value, 0); decided != tt.decided {
				t.Fatalf("decided = %v, want %v", decided, tt.decided)
			}
			if tt.decided && c.budget != tt.budget-len(tt.value) {
				t.Fatalf("budget %d after scanning %d bytes of %d", c.budget, len(tt.value), tt.budget)
			}
		})
	}
}

// FuzzSetAgreesWithPatterns: for any string, the Set reports exactly
// the Core Rule Set patterns that match it on their own, so a pattern
// the Set leaves out can be answered "no match" without running it.
func FuzzSetAgreesWithPatterns(f *testing.F) {
	for _, s := range []string{"Ada Lovelace", "1 UNION SELECT a FROM b", "<script>alert(1)</script>", "${jndi:ldap://x/a}", "../../etc/passwd", "; cat /etc/passwd", "json.items.0.sku", "a\nb", "", "<?php system($_GET['c']); ?>"} {
		f.Add(s)
	}
	e := testEngine(f)
	res := make([]*re2.Regexp, len(e.rx.exprs))
	for id, expr := range e.rx.exprs {
		res[id] = re2.MustCompile(expr)
	}
	f.Fuzz(func(t *testing.T, value string) {
		if !utf8.ValidString(value) || len(value) > setScanMaxValue {
			return // never asked of the Set
		}
		ids, err := e.rx.set.FindAllStringWithError(value, -1)
		if err != nil {
			return // undecided: every pattern runs on its own
		}
		for id, re := range res {
			if want := re.MatchString(value); want != slices.Contains(ids, id) {
				t.Fatalf("pattern %q on %q: alone %v, in the Set %v", e.rx.exprs[id], value, want, !want)
			}
		}
	})
}

// BenchmarkInspectCrafted sends 8 KiB JSON bodies of values built to be
// unlike anything the Set has seen (each iteration new ones), through
// the engine with and without the Set: what a crafted body can make the
// Set cost. Reports cpu-ns/op.
func BenchmarkInspectCrafted(b *testing.B) {
	words := []string{"select", "union", "<script>", "alert(", "${", "jndi", "../", "etc/passwd", "cmd", ";", "|", "'", "\"", "or 1=1", "exec", "eval(", "bash", "/bin/sh", "onerror=", "<img", "php", "system(", "a", "b", " ", "\n", "%", "0x", "@", "(", ")"}
	e := testEngine(b)
	plain := *e
	plain.rx = nil
	for _, vlen := range []int{30, 60, 120} {
		for _, c := range []struct {
			name string
			e    *Engine
		}{{"set", e}, {"no_set", &plain}} {
			b.Run(fmt.Sprintf("values_%d/%s", vlen, c.name), func(b *testing.B) {
				r := rand.New(rand.NewPCG(uint64(vlen), 1))
				start, n := cpuTime(), 0
				for b.Loop() {
					m := map[string]string{}
					for i := 0; i < 8<<10/vlen; i++ {
						var sb strings.Builder
						for sb.Len() < vlen {
							sb.WriteString(words[r.IntN(len(words))])
						}
						m[fmt.Sprintf("k%d", i)] = sb.String()
					}
					body, _ := json.Marshal(m)
					inspect(b, c.e, "POST", "/orders", "application/json", string(body))
					n++
				}
				b.ReportMetric(float64(cpuTime()-start)/float64(n), "cpu-ns/op")
			})
		}
	}
}
