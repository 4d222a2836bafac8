package secrets

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"database/sql"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"slices"
	"strings"
	"time"

	"github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"
	"github.com/spiffe/go-spiffe/v2/svid/jwtsvid"

	"github.com/moatless/moatless/internal/audit"
	"github.com/moatless/moatless/internal/secrets/acl"
	"github.com/moatless/moatless/internal/store"
)

// TokenPrefix starts every client token, so a leaked token is
// recognisable by secret scanners.
const TokenPrefix = "mls."

// tokenCtx is the authenticated caller of a request.
type tokenCtx struct {
	root     bool
	adminID  string // actor name of an admin
	accessor string // "" for the implicit mTLS identity
	subject  string // spiffe://..., approle:NAME, jwt:ROLE
	spiffeID string
	approle  string
	jwtRole  string
	policies []string // named on the token
	stored   *store.SecretsToken
	acl      *acl.ACL
	// creator is the SPIFFE ID of the workload that created the token
	// (store.SecretsToken.CreatorSPIFFEID): its revocation ends the token,
	// but grants the token nothing (spiffeID does).
	creator string
	// authority is the CA authority whose SVID the token was obtained
	// with (store.SecretsToken.CAAuthority), or that issued the mTLS
	// identity's certificate: its revocation ends the token and what the
	// token creates.
	authority string
}

// revokedWith is the SPIFFE ID whose revocation ends the token: its
// creator's, else its own ("" for neither). A token created by the token
// (or by the mTLS identity) of a workload inherits it, so what a revoked
// workload minted beforehand stops with it.
func (t *tokenCtx) revokedWith() string {
	if t.creator != "" {
		return t.creator
	}
	return t.spiffeID
}

func (t *tokenCtx) actor() string {
	switch {
	case t.root:
		return t.adminID
	case t.spiffeID != "":
		return t.spiffeID
	}
	return t.subject
}

func (t *tokenCtx) identity() acl.Identity {
	return acl.Identity{SPIFFEID: t.spiffeID, AppRole: t.approle, JWTRole: t.jwtRole}
}

func hashToken(tok string) []byte {
	h := sha256.Sum256([]byte(tok))
	return h[:]
}

// presentedToken is the X-Vault-Token header, else a bearer token.
func presentedToken(r *http.Request) string {
	if t := r.Header.Get("X-Vault-Token"); t != "" {
		return t
	}
	if a := r.Header.Get("Authorization"); len(a) > 7 && strings.EqualFold(a[:7], "bearer ") {
		return strings.TrimSpace(a[7:])
	}
	return ""
}

