package policy

import (
	"errors"
	"net/netip"
	"sort"
	"strings"
	"unsafe"
)

// Reasons of decisions that no rule made.
const (
	ReasonNoAllowPolicy = "no ALLOW policy applies to the workload"
	ReasonNoAllowMatch  = "no ALLOW rule matched"
	ReasonMTLSRequired  = "mTLS required (STRICT)"
	ReasonNoSet         = "no policy loaded"
	reasonNoVerifier    = "RequestAuthentication applies but no JWT verifier is configured"
)

// evalCtx is the per-decision state: the request and what is derived from
// it once. It lives on the stack of Decide.
type evalCtx struct {
	req *Request
	tcp bool

	// paths[cur] is the path rules match: paths[0] the path normalized,
	// query removed (it may alias a buffer on authorize's stack), then
	// its nalt other readings (pathReadings: as Java servers, as apps
	// that decode %2F and as routers that merge slashes read it), kinds
	// how each was made. upper: the path
	// holds an upper-case letter, so that it reads otherwise to an app
	// that routes ignoring case. Rules match every reading
	// (evalCtx.applies); fold is set while paths match ignoring ASCII
	// case. (An index, not a path field set from the readings: storing a
	// string through c would move the stack buffer to the heap.)
	paths [1 + maxReadings]string
	kinds [1 + maxReadings]uint8
	cur   int
	nalt  int
	upper bool
	fold  bool
	host  requestHost // parsed req.Host, when it is not ""

	srcDone bool
	td      string // trust domain of the source principal
}

// pathTarget is :path as Envoy hands it to Istio's filters and as the
// app is served it: the normalized path, then the query as received. It
// allocates when there is a query; only :path conditions call it.
func (c *evalCtx) pathTarget() string {
	if _, q, ok := strings.Cut(c.req.Path, "?"); ok {
		return c.path() + "?" + q
	}
	return c.path()
}

// path is the reading of the path being matched.
func (c *evalCtx) path() string { return c.paths[c.cur] }

// parseHost reads req.Host for hosts and notHosts. A Host that is not an
// authority is a bad request (ErrInvalidHost): it could name the denied
// host to the application in a form the policy does not see.
func (c *evalCtx) parseHost() error {
	if c.req.Host == "" {
		return nil
	}
	h, err := parseRequestHost(c.req.Host)
	c.host = h
	return err
}

func (c *evalCtx) source() {
	if c.srcDone {
		return
	}
	c.srcDone = true
	c.td = trustDomain(c.req.Source.Principal)
}

// trustDomain is the trust domain of a principal (a SPIFFE ID with or
// without "spiffe://"): what precedes its first "/". namespaces and
// serviceAccounts are matched on the whole principal, as Istio does (see
// nsSet and saSet), not on segments read from it.
func trustDomain(p string) string {
	td, _, _ := strings.Cut(strings.TrimPrefix(p, "spiffe://"), "/")
	return td
}

