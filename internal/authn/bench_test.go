package authn

import (
	"syscall"
	"testing"
	"time"

	securityv1beta1 "istio.io/api/security/v1beta1"

	"github.com/moatless/moatless/internal/policy"
)

// BenchmarkVerify measures the sidecar's per-request cost of a token:
// a cache hit (the common case: a client reuses its token) and a miss (a
// full parse and signature verification), per algorithm.
//
//	go test -run '^$' -bench BenchmarkVerify -benchmem ./internal/authn/
func BenchmarkVerify(b *testing.B) {
	keys(b)
	cases := []struct {
		name  string
		key   *testKey
		cache int
		split bool // a rule with spaceDelimitedClaims, a token with such claims
	}{
		{"hit_es256", keyES256, 0, false},
		{"hit_rs256", keyRSA, 0, false},
		{"hit_es256_space_delimited", keyES256, 0, true},
		{"miss_es256", keyES256, -1, false},
		{"miss_es256_space_delimited", keyES256, -1, true},
		{"miss_es384", keyES384, -1, false},
		{"miss_rs256", keyRSA, -1, false},
		{"miss_eddsa", keyEd, -1, false},
	}
	for _, c := range cases {
		b.Run(c.name, func(b *testing.B) {
			v, rules, req := benchSetupWith(b, c.key, c.cache, c.split)
			b.ReportAllocs()
			b.ResetTimer()
			cpu := cpuTime()
			for b.Loop() {
				if _, err := v.Verify(rules, req); err != nil {
					b.Fatal(err)
				}
			}
			reportCPU(b, cpu)
		})
	}
	// A connection's memo (the sidecar's fast path): the same token
	// again on one connection, no SHA-256 and no cache lookup.
	b.Run("memo_hit_es256", func(b *testing.B) {
		v, rules, req := benchSetup(b, keyES256, 0)
		m := v.Memo()
		b.ReportAllocs()
		b.ResetTimer()
		cpu := cpuTime()
		for b.Loop() {
			if _, err := m.Verify(rules, req); err != nil {
				b.Fatal(err)
			}
		}
		reportCPU(b, cpu)
	})
	b.Run("hit_es256_parallel", func(b *testing.B) {
		v, rules, req := benchSetup(b, keyES256, 0)
		b.ReportAllocs()
		b.ResetTimer()
		cpu := cpuTime()
		b.RunParallel(func(pb *testing.PB) {
			for pb.Next() {
				if _, err := v.Verify(rules, req); err != nil {
					b.Error(err)
					return
				}
			}
		})
		reportCPU(b, cpu)
	})
	b.Run("no_token", func(b *testing.B) {
		v, rules, _ := benchSetup(b, keyES256, 0)
		req := &policy.Request{Path: "/api/v1/orders?page=2"}
		b.ReportAllocs()
		cpu := cpuTime()
		for b.Loop() {
			if a, err := v.Verify(rules, req); a != nil || err != nil {
				b.Fatal(a, err)
			}
		}
		reportCPU(b, cpu)
	})
}

// cpuTime is the CPU time (user + system) the test process has used.
// Reported per operation next to ns/op, it stays meaningful on a shared,
// loaded machine where wall-clock ns/op mostly measures waiting for a core.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

func reportCPU(b *testing.B, start time.Duration) {
	if b.N > 0 {
		b.ReportMetric(float64(cpuTime()-start)/float64(b.N), "cpu-ns/op")
	}
}

func benchSetup(b *testing.B, k *testKey, cache int) (*Verifier, []*securityv1beta1.JWTRule, *policy.Request) {
	return benchSetupWith(b, k, cache, false)
}

// benchSetupWith, with split, names two claims in spaceDelimitedClaims
// and gives the token both, so every verification splits them.
func benchSetupWith(b *testing.B, k *testKey, cache int, split bool) (*Verifier, []*securityv1beta1.JWTRule, *policy.Request) {
	v, _ := newTestVerifier(b, Options{CacheSize: cache, Logger: discardLogger()})
	rule := inlineRule(b, k)
	rule.Audiences = []string{"orders"}
	cl := claims(nil)
	if split {
		rule.SpaceDelimitedClaims = []string{"roles", "scope"}
		cl["roles"] = "admin editor viewer"
		cl["scope"] = "openid profile orders.read orders.write"
	}
	rules := ruleList(rule)
	if err := v.Prepare(b.Context(), rules); err != nil {
		b.Fatal(err)
	}
	req := bearer(sign(b, k, cl))
	if _, err := v.Verify(rules, req); err != nil {
		b.Fatal(err)
	}
	return v, rules, req
}

// BenchmarkParseToken is the strict structural parse alone (no signature).
func BenchmarkParseToken(b *testing.B) {
	keys(b)
	tok := sign(b, keyES256, claims(nil))
	b.ReportAllocs()
	cpu := cpuTime()
	for b.Loop() {
		if _, err := parseToken(tok, DefaultMaxTokenSize, false); err != nil {
			b.Fatal(err)
		}
	}
	reportCPU(b, cpu)
}
