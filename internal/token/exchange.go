package token

import (
	"context"
	"errors"
	"slices"
	"strings"
	"time"

	"github.com/go-jose/go-jose/v4/jwt"
	"github.com/spiffe/go-spiffe/v2/svid/jwtsvid"
)

// Token type identifiers (RFC 8693 §3).
const (
	TokenTypeAccess = "urn:ietf:params:oauth:token-type:access_token"
	TokenTypeJWT    = "urn:ietf:params:oauth:token-type:jwt"
)

// exchangeSubject is a validated subject or actor token.
type exchangeSubject struct {
	subject     string
	issuer      string
	scope       []string
	aud         []string
	clientID    string
	roles       []string
	permissions []string
	tenant      string
	authTime    time.Time
	expiry      time.Time
	act         *actor
	mayAct      *actor
	svid        bool
	jti         string
	// authorities: the key ID of a JWT-SVID's signing CA key.
	authorities []string
}

// exchangeRequest is the parsed, syntactically checked form of a token
// exchange request (RFC 8693 §2.1).
type exchangeRequest struct {
	subjectToken, subjectType string
	actorToken, actorType     string
	requestedType             string
	audiences                 []string
	scope                     string
}

// parseExchange checks the request's shape. Errors are invalid_request
// or invalid_target as RFC 8693 §2.2.2 says.
func parseExchange(p params) (*exchangeRequest, *oauthError) {
	r := &exchangeRequest{
		subjectToken: p.get("subject_token"), subjectType: p.get("subject_token_type"),
		actorToken: p.get("actor_token"), actorType: p.get("actor_token_type"),
		requestedType: p.get("requested_token_type"), scope: p.get("scope"),
	}
	if r.subjectToken == "" || r.subjectType == "" {
		return nil, oerr(errInvalidRequest, "subject_token and subject_token_type are required")
	}
	if !supportedType(r.subjectType) {
		return nil, oerr(errInvalidRequest, "unsupported subject_token_type: use %s or %s", TokenTypeAccess, TokenTypeJWT)
	}
	if (r.actorToken == "") != (r.actorType == "") {
		return nil, oerr(errInvalidRequest, "actor_token and actor_token_type go together")
	}
	if r.actorType != "" && !supportedType(r.actorType) {
		return nil, oerr(errInvalidRequest, "unsupported actor_token_type")
	}
	if r.requestedType != "" && !supportedType(r.requestedType) {
		return nil, oerr(errInvalidRequest, "unsupported requested_token_type: this server issues %s", TokenTypeAccess)
	}
	var oe *oauthError
	if r.audiences, oe = requestedAudiences(p); oe != nil {
		return nil, oe
	}
	if len(r.audiences) == 0 {
		return nil, oerr(errInvalidRequest, "audience or resource is required: an exchanged token is for one service")
	}
	return r, nil
}

func supportedType(t string) bool { return t == TokenTypeAccess || t == TokenTypeJWT }