// match reports whether the attribute satisfies values and notValues: at
// least one value (when there are values) and no notValue. An attribute
// the request lacks (no principal on a plaintext connection, no token, no
// such header) matches no value and therefore every notValues list.
func (a *attrMatch) match(c *evalCtx) bool {
	r := c.req
	switch a.kind {
	case attrPrincipal:
		return a.strAttr(r.Source.Principal, r.Source.Principal != "")
	case attrNamespace:
		// A plaintext peer (no principal) is in no namespace: it matches
		// no value and every notValue, as an absent attribute does.
		p := r.Source.Principal
		if a.pos.n > 0 && !a.pos.nss.match(p) {
			return false
		}
		return a.neg.n == 0 || !a.neg.nss.match(p)
	case attrTrustDomain:
		c.source()
		return a.strAttr(c.td, c.td != "")
	case attrServiceAccount:
		// As for namespaces: a plaintext peer is no service account.
		p := r.Source.Principal
		if a.pos.n > 0 && !a.pos.sas.match(p) {
			return false
		}
		return a.neg.n == 0 || !a.neg.sas.match(p)
	case attrSourceIP:
		return a.ipAttr(r.Source.IP)
	case attrRemoteIP:
		ip := r.RemoteIP
		if !ip.IsValid() {
			ip = r.Source.IP
		}
		return a.ipAttr(ip)
	case attrDestIP:
		return a.ipAttr(r.Destination.IP)
	case attrPort:
		if a.pos.n > 0 && !a.pos.ports.match(r.Destination.Port) {
			return false
		}
		return a.neg.n == 0 || !a.neg.ports.match(r.Destination.Port)
	case attrSNI:
		return a.strAttr(r.SNI, r.SNI != "")
	case attrHost:
		present := r.Host != ""
		if a.pos.n > 0 && (!present || !a.pos.hosts.match(&c.host)) {
			return false
		}
		return a.neg.n == 0 || !present || !a.neg.hosts.match(&c.host)
	case attrMethod:
		return a.strAttr(r.Method, r.Method != "")
	case attrPath:
		if a.pos.n > 0 && !a.pos.paths.match(c.path(), c.fold) {
			return false
		}
		return a.neg.n == 0 || !a.neg.paths.match(c.path(), c.fold)
	case attrHeader:
		return a.headerAttr(c)
	case attrRequestPrincipal:
		t := requestIssSub(r.Auth)
		if a.pos.n > 0 && !matchRP(a.pos.rps, t) {
			return false
		}
		return a.neg.n == 0 || !matchRP(a.neg.rps, t)
	case attrAudiences:
		var auds []string
		if r.Auth != nil {
			auds = r.Auth.Audiences
		}
		if a.pos.n > 0 && !anyString(&a.pos.strs, auds) {
			return false
		}
		return a.neg.n == 0 || !anyString(&a.neg.strs, auds)
	case attrPresenter:
		var p string
		if r.Auth != nil {
			p = r.Auth.Presenter
		}
		return a.strAttr(p, p != "")
	case attrClaim:
		var v any
		if r.Auth != nil {
			v = lookupClaim(r.Auth.Claims, a.claim)
		}
		if a.pos.n > 0 && !claimMatches(&a.pos.strs, v, a.claim) {
			return false
		}
		return a.neg.n == 0 || !claimMatches(&a.neg.strs, v, a.claim)
	}
	return false
}

func (a *attrMatch) strAttr(v string, present bool) bool {
	if a.pos.n > 0 && (!present || !a.pos.strs.match(v)) {
		return false
	}
	return a.neg.n == 0 || !present || !a.neg.strs.match(v)
}

func (a *attrMatch) ipAttr(ip netip.Addr) bool {
	if a.pos.n > 0 && !a.pos.ips.match(ip) {
		return false
	}
	return a.neg.n == 0 || !a.neg.ips.match(ip)
}

// headerAttr matches request.headers[name]. Several values of one header
// are joined with "," first, as Envoy does; "*" matches a header that is
// present, even empty. A header RequestAuthentication writes (Auth.
// SetHeaders) is the value, as Envoy's JWT filter writes it before the
// authorization filters run.
func (a *attrMatch) headerAttr(c *evalCtx) bool {
	r := c.req
	var (
		v       string
		present bool
		buf     [256]byte
	)
	switch a.header {
	case ":authority":
		v, present = r.Host, r.Host != ""
	case ":method":
		v, present = r.Method, r.Method != ""
	case ":path":
		v, present = c.pathTarget(), r.Path != ""
	default:
		vals := r.Headers[a.header]
		if r.Auth != nil {
			if sv, ok := r.Auth.SetHeaders[a.header]; ok {
				v, present, vals = sv, true, nil
			}
		}
		switch len(vals) {
		case 0:
		case 1:
			v, present = vals[0], true
		default:
			b := buf[:0]
			for i, s := range vals {
				if i > 0 {
					b = append(b, ',')
				}
				b = append(b, s...)
			}
			v, present = unsafe.String(unsafe.SliceData(b), len(b)), true
		}
	}
	// :path is read as paths are: under a folded reading (evalCtx.
	// applies) ignoring ASCII case, as an app that routes ignoring case
	// reads "/ADMIN".
	fold := c.fold && a.header == ":path"
	in := func(vs *valueSet) bool {
		if !present || vs.presence {
			return present
		}
		if fold {
			return vs.strs.matchASCIIFold(v)
		}
		return vs.strs.match(v)
	}
	if a.pos.n > 0 && !in(&a.pos) {
		return false
	}
	return a.neg.n == 0 || !in(&a.neg)
}

// issSub is the issuer and subject of the verified token, each with
// whether the token has it: a claim the token lacks matches no pattern,
// not even an exact "" (Envoy's metadata matcher does the same).
type issSub struct {
	iss, sub       string
	hasIss, hasSub bool
}

