package policy

import (
	"fmt"
	"slices"
	"sort"
	"strconv"
	"strings"
)

// Explanation is a decision with the reasoning behind it, for people
// debugging policies ("moatless policy check --explain", the dashboard's
// what-if). It costs allocations and is not for the request path.
type Explanation struct {
	Decision Decision
	// MTLSMode and MTLSPolicy are the PeerAuthentication in force.
	MTLSMode   MTLSMode
	MTLSPolicy string
	// JWTRules is how many RequestAuthentication rules apply.
	JWTRules int
	// Token describes the request's JWT: "none", "verified <principal>",
	// "invalid", or "not checked" when mTLS refused the request first.
	Token string
	// Policies are the AuthorizationPolicies that apply to the
	// destination, in evaluation order, each with what its rules did.
	Policies []PolicyTrace
	// Skipped names the AuthorizationPolicies of the destination's
	// namespace (and the root namespace) whose selector does not match
	// its labels, with the selector: the usual reason a policy "does
	// nothing".
	Skipped []string
}

// PolicyTrace is one applicable AuthorizationPolicy.
type PolicyTrace struct {
	Policy   string
	Action   string
	Provider string `json:",omitempty"`
	DryRun   bool   `json:",omitempty"`
	// Matched is the first matching rule, -1 when none did.
	Matched int
	Rules   []RuleTrace
	// Note explains a policy without rules or one only partly evaluated.
	Note string `json:",omitempty"`
}

// RuleTrace is one rule: matched, or the first reason it did not.
type RuleTrace struct {
	Rule    int
	Matched bool
	Why     string `json:",omitempty"`
}

// Explain evaluates req as Evaluate does (same Decision, v verifies the
// token and req.Auth is set) and explains it.
func (s *Set) Explain(req *Request, v JWTVerifier) Explanation {
	var e Explanation
	e.Decision = s.Evaluate(req, v)
	if s == nil {
		return e
	}
	e.MTLSMode, e.MTLSPolicy = s.MTLSPolicy(req.Destination)
	e.JWTRules = len(s.JWTRules(req.Destination))
	switch {
	case req.Source.Principal == "" && e.MTLSMode == ModeStrict:
		e.Token = "not checked"
	case e.Decision.Outcome == Unauthenticated:
		e.Token = "invalid"
	case req.Auth != nil:
		e.Token = "verified " + req.Auth.Principal
	default:
		e.Token = "none"
	}
	if req.Source.Principal == "" && e.MTLSMode == ModeStrict || e.Decision.Outcome == Unauthenticated {
		return e
	}

	c := evalCtx{req: req, tcp: req.Protocol == TCP}
	if !c.tcp {
		p, err := s.matchPath(nil, req)
		if err == nil {
			err = CheckMethod(req.Method)
		}
		if err == nil {
			err = c.parseHost()
		}
		c.paths[0] = p
		if err == nil {
			err = c.setReadings(s.opts.PathNormalization)
		}
		if err != nil {
			return e
		}
	}
	cands, _ := s.candidates(nil, &req.Destination)
	for _, p := range cands {
		pt := PolicyTrace{Policy: p.ref, Action: p.action.String(), Provider: p.provider, DryRun: p.dryRun, Matched: -1}
		if len(p.rules) == 0 {
			pt.Note = "no rules: matches nothing"
		}
		for i := range p.rules {
			rt := RuleTrace{Rule: i, Why: explainReadings(&c, &p.rules[i], p.action)}
			rt.Matched = rt.Why == ""
			if rt.Matched && pt.Matched < 0 {
				pt.Matched = i
			}
			pt.Rules = append(pt.Rules, rt)
		}
		e.Policies = append(e.Policies, pt)
	}
	e.Skipped = s.skipped(&req.Destination)
	return e
}

// skipped lists the policies in scope whose selector does not match.
func (s *Set) skipped(dst *Destination) []string {
	var out []string
	visit := func(x *authzIndex) {
		if x == nil {
			return
		}
		for _, list := range x.byLabel {
			for _, c := range list {
				if !c.selector.matches(dst.Labels) {
					out = append(out, fmt.Sprintf("%s (selector %s does not match the destination's labels)", c.ref, c.selector))
				}
			}
		}
	}
	visit(&s.rootIdx)
	if dst.Namespace != s.root {
		visit(s.nsIdx[dst.Namespace])
	}
	sort.Strings(out)
	return out
}

func (s labelSelector) String() string {
	parts := make([]string, len(s))
	for i, p := range s {
		parts[i] = p.k + "=" + p.v
	}
	return strings.Join(parts, ",")
}