// authenticate finds the caller: the admin credential, a client token, or
// (with no token) the mTLS peer's SPIFFE ID. A presented token that is
// unknown or expired is refused even when a client certificate is also
// presented: the caller asked to act as that token.
func (s *Service) authenticate(rq *req) error {
	r := rq.r
	peer, perr := s.cfg.Peer(r)
	if perr != nil {
		return errf(http.StatusForbidden, "client certificate refused: %v", perr)
	}
	if actor, ok := s.cfg.Admin(r); ok {
		rq.tok = &tokenCtx{root: true, adminID: actor, subject: "admin", acl: acl.Root()}
		return nil
	}
	tok := presentedToken(r)
	if tok == "" {
		if peer == nil {
			return errf(http.StatusForbidden, "permission denied: no token (X-Vault-Token) and no client certificate")
		}
		rq.tok = &tokenCtx{subject: peer.SPIFFEID, spiffeID: peer.SPIFFEID, authority: peer.Authority}
		rq.tok.acl = s.aclFor(rq.ctx, rq.tok)
		return nil
	}
	if len(tok) > 256 || !strings.HasPrefix(tok, TokenPrefix) {
		return errPermission
	}
	// The lookup is by SHA-256 of the token: an index probe reveals
	// nothing about the token through timing.
	t, err := s.db.SecretsTokenByHash(rq.ctx, hashToken(tok))
	if errors.Is(err, store.ErrNotFound) {
		return errPermission
	}
	if err != nil {
		return err
	}
	if !s.now().Before(t.ExpiresAt) {
		return errPermission
	}
	// A token from a role with token_bound_cidrs works only from those
	// addresses (as in Vault): one copied off the host it was issued to
	// is refused elsewhere, before it spends a use.
	if err := checkCIDRs(t.BoundCIDRs, r); err != nil {
		rq.details["token_accessor"] = t.Accessor
		rq.details["reason"] = "source address outside the token's bound CIDRs"
		return errPermission
	}
	if t.Parent != "" {
		// A child works while every token above it does (Vault revokes
		// the children when a parent ends; its expiry or last use is
		// revoked by the next maintenance pass, and refused here until).
		_, alive, err := s.db.SecretsTokenChain(rq.ctx, s.db.SQL(), t.Parent, s.now(), maxTokenDepth)
		if err != nil {
			return err
		}
		if !alive {
			rq.details["token_accessor"] = t.Accessor
			rq.details["reason"] = "a parent token is revoked or expired"
			return errPermission
		}
	}
	tc := tokenFromStored(&t)
	for _, id := range []string{tc.spiffeID, tc.creator} {
		if id != "" && s.cfg.Revoked(id) {
			return errf(http.StatusForbidden, "permission denied: the token's SPIFFE ID, or that of the workload that created it, is revoked")
		}
	}
	if tc.authority != "" && slices.Contains(s.cfg.RevokedAuthorities(), tc.authority) {
		rq.details["token_accessor"] = t.Accessor
		rq.details["reason"] = "CA authority revoked"
		return errf(http.StatusForbidden, "permission denied: the CA authority %s that signed the SVID this token was obtained with is revoked; log in again with a current SVID", tc.authority)
	}
	if t.NumUses > 0 {
		if err := s.db.UseSecretsToken(rq.ctx, t.Accessor, s.now()); errors.Is(err, store.ErrNotFound) {
			return errPermission
		} else if err != nil {
			return err
		}
	}
	tc.acl = s.aclFor(rq.ctx, tc)
	rq.tok = tc
	return nil
}

func tokenFromStored(t *store.SecretsToken) *tokenCtx {
	tc := &tokenCtx{accessor: t.Accessor, subject: t.Subject, policies: t.Policies, stored: t, creator: t.CreatorSPIFFEID, authority: t.CAAuthority}
	switch {
	case strings.HasPrefix(t.Subject, "spiffe://"):
		tc.spiffeID = t.Subject
	case strings.HasPrefix(t.Subject, "approle:"):
		tc.approle = strings.TrimPrefix(t.Subject, "approle:")
	case strings.HasPrefix(t.Subject, "jwt:"):
		tc.jwtRole = strings.TrimPrefix(t.Subject, "jwt:")
		tc.spiffeID = t.Meta["spiffe_id"]
	}
	return tc
}

// issued is what a login hands out.
type issued struct {
	subject   string
	display   string
	policies  []string
	meta      map[string]string
	ttl       time.Duration
	maxTTL    time.Duration
	numUses   int64
	notAfter  time.Time // the token never outlives this (a presented SVID)
	renewable bool
	// boundCIDRs are the only addresses the token may be used from.
	boundCIDRs []string
	// parent is the accessor of the token creating this one ("": an
	// orphan); notAfter must not be after the parent's max expiry.
	parent string
	// creator: store.SecretsToken.CreatorSPIFFEID.
	creator string
	// authority: store.SecretsToken.CAAuthority.
	authority string
}

// Bounds of the token tree: a token at most maxTokenDepth tokens below an
// orphan, with at most maxTokenChildren children, in a tree of at most
// maxTokenTree tokens (expired ones count until the maintenance pass
// revokes them). Vault bounds none; a revocation walks the whole tree in
// one transaction, which the first two alone let grow to 1000^8 tokens.
const (
	maxTokenDepth    = 8
	maxTokenChildren = 1000
)

// maxTokenTree is a var for the tests.
var maxTokenTree = 2000

