package authn

import (
	"context"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	securityv1beta1 "istio.io/api/security/v1beta1"
)

func TestCollector(t *testing.T) {
	keys(t)
	srv := newJWKSServer(t, jwksOf(t, keyES256))
	v, _ := newTestVerifier(t, Options{})
	rule := &securityv1beta1.JWTRule{Issuer: testIssuer, JwksUri: srv.URL + "/jwks?key=SECRET"}
	if err := v.Prepare(context.Background(), ruleList(rule)); err != nil {
		t.Fatal(err)
	}
	tok := sign(t, keyES256, claims(nil))
	for range 3 {
		if _, err := v.Verify(ruleList(rule), bearer(tok)); err != nil {
			t.Fatal(err)
		}
	}
	_, _ = v.Verify(ruleList(rule), bearer(sign(t, keyES256, claims(map[string]any{"exp": 1}))))

	reg := prometheus.NewPedanticRegistry()
	reg.MustRegister(NewCollector(v))
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]float64{}
	series := map[string]int{}
	for _, mf := range mfs {
		series[mf.GetName()] = len(mf.GetMetric())
		for _, m := range mf.GetMetric() {
			key := mf.GetName()
			for _, l := range m.GetLabel() {
				key += "," + l.GetName() + "=" + l.GetValue()
			}
			switch {
			case m.GetCounter() != nil:
				got[key] = m.GetCounter().GetValue()
			case m.GetGauge() != nil:
				got[key] = m.GetGauge().GetValue()
			}
		}
	}
	src := srv.URL + "/jwks?…"
	for key, want := range map[string]float64{
		"moatless_authn_tokens_accepted_total":                             3,
		"moatless_authn_tokens_rejected_total,reason=expired":              1,
		"moatless_authn_tokens_rejected_total,reason=signature":            0,
		"moatless_authn_cache_lookups_total,result=hit":                    2,
		"moatless_authn_cache_lookups_total,result=miss":                   2,
		"moatless_authn_cache_entries":                                     1,
		"moatless_authn_jwks_keys,source=" + src:                           1,
		"moatless_authn_jwks_fetches_total,source=" + src:                  1,
		"moatless_authn_jwks_fetch_failures_total,source=" + src:           0,
		"moatless_authn_jwks_last_success_timestamp_seconds,source=" + src: float64(testNow.Unix()),
	} {
		if g, ok := got[key]; !ok || g != want {
			t.Errorf("%s = %v (present %v), want %v", key, g, ok, want)
		}
	}
	if n := series["moatless_authn_tokens_rejected_total"]; n != len(reasonLabels)+1 {
		t.Errorf("rejected series = %d, want every reason", n)
	}
}