// exchange is RFC 8693 token exchange. The requesting client must hold
// the subject token (be its audience or its client) and may only ask for
// audiences in its ExchangeAudiences. The result names the subject token's
// subject, carries the delegation chain in act, lives ExchangeTTL (never
// beyond the subject token) and may only narrow the scope.
func (s *Service) exchange(ctx context.Context, c *authedClient, p params) (*issued, *oauthError) {
	if c.method == AuthNone {
		return nil, oerr(errUnauthorizedClient, "a public client cannot exchange tokens")
	}
	req, oe := parseExchange(p)
	if oe != nil {
		return nil, oe
	}
	for _, a := range req.audiences {
		if !contains(c.ExchangeAudiences, a) {
			return nil, oerr(errInvalidTarget, "this client may not obtain tokens for audience %q", a)
		}
	}
	subj, oe := s.exchangeToken(ctx, req.subjectToken, req.subjectType, "subject_token")
	if oe != nil {
		return nil, oe
	}
	// Only the holder may exchange: an SVID only by its owner, one of our
	// tokens only by a client it was issued to or for.
	if subj.svid {
		// A workload exchanges its own JWT-SVID, or one whose may_act
		// names it (the named workload delegated to it).
		own := c.SPIFFEID != "" && subj.subject == c.SPIFFEID
		if !own && (subj.mayAct == nil || c.SPIFFEID == "" || subj.mayAct.Subject != c.SPIFFEID) {
			return nil, oerr(errInvalidRequest, "a JWT-SVID may only be exchanged by the workload it names or one its may_act names")
		}
	} else if subj.clientID != c.ID && !contains(subj.aud, c.ID) && (c.SPIFFEID == "" || !contains(subj.aud, c.SPIFFEID)) {
		return nil, oerr(errInvalidRequest, "the subject_token was not issued to or for this client")
	}
	actorID := c.actorID()
	authorities := append(slices.Clone(subj.authorities), c.authorities...)
	if req.actorToken != "" {
		act, oe := s.exchangeToken(ctx, req.actorToken, req.actorType, "actor_token")
		if oe != nil {
			return nil, oe
		}
		if act.subject != c.ID && act.subject != c.SPIFFEID {
			return nil, oerr(errInvalidRequest, "the actor_token must name the requesting client")
		}
		actorID = act.subject
		authorities = append(authorities, act.authorities...)
	}
	// may_act (RFC 8693 §4.4): the subject said who may act for it.
	if subj.mayAct != nil && actorID != subj.subject && subj.mayAct.Subject != actorID && subj.mayAct.Subject != c.ID {
		return nil, oerr(errInvalidRequest, "the subject_token's may_act does not name this client")
	}
	var act *actor
	if actorID != subj.subject {
		act = &actor{Subject: actorID, Act: subj.act}
		if act.depth() > maxActDepth {
			return nil, oerr(errInvalidRequest, "delegation chain longer than %d", maxActDepth)
		}
	}
	allowed := subj.scope
	if subj.svid {
		allowed = c.Scopes
	}
	scope, oe := resolveScope(req.scope, allowed)
	if oe != nil {
		return nil, oe
	}
	roles, perms, tenant := subj.roles, subj.permissions, subj.tenant
	if subj.svid {
		roles, perms, tenant = c.Roles, c.Permissions, c.Tenant
	}
	now := s.now()
	ttl := s.cfg.ExchangeTTL
	if left := subj.expiry.Sub(now); left < ttl {
		ttl = left
	}
	if ttl < time.Second {
		return nil, oerr(errInvalidRequest, "the subject_token expires now")
	}
	// A token exchanged from a user's token joins that login's grant, so
	// revoking the login (its refresh family, a reused code) revokes the
	// delegated tokens too.
	var grantID string
	if subj.jti != "" {
		g, err := s.cfg.Store.TokenGrant(ctx, subj.jti)
		switch {
		case err == nil:
			grantID = g
		case !errors.Is(err, ErrNotFound):
			return nil, serverError(err)
		}
	}
	if grantID != "" {
		// Held until the new token ID is recorded under it: a revocation
		// of the login committed before (refused here) or revokes it.
		g, err := s.cfg.Store.LockGrant(ctx, grantID)
		if err != nil && !errors.Is(err, ErrNotFound) {
			return nil, serverError(err)
		}
		if err != nil || !g.RevokedAt.IsZero() {
			return nil, oerr(errInvalidRequest, "subject_token: its login was revoked")
		}
	}
	raw, cl, err := s.issueAccess(ctx, accessSpec{
		subject: subj.subject, clientID: c.ID, aud: req.audiences, scope: scope, ttl: ttl,
		roles: roles, permissions: perms, tenant: tenant, authTime: subj.authTime,
		certThumbprint: c.certThumbprint, act: act, grantID: grantID, authorities: authorities,
	})
	if err != nil {
		return nil, serverError(err)
	}
	if !subj.svid {
		// Revoking the subject token revokes this one (and what is
		// exchanged from it in turn), grant or no grant.
		err := s.cfg.Store.RecordExchange(ctx, subj.jti, subj.expiry, cl.ID, cl.Expiry.Time(), maxExchangeTree)
		switch {
		case errors.Is(err, ErrRevoked):
			return nil, oerr(errInvalidRequest, "subject_token is invalid, expired or revoked")
		case errors.Is(err, ErrTooManyExchanges):
			return nil, oerr(errInvalidRequest, "subject_token: %d tokens were exchanged from it, or from the token it was exchanged from, already; use a fresh token", maxExchangeTree)
		case err != nil:
			return nil, serverError(err)
		}
	}
	issuedType := TokenTypeAccess
	if req.requestedType == TokenTypeJWT {
		issuedType = TokenTypeJWT
	}
	det := map[string]string{"audience": strings.Join(req.audiences, " "), "subject_token_type": req.subjectType, "actor": actorID}
	return &issued{
		resp: &tokenResponse{AccessToken: raw, IssuedTokenType: issuedType, TokenType: "Bearer",
			ExpiresIn: ttlSeconds(cl, now), Scope: cl.Scope},
		subject: cl.Subject, jti: cl.ID, details: det, authorities: authorities, expiry: cl.Expiry.Time(),
	}, nil
}

// maxExchangeTree bounds the tokens exchanged from one token and from
// those, transitively, during its life: revoking it revokes all of them
// in one transaction and sends each to every sidecar (a var for tests).
var maxExchangeTree = 1000