// explainRule returns "" when the rule matches, else the first reason it
// does not, in the terms of the policy's own fields.
// explainReadings is explainRule under every reading of the path, as
// evalCtx.applies combines them: "" when the rule applies; for an ALLOW
// rule that another reading fails, which reading and why.
func explainReadings(c *evalCtx, r *compiledRule, act action) string {
	allow := act == actAllow
	why := explainRule(c, r, act)
	if (why == "") != allow || !r.pathDep {
		return why
	}
	fold := (c.upper || r.pathUpper) && (allow && r.pathNeg || !allow && r.pathPos)
	defer func() { c.cur, c.fold = 0, false }()
	for k := 0; k <= c.nalt; k++ {
		c.cur = k
		for _, f := range [2]bool{false, true} {
			if f && !fold || !f && k == 0 {
				continue
			}
			c.fold = f
			if w := explainRule(c, r, act); (w == "") != allow {
				if !allow {
					return "" // another reading applies a DENY, AUDIT or CUSTOM rule
				}
				return readingNote(c.path(), c.kinds[k], f) + ": " + w
			}
		}
	}
	return why
}

// readingNote names a reading of the path (evalCtx.applies).
func readingNote(path string, kind uint8, fold bool) string {
	var who string
	var how []string
	switch kind {
	case readParams:
		who = "Java servers"
	case readSlashes:
		who = "apps that decode %2F"
	case readParams | readSlashes:
		who = "apps that decode %2F and drop path parameters"
	case readMerged:
		who = "apps that merge slashes"
	default:
		who = "apps that route ignoring case"
	}
	if kind&readSlashes != 0 {
		how = append(how, "%2F and %5C decoded")
	}
	if kind&readParams != 0 {
		how = append(how, "path parameters dropped")
	}
	if kind&readMerged != 0 {
		how = append(how, "slashes merged")
	}
	if fold {
		how = append(how, "ignoring case")
	}
	return "as " + who + " read the path (" + strconv.Quote(path) + ", " + strings.Join(how, ", ") + ")"
}

func explainRule(c *evalCtx, r *compiledRule, act action) string {
	if c.tcp && r.httpOnly && act == actAllow {
		return "skipped on TCP: an ALLOW rule that uses HTTP-only fields never matches TCP traffic"
	}
	if len(r.from) > 0 && !anyClause(c, r.from) {
		return "from: " + explainClauses(c, r.from)
	}
	if len(r.to) > 0 && !anyClause(c, r.to) {
		return "to: " + explainClauses(c, r.to)
	}
	if why := explainClause(c, r.when); why != "" {
		return why
	}
	return ""
}

func explainClauses(c *evalCtx, cls []clause) string {
	whys := make([]string, 0, len(cls))
	for i := range cls {
		whys = append(whys, explainClause(c, cls[i]))
	}
	if len(whys) == 1 {
		return whys[0]
	}
	return "none matched: " + strings.Join(whys, "; ")
}

func explainClause(c *evalCtx, cl clause) string {
	for i := range cl {
		a := &cl[i]
		if c.tcp && a.kind.httpOnly() {
			continue
		}
		if a.match(c) {
			continue
		}
		onlyPos, onlyNeg := *a, *a
		onlyPos.neg, onlyNeg.pos = valueSet{}, valueSet{}
		if !onlyPos.match(c) {
			return fmt.Sprintf("%s: %s matches none of the values", a.desc, describeAttr(c, a))
		}
		if !onlyNeg.match(c) {
			return fmt.Sprintf("%s: %s is excluded by notValues", a.desc, describeAttr(c, a))
		}
	}
	return ""
}

