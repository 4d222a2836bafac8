package policy

import (
	"encoding/json"
	"fmt"
	"maps"
	"net/url"
	"strings"

	securityv1beta1 "istio.io/api/security/v1beta1"
)

const (
	maxJWTRules            = 4096
	maxSpaceDelimitedClaim = 64
	maxJWKSURILen          = 2048
)

// compiledReqAuthn is one RequestAuthentication.
type compiledReqAuthn struct {
	ref        string
	ns         string
	selector   labelSelector
	targetRefs bool
	rules      []*securityv1beta1.JWTRule
}

// compileReqAuthn validates a RequestAuthentication as Istio's CRD schema
// and ValidateRequestAuthentication do. Key material itself (jwks) is
// checked for shape only; the verifier in package authn parses it.
func compileReqAuthn(d *Document, spec fieldPath) (*compiledReqAuthn, []string, *fieldError) {
	ra := d.Spec.(*securityv1beta1.RequestAuthentication)
	warnings := dryRunRefused(d)
	if fe := validateTargetRefs(ra.GetSelector(), ra.GetTargetRef(), ra.GetTargetRefs(), spec); fe != nil {
		return nil, nil, fe
	}
	c := &compiledReqAuthn{ref: d.Ref(), ns: d.Namespace, targetRefs: ra.GetTargetRef() != nil || len(ra.GetTargetRefs()) > 0}
	if c.targetRefs {
		warnings = append(append(warnings, targetRefsWarning), targetRefWarnings(ra.GetTargetRef(), ra.GetTargetRefs(), spec)...)
	}
	sel, w, fe := validateSelector(ra.GetSelector(), spec.key("selector"))
	if fe != nil {
		return nil, nil, fe
	}
	c.selector = sel
	warnings = append(warnings, w...)
	if len(ra.GetJwtRules()) > maxJWTRules {
		return nil, nil, errAt(spec.key("jwtRules"), "at most %d rules", maxJWTRules)
	}
	for i, r := range ra.GetJwtRules() {
		if fe := validateJWTRule(r, spec.key("jwtRules").index(i)); fe != nil {
			return nil, nil, fe
		}
	}
	c.rules = ra.GetJwtRules()
	return c, warnings, nil
}

func validateJWTRule(r *securityv1beta1.JWTRule, p fieldPath) *fieldError {
	if r == nil {
		return errAt(p, "rule must not be null")
	}
	if r.GetIssuer() == "" && r.GetJwksUri() == "" && r.GetJwks() == "" {
		// Istio allows a rule without an issuer: it accepts a token of
		// any iss that the keys sign. Without keys there is nothing to
		// discover them from.
		return errAt(p.key("issuer"), "issuer is required unless jwksUri or jwks is set")
	}
	for i, a := range r.GetAudiences() {
		if a == "" {
			return errAt(p.key("audiences").index(i), "audience must be non-empty string")
		}
	}
	if r.GetJwksUri() != "" && r.GetJwks() != "" {
		return errAt(p, "only one of jwks or jwksUri can be set")
	}
	if u := r.GetJwksUri(); u != "" {
		if len(u) > maxJWKSURILen {
			return errAt(p.key("jwksUri"), "longer than %d characters", maxJWKSURILen)
		}
		pu, err := url.Parse(u)
		if err != nil || (pu.Scheme != "http" && pu.Scheme != "https") || pu.Host == "" {
			return errAt(p.key("jwksUri"), "%q: url must have scheme http:// or https:// and a host", u)
		}
		if pu.Port() != "" {
			if _, err := parsePort(pu.Port()); err != nil {
				return errAt(p.key("jwksUri"), "%q: %v", u, err)
			}
		}
	}
	if k := r.GetJwks(); k != "" {
		var set struct {
			Keys []json.RawMessage `json:"keys"`
		}
		if err := json.Unmarshal([]byte(k), &set); err != nil || set.Keys == nil {
			return errAt(p.key("jwks"), "jwks parse error: want a JSON Web Key Set, {\"keys\": [...]}")
		}
	}
	for i, h := range r.GetFromHeaders() {
		if h == nil || h.GetName() == "" {
			return errAt(p.key("fromHeaders").index(i).key("name"), "location header name must be non-empty string")
		}
		if _, err := headerKey(h.GetName()); err != nil || strings.HasPrefix(h.GetName(), ":") {
			return errAt(p.key("fromHeaders").index(i).key("name"), "%q is not a valid header name", h.GetName())
		}
	}
	for i, q := range r.GetFromParams() {
		if q == "" {
			return errAt(p.key("fromParams").index(i), "location query must be non-empty string")
		}
	}
	for i, c := range r.GetFromCookies() {
		if c == "" {
			return errAt(p.key("fromCookies").index(i), "cookie name must be non-empty string")
		}
	}
	if h := r.GetOutputPayloadToHeader(); h != "" && !outHeaderRE.MatchString(h) {
		return errAt(p.key("outputPayloadToHeader"), "%q is not a valid header name", h)
	}
	seen := map[string]bool{}
	for i, ch := range r.GetOutputClaimToHeaders() {
		cp := p.key("outputClaimToHeaders").index(i)
		if ch == nil || ch.GetHeader() == "" || ch.GetClaim() == "" {
			return errAt(cp, "outputClaimToHeaders header and claim value must be non-empty string")
		}
		if !outHeaderRE.MatchString(ch.GetHeader()) {
			return errAt(cp.key("header"), "%q is not a valid header name: letters, digits, '-' and '_'", ch.GetHeader())
		}
		l := strings.ToLower(ch.GetHeader())
		if seen[l] {
			return errAt(cp.key("header"), "header %q is set twice; the header of each operation must be unique", ch.GetHeader())
		}
		seen[l] = true
	}
	if t := r.GetTimeout(); t != nil {
		if err := t.CheckValid(); err != nil || t.AsDuration() <= 0 {
			return errAt(p.key("timeout"), "must be a positive duration")
		}
	}
	if len(r.GetSpaceDelimitedClaims()) > maxSpaceDelimitedClaim {
		return errAt(p.key("spaceDelimitedClaims"), "at most %d claims", maxSpaceDelimitedClaim)
	}
	for i, c := range r.GetSpaceDelimitedClaims() {
		if c == "" {
			return errAt(p.key("spaceDelimitedClaims").index(i), "claim name must be non-empty string")
		}
	}
	return nil
}

