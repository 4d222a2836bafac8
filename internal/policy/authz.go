package policy

import (
	"fmt"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"
	"unicode"
	"unicode/utf8"

	securityv1beta1 "istio.io/api/security/v1beta1"
	typev1beta1 "istio.io/api/type/v1beta1"
)

// action is an AuthorizationPolicy action.
type action uint8

const (
	actAllow action = iota
	actDeny
	actAudit
	actCustom
)

func (a action) String() string {
	switch a {
	case actDeny:
		return "DENY"
	case actAudit:
		return "AUDIT"
	case actCustom:
		return "CUSTOM"
	}
	return "ALLOW"
}

// Limits inside one AuthorizationPolicy, Istio's CRD limits where it has
// them (512 rules, 512 sources, 16 service accounts).
const (
	maxRules         = 512
	maxClauses       = 512
	maxValues        = 4096
	maxValueLen      = 4096
	maxServiceAccts  = 16
	maxTargetRefs    = 16
	maxSelectorLabel = 4096
)

// compiledAuthz is one AuthorizationPolicy, ready to match.
type compiledAuthz struct {
	ref      string // "namespace/name"
	ns       string
	name     string
	action   action
	provider string // CUSTOM only
	dryRun   bool
	selector labelSelector
	// targetRefs policies bind to Gateways, waypoints and Services, which
	// sidecars are not: like Istio's sidecars, the engine never applies them.
	targetRefs bool
	rank       int // position in evaluation order
	rules      []compiledRule
	pathUpper  bool // some rule's paths or notPaths hold an upper-case letter
}

// compiledRule is one rule: any source, any operation, every condition.
type compiledRule struct {
	index    int
	from     []clause // empty: any source
	to       []clause // empty: any operation
	when     clause
	httpOnly bool   // uses an attribute that TCP traffic does not have
	reason   string // "matched DENY rule 0 of prod/deny-delete", built once
	// What the rule reads of the path, for its other readings
	// (evalCtx.applies): pathDep, the path at all (paths, notPaths, a
	// :path condition); pathPos and pathNeg, paths and notPaths values
	// or a :path condition's values and notValues; pathUpper, an
	// upper-case letter in those values.
	pathDep, pathPos, pathNeg, pathUpper bool
}

// clause is a conjunction: a source, an operation, or the when list.
type clause []attrMatch

// attrMatch tests one attribute against its values and notValues.
type attrMatch struct {
	kind   attrKind
	desc   string   // where it came from, for explanations: "from[0].source.principals"
	header string   // attrHeader
	claim  []string // attrClaim
	pos    valueSet
	neg    valueSet
}

// valueSet is a compiled values (or notValues) list; which member is used
// depends on the attribute.
type valueSet struct {
	n        int
	strs     strSet
	nss      nsSet // namespaces, source.namespace
	presence bool  // "*" among header values: matches a present header, even empty
	paths    pathSet
	ips      ipSet
	ports    portSet
	hosts    hostSet
	rps      []reqPrincipalPat
	sas      saSet // serviceAccounts, source.serviceAccount
}

// reqPrincipalPat is a requestPrincipals value split as Istio splits it:
// issuer and subject matched separately, so "iss/*" cannot match a token
// from issuer "iss/x".
type reqPrincipalPat struct {
	iss, sub strPat
}

type serviceAccount struct{ ns, name string }

// labelSelector is matchLabels as sorted pairs (a slice is cheaper to walk
// than a map); nil or empty selects every workload.
type labelSelector []labelPair

func (s labelSelector) matches(labels map[string]string) bool {
	for _, p := range s {
		if lv, ok := labels[p.k]; !ok || lv != p.v {
			return false
		}
	}
	return true
}

var (
	targetKindRE  = regexp.MustCompile(`^[a-zA-Z]([-a-zA-Z0-9]*[a-zA-Z0-9])?$`)
	targetGroupRE = regexp.MustCompile(`^$|^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$`)
	outHeaderRE   = regexp.MustCompile(`^[-_A-Za-z0-9]+$`)
)