// requestIssSub reads iss and sub from the token's claims (a subject may
// hold "/"), else splits Auth.Principal ("iss/sub") at its last "/".
func requestIssSub(a *Auth) issSub {
	var t issSub
	if a == nil {
		return t
	}
	t.iss, t.hasIss = a.Claims["iss"].(string)
	t.sub, t.hasSub = a.Claims["sub"].(string)
	if !t.hasIss && !t.hasSub && a.Principal != "" {
		if i := strings.LastIndexByte(a.Principal, '/'); i >= 0 {
			t.iss, t.sub, t.hasIss, t.hasSub = a.Principal[:i], a.Principal[i+1:], true, true
		}
	}
	return t
}

func matchRP(ps []reqPrincipalPat, t issSub) bool {
	if !t.hasIss || !t.hasSub {
		return false
	}
	for _, p := range ps {
		if p.iss.match(t.iss) && p.sub.match(t.sub) {
			return true
		}
	}
	return false
}

func anyString(s *strSet, vs []string) bool {
	for _, v := range vs {
		if v != "" && s.match(v) {
			return true
		}
	}
	return false
}

// lookupClaim follows a claim path through nested JSON objects.
func lookupClaim(claims map[string]any, path []string) any {
	var cur any = claims
	for _, k := range path {
		m, ok := cur.(map[string]any)
		if !ok {
			return nil
		}
		if cur, ok = m[k]; !ok {
			return nil
		}
	}
	return cur
}

// claimMatches matches a claim value as Envoy's metadata matcher does: a
// string, or any string element of a list. Numbers, booleans and objects
// never match. The claims "scope" and "permission" are space-delimited
// lists (as Istio's JWT filter treats them), so each word is a value.
func claimMatches(s *strSet, v any, path []string) bool {
	switch t := v.(type) {
	case string:
		if len(path) == 1 && (path[0] == "scope" || path[0] == "permission") {
			for w := range strings.FieldsSeq(t) { // no slice: Decide does not allocate
				if s.match(w) {
					return true
				}
			}
			return false
		}
		return t != "" && s.match(t)
	case []any:
		for _, e := range t {
			if es, ok := e.(string); ok && es != "" && s.match(es) {
				return true
			}
		}
	case []string:
		return anyString(s, t)
	}
	return false
}

func clauseMatches(c *evalCtx, cl clause) bool {
	for i := range cl {
		a := &cl[i]
		if c.tcp && a.kind.httpOnly() {
			continue // dropped on TCP: only non-ALLOW rules get here with such fields
		}
		if !a.match(c) {
			return false
		}
	}
	return true
}

func anyClause(c *evalCtx, cls []clause) bool {
	for i := range cls {
		if clauseMatches(c, cls[i]) {
			return true
		}
	}
	return false
}

// matches applies one rule. On TCP an ALLOW rule that uses HTTP-only
// attributes never matches; other actions drop those attributes.
func (r *compiledRule) matches(c *evalCtx, act action) bool {
	if c.tcp && r.httpOnly && act == actAllow {
		return false
	}
	if len(r.from) > 0 && !anyClause(c, r.from) {
		return false
	}
	if len(r.to) > 0 && !anyClause(c, r.to) {
		return false
	}
	return clauseMatches(c, r.when)
}

// match is the index of the rule of p that decides the request, -1 for
// none: the first that applies (evalCtx.applies) to every reading of the
// path.
func (p *compiledAuthz) match(c *evalCtx) int {
	if c.nalt == 0 && !c.upper && !p.pathUpper {
		return p.firstMatch(c) // one reading: the common case
	}
	for i := range p.rules {
		if c.applies(&p.rules[i], p.action) {
			return i
		}
	}
	return -1
}

