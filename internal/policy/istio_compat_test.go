package policy

import (
	"strings"
	"testing"
	"time"

	securityv1beta1 "istio.io/api/security/v1beta1"
)

// TestIstioDocumentsRealSetupsUse: documents Istio accepts that were
// refused, and one refused document blocked a whole apply: a JWT rule
// with jwksUri and no issuer, Go-style durations in a JWT rule's timeout
// (Istio's CRD checks them with CEL's duration()), and the `when` key
// source.trustDomain (the attribute from.source.trustDomains is "the
// same as").
func TestIstioDocumentsRealSetupsUse(t *testing.T) {
	s := mustSet(t, `
apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {name: jwt, namespace: prod}
spec:
  jwtRules:
  - jwksUri: https://keys.example/jwks.json
    timeout: 10ms
  - issuer: https://issuer.example
    jwksUri: https://issuer.example/keys
    timeout: 1m30s
  - issuer: https://other.example
    jwksUri: https://other.example/keys
    timeout: "2.5s"
    presence: REQUIRED
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: same-td, namespace: prod}
spec:
  rules:
  - when:
    - key: source.trustDomain
      values: ["td"]
      notValues: ["evil.*"]
`, Options{})
	rules := s.JWTRules(Destination{Namespace: "prod"})
	wantTimeouts := []time.Duration{10 * time.Millisecond, 90 * time.Second, 2500 * time.Millisecond}
	if len(rules) != len(wantTimeouts) {
		t.Fatalf("%d rules, want %d", len(rules), len(wantTimeouts))
	}
	for i, r := range rules {
		if got := r.GetTimeout().AsDuration(); got != wantTimeouts[i] {
			t.Errorf("rule %d: timeout %s, want %s", i, got, wantTimeouts[i])
		}
	}
	if rules[0].GetIssuer() != "" || rules[0].GetJwksUri() != "https://keys.example/jwks.json" {
		t.Errorf("rule 0: %v", rules[0])
	}
	if rules[2].GetPresence() != securityv1beta1.JWTRule_REQUIRED || rules[0].GetPresence() != securityv1beta1.JWTRule_OPTIONAL {
		t.Errorf("presence: %v, %v", rules[2].GetPresence(), rules[0].GetPresence())
	}
	if _, err := Parse(strings.NewReader("apiVersion: security.istio.io/v1\nkind: RequestAuthentication\nmetadata: {name: a}\nspec:\n  jwtRules:\n  - {issuer: i, presence: SOMETIMES}\n")); err == nil || !strings.Contains(err.Error(), "presence") {
		t.Errorf("presence: SOMETIMES: %v", err)
	}
	tests := []struct {
		name      string
		principal string
		want      Outcome
	}{
		{"trust_domain_listed", "spiffe://td/ns/prod/sa/orders", Allow},
		{"other_trust_domain", "spiffe://other/ns/prod/sa/orders", Deny},
		{"plaintext_has_no_trust_domain", "", Deny},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if d := s.Decide(newReq(dst("prod"), from(tc.principal))); d.Outcome != tc.want {
				t.Fatalf("%+v, want %v", d, tc.want)
			}
		})
	}
}

// TestIstioDurations: what a JWT rule's timeout accepts and refuses.
func TestIstioDurations(t *testing.T) {
	doc := func(timeout string) string {
		return "apiVersion: security.istio.io/v1\nkind: RequestAuthentication\nmetadata: {name: a}\nspec:\n  jwtRules:\n  - issuer: i\n    jwksUri: https://i.example/k\n    timeout: " + timeout + "\n"
	}
	tests := []struct {
		name    string
		timeout string
		want    time.Duration
		wantErr string
	}{
		{"protojson_seconds", "3s", 3 * time.Second, ""},
		{"protojson_fraction", `"0.010s"`, 10 * time.Millisecond, ""},
		{"go_milliseconds", "10ms", 10 * time.Millisecond, ""},
		{"go_compound", "1h2m3.5s", time.Hour + 2*time.Minute + 3500*time.Millisecond, ""},
		{"go_microseconds", "1500us", 1500 * time.Microsecond, ""},
		{"negative", "-1s", 0, "must be a positive duration"},
		{"negative_go", "-5ms", 0, "must be a positive duration"},
		{"zero", "0s", 0, "must be a positive duration"},
		{"garbage", "soon", 0, `spec.jwtRules[0].timeout: must be a duration such as "5s" or "10ms", not "soon"`},
		{"number", "5", 0, "must be a duration string"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			docs, err := Parse(strings.NewReader(doc(tc.timeout)))
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("err %v, want %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			ra := docs[0].Spec.(*securityv1beta1.RequestAuthentication)
			if got := ra.GetJwtRules()[0].GetTimeout().AsDuration(); got != tc.want {
				t.Fatalf("timeout %s, want %s", got, tc.want)
			}
		})
	}
}

// TestIstioRefusalsAreWarnings: what Istio's validation refuses but
// cannot change a decision here (no sidecar applies a targetRef policy;
// the dry-run annotation is ignored where it has no meaning) is a warning
// naming the field, not an error that blocks the apply.
func TestIstioRefusalsAreWarnings(t *testing.T) {
	const input = `
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: wrong-kind, namespace: prod}
spec:
  targetRefs: [{kind: Deployment, group: apps, name: web}]
  rules: [{}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: wrong-group, namespace: prod}
spec:
  targetRef: {kind: Gateway, group: networking.istio.io, name: gw}
  rules: [{}]
---
apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {name: svc-apps, namespace: prod}
spec:
  targetRefs: [{kind: Service, group: apps, name: web}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: good-refs, namespace: prod}
spec:
  targetRefs:
  - {kind: Service, group: "", name: web}
  - {kind: Service, group: core, name: web2}
  - {kind: ServiceEntry, group: networking.istio.io, name: ext}
  - {kind: Gateway, group: gateway.networking.k8s.io, name: gw}
  rules: [{}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: audit-dry, namespace: prod, annotations: {istio.io/dry-run: "true"}}
spec:
  action: AUDIT
  rules: [{}]
---
apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {name: ra-dry, namespace: prod, annotations: {istio.io/dry-run: "true"}}
spec:
  jwtRules: [{issuer: https://i.example}]
`
	s := mustSet(t, input, Options{})
	all := strings.Join(s.Warnings(), "\n")
	for _, w := range []string{
		`AuthorizationPolicy prod/wrong-kind: spec.targetRefs[0].kind: Istio refuses kind "Deployment"`,
		`AuthorizationPolicy prod/wrong-group: spec.targetRef.group: Istio refuses group "networking.istio.io" for kind Gateway: it must be "gateway.networking.k8s.io"`,
		`RequestAuthentication prod/svc-apps: spec.targetRefs[0].group: Istio refuses group "apps" for kind Service: it must be "" (core)`,
		"AuthorizationPolicy prod/audit-dry: annotation istio.io/dry-run: Istio refuses it on an AUDIT policy",
		"RequestAuthentication prod/ra-dry: annotation istio.io/dry-run: Istio refuses it on a RequestAuthentication",
	} {
		if !strings.Contains(all, w) {
			t.Errorf("warnings lack %q:\n%s", w, all)
		}
	}
	if strings.Contains(all, "good-refs: spec.targetRef") {
		t.Errorf("warned about valid targetRefs:\n%s", all)
	}
}