// validateSelector applies Istio's workload selector rules.
func validateSelector(sel *typev1beta1.WorkloadSelector, p fieldPath) (labelSelector, []string, *fieldError) {
	if sel == nil {
		return nil, nil, nil
	}
	p = p.key("matchLabels")
	if len(sel.GetMatchLabels()) == 0 {
		return nil, []string{"workload selector specified without labels: it selects every workload in scope"}, nil
	}
	if len(sel.GetMatchLabels()) > maxSelectorLabel {
		return nil, nil, errAt(p, "more than %d labels", maxSelectorLabel)
	}
	out := make(labelSelector, 0, len(sel.GetMatchLabels()))
	for _, k := range sortedKeys(sel.GetMatchLabels()) {
		v := sel.GetMatchLabels()[k]
		switch {
		case k == "":
			return nil, nil, errAt(p, "empty key is not supported in selector")
		case strings.Contains(k, "*") || strings.Contains(v, "*"):
			return nil, nil, errAt(p.key(k), "wildcard is not supported in selector: %q", k+"="+v)
		case len(v) > 63:
			return nil, nil, errAt(p.key(k), "label value longer than 63 characters")
		}
		out = append(out, labelPair{k, v})
	}
	return out, nil, nil
}

// validateTargetRefs applies Istio's PolicyTargetReference rules.
func validateTargetRefs(sel *typev1beta1.WorkloadSelector, one *typev1beta1.PolicyTargetReference, many []*typev1beta1.PolicyTargetReference, spec fieldPath) *fieldError {
	set := 0
	if sel != nil {
		set++
	}
	if one != nil {
		set++
	}
	if len(many) > 0 {
		set++
	}
	if set > 1 {
		return errAt(spec, "only one of selector, targetRef or targetRefs can be set")
	}
	if len(many) > maxTargetRefs {
		return errAt(spec.key("targetRefs"), "at most %d targetRefs", maxTargetRefs)
	}
	check := func(r *typev1beta1.PolicyTargetReference, p fieldPath) *fieldError {
		switch {
		case r.GetKind() == "" || len(r.GetKind()) > 63 || !targetKindRE.MatchString(r.GetKind()):
			return errAt(p.key("kind"), "kind is required: a resource kind such as Gateway or Service")
		case r.GetName() == "" || len(r.GetName()) > 253:
			return errAt(p.key("name"), "name is required (at most 253 characters)")
		case len(r.GetGroup()) > 253 || !targetGroupRE.MatchString(r.GetGroup()):
			return errAt(p.key("group"), "%q is not a valid API group", r.GetGroup())
		case r.GetNamespace() != "":
			return errAt(p.key("namespace"), "cross namespace referencing is not currently supported")
		}
		return nil
	}
	if one != nil {
		if fe := check(one, spec.key("targetRef")); fe != nil {
			return fe
		}
	}
	for i, r := range many {
		if fe := check(r, spec.key("targetRefs").index(i)); fe != nil {
			return fe
		}
	}
	return nil
}

const targetRefsWarning = "targetRefs bind a policy to Gateways, waypoints and Services; no sidecar applies it (as in Istio)"

// targetKinds are the kinds Istio's validation lets a policy's targetRef
// name, each with its API group ("" and "core" both mean core).
var targetKinds = map[string]string{
	"Service":      "core",
	"ServiceEntry": "networking.istio.io",
	"Gateway":      "gateway.networking.k8s.io",
	"GatewayClass": "gateway.networking.k8s.io",
}

// targetRefWarnings warns, as Istio's validation refuses, on a targetRef
// naming a kind a policy cannot attach to or the wrong group for its
// kind. No sidecar applies a targetRef policy either way (so this is a
// warning, not an error), but Istio would not have accepted the document.
func targetRefWarnings(one *typev1beta1.PolicyTargetReference, many []*typev1beta1.PolicyTargetReference, spec fieldPath) []string {
	var out []string
	check := func(r *typev1beta1.PolicyTargetReference, p fieldPath) {
		group := r.GetGroup()
		if group == "" {
			group = "core"
		}
		want, ok := targetKinds[r.GetKind()]
		switch {
		case !ok:
			out = append(out, fmt.Sprintf("%s: Istio refuses kind %q: a targetRef names a Service, ServiceEntry, Gateway or GatewayClass", p.key("kind"), r.GetKind()))
		case group != want:
			if want == "core" {
				want = `"" (core)`
			} else {
				want = strconv.Quote(want)
			}
			out = append(out, fmt.Sprintf("%s: Istio refuses group %q for kind %s: it must be %s", p.key("group"), r.GetGroup(), r.GetKind(), want))
		}
	}
	if one != nil {
		check(one, spec.key("targetRef"))
	}
	for i, r := range many {
		check(r, spec.key("targetRefs").index(i))
	}
	return out
}