// applies reports whether rule r of a policy with action act applies to
// the request. A path has other readings than the one received: as
// Tomcat, Jetty and Spring route it ("/admin;x" is /admin), as apps that
// decode %2F and %5C route it ("/admin%2Fusers" is /admin/users), as
// routers that merge slashes route it ("//admin" is /admin), and
// ignoring ASCII case, as Express, ASP.NET Core and IIS route it
// ("/ADMIN" is /admin) — each of the first ones ignoring case too. A
// DENY, AUDIT or CUSTOM rule applies when any reading matches it, an
// ALLOW rule only when every reading does, so that no reading is let
// through by another.
//
// Reading ignoring case is skipped where it cannot change the outcome:
// when neither the path nor the rule's paths hold an upper-case letter,
// for a DENY-like rule without paths values (notPaths alone match less
// ignoring case) and for an ALLOW rule without notPaths (paths alone
// match more).
func (c *evalCtx) applies(r *compiledRule, act action) bool {
	allow := act == actAllow
	m := r.matches(c, act)
	if m != allow || !r.pathDep {
		return m
	}
	fold := (c.upper || r.pathUpper) && (allow && r.pathNeg || !allow && r.pathPos)
	for k := 0; k <= c.nalt && m == allow; k++ {
		if k > 0 {
			c.cur = k
			m = r.matches(c, act)
		}
		if fold && m == allow {
			c.fold = true
			m = r.matches(c, act)
			c.fold = false
		}
	}
	c.cur = 0
	return m
}

// firstMatch is the index of the first rule that matches the path as
// received, -1 for none (always -1 for a policy without rules).
func (p *compiledAuthz) firstMatch(c *evalCtx) int {
	for i := range p.rules {
		if p.rules[i].matches(c, p.action) {
			return i
		}
	}
	return -1
}

// candidates collects the policies that apply to the destination, in
// evaluation order, into buf.
func (s *Set) candidates(buf []*compiledAuthz, dst *Destination) ([]*compiledAuthz, bool) {
	buf = s.rootIdx.collect(buf, dst.Labels)
	dry := s.rootIdx.dryRun
	if dst.Namespace != s.root {
		if x := s.nsIdx[dst.Namespace]; x != nil {
			buf = x.collect(buf, dst.Labels)
			dry = dry || x.dryRun
		}
	}
	// Insertion sort by rank: short lists, mostly sorted already.
	for i := 1; i < len(buf); i++ {
		for j := i; j > 0 && buf[j].rank < buf[j-1].rank; j-- {
			buf[j], buf[j-1] = buf[j-1], buf[j]
		}
	}
	if dry {
		dry = false
		for _, p := range buf {
			if p.dryRun {
				dry = true
				break
			}
		}
	}
	return buf, dry
}

// RequestHeaders reports the request headers the policies that apply to
// dst read by name: the headers of request.headers[...] conditions of
// every AuthorizationPolicy (dry-run and AUDIT ones too) and, for CUSTOM
// policies decided by a RegoProvider, the headers its routes declare and
// its modules read. all is true when a provider's modules read the
// headers whole (a variable key), so that any header may decide. Names
// are canonical (net/http's form), sorted, without pseudo-headers.
//
// A sidecar drops the "_" spellings of these names (an app that folds
// X_Role into X-Role would see a value the policy never saw) and, when
// all, every name with "_".
func (s *Set) RequestHeaders(dst Destination) (names []string, all bool) {
	if s == nil {
		return nil, false
	}
	seen := map[string]bool{}
	add := func(h string) {
		if h != "" && !strings.HasPrefix(h, ":") {
			seen[h] = true
		}
	}
	cands, _ := s.candidates(nil, &dst)
	for _, p := range cands {
		for i := range p.rules {
			r := &p.rules[i]
			for _, cls := range [][]clause{r.from, r.to, {r.when}} {
				for _, cl := range cls {
					for j := range cl {
						if cl[j].kind == attrHeader {
							add(cl[j].header)
						}
					}
				}
			}
		}
		if p.action != actCustom {
			continue
		}
		rp := s.providers[p.provider]
		if rp == nil {
			continue
		}
		for _, rt := range rp.routes {
			for _, a := range rt.attrs {
				add(a.header)
			}
		}
		req, ok := rp.needs.child("request")
		if !ok {
			continue
		}
		hs, ok := req.child("headers")
		if !ok {
			continue
		}
		if hs == nil {
			all = true
			continue
		}
		for _, k := range hs.kids {
			add(k.canon)
		}
	}
	for h := range seen {
		names = append(names, h)
	}
	sort.Strings(names)
	return names, all
}