// describeAttr renders the request's value of an attribute.
func describeAttr(c *evalCtx, a *attrMatch) string {
	r := c.req
	q := func(name, v string) string {
		if v == "" {
			return name + " (absent)"
		}
		return name + " " + strconv.Quote(v)
	}
	switch a.kind {
	case attrPrincipal:
		if r.Source.Principal == "" {
			return "source principal (none: plaintext)"
		}
		return q("source principal", r.Source.Principal)
	case attrNamespace:
		switch ns := principalNamespaces(r.Source.Principal); len(ns) {
		case 0:
			return "source namespace (absent)"
		case 1:
			return q("source namespace", ns[0])
		default:
			return "source namespaces " + strings.Join(quoteAll(ns), ", ")
		}
	case attrTrustDomain:
		c.source()
		return q("source trust domain", c.td)
	case attrServiceAccount:
		switch sas := principalServiceAccounts(r.Source.Principal); len(sas) {
		case 0:
			return "source service account (absent)"
		case 1:
			return q("source service account", sas[0])
		default:
			return "source service accounts " + strings.Join(quoteAll(sas), ", ")
		}
	case attrSourceIP:
		return "source IP " + addrString(r.Source.IP)
	case attrRemoteIP:
		ip := r.RemoteIP
		if !ip.IsValid() {
			ip = r.Source.IP
		}
		return "remote IP " + addrString(ip)
	case attrDestIP:
		return "destination IP " + addrString(r.Destination.IP)
	case attrPort:
		return "destination port " + strconv.Itoa(r.Destination.Port)
	case attrSNI:
		return q("SNI", r.SNI)
	case attrHost:
		return q("host", r.Host)
	case attrMethod:
		return q("method", r.Method)
	case attrPath:
		return q("normalized path", c.path())
	case attrHeader:
		switch a.header {
		case ":authority":
			return q("header :authority", r.Host)
		case ":method":
			return q("header :method", r.Method)
		case ":path":
			return q("header :path", c.pathTarget())
		}
		if vs := r.header(a.header); vs != nil {
			return "header " + a.header + " " + strconv.Quote(strings.Join(vs, ","))
		}
		return "header " + a.header + " (absent)"
	case attrRequestPrincipal:
		t := requestIssSub(r.Auth)
		if !t.hasIss || !t.hasSub {
			return "request principal (no verified token with iss and sub)"
		}
		return q("request principal", t.iss+"/"+t.sub)
	case attrAudiences:
		if r.Auth == nil || len(r.Auth.Audiences) == 0 {
			return "token audiences (absent)"
		}
		return fmt.Sprintf("token audiences %q", r.Auth.Audiences)
	case attrPresenter:
		if r.Auth == nil {
			return "token presenter (no verified token)"
		}
		return q("token presenter", r.Auth.Presenter)
	case attrClaim:
		name := "claim " + strings.Join(a.claim, ".")
		if r.Auth == nil {
			return name + " (no verified token)"
		}
		v := lookupClaim(r.Auth.Claims, a.claim)
		if v == nil {
			return name + " (absent)"
		}
		return fmt.Sprintf("%s %v", name, v)
	}
	return "attribute"
}

func addrString(a interface {
	IsValid() bool
	String() string
}) string {
	if !a.IsValid() {
		return "(absent)"
	}
	return a.String()
}

// principalNamespaces lists the namespaces a principal is in as Istio's
// namespace match sees them (nsSet): the segment after each "/ns/" that
// another "/" follows. For explanations only.
func principalNamespaces(p string) []string {
	p = "/" + strings.TrimPrefix(p, "spiffe://")
	var out []string
	for {
		i := strings.Index(p, "/ns/")
		if i < 0 {
			return out
		}
		p = p[i+3:] // keep the "/" that ends "/ns/": it may start the next one
		if seg, _, ok := strings.Cut(p[1:], "/"); ok {
			out = append(out, seg)
		}
	}
}

// principalServiceAccounts lists the service accounts ("ns/name") a
// principal is as Istio's service account match sees them (saSet): every
// "/ns/<ns>/" after the first character, with every "sa/<name>" that
// follows it directly or after a "/" at least two characters on, where
// <name> ends the principal or more than a "/" follows. For explanations
// only.
func principalServiceAccounts(p string) []string {
	p = strings.TrimPrefix(p, "spiffe://")
	if strings.IndexByte(p, '\n') >= 0 {
		return nil
	}
	var out []string
	for i := 1; i < len(p); i++ {
		if !strings.HasPrefix(p[i:], "/ns/") {
			continue
		}
		ns, _, ok := strings.Cut(p[i+4:], "/")
		if !ok || ns == "" {
			continue
		}
		a := i + 4 + len(ns) + 1 // after "/ns/<ns>/"
		for j := a; j < len(p); j++ {
			if j != a && (j < a+2 || p[j-1] != '/') || !strings.HasPrefix(p[j:], "sa/") {
				continue
			}
			name, _, _ := strings.Cut(p[j+3:], "/")
			if name == "" || !saTail(p[j+3+len(name):]) {
				continue
			}
			if acct := ns + "/" + name; !slices.Contains(out, acct) {
				out = append(out, acct)
			}
		}
	}
	return out
}

func quoteAll(vs []string) []string {
	out := make([]string, len(vs))
	for i, v := range vs {
		out[i] = strconv.Quote(v)
	}
	return out
}