// compileAuthz validates an AuthorizationPolicy the way Istio's
// ValidateAuthorizationPolicy does (and more strictly where Istio would
// silently skip a rule) and builds its matchers.
func compileAuthz(d *Document, spec fieldPath) (*compiledAuthz, []string, *fieldError) {
	ap := d.Spec.(*securityv1beta1.AuthorizationPolicy)
	var warnings []string
	c := &compiledAuthz{
		ref: d.Ref(), ns: d.Namespace, name: d.Name, dryRun: d.DryRun,
		targetRefs: ap.GetTargetRef() != nil || len(ap.GetTargetRefs()) > 0,
	}
	if fe := validateTargetRefs(ap.GetSelector(), ap.GetTargetRef(), ap.GetTargetRefs(), spec); fe != nil {
		return nil, nil, fe
	}
	if c.targetRefs {
		warnings = append(append(warnings, targetRefsWarning), targetRefWarnings(ap.GetTargetRef(), ap.GetTargetRefs(), spec)...)
	}
	sel, w, fe := validateSelector(ap.GetSelector(), spec.key("selector"))
	if fe != nil {
		return nil, nil, fe
	}
	c.selector = sel
	warnings = append(warnings, w...)

	switch ap.GetAction() {
	case securityv1beta1.AuthorizationPolicy_ALLOW:
		c.action = actAllow
	case securityv1beta1.AuthorizationPolicy_DENY:
		c.action = actDeny
	case securityv1beta1.AuthorizationPolicy_AUDIT:
		c.action = actAudit
	case securityv1beta1.AuthorizationPolicy_CUSTOM:
		c.action = actCustom
	default:
		return nil, nil, errAt(spec.key("action"), "unknown action %v", ap.GetAction())
	}
	if c.dryRun && c.action == actAudit {
		warnings = append(warnings, fmt.Sprintf("annotation %s: Istio refuses it on an AUDIT policy (an AUDIT policy decides nothing to rehearse); it has no effect here", AnnotationDryRun))
	}
	if ap.GetProvider() != nil && c.action != actCustom {
		return nil, nil, errAt(spec.key("provider"), "`provider` must not be with non CUSTOM action, found %s", c.action)
	}
	if len(ap.GetRules()) == 0 {
		switch c.action {
		case actDeny:
			return nil, nil, errAt(spec.key("rules"), "DENY action without `rules` is meaningless as it will never be triggered, add an empty rule `{}` if you want it be triggered for every request")
		case actCustom:
			return nil, nil, errAt(spec.key("rules"), "CUSTOM action without `rules` is meaningless as it will never be triggered, add an empty rule `{}` if you want it be triggered for every request")
		case actAudit:
			warnings = append(warnings, "AUDIT action without `rules` never audits anything")
		}
	}
	if c.action == actCustom {
		if ap.GetProvider().GetName() == "" {
			return nil, nil, errAt(spec.key("provider").key("name"), "`provider.name` must not be empty")
		}
		c.provider = ap.GetProvider().GetName()
	}
	if len(ap.GetRules()) > maxRules {
		return nil, nil, errAt(spec.key("rules"), "at most %d rules", maxRules)
	}
	for i, r := range ap.GetRules() {
		rp := spec.key("rules").index(i)
		cr, w, fe := compileRule(c, r, i, rp)
		if fe != nil {
			return nil, nil, fe
		}
		warnings = append(warnings, w...)
		c.rules = append(c.rules, cr)
		c.pathUpper = c.pathUpper || cr.pathUpper
	}
	return c, warnings, nil
}