// exchangeToken validates a subject or actor token: one of our access
// tokens (not revoked), or for the jwt type a JWT-SVID whose audience is
// this issuer, validated against the SPIFFE trust bundle. Any failure is
// invalid_request (RFC 8693 §2.2.2).
func (s *Service) exchangeToken(ctx context.Context, raw, typ, what string) (*exchangeSubject, *oauthError) {
	if len(raw) > maxTokenLen {
		return nil, oerr(errInvalidRequest, "%s too long", what)
	}
	var peek jwt.Claims
	tok, err := jwt.ParseSigned(raw, signingAlgs)
	if err == nil {
		err = tok.UnsafeClaimsWithoutVerification(&peek)
	}
	if err != nil {
		return nil, oerr(errInvalidRequest, "%s is not a JWT", what)
	}
	if peek.Issuer == s.cfg.Issuer {
		cl, oe := s.validAccessToken(ctx, raw)
		if oe != nil {
			return nil, oerr(errInvalidRequest, "%s is invalid, expired or revoked", what)
		}
		out := &exchangeSubject{
			subject: cl.Subject, issuer: cl.Issuer, aud: cl.Audience, clientID: cl.ClientID,
			roles: cl.Roles, permissions: cl.Permissions, tenant: cl.Tenant,
			expiry: cl.Expiry.Time(), act: cl.Act, mayAct: cl.MayAct, jti: cl.ID,
		}
		out.scope, _ = parseScope(cl.Scope)
		if cl.AuthTime != 0 {
			out.authTime = time.Unix(cl.AuthTime, 0)
		}
		return out, nil
	}
	if typ != TokenTypeJWT {
		return nil, oerr(errInvalidRequest, "%s is not an access token of this issuer", what)
	}
	if s.cfg.JWTBundles == nil {
		return nil, oerr(errInvalidRequest, "%s: JWT-SVIDs are not accepted by this server", what)
	}
	sv, err := jwtsvid.ParseAndValidate(raw, s.cfg.JWTBundles, []string{s.cfg.Issuer})
	if err != nil {
		s.log.Debug("token: JWT-SVID refused", "what", what, "err", err)
		return nil, oerr(errInvalidRequest, "%s is not a valid JWT-SVID for audience %s", what, s.cfg.Issuer)
	}
	if s.cfg.RevokedID != nil && s.cfg.RevokedID(sv.ID.String()) {
		return nil, oerr(errInvalidRequest, "%s is a JWT-SVID of a revoked SPIFFE ID", what)
	}
	out := &exchangeSubject{subject: sv.ID.String(), issuer: sv.ID.TrustDomain().IDString(), aud: sv.Audience, expiry: sv.Expiry, svid: true}
	// The key that signed it (jwtsvid found it by this kid): revoking
	// that CA key revokes what is issued from the SVID.
	if kid := tok.Headers[0].KeyID; kid != "" && len(kid) <= 256 {
		out.authorities = []string{kid}
	}
	if m, ok := sv.Claims["may_act"].(map[string]any); ok {
		if sub, ok := m["sub"].(string); ok && sub != "" {
			out.mayAct = &actor{Subject: sub}
		}
	}
	return out, nil
}

// validAccessToken verifies one of our access tokens and checks that it
// is not revoked.
func (s *Service) validAccessToken(ctx context.Context, raw string) (*accessClaims, *oauthError) {
	var cl accessClaims
	if err := s.verify(ctx, raw, typAccess, &cl); err != nil {
		if errors.Is(err, errBadToken) {
			return nil, oerr(errInvalidToken, "invalid or expired token")
		}
		return nil, serverError(err)
	}
	revoked, err := s.cfg.Store.TokenIDRevoked(ctx, cl.ID)
	if err != nil {
		return nil, serverError(err)
	}
	if revoked {
		return nil, oerr(errInvalidToken, "token revoked")
	}
	if revoked, err := s.identityRevoked(ctx, &cl); err != nil {
		return nil, serverError(err)
	} else if revoked {
		return nil, oerr(errInvalidToken, "token of a revoked identity")
	}
	return &cl, nil
}

// identityRevoked reports whether cl was issued to or for a revoked
// SPIFFE ID (Config.RevokedID): its sub, client_id, an act actor, or the
// SPIFFE ID of the tls_client_auth client a certificate-bound token went
// to (whose sub and client_id are the client's name), or that an
// exchanged token's sub names.
func (s *Service) identityRevoked(ctx context.Context, cl *accessClaims) (bool, error) {
	f := s.cfg.RevokedID
	if f == nil {
		return false, nil
	}
	if f(cl.Subject) || f(cl.ClientID) {
		return true, nil
	}
	for a := cl.Act; a != nil; a = a.Act {
		if f(a.Subject) {
			return true, nil
		}
	}
	// The clients that may stand for a workload: the one a certificate-
	// bound token went to, and the subject of an exchanged token (the
	// client a client_credentials token was issued to keeps being its
	// sub down the exchange chain). Other tokens cost no store read.
	var names []string
	if cl.Cnf != nil && cl.ClientID != "" {
		names = append(names, cl.ClientID)
	}
	if cl.Act != nil && cl.Subject != "" && cl.Subject != cl.ClientID {
		names = append(names, cl.Subject)
	}
	for _, name := range names {
		c, err := s.cfg.Store.Client(ctx, name)
		if errors.Is(err, ErrNotFound) {
			continue
		} else if err != nil {
			return false, err
		}
		if c.SPIFFEID != "" && f(c.SPIFFEID) {
			return true, nil
		}
	}
	return false, nil
}