// issueToken creates a token inside tx and returns the auth block.
func (s *Service) issueToken(rq *req, tx *sql.Tx, in issued) (*authInfo, error) {
	now := s.now()
	if in.ttl <= 0 {
		in.ttl = s.cfg.DefaultTokenTTL
	}
	if in.maxTTL <= 0 || in.maxTTL > s.cfg.MaxTokenTTL {
		in.maxTTL = s.cfg.MaxTokenTTL
	}
	in.ttl = min(in.ttl, in.maxTTL)
	maxExp := now.Add(in.maxTTL)
	if !in.notAfter.IsZero() && in.notAfter.Before(maxExp) {
		maxExp = in.notAfter
	}
	exp := now.Add(in.ttl)
	if exp.After(maxExp) {
		exp = maxExp
	}
	if !exp.After(now) {
		return nil, badRequest("the credential expires too soon to issue a token")
	}
	b := make([]byte, 24)
	if _, err := rand.Read(b); err != nil {
		return nil, err
	}
	tok := TokenPrefix + base64.RawURLEncoding.EncodeToString(b)
	if in.meta == nil {
		in.meta = map[string]string{}
	}
	if in.policies == nil {
		in.policies = []string{}
	}
	if in.parent != "" {
		// Held until tx ends: a revocation of the parent committed
		// before (refused here) or revokes this child too.
		p, err := s.db.LockSecretsTokenParent(rq.ctx, tx, in.parent, now, maxTokenDepth, maxTokenTree)
		switch {
		case errors.Is(err, store.ErrNotFound) || (err == nil && !p.Alive):
			return nil, errPermission
		case err != nil:
			return nil, err
		case p.Depth > maxTokenDepth:
			return nil, badRequest("the token is %d tokens below an orphan already; create an orphan (no_parent) instead", p.Depth-1)
		case p.Children >= maxTokenChildren:
			return nil, badRequest("the token has %d child tokens already", p.Children)
		case p.TreeSize >= maxTokenTree:
			return nil, badRequest("the token's tree (its orphan root and every token under it) holds %d tokens already; revoke some, or create an orphan (no_parent)", p.TreeSize)
		}
		if s.testTokenParentLocked != nil {
			s.testTokenParentLocked()
		}
	}
	st := store.SecretsToken{Accessor: newUUID(), Hash: hashToken(tok), Subject: in.subject, DisplayName: in.display,
		Policies: in.policies, Meta: in.meta, TTL: in.ttl, Renewable: in.renewable, NumUses: in.numUses, BoundCIDRs: in.boundCIDRs,
		CreatedAt: now, ExpiresAt: exp, MaxExpires: maxExp, Parent: in.parent, CreatorSPIFFEID: in.creator, CAAuthority: in.authority}
	if err := s.db.CreateSecretsToken(rq.ctx, tx, st); err != nil {
		return nil, err
	}
	tc := tokenFromStored(&st)
	rq.tok = tc
	rq.details["token_accessor"] = st.Accessor
	s.metrics.tokens.WithLabelValues(strings.SplitN(in.subject, ":", 2)[0]).Inc()
	// Policies are filled in by withPolicies once tx has committed: they
	// are read from the store's pool, and a second connection asked for
	// while tx holds one (and, for AppRole, a secret ID's row lock) is how
	// 16 concurrent logins took every connection of the pool and waited
	// on each other for ever.
	return &authInfo{ClientToken: tok, Accessor: st.Accessor, Metadata: in.meta,
		LeaseDuration: int64(exp.Sub(now) / time.Second), Renewable: in.renewable, TokenType: "service", Orphan: in.parent == "", NumUses: in.numUses}, nil
}

// withPolicies sets ai's policies, those of the token rq issued, after
// the transaction that issued it has committed (issueToken).
func (s *Service) withPolicies(rq *req, ai *authInfo) *envelope {
	pols := s.effectivePolicies(rq.ctx, rq.tok)
	ai.Policies, ai.TokenPolicies = pols, pols
	return &envelope{Auth: ai}
}

// loginFailed counts, rate-limits and explains a failed login. The
// message is the same for every cause a caller could probe with.
func (s *Service) loginFailed(rq *req, msg string, why string) error {
	s.metrics.loginFailures.WithLabelValues(rq.engine + "/" + strings.Split(rq.path, "/")[1]).Inc()
	rq.details["reason"] = why
	if !s.loginLim.AllowN(s.now(), 1) {
		return errf(http.StatusTooManyRequests, "too many failed logins; retry later")
	}
	return badRequest("%s", msg)
}

func (s *Service) login(rq *req, in issued, extra map[string]string) (*envelope, error) {
	var ai *authInfo
	for k, v := range extra {
		rq.details[k] = v
	}
	err := rq.tx(func(tx *sql.Tx) error {
		var err error
		ai, err = s.issueToken(rq, tx, in)
		return err
	})
	if err != nil {
		return nil, err
	}
	return s.withPolicies(rq, ai), nil
}