func compileRule(c *compiledAuthz, r *securityv1beta1.Rule, i int, rp fieldPath) (compiledRule, []string, *fieldError) {
	cr := compiledRule{index: i}
	var warnings []string
	if r == nil {
		return cr, nil, errAt(rp, "`rule` must not be null")
	}
	if len(r.GetFrom()) > maxClauses || len(r.GetTo()) > maxClauses || len(r.GetWhen()) > maxClauses {
		return cr, nil, errAt(rp, "at most %d entries in from, to and when", maxClauses)
	}
	// Istio's check, for documents built in Go: a present but empty list
	// would match anything. (The loader refuses "[]" and null on the JSON,
	// which protojson decodes as absent.)
	switch {
	case r.From != nil && len(r.From) == 0:
		return cr, nil, errAt(rp.key("from"), "%s", emptyRefused["istio.security.v1beta1.Rule.from"])
	case r.To != nil && len(r.To) == 0:
		return cr, nil, errAt(rp.key("to"), "%s", emptyRefused["istio.security.v1beta1.Rule.to"])
	case r.When != nil && len(r.When) == 0:
		return cr, nil, errAt(rp.key("when"), "%s", emptyRefused["istio.security.v1beta1.Rule.when"])
	}
	tcpInFrom, tcpInTo := false, false
	for j, f := range r.GetFrom() {
		fp := rp.key("from").index(j)
		if f.GetSource() == nil {
			return cr, nil, errAt(fp.key("source"), "`from.source` must not be null")
		}
		cl, tcp, fe := compileSource(c, f.GetSource(), fp.key("source"))
		if fe != nil {
			return cr, nil, fe
		}
		tcpInFrom = tcpInFrom || tcp
		cr.from = append(cr.from, cl)
		src := f.GetSource()
		warnings = append(warnings, schemeWarnings(fp.key("source").key("principals"), src.GetPrincipals())...)
		warnings = append(warnings, schemeWarnings(fp.key("source").key("notPrincipals"), src.GetNotPrincipals())...)
	}
	for j, t := range r.GetTo() {
		tp := rp.key("to").index(j)
		if t.GetOperation() == nil {
			return cr, nil, errAt(tp.key("operation"), "`to.operation` must not be null")
		}
		cl, tcp, w, fe := compileOperation(t.GetOperation(), tp.key("operation"))
		if fe != nil {
			return cr, nil, fe
		}
		warnings = append(warnings, w...)
		if c.action == actDeny {
			if ms := t.GetOperation().GetMethods(); slices.Contains(ms, "GET") && !slices.Contains(ms, "HEAD") {
				warnings = append(warnings, fmt.Sprintf("%s: a DENY on GET does not cover HEAD, which most frameworks (Go's net/http, Flask, Rails, Express, Spring) answer by running the GET handler; list HEAD too", tp.key("operation").key("methods")))
			}
			warnings = append(warnings, subtreeWarnings(tp.key("operation").key("paths"), t.GetOperation().GetPaths())...)
		}
		tcpInTo = tcpInTo || tcp
		cr.to = append(cr.to, cl)
	}
	for j, cond := range r.GetWhen() {
		wp := rp.key("when").index(j)
		am, fe := compileCondition(c, cond, wp)
		if fe != nil {
			return cr, nil, fe
		}
		if am.kind == attrPrincipal {
			warnings = append(warnings, schemeWarnings(wp.key("values"), cond.GetValues())...)
			warnings = append(warnings, schemeWarnings(wp.key("notValues"), cond.GetNotValues())...)
		}
		if am.kind == attrHeader && am.header == ":authority" {
			warnings = append(warnings, fmt.Sprintf("%s: %s matches the Host header as sent, so a port, a trailing dot or another case makes a different value; to.operation.hosts matches the host name", wp.key("key"), cond.GetKey()))
		}
		cr.when = append(cr.when, am)
	}
	for _, cls := range [][]clause{cr.from, cr.to, {cr.when}} {
		for _, cl := range cls {
			for _, am := range cl {
				if am.kind.httpOnly() {
					cr.httpOnly = true
				}
				switch {
				case am.kind == attrPath:
					cr.pathDep = true
					cr.pathPos = cr.pathPos || am.pos.n > 0
					cr.pathNeg = cr.pathNeg || am.neg.n > 0
					cr.pathUpper = cr.pathUpper || am.pos.paths.upper || am.neg.paths.upper
				case am.kind == attrHeader && am.header == ":path":
					// Read as paths are (headerAttr matches it ignoring
					// case under a folded reading).
					cr.pathDep = true
					cr.pathPos = cr.pathPos || am.pos.n > 0
					cr.pathNeg = cr.pathNeg || am.neg.n > 0
					cr.pathUpper = cr.pathUpper || am.pos.strs.hasUpper() || am.neg.strs.hasUpper()
				}
			}
		}
	}
	// Istio's warning: a DENY rule whose sources or operations are all HTTP
	// attributes denies every TCP connection in its scope.
	if c.action == actDeny && ((len(cr.from) > 0 && len(cr.to) == 0 && !tcpInFrom) || (len(cr.to) > 0 && !tcpInTo)) {
		warnings = append(warnings, fmt.Sprintf("rule %d: configured AuthorizationPolicy will deny all traffic to TCP ports under its scope due to the use of only HTTP attributes in a DENY rule; it is recommended to explicitly specify the port", i))
	}
	if c.action == actCustom {
		cr.reason = fmt.Sprintf("CUSTOM provider %q (rule %d of %s)", c.provider, i, c.ref)
	} else {
		cr.reason = fmt.Sprintf("matched %s rule %d of %s", c.action, i, c.ref)
	}
	return cr, warnings, nil
}