// Decide is the authorization decision for req, without
// RequestAuthentication (req.Auth is taken as given): PeerAuthentication
// first (a plaintext source on a STRICT port is denied), then CUSTOM, DENY
// and ALLOW policies in Istio's order, with AUDIT and dry-run policies
// reported in the Decision. It does no I/O (a CUSTOM provider aside) and
// does not allocate on the common path. A nil Set denies everything.
//
// For HTTP, req.Path is normalized as Options.PathNormalization says
// before matching (or req.NormalizedPath, already normalized that way, is
// matched); a path Istio rejects outright (see ErrInvalidPath) is denied.
// Decide does not modify req.
func (s *Set) Decide(req *Request) Decision {
	if s == nil {
		return Decision{Outcome: Deny, Rule: -1, Reason: ReasonNoSet}
	}
	if d, refused := s.peerCheck(req); refused {
		return d
	}
	return s.authorize(req)
}

// Evaluate is what a sidecar runs per request: PeerAuthentication, then
// RequestAuthentication (the JWT rules that apply to the destination go
// to v; a present but invalid token makes the decision Unauthenticated,
// HTTP 401; no token is not an error), then Decide. It sets req.Auth to
// what v returned, and names the token whose signature verified (the one
// in req.Auth, or one v refused after verifying it) in the Decision's
// TokenIssuer and TokenSubject. With rules to apply and a nil v, it
// denies.
func (s *Set) Evaluate(req *Request, v JWTVerifier) Decision {
	if s == nil {
		return Decision{Outcome: Deny, Rule: -1, Reason: ReasonNoSet}
	}
	if d, refused := s.peerCheck(req); refused {
		return d
	}
	if req.Protocol == HTTP {
		if rules := s.JWTRules(req.Destination); len(rules) > 0 {
			if v == nil {
				return Decision{Outcome: Deny, Rule: -1, Reason: reasonNoVerifier}
			}
			auth, err := v.Verify(rules, req)
			if err != nil {
				reason := err.Error()
				if !strings.Contains(reason, "invalid token") {
					reason = "invalid token: " + reason
				}
				d := Decision{Outcome: Unauthenticated, Rule: -1, Reason: reason}
				d.TokenIssuer, d.TokenSubject = verifiedRefusal(err)
				return d
			}
			req.Auth = auth
		}
	}
	d := s.authorize(req)
	d.TokenIssuer, d.TokenSubject = req.Auth.Token()
	return d
}

// verifiedRefusal is the issuer and subject of a token refused although
// its signature verified (the verifier's error has VerifiedToken, or
// RevokedToken for a verifier that names only revoked tokens), "" for
// any other refusal: the claims of a token that did not verify are the
// sender's word.
func verifiedRefusal(err error) (issuer, subject string) {
	var vt interface{ VerifiedToken() (string, string) }
	if errors.As(err, &vt) {
		if issuer, subject = vt.VerifiedToken(); issuer != "" || subject != "" {
			return issuer, subject
		}
	}
	var rt interface{ RevokedToken() (string, string) }
	if errors.As(err, &rt) {
		return rt.RevokedToken()
	}
	return "", ""
}

// peerCheck refuses a plaintext source where PeerAuthentication is STRICT.
func (s *Set) peerCheck(req *Request) (Decision, bool) {
	if req.Source.Principal != "" || req.External {
		return Decision{}, false
	}
	mode, ref := s.MTLSPolicy(req.Destination)
	if mode != ModeStrict {
		return Decision{}, false
	}
	return Decision{Outcome: Deny, Policy: ref, Rule: -1, Reason: ReasonMTLSRequired}, true
}

func (s *Set) authorize(req *Request) Decision {
	var (
		c evalCtx
		// Not a field of c: a pointer from c into itself would make the
		// compiler move c to the heap.
		pathBuf [maxPathBuffer]byte
	)
	c.req = req
	c.tcp = req.Protocol == TCP
	if !c.tcp {
		p, err := s.matchPath(pathBuf[:0], req)
		if err == nil {
			err = CheckMethod(req.Method)
		}
		if err == nil {
			err = c.parseHost()
		}
		if err != nil {
			return Decision{Outcome: Deny, Rule: -1, Reason: "bad request: " + err.Error()}
		}
		c.paths[0] = p
		if err = c.setReadings(s.opts.PathNormalization); err != nil {
			return Decision{Outcome: Deny, Rule: -1, Reason: "bad request: " + err.Error()}
		}
	}
	var buf [32]*compiledAuthz
	cands, dry := s.candidates(buf[:0], &req.Destination)

	d, customDenied := s.customPhase(&c, req, cands)
	if !customDenied {
		custom := d
		d = decideDenyAllow(&c, cands, false)
		d.Custom = custom.Custom
		if d.Outcome == Allow {
			d.Headers = custom.Headers
		}
	}
	for _, p := range cands {
		if p.action == actAudit && !p.dryRun && p.match(&c) >= 0 {
			d.Audit, d.AuditPolicy = true, p.ref
			break
		}
	}
	if dry {
		w := d
		if !customDenied {
			w = decideDenyAllow(&c, cands, true)
		}
		d.DryRun = DryRun{Applies: true, Outcome: w.Outcome, Policy: w.Policy, Action: w.Action, Rule: w.Rule, Reason: w.Reason}
	}
	return d
}

