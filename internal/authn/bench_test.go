package authn

import (
	"testing"

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
	}{
		{"hit_es256", keyES256, 0},
		{"hit_rs256", keyRSA, 0},
		{"miss_es256", keyES256, -1},
		{"miss_es384", keyES384, -1},
		{"miss_rs256", keyRSA, -1},
		{"miss_eddsa", keyEd, -1},
	}
	for _, c := range cases {
		b.Run(c.name, func(b *testing.B) {
			v, rules, req := benchSetup(b, c.key, c.cache)
			b.ReportAllocs()
			b.ResetTimer()
			for b.Loop() {
				if _, err := v.Verify(rules, req); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
	b.Run("hit_es256_parallel", func(b *testing.B) {
		v, rules, req := benchSetup(b, keyES256, 0)
		b.ReportAllocs()
		b.ResetTimer()
		b.RunParallel(func(pb *testing.PB) {
			for pb.Next() {
				if _, err := v.Verify(rules, req); err != nil {
					b.Error(err)
					return
				}
			}
		})
	})
	b.Run("no_token", func(b *testing.B) {
		v, rules, _ := benchSetup(b, keyES256, 0)
		req := &policy.Request{Path: "/api/v1/orders?page=2"}
		b.ReportAllocs()
		for b.Loop() {
			if a, err := v.Verify(rules, req); a != nil || err != nil {
				b.Fatal(a, err)
			}
		}
	})
}

func benchSetup(b *testing.B, k *testKey, cache int) (*Verifier, []*securityv1beta1.JWTRule, *policy.Request) {
	v, _ := newTestVerifier(b, Options{CacheSize: cache, Logger: discardLogger()})
	rule := inlineRule(b, k)
	rule.Audiences = []string{"orders"}
	rules := ruleList(rule)
	if err := v.Prepare(b.Context(), rules); err != nil {
		b.Fatal(err)
	}
	req := bearer(sign(b, k, claims(nil)))
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
	for b.Loop() {
		if _, err := parseToken(tok, DefaultMaxTokenSize); err != nil {
			b.Fatal(err)
		}
	}
}