// subtreeWarnings warns about DENY paths that cover what is below a path
// and not the path itself: "/admin/*" and "/admin/{**}" match
// "/admin/x" and "/admin/", not "/admin", which most apps serve as the
// same page (or redirect to "/admin/").
func subtreeWarnings(p fieldPath, paths []string) []string {
	var w []string
	for i, v := range paths {
		base, ok := strings.CutSuffix(v, "/*")
		if !ok {
			base, ok = strings.CutSuffix(v, "/{**}")
		}
		if !ok || base == "" || strings.ContainsAny(base, "*{}") || slices.Contains(paths, base) || slices.Contains(paths, base+"*") {
			continue
		}
		w = append(w, fmt.Sprintf("%s: %q does not cover %q itself, which most apps serve (or redirect to %q); list %q too", p.index(i), v, base, base+"/", base))
	}
	return w
}

// schemeWarnings warns about principals written as SPIFFE IDs with their
// scheme: Istio matches "spiffe://" + value, so "spiffe://td/ns/a/sa/b"
// never matches, and a DENY naming a caller that way denies nothing.
// (Istio accepts it silently; so does Moatless, but it says so.)
func schemeWarnings(p fieldPath, values []string) []string {
	var w []string
	for i, v := range values {
		if rest, ok := strings.CutPrefix(v, "spiffe://"); ok {
			w = append(w, fmt.Sprintf("%s: %q never matches: principals are SPIFFE IDs without \"spiffe://\" (write %q)", p.index(i), v, rest))
		}
	}
	return w
}