// setReadings sets the other readings of c.paths[0], normalized under
// mode (see evalCtx.applies).
func (c *evalCtx) setReadings(mode PathNormalization) error {
	n, err := pathReadings(c.paths[0], mode, (*[maxReadings]string)(c.paths[1:]), (*[maxReadings]uint8)(c.kinds[1:]))
	c.nalt, c.upper = n, upperLetter(c.paths[0])
	return err
}

// matchPath is the path paths and notPaths match: req.NormalizedPath when
// it was normalized in the Set's mode, else req.Path normalized into buf
// (the result may alias buf, as normalizePath's does).
func (s *Set) matchPath(buf []byte, req *Request) (string, error) {
	if np := &req.NormalizedPath; np.ok && np.mode == s.opts.PathNormalization {
		return np.Path(), nil
	}
	return normalizePath(buf, req.Path, s.opts.PathNormalization)
}

// customPhase runs the enforced CUSTOM policies that match: each distinct
// provider is asked once; any deny decides. A RegoProvider of the set
// evaluates its prepared query (regoProvider.eval), any other provider
// goes to Options.Custom. req is c.req, passed apart so that handing it
// to the provider does not make the compiler think c (and the path
// buffer it points to) escapes. When every provider allows, the returned
// Decision carries only their Headers and Custom records.
func (s *Set) customPhase(c *evalCtx, req *Request, cands []*compiledAuthz) (Decision, bool) {
	var asked [4]string
	n := 0
	var out Decision
outer:
	for _, p := range cands {
		if p.action != actCustom || p.dryRun {
			continue
		}
		i := p.match(c)
		if i < 0 {
			continue
		}
		for _, a := range asked[:n] {
			if a == p.provider {
				continue outer
			}
		}
		if n < len(asked) {
			asked[n] = p.provider
			n++
		}
		if rp := s.providers[p.provider]; rp != nil {
			// Every reading of the path must be allowed (c.regoPaths);
			// each evaluation is in the decision log.
			var res customResult
			for j, rd := range c.regoPaths(rp, req) {
				if j > 0 {
					if !res.allow {
						break
					}
					out.Custom = append(out.Custom, res.eval)
				}
				res = rp.eval(req, rd.path, rd.fold)
			}
			out.Custom = append(out.Custom, res.eval)
			if !res.allow {
				return Decision{Outcome: Deny, Policy: p.ref, Action: "CUSTOM", Rule: i, Status: res.status,
					Reason: p.rules[i].reason + ": " + res.reason, Custom: out.Custom}, true
			}
			for k, v := range res.headers {
				if out.Headers == nil {
					out.Headers = make(map[string]string, len(res.headers))
				}
				out.Headers[k] = v
			}
			continue
		}
		if s.opts.Custom == nil {
			out.Custom = append(out.Custom, CustomEval{Provider: p.provider, Result: "error", Error: "provider is not configured"})
			return Decision{Outcome: Deny, Policy: p.ref, Action: "CUSTOM", Rule: i,
				Reason: p.rules[i].reason + ": provider is not configured", Custom: out.Custom}, true
		}
		// Asked about every reading of the path (customRequest), as a
		// RegoProvider is: a provider deciding on "/admin" must not let
		// "/admin;x" or "//admin" through to an app that serves /admin.
		for k := 0; k <= c.nalt; k++ {
			allow, reason := s.opts.Custom(p.provider, c.customRequest(req, k, s.opts.PathNormalization))
			if !allow {
				if reason == "" {
					reason = "denied"
				}
				out.Custom = append(out.Custom, CustomEval{Provider: p.provider, Result: "deny"})
				return Decision{Outcome: Deny, Policy: p.ref, Action: "CUSTOM", Rule: i,
					Reason: p.rules[i].reason + ": " + reason, Custom: out.Custom}, true
			}
			out.Custom = append(out.Custom, CustomEval{Provider: p.provider, Result: "allow"})
		}
	}
	return out, false
}