// certLogin: POST auth/cert/login. The credential is the X509-SVID of
// the TLS handshake; the token is bound to that SPIFFE ID and never
// outlives the certificate.
func (s *Service) certLogin(rq *req) (*envelope, error) {
	rq.op = "update"
	rq.body.str("name") // Vault's cert role name: the SVID decides here
	if err := rq.body.done(); err != nil {
		return nil, err
	}
	peer, err := s.cfg.Peer(rq.r)
	if err != nil {
		return nil, s.loginFailed(rq, "client certificate refused: "+err.Error(), "certificate refused")
	}
	if peer == nil {
		return nil, s.loginFailed(rq, "cert login needs mutual TLS with an X509-SVID of this trust domain", "no certificate")
	}
	return s.login(rq, issued{subject: peer.SPIFFEID, display: "cert-" + peer.SPIFFEID, notAfter: peer.NotAfter, renewable: true, authority: peer.Authority},
		map[string]string{"method": "cert"})
}

// JWTRole binds JWT-SVIDs to token settings (auth/jwt/role/NAME).
type JWTRole struct {
	BoundAudiences        []string      `json:"bound_audiences"`
	BoundSubjects         []string      `json:"bound_subjects,omitempty"`
	BoundSubjectPatterns  []string      `json:"bound_subject_patterns,omitempty"`
	TokenPolicies         []string      `json:"token_policies"`
	TokenTTL              time.Duration `json:"token_ttl"`
	TokenMaxTTL           time.Duration `json:"token_max_ttl"`
	TokenNumUses          int64         `json:"token_num_uses"`
	TokenBoundCIDRs       []string      `json:"token_bound_cidrs,omitempty"`
	ClockSkewLeewayIgnore bool          `json:"-"`
}

// jwtLogin: POST auth/jwt/login {role, jwt}: a JWT-SVID of our trust
// domain, signed by the CA's JWT keys, for one of the role's audiences.
func (s *Service) jwtLogin(rq *req) (*envelope, error) {
	rq.op = "update"
	role := rq.body.str("role")
	tok := rq.body.str("jwt")
	if err := rq.body.done(); err != nil {
		return nil, err
	}
	if role == "" || tok == "" {
		return nil, badRequest("role and jwt are required")
	}
	if len(tok) > 16<<10 {
		return nil, s.loginFailed(rq, "invalid JWT", "jwt too large")
	}
	rq.details["role"] = role
	var jr JWTRole
	if err := s.getObject(rq, kindJWTRole, role, &jr); err != nil {
		if errors.Is(err, store.ErrNotFound) {
			return nil, s.loginFailed(rq, "invalid role or JWT", "unknown role")
		}
		return nil, err
	}
	if s.cfg.JWTBundles == nil {
		return nil, s.loginFailed(rq, "jwt login is not configured on this server", "no bundle")
	}
	svid, err := jwtsvid.ParseAndValidate(tok, s.cfg.JWTBundles, jr.BoundAudiences)
	if err != nil {
		return nil, s.loginFailed(rq, "invalid role or JWT: "+strings.TrimPrefix(err.Error(), "jwtsvid: "), "invalid jwt")
	}
	id := svid.ID.String()
	if s.cfg.TrustDomain != "" && svid.ID.TrustDomain().Name() != s.cfg.TrustDomain {
		return nil, s.loginFailed(rq, "invalid role or JWT: foreign trust domain", "foreign trust domain")
	}
	if s.cfg.Revoked(id) {
		return nil, s.loginFailed(rq, "invalid role or JWT: the SPIFFE ID is revoked", "revoked")
	}
	bound := len(jr.BoundSubjects)+len(jr.BoundSubjectPatterns) == 0 || slices.Contains(jr.BoundSubjects, id)
	for _, p := range jr.BoundSubjectPatterns {
		bound = bound || (&acl.Policy{Subjects: acl.Subjects{SPIFFEIDPatterns: []string{p}}}).Applies(acl.Identity{SPIFFEID: id})
	}
	if !bound {
		return nil, s.loginFailed(rq, "invalid role or JWT: subject not bound to the role", "subject not bound")
	}
	if err := checkCIDRs(jr.TokenBoundCIDRs, rq.r); err != nil {
		return nil, s.loginFailed(rq, "invalid role or JWT: source address not allowed", "cidr")
	}
	rq.details["spiffe_id"] = id
	return s.login(rq, issued{subject: "jwt:" + role, display: "jwt-" + role, policies: jr.TokenPolicies,
		meta: map[string]string{"role": role, "spiffe_id": id}, ttl: jr.TokenTTL, maxTTL: jr.TokenMaxTTL, numUses: jr.TokenNumUses,
		notAfter: svid.Expiry, renewable: true, boundCIDRs: jr.TokenBoundCIDRs, authority: jwtKeyID(tok)}, map[string]string{"method": "jwt"})
}