// compileSource builds one from.source. tcp reports whether it uses any
// attribute that TCP traffic has (Istio's tcpRulesInFrom).
func compileSource(c *compiledAuthz, s *securityv1beta1.Source, sp fieldPath) (clause, bool, *fieldError) {
	if len(s.GetServiceAccounts())+len(s.GetNotServiceAccounts()) > 0 &&
		len(s.GetPrincipals())+len(s.GetNotPrincipals())+len(s.GetNamespaces())+len(s.GetNotNamespaces()) > 0 {
		return nil, false, errAt(sp, "cannot set serviceAccounts with namespaces or principals")
	}
	type field struct {
		kind     attrKind
		name     string
		pos, neg []string
	}
	fields := []field{
		{attrPrincipal, "principals", s.GetPrincipals(), s.GetNotPrincipals()},
		{attrRequestPrincipal, "requestPrincipals", s.GetRequestPrincipals(), s.GetNotRequestPrincipals()},
		{attrNamespace, "namespaces", s.GetNamespaces(), s.GetNotNamespaces()},
		{attrServiceAccount, "serviceAccounts", s.GetServiceAccounts(), s.GetNotServiceAccounts()},
		{attrSourceIP, "ipBlocks", s.GetIpBlocks(), s.GetNotIpBlocks()},
		{attrRemoteIP, "remoteIpBlocks", s.GetRemoteIpBlocks(), s.GetNotRemoteIpBlocks()},
		{attrTrustDomain, "trustDomains", s.GetTrustDomains(), s.GetNotTrustDomains()},
	}
	var cl clause
	tcp := false
	for _, f := range fields {
		if len(f.pos) == 0 && len(f.neg) == 0 {
			continue
		}
		negName := "not" + strings.ToUpper(f.name[:1]) + f.name[1:]
		am := attrMatch{kind: f.kind, desc: sp.key(f.name).String()}
		var fe *fieldError
		if am.pos, fe = compileValues(c, f.kind, f.pos, sp.key(f.name)); fe != nil {
			return nil, false, fe
		}
		if am.neg, fe = compileValues(c, f.kind, f.neg, sp.key(negName)); fe != nil {
			return nil, false, fe
		}
		if len(f.pos) == 0 {
			am.desc = sp.key(negName).String()
		}
		if !f.kind.httpOnly() {
			tcp = true
		}
		cl = append(cl, am)
	}
	if len(cl) == 0 {
		return nil, false, errAt(sp, "`from.source` must not be empty")
	}
	return cl, tcp, nil
}

func compileOperation(o *securityv1beta1.Operation, op fieldPath) (clause, bool, []string, *fieldError) {
	type field struct {
		kind     attrKind
		name     string
		pos, neg []string
	}
	fields := []field{
		{attrHost, "hosts", o.GetHosts(), o.GetNotHosts()},
		{attrPort, "ports", o.GetPorts(), o.GetNotPorts()},
		{attrMethod, "methods", o.GetMethods(), o.GetNotMethods()},
		{attrPath, "paths", o.GetPaths(), o.GetNotPaths()},
	}
	var cl clause
	var warnings []string
	tcp := false
	for _, f := range fields {
		if len(f.pos) == 0 && len(f.neg) == 0 {
			continue
		}
		negName := "not" + strings.ToUpper(f.name[:1]) + f.name[1:]
		am := attrMatch{kind: f.kind, desc: op.key(f.name).String()}
		var fe *fieldError
		if am.pos, fe = compileValues(nil, f.kind, f.pos, op.key(f.name)); fe != nil {
			return nil, false, nil, fe
		}
		if am.neg, fe = compileValues(nil, f.kind, f.neg, op.key(negName)); fe != nil {
			return nil, false, nil, fe
		}
		if len(f.pos) == 0 {
			am.desc = op.key(negName).String()
		}
		if f.kind == attrMethod {
			for _, m := range append(append([]string(nil), f.pos...), f.neg...) {
				if m != strings.ToUpper(m) {
					warnings = append(warnings, fmt.Sprintf("%s: method %q is not upper case; requests with a method not in upper case are rejected, so it never matches", op.key(f.name), m))
				}
			}
		}
		if !f.kind.httpOnly() {
			tcp = true
		}
		cl = append(cl, am)
	}
	if len(cl) == 0 {
		return nil, false, nil, errAt(op, "`to.operation` must not be empty")
	}
	return cl, tcp, warnings, nil
}

func compileCondition(c *compiledAuthz, cond *securityv1beta1.Condition, wp fieldPath) (attrMatch, *fieldError) {
	if cond == nil {
		return attrMatch{}, errAt(wp, "condition must not be null")
	}
	if cond.GetKey() == "" {
		return attrMatch{}, errAt(wp.key("key"), "`key` must not be empty")
	}
	if len(cond.GetValues()) == 0 && len(cond.GetNotValues()) == 0 {
		return attrMatch{}, errAt(wp, "at least one of `values` or `notValues` must be set for key %s", cond.GetKey())
	}
	k, err := parseConditionKey(cond.GetKey())
	if err != nil {
		return attrMatch{}, errAt(wp.key("key"), "%v", err)
	}
	if c.action == actCustom {
		switch k.kind {
		case attrNamespace, attrServiceAccount, attrPrincipal, attrRequestPrincipal, attrAudiences, attrPresenter, attrClaim:
			return attrMatch{}, errAt(wp.key("key"), "%s is currently not supported with CUSTOM action", cond.GetKey())
		}
	}
	am := attrMatch{kind: k.kind, header: k.header, claim: k.claim, desc: "when " + cond.GetKey()}
	var fe *fieldError
	if am.pos, fe = compileValues(c, k.kind, cond.GetValues(), wp.key("values")); fe != nil {
		return attrMatch{}, fe
	}
	if am.neg, fe = compileValues(c, k.kind, cond.GetNotValues(), wp.key("notValues")); fe != nil {
		return attrMatch{}, fe
	}
	return am, nil
}

