package extauthz

import (
	"context"
	"testing"
	"time"

	"github.com/moatless/moatless/internal/authn"
	"github.com/moatless/moatless/internal/policy"
)

// BenchmarkCheck is one Check of a request without a token where a
// RequestAuthentication with an output header applies (what the forged
// header removal looks at), decided by an ALLOW-all Istio policy.
func BenchmarkCheck(b *testing.B) {
	set, _ := regoSet(b)
	v := authn.NewVerifier(authn.Options{Logger: quiet()})
	b.Cleanup(func() { v.Close() })
	s, err := New(Config{Policy: func() (*policy.Set, uint64) { return set, 1 }, Verifier: v, Destination: policy.Destination{Namespace: "prod"}, Logger: quiet()})
	if err != nil {
		b.Fatal(err)
	}
	req := check("GET", "/health", map[string]string{"accept": "*/*", "user-agent": "curl/8", "x-request-id": "abc"}, "app=other", time.Now())
	ctx := context.Background()
	b.ReportAllocs()
	for b.Loop() {
		s.Check(ctx, req)
	}
}