// jwtKeyID is the key ID in a validated JWT-SVID's header: the CA's JWT
// authority that signed it (jwtsvid found the key by it).
func jwtKeyID(raw string) string {
	tok, err := jwt.ParseSigned(raw, []jose.SignatureAlgorithm{jose.ES256, jose.ES384, jose.ES512,
		jose.RS256, jose.RS384, jose.RS512, jose.PS256, jose.PS384, jose.PS512, jose.EdDSA})
	if err != nil || len(tok.Headers) == 0 || len(tok.Headers[0].KeyID) > 256 {
		return ""
	}
	return tok.Headers[0].KeyID
}

func checkCIDRs(cidrs []string, r *http.Request) error {
	if len(cidrs) == 0 {
		return nil
	}
	ip := remoteIP(r)
	for _, c := range cidrs {
		if _, n, err := net.ParseCIDR(c); err == nil && ip != nil && n.Contains(ip) {
			return nil
		}
	}
	return errors.New("source address not in the bound CIDRs")
}

// cidrsWithin reports whether every block of inner lies inside a block
// of outer (an empty outer allows anything): a secret ID may narrow its
// role's address bindings, never widen them.
func cidrsWithin(inner, outer []string) bool {
	if len(outer) == 0 {
		return true
	}
	if len(inner) == 0 {
		return false
	}
	for _, in := range inner {
		_, i, err := net.ParseCIDR(in)
		if err != nil {
			return false
		}
		ones, bits := i.Mask.Size()
		ok := false
		for _, out := range outer {
			_, o, err := net.ParseCIDR(out)
			if err != nil {
				continue
			}
			oOnes, oBits := o.Mask.Size()
			ok = ok || (oBits == bits && oOnes <= ones && o.Contains(i.IP))
		}
		if !ok {
			return false
		}
	}
	return true
}

func validCIDRs(field string, cidrs []string) error {
	if len(cidrs) > 100 {
		return badRequest("%s: at most 100", field)
	}
	for _, c := range cidrs {
		if _, _, err := net.ParseCIDR(c); err != nil {
			return badRequest("%s: %q is not a CIDR block", field, c)
		}
	}
	return nil
}

// tokenAPI serves auth/token/*.
func (s *Service) tokenAPI(rq *req, rest string) (*envelope, error) {
	switch rest {
	case "lookup-self":
		if rq.op != "read" {
			return nil, errf(http.StatusMethodNotAllowed, "lookup-self is GET")
		}
		return s.lookupToken(rq, rq.tok, true)
	case "renew-self":
		inc := rq.body.duration("increment")
		if err := rq.body.done(); err != nil {
			return nil, err
		}
		if rq.tok.stored == nil {
			return nil, badRequest("this request carries no token to renew (identity from the client certificate)")
		}
		return s.renewToken(rq, rq.tok.stored, inc)
	case "revoke-self":
		if err := rq.body.done(); err != nil {
			return nil, err
		}
		if rq.tok.stored == nil {
			return nil, badRequest("this request carries no token to revoke")
		}
		if err := s.revokeTokenAudited(rq, rq.tok.stored.Accessor); err != nil {
			return nil, err
		}
		return nil, nil
	case "lookup-accessor", "renew-accessor", "revoke-accessor":
		if err := rq.needOp(); err != nil {
			return nil, err
		}
		acc := rq.body.str("accessor")
		inc := rq.body.duration("increment")
		if err := rq.body.done(); err != nil {
			return nil, err
		}
		t, err := s.db.SecretsTokenByAccessor(rq.ctx, s.db.SQL(), acc)
		if err != nil {
			return nil, badRequest("invalid accessor")
		}
		switch rest {
		case "lookup-accessor":
			return s.lookupToken(rq, tokenFromStored(&t), false)
		case "renew-accessor":
			return s.renewToken(rq, &t, inc)
		}
		if err := s.revokeTokenAudited(rq, acc); err != nil {
			return nil, err
		}
		return nil, nil
	case "revoke", "revoke-orphan":
		// Vault: revoke ends the token and its children; revoke-orphan
		// (root-protected) the token alone, its children become orphans.
		c := acl.Update
		if rest == "revoke-orphan" {
			c |= acl.Sudo
		}
		if err := rq.need(c); err != nil {
			return nil, err
		}
		tok := rq.body.str("token")
		if err := rq.body.done(); err != nil {
			return nil, err
		}
		if len(tok) > 256 || !strings.HasPrefix(tok, TokenPrefix) {
			return nil, badRequest("invalid token")
		}
		t, err := s.db.SecretsTokenByHash(rq.ctx, hashToken(tok))
		if errors.Is(err, store.ErrNotFound) {
			return nil, badRequest("invalid token")
		} else if err != nil {
			return nil, err
		}
		rq.details["token_accessor"] = t.Accessor
		if err := s.revokeTokens(rq.ctx, t.Accessor, "revoked by "+rq.tok.actor(), rest == "revoke-orphan"); err != nil {
			return nil, err
		}
		return nil, nil
	case "create", "create-orphan":
		if err := rq.needOp(); err != nil {
			return nil, err
		}
		return s.createToken(rq, rest == "create-orphan")
	case "accessors":
		return nil, errf(http.StatusNotFound, "listing token accessors is not supported")
	}
	return nil, rq.noRoute()
}