// compileValues validates and compiles one values list for an attribute.
// c is the policy (for serviceAccounts without a namespace and for
// CUSTOM's restrictions); nil for operations.
func compileValues(c *compiledAuthz, kind attrKind, values []string, p fieldPath) (valueSet, *fieldError) {
	vs := valueSet{n: len(values)}
	if len(values) == 0 {
		return vs, nil
	}
	if len(values) > maxValues {
		return vs, errAt(p, "more than %d values", maxValues)
	}
	for i, v := range values {
		if v == "" {
			return vs, errAt(p.index(i), "empty value not allowed")
		}
		if len(v) > maxValueLen {
			return vs, errAt(p.index(i), "value longer than %d bytes", maxValueLen)
		}
	}
	if c != nil && c.action == actCustom {
		switch kind {
		case attrNamespace, attrServiceAccount, attrPrincipal, attrRequestPrincipal:
			return vs, errAt(p, "%s is currently not supported with CUSTOM action", p[len(p)-1].key)
		}
	}
	switch kind {
	case attrSourceIP, attrRemoteIP, attrDestIP:
		for i, v := range values {
			pr, err := parseIPOrCIDR(v)
			if err != nil {
				return vs, errAt(p.index(i), "%v", err)
			}
			vs.ips.prefixes = append(vs.ips.prefixes, pr)
		}
	case attrPort:
		for i, v := range values {
			port, err := parsePort(v)
			if err != nil {
				return vs, errAt(p.index(i), "%v", err)
			}
			vs.ports.ports = append(vs.ports.ports, port)
		}
	case attrPath:
		var (
			plain     []string
			templates []*pathTemplate
		)
		for i, v := range values {
			if !isPathTemplate(v) && !strings.ContainsAny(v, "{}") {
				plain = append(plain, v)
				continue
			}
			t, err := parsePathTemplate(v)
			if err != nil {
				return vs, errAt(p.index(i), "%v", err)
			}
			templates = append(templates, t)
		}
		vs.paths = newPathSet(plain, templates)
	case attrRequestPrincipal:
		for _, v := range values {
			vs.rps = append(vs.rps, parseRequestPrincipal(v))
		}
	case attrServiceAccount:
		if len(values) > maxServiceAccts {
			return vs, errAt(p, "at most %d service accounts", maxServiceAccts)
		}
		accts := make([]serviceAccount, len(values))
		for i, v := range values {
			sa, err := parseServiceAccount(v, c.ns)
			if err != nil {
				return vs, errAt(p.index(i), "%v", err)
			}
			accts[i] = sa
		}
		vs.sas = newSASet(accts)
	case attrNamespace:
		for i, v := range values {
			if j := strings.IndexAny(v, nsRegexMeta); j >= 0 {
				return vs, errAt(p.index(i), "namespace %q: Istio matches namespaces as the regular expression .*/ns/<value>/.* (with * as .*), so %q would not be a literal character there; use the namespace name, with * as the only wildcard", v, v[j:j+1])
			}
		}
		vs.nss = newNSSet(values)
	case attrHost:
		var fe *fieldError
		if vs.hosts, fe = newHostSet(values, p); fe != nil {
			return vs, fe
		}
	case attrHeader:
		for _, v := range values {
			if v == "*" {
				vs.presence = true
			}
		}
		vs.strs = newStrSet(values)
	default:
		vs.strs = newStrSet(values)
	}
	return vs, nil
}

