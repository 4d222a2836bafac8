package policy

import (
	"net/http"
	"testing"
)

// TestOutputHeadersAreDecidedOn: in Istio the JWT filter writes
// outputClaimToHeaders and outputPayloadToHeader into the request before
// the authorization filters run, so request.headers[x-user] conditions
// (and a CUSTOM provider) see the verified claim. Here they saw the
// request without them: a DENY on x-user = alice let alice through, and
// an ALLOW on it refused her. The token's headers now count as the
// request's, over any value a caller sent under that name.
func TestOutputHeadersAreDecidedOn(t *testing.T) {
	s := mustSet(t, `apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {name: jwt, namespace: foo}
spec:
  jwtRules:
  - issuer: https://issuer.example
    jwks: '{"keys": []}'
    outputClaimToHeaders: [{header: x-user, claim: sub}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: no-alice, namespace: foo}
spec:
  action: DENY
  rules: [{when: [{key: "request.headers[x-user]", values: [alice]}]}]
`, Options{})
	verify := func(sub string) verifierFunc {
		return func(rules []*securityv1beta1JWTRule, r *Request) (*Auth, error) {
			if sub == "" {
				return nil, nil
			}
			a := jwt("https://issuer.example", sub, nil)
			a.SetHeaders = map[string]string{"X-User": sub}
			return a, nil
		}
	}
	tests := []struct {
		name, sub, sent string
		want            Outcome
	}{
		{"token_for_alice", "alice", "", Deny},
		{"token_for_alice_caller_says_bob", "alice", "bob", Deny},
		{"token_for_bob", "bob", "", Allow},
		{"token_for_bob_caller_says_alice", "bob", "alice", Allow},
		{"no_token_caller_says_alice", "", "alice", Deny},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			r := newReq(dst("foo"))
			if tc.sent != "" {
				r.Headers = http.Header{"X-User": {tc.sent}}
			}
			d := s.Evaluate(r, verify(tc.sub))
			if d.Outcome != tc.want {
				t.Fatalf("%v (%s), want %v", d.Outcome, d.Reason, tc.want)
			}
			if e := s.Explain(r, verify(tc.sub)); e.Decision.Outcome != tc.want {
				t.Fatalf("explain: %v, want %v", e.Decision.Outcome, tc.want)
			}
		})
	}
}