func (s *Service) lookupToken(rq *req, t *tokenCtx, self bool) (*envelope, error) {
	pols := s.effectivePolicies(rq.ctx, t)
	now := s.now()
	d := map[string]any{"policies": pols, "type": "service", "orphan": t.stored == nil || t.stored.Parent == "", "entity_id": "", "path": "",
		"display_name": t.subject, "meta": map[string]string{}, "renewable": false, "num_uses": 0, "explicit_max_ttl": 0, "id": nil}
	if t.root {
		d["display_name"], d["policies"], d["ttl"], d["expire_time"] = "admin", []string{"root"}, 0, nil
		return data(d), nil
	}
	if t.stored == nil {
		d["display_name"], d["ttl"], d["expire_time"], d["path"] = t.spiffeID, 0, nil, "auth/cert/login"
		d["meta"] = map[string]string{"spiffe_id": t.spiffeID, "implicit": "mtls"}
		return data(d), nil
	}
	st := t.stored
	d["accessor"] = st.Accessor
	d["creation_time"] = st.CreatedAt.Unix()
	d["creation_ttl"] = int64(st.TTL / time.Second)
	d["expire_time"] = st.ExpiresAt.UTC().Format(time.RFC3339Nano)
	d["issue_time"] = st.CreatedAt.UTC().Format(time.RFC3339Nano)
	d["ttl"] = int64(st.ExpiresAt.Sub(now) / time.Second)
	d["explicit_max_ttl"] = int64(st.MaxExpires.Sub(st.CreatedAt) / time.Second)
	d["display_name"], d["meta"], d["renewable"], d["num_uses"] = st.DisplayName, st.Meta, st.Renewable, st.NumUses
	if len(st.BoundCIDRs) > 0 {
		d["bound_cidrs"] = st.BoundCIDRs
	}
	if self {
		d["id"] = presentedToken(rq.r)
	}
	return data(d), nil
}

func (s *Service) renewToken(rq *req, t *store.SecretsToken, inc time.Duration) (*envelope, error) {
	if !t.Renewable {
		return nil, badRequest("token is not renewable")
	}
	now := s.now()
	// An expired token waits for the maintenance loop to revoke it (and
	// its leases); renew-accessor must not bring it back meanwhile.
	if !now.Before(t.ExpiresAt) {
		return nil, badRequest("token expired")
	}
	if inc <= 0 {
		inc = t.TTL
	}
	exp := now.Add(inc)
	var warnings []string
	if exp.After(t.MaxExpires) {
		exp = t.MaxExpires
		warnings = append(warnings, "TTL of the token is capped by its maximum lifetime")
	}
	rq.details["token_accessor"] = t.Accessor
	if err := rq.tx(func(tx *sql.Tx) error { return s.db.RenewSecretsToken(rq.ctx, tx, t.Accessor, exp) }); err != nil {
		return nil, err
	}
	t.ExpiresAt = exp
	tc := tokenFromStored(t)
	pols := s.effectivePolicies(rq.ctx, tc)
	return &envelope{Warnings: warnings, Auth: &authInfo{Accessor: t.Accessor, Policies: pols, TokenPolicies: pols, Metadata: t.Meta,
		LeaseDuration: int64(exp.Sub(now) / time.Second), Renewable: true, TokenType: "service", Orphan: t.Parent == "", NumUses: t.NumUses}}, nil
}

