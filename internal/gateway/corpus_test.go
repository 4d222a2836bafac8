package gateway

import (
	"fmt"
	"sort"
	"strings"
	"testing"

	"github.com/moatless/moatless/internal/config"
	"github.com/moatless/moatless/internal/gateway/corpustest"
)

const allowAll = `
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: edge, namespace: istio-system}
spec:
  action: ALLOW
  rules: [{}]
`

// TestCorpus replays the attack and benign corpora (testdata/corpus)
// through a running gateway with the WAF on, at paranoia levels 1 and 2,
// and reports the detection rate on attacks and the false-positive rate
// on benign traffic (docs/benchmarks.md quotes its output: go test -run
// TestCorpus -v ./internal/gateway/). It fails below 90% detection or
// above 2% false positives at paranoia level 1.
func TestCorpus(t *testing.T) {
	attacks := corpustest.Read(t, "testdata/corpus/attacks.tsv", true)
	benign := corpustest.Read(t, "testdata/corpus/benign.tsv", false)
	if len(attacks) < 200 || len(benign) < 200 {
		t.Fatalf("corpus too small: %d attacks, %d benign", len(attacks), len(benign))
	}
	sampled := raceEnabled
	if sampled {
		// Under -race only every 32nd request runs, for the race
		// detector's sake; the rates are checked by the full run
		// without -race that make test does.
		attacks, benign = every(attacks, 32), every(benign, 32)
	}
	for _, pl := range []int{1, 2} {
		t.Run(fmt.Sprintf("paranoia_%d", pl), func(t *testing.T) {
			tg := startGateway(t, func(c *config.Gateway) {
				c.WAF.ParanoiaLevel = pl
				c.Routes[0].WAF = &config.GatewayRouteWAF{Enabled: true}
			})
			tg.g.SetAuthorizer(2, compile(t, allowAll))
			send := func(e corpustest.Entry) int {
				hdr := map[string]string{"User-Agent": "Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0", "Accept": "application/json"}
				if e.ContentType != "" {
					hdr["Content-Type"] = e.ContentType
				}
				resp, _ := tg.do(t, e.Method, e.Target, strings.NewReader(e.Body), hdr)
				return resp.StatusCode
			}
			caught := map[string][2]int{}
			var missed []string
			for _, e := range attacks {
				c := caught[e.Kind]
				c[1]++
				if st := send(e); st == 403 {
					c[0]++
				} else {
					missed = append(missed, fmt.Sprintf("%s %s %s (%d)", e.Kind, e.Method, e.Target, st))
				}
				caught[e.Kind] = c
			}
			fp := 0
			var falsePos []string
			for _, e := range benign {
				if st := send(e); st != 200 {
					fp++
					falsePos = append(falsePos, fmt.Sprintf("%s %s %.60s (%d)", e.Method, e.Target, e.Body, st))
				}
			}
			det := 0
			var kinds []string
			for k, c := range caught {
				det += c[0]
				kinds = append(kinds, fmt.Sprintf("%s %d/%d", k, c[0], c[1]))
			}
			sort.Strings(kinds)
			detRate := float64(det) / float64(len(attacks))
			fpRate := float64(fp) / float64(len(benign))
			t.Logf("paranoia %d: detection %d/%d = %.1f%% (%s); false positives %d/%d = %.1f%%",
				pl, det, len(attacks), 100*detRate, strings.Join(kinds, ", "), fp, len(benign), 100*fpRate)
			for _, m := range missed {
				t.Logf("  missed: %s", m)
			}
			for _, f := range falsePos {
				t.Logf("  false positive: %s", f)
			}
			if pl == 1 && !sampled && (detRate < 0.9 || fpRate > 0.02) {
				t.Errorf("paranoia 1: detection %.1f%% (want >= 90%%), false positives %.1f%% (want <= 2%%)", 100*detRate, 100*fpRate)
			}
		})
	}
}

// every returns every nth entry of es.
func every(es []corpustest.Entry, n int) []corpustest.Entry {
	var out []corpustest.Entry
	for i := 0; i < len(es); i += n {
		out = append(out, es[i])
	}
	return out
}