// customRequest is req as a provider given in Options.Custom is asked
// about reading k of the path (evalCtx.applies): Path is that reading,
// normalized, then the query as received, and NormalizedPath says so, as
// Envoy hands ext_authz the path it normalized and the app is served. It
// is req itself when req.Path is that already (reading 0 of a proxy's
// request: no allocation), else a copy. The readings differ from each
// other (pathReadings), so each is asked once. Case is not one of them:
// the provider gets the request's own text (a path may hold
// case-sensitive IDs), and one guarding an app that routes ignoring case
// compares paths ignoring case itself.
func (c *evalCtx) customRequest(req *Request, k int, mode PathNormalization) *Request {
	rawPath, q, hasQ := strings.Cut(req.Path, "?")
	if k == 0 && rawPath == c.paths[0] {
		return req
	}
	// Its own variable: c.paths[k] may alias authorize's stack buffer,
	// which must not escape.
	p := strings.Clone(c.paths[k])
	target := p
	if hasQ {
		target = p + "?" + q
	}
	r := *req
	r.Path = target
	r.NormalizedPath = RequestPath{target: target, pathLen: len(p), mode: mode, changed: true, ok: true}
	return &r
}

// regoReading is one reading of a path a RegoProvider decides on: the
// path its input carries, and whether its routes match that path's
// literal segments ignoring ASCII case.
type regoReading struct {
	path string
	fold bool
}

// regoPaths are the readings rp decides for req: the path and its other
// readings (evalCtx.applies), distinct, in that order, each followed by
// itself with routes matched ignoring case when that selects another
// route than an exact match does (an app that routes ignoring case
// serves "/RECORDS/bob/7" as /records/{owner}/{id}). The path itself is
// never lower-cased: what a route captures ("Bob") and request.path are
// the request's own text, which case-sensitive data (IDs, names, keys)
// needs, so an allow-style module is not handed a value the caller did
// not send. The paths are copies: c.paths[0] may alias authorize's stack
// buffer, and the input document keeps them.
func (c *evalCtx) regoPaths(rp *regoProvider, req *Request) []regoReading {
	out := make([]regoReading, 0, 2*(1+c.nalt))
	for i := 0; i <= c.nalt; i++ {
		if seenReading(out, c.paths[i]) {
			continue
		}
		p := strings.Clone(c.paths[i]) // its own variable: c.paths[i] must not escape
		out = append(out, regoReading{path: p})
		if exact, _ := rp.route(req, p, false); c.upper || rp.upperLits {
			if folded, _ := rp.route(req, p, true); folded != exact {
				out = append(out, regoReading{path: p, fold: true})
			}
		}
	}
	return out
}

// seenReading reports whether rs holds a reading of path p.
func seenReading(rs []regoReading, p string) bool {
	for _, r := range rs {
		if r.path == p {
			return true
		}
	}
	return false
}

// decideDenyAllow is steps 2 to 5 of Istio's evaluation: any matching
// DENY denies; no ALLOW policy allows; a matching ALLOW allows; otherwise
// deny. withDryRun counts dry-run policies as enforced (the what-if).
func decideDenyAllow(c *evalCtx, cands []*compiledAuthz, withDryRun bool) Decision {
	for _, p := range cands {
		if p.action != actDeny || (p.dryRun && !withDryRun) {
			continue
		}
		if i := p.match(c); i >= 0 {
			return Decision{Outcome: Deny, Policy: p.ref, Action: "DENY", Rule: i, Reason: p.rules[i].reason}
		}
	}
	anyAllow := false
	for _, p := range cands {
		if p.action != actAllow || (p.dryRun && !withDryRun) {
			continue
		}
		anyAllow = true
		if i := p.match(c); i >= 0 {
			return Decision{Outcome: Allow, Policy: p.ref, Action: "ALLOW", Rule: i, Reason: p.rules[i].reason}
		}
	}
	if !anyAllow {
		return Decision{Outcome: Allow, Rule: -1, Reason: ReasonNoAllowPolicy}
	}
	return Decision{Outcome: Deny, Rule: -1, Reason: ReasonNoAllowMatch}
}