// createToken: auth/token/create (admins, or sudo on the path) mints a
// token with named policies. As in Vault it is a child of the token
// that created it, unless orphan (create-orphan), no_parent (honoured:
// the caller has sudo), or the caller is no token (the admin
// credential, an mTLS identity).
func (s *Service) createToken(rq *req, orphan bool) (*envelope, error) {
	if !rq.tok.acl.Allowed(rq.path, acl.Sudo) {
		return nil, errPermission
	}
	pols := rq.body.strList("policies")
	ttl := rq.body.duration("ttl")
	maxTTL := rq.body.duration("explicit_max_ttl")
	uses := rq.body.integer("num_uses")
	display := rq.body.str("display_name")
	meta := rq.body.strMap("meta")
	renew := true
	if rq.body.has("renewable") {
		renew = rq.body.boolean("renewable")
	}
	if rq.body.has("no_parent") && rq.body.boolean("no_parent") {
		orphan = true
	}
	rq.body.raw("no_default_policy")
	// Fields the official client always sends: only their empty or
	// service-token values are accepted.
	for _, k := range []string{"type", "entity_alias", "id", "period", "role_name"} {
		raw := rq.body.raw(k)
		var v any
		json.Unmarshal(raw, &v)
		if raw != nil && v != "" && v != 0.0 && v != "0" && !(k == "type" && v == "service") {
			return nil, badRequest("%s: not supported (only service tokens with generated IDs are issued)", k)
		}
	}
	if err := rq.body.done(); err != nil {
		return nil, err
	}
	for _, p := range pols {
		if !acl.ValidName(p) {
			return nil, badRequest("policies: %q is not a policy name", p)
		}
	}
	if uses < 0 {
		return nil, badRequest("num_uses: must not be negative")
	}
	if display == "" {
		display = "token"
	}
	// An orphan too: revoking the creator's identity ends what it minted.
	in := issued{subject: "token:" + display, display: "token-" + display, policies: pols, meta: meta, ttl: ttl, maxTTL: maxTTL,
		numUses: uses, renewable: renew, creator: rq.tok.revokedWith(), authority: rq.tok.authority}
	if p := rq.tok.stored; p != nil && !orphan {
		// A child never outlives its parent's max TTL; the parent's
		// revocation or expiry ends it sooner.
		in.parent, in.notAfter = p.Accessor, p.MaxExpires
		rq.details["parent_accessor"] = p.Accessor
	}
	return s.login(rq, in, map[string]string{"method": "token"})
}

func (s *Service) revokeTokenAudited(rq *req, accessor string) error {
	rq.details["token_accessor"] = accessor
	if err := s.revokeToken(rq.ctx, accessor, "revoked by "+rq.tok.actor()); err != nil {
		return err
	}
	return nil
}

// revokeTokensOfRevokedAuthorities revokes, with their trees and leases,
// the tokens obtained with an SVID of a CA authority revoked since
// (Config.RevokedAuthorities): authenticate refuses them already, and
// this ends the database users they obtained. At most 500 tokens an
// authority a pass; the next pass takes the rest.
func (s *Service) revokeTokensOfRevokedAuthorities(ctx context.Context) {
	for _, id := range s.cfg.RevokedAuthorities() {
		// The leases first: those obtained over mTLS with a certificate
		// of the authority (no token) too.
		err := s.markLeasesAudited(ctx, "secrets.lease.revoke_authority", id, "CA authority revoked", func(tx *sql.Tx) (int64, error) {
			return s.db.MarkLeasesOfAuthority(ctx, tx, id, s.now())
		})
		if err != nil {
			s.log.Warn("revoke the leases of a revoked CA authority", "authority", id, "err", err)
		}
		accs, err := s.db.SecretsTokensOfAuthority(ctx, id, 500)
		if err != nil {
			s.log.Warn("read the tokens of a revoked CA authority", "authority", id, "err", err)
			continue
		}
		for _, a := range accs {
			if err := s.revokeToken(ctx, a, "CA authority "+id+" revoked"); err != nil && !errors.Is(err, store.ErrNotFound) {
				s.log.Warn("revoke a token of a revoked CA authority", "authority", id, "err", err)
			}
		}
	}
}