// reqAuthnIndex finds the RequestAuthentications of a workload: every one
// in the root namespace or the workload's namespace whose selector matches
// (Istio merges them all).
type reqAuthnIndex struct {
	root []*compiledReqAuthn
	ns   map[string][]*compiledReqAuthn
}

func (x *reqAuthnIndex) add(c *compiledReqAuthn, root string) {
	if c.targetRefs {
		return
	}
	if c.ns == root {
		x.root = append(x.root, c)
		return
	}
	if x.ns == nil {
		x.ns = map[string][]*compiledReqAuthn{}
	}
	x.ns[c.ns] = append(x.ns[c.ns], c)
}

// jwtMemo remembers the last merged rule list and the workload it was
// for: a sidecar asks for the same workload on every request, and when
// several RequestAuthentications apply the merge would otherwise allocate
// each time.
type jwtMemo struct {
	ns     string
	labels map[string]string // a copy
	rules  []*securityv1beta1.JWTRule
}

func (m *jwtMemo) matches(dst *Destination) bool {
	if m.ns != dst.Namespace || len(m.labels) != len(dst.Labels) {
		return false
	}
	for k, v := range m.labels {
		if lv, ok := dst.Labels[k]; !ok || lv != v {
			return false
		}
	}
	return true
}

// JWTRules returns the RequestAuthentication JWT rules that apply to dst,
// root-namespace policies first, then the workload's namespace, each in
// document order. The result must not be modified. It does not allocate
// when one policy applies, nor when several do and the previous call was
// for the same workload.
func (s *Set) JWTRules(dst Destination) []*securityv1beta1.JWTRule {
	if s == nil {
		return nil
	}
	if m := s.jwtMemo.Load(); m != nil && m.matches(&dst) {
		return m.rules
	}
	var single []*securityv1beta1.JWTRule
	var merged []*securityv1beta1.JWTRule
	n := 0
	visit := func(list []*compiledReqAuthn) {
		for _, c := range list {
			if len(c.rules) == 0 || !c.selector.matches(dst.Labels) {
				continue
			}
			n++
			switch n {
			case 1:
				single = c.rules
			case 2:
				merged = append(append(merged, single...), c.rules...)
			default:
				merged = append(merged, c.rules...)
			}
		}
	}
	visit(s.reqAuthn.root)
	if dst.Namespace != s.root {
		visit(s.reqAuthn.ns[dst.Namespace])
	}
	if n > 1 {
		merged = merged[:len(merged):len(merged)]
		s.jwtMemo.Store(&jwtMemo{ns: dst.Namespace, labels: maps.Clone(dst.Labels), rules: merged})
		return merged
	}
	return single[:len(single):len(single)]
}

// dryRunRefused warns about the dry-run annotation on a kind without a dry
// run: Istio refuses the document; here the annotation has no effect.
func dryRunRefused(d *Document) []string {
	if !d.DryRun {
		return nil
	}
	return []string{fmt.Sprintf("annotation %s: Istio refuses it on a %s (only an AuthorizationPolicy has a dry run); it has no effect here", AnnotationDryRun, d.Kind)}
}