// parseRequestPrincipal splits a requestPrincipals value at its last "/"
// into issuer and subject patterns, the way Istio does:
//
//	"*"            any issuer and any subject (both present)
//	"*/sub"        any issuer, subject "sub"; "*x/sub": issuer ends with x
//	"*sub"         (no "/") any issuer, subject ending with "sub"
//	"iss/*"        issuer "iss", any subject; "iss/ab*": subject starts with ab
//	"iss*"         (no "/") issuer starting with "iss", any subject
//	"iss/sub"      both exact
func parseRequestPrincipal(v string) reqPrincipalPat {
	anyPat := strPat{kind: patPresence}
	idx := strings.LastIndex(v, "/")
	found := idx >= 0
	iss, sub := v, ""
	if found {
		iss, sub = v[:idx], v[idx+1:]
	}
	switch {
	case v == "*":
		return reqPrincipalPat{iss: anyPat, sub: anyPat}
	case strings.HasPrefix(v, "*"):
		if !found {
			return reqPrincipalPat{iss: anyPat, sub: strPat{kind: patSuffix, s: v[1:]}}
		}
		ip := anyPat
		if iss != "*" {
			ip = strPat{kind: patSuffix, s: iss[1:]}
		}
		return reqPrincipalPat{iss: ip, sub: strPat{kind: patExact, s: sub}}
	case strings.HasSuffix(v, "*"):
		if !found {
			return reqPrincipalPat{iss: strPat{kind: patPrefix, s: v[:len(v)-1]}, sub: anyPat}
		}
		sp := anyPat
		if sub != "*" {
			sp = strPat{kind: patPrefix, s: sub[:len(sub)-1]}
		}
		return reqPrincipalPat{iss: strPat{kind: patExact, s: iss}, sub: sp}
	}
	return reqPrincipalPat{iss: strPat{kind: patExact, s: iss}, sub: strPat{kind: patExact, s: sub}}
}

// parseServiceAccount reads "namespace/name" or "name" (the policy's
// namespace), at most 320 bytes and without wildcards, as Istio's API
// defines the field. Istio pastes both parts unescaped into the regular
// expression spiffe://.+/ns/<ns>/(.+/|)sa/<name>(/.+)? (see saSet), so a
// value with a regular-expression character ("." included: Istio would
// match any character there) is refused rather than matched differently
// from Istio; so are control characters and invalid UTF-8, which no
// SPIFFE ID holds.
func parseServiceAccount(v, policyNS string) (serviceAccount, error) {
	if len(v) > 320 {
		return serviceAccount{}, fmt.Errorf("service account %q is longer than 320 characters", v)
	}
	if strings.Contains(v, "*") {
		return serviceAccount{}, fmt.Errorf("wildcards are not allowed in serviceAccounts: %q", v)
	}
	if j := strings.IndexAny(v, nsRegexMeta); j >= 0 {
		return serviceAccount{}, fmt.Errorf("service account %q: Istio matches service accounts as the regular expression spiffe://.+/ns/<namespace>/(.+/|)sa/<name>(/.+)?, so %q would not be a literal character there; name the account without it, or match its SPIFFE ID with principals", v, v[j:j+1])
	}
	if !utf8.ValidString(v) || strings.ContainsFunc(v, unicode.IsControl) {
		return serviceAccount{}, fmt.Errorf("service account %q holds a control character or invalid UTF-8", v)
	}
	ns, name, found := strings.Cut(v, "/")
	if !found {
		ns, name = policyNS, v
	}
	if ns == "" || name == "" || strings.Contains(name, "/") {
		return serviceAccount{}, fmt.Errorf("service account %q must be <namespace>/<name> or <name>", v)
	}
	return serviceAccount{ns: ns, name: name}, nil
}

// sortAuthz orders policies the way decisions report them: the root
// namespace first (Istio evaluates root-namespace DENY policies in a
// filter of their own, before the others), then by namespace and name.
func sortAuthz(ps []*compiledAuthz, root string) {
	sort.SliceStable(ps, func(i, j int) bool {
		a, b := ps[i], ps[j]
		if (a.ns == root) != (b.ns == root) {
			return a.ns == root
		}
		if a.ns != b.ns {
			return a.ns < b.ns
		}
		return a.name < b.name
	})
	for i, p := range ps {
		p.rank = i
	}
}