// revokeToken revokes a token, the tokens under it (its children, theirs,
// ...) and every lease any of them created (Vault's semantics: a lease
// never outlives its token, a child never outlives its parent).
func (s *Service) revokeToken(ctx context.Context, accessor, why string) error {
	return s.revokeTokens(ctx, accessor, why, false)
}

// tokenLeasesAtOnce bounds the leases of a token revoked by its
// revocation itself; the maintenance pass revokes the rest (a var for the
// tests).
var tokenLeasesAtOnce = 10000

// revokeTokens is revokeToken; with orphanChildren it revokes the token
// and its leases alone, and its children become orphans (revoke-orphan).
func (s *Service) revokeTokens(ctx context.Context, accessor, why string, orphanChildren bool) error {
	now := s.now()
	if s.testBeforeTokenDelete != nil {
		s.testBeforeTokenDelete()
	}
	// The leases are read and marked in the transaction that deletes the
	// tokens, after the delete: a lease being written by a request of one
	// of them holds its token's row (lockLeaseToken) and committed before
	// the delete went through, so it is read here; one written later finds
	// its token gone and is refused. Marked with the delete (all of them,
	// in one statement a token), they are revoked by the maintenance loop
	// should the server stop before the revocations below, and beyond the
	// first tokenLeasesAtOnce of a token.
	leases := map[string][]store.Lease{}
	var gone []string
	err := s.db.Tx(ctx, func(tx *sql.Tx) error {
		var err error
		if gone, err = s.db.DeleteSecretsTokenTree(ctx, tx, accessor, orphanChildren); err != nil {
			return err
		}
		evs := make([]audit.Event, 0, len(gone))
		for i, a := range gone {
			n, err := s.db.MarkLeasesOfToken(ctx, tx, a, now)
			if err != nil {
				return err
			}
			var ls []store.Lease
			if n > 0 {
				if ls, err = s.db.TokenLeases(ctx, tx, a, tokenLeasesAtOnce); err != nil {
					return err
				}
			}
			leases[a] = ls
			reason := why
			if i > 0 {
				reason = "parent token revoked (" + why + ")"
			}
			evs = append(evs, audit.Event{Kind: "secrets.token.revoke", Actor: "moatless-secrets", Subject: s.hmacAccessor(a),
				Outcome: audit.Success, Details: map[string]string{"reason": reason, "leases": fmt.Sprint(n)}})
		}
		return s.cfg.Audit.AppendTx(ctx, tx, evs...)
	})
	if err != nil {
		return err
	}
	for _, a := range gone {
		for _, l := range leases[a] {
			s.revokeLease(ctx, l)
		}
	}
	return nil
}

// lockLeaseToken holds the row of the token a lease is about to be
// written for until tx ends (PostgreSQL: FOR UPDATE; SQLite's write
// transaction serializes already), and refuses the lease if the token,
// or a token above it, is gone or expired: a revocation of the token
// either committed before, or waits and then finds the lease
// (revokeTokens).
func (s *Service) lockLeaseToken(rq *req, tx *sql.Tx, accessor string) error {
	alive, err := s.db.LockSecretsToken(rq.ctx, tx, accessor, s.now(), maxTokenDepth)
	if errors.Is(err, store.ErrNotFound) || err == nil && !alive {
		return errTokenGoneBeforeLease
	}
	return err
}

var errTokenGoneBeforeLease = &apiError{status: http.StatusForbidden, msg: "the token was revoked or used up before its lease was written"}

// setPolicyList validates a list of policy names.
func validPolicyNames(field string, l []string) error {
	for _, p := range l {
		if !acl.ValidName(p) {
			return badRequest("%s: %q is not a policy name", field, p)
		}
	}
	return nil
}

func jsonSpec(v any) json.RawMessage {
	b, err := json.Marshal(v)
	if err != nil {
		panic(err)
	}
	return b
}
