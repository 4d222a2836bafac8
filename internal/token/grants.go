package token

import (
	"context"
	"crypto/sha256"
	"crypto/sha512"
	"crypto/subtle"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/go-jose/go-jose/v4/jwt"
)

// accessClaims are the claims of our access tokens (RFC 9068 §2.2) plus
// the roles/permissions/tenant policies match on, the mTLS binding
// (RFC 8705 §3.1) and the delegation chain (RFC 8693 §4.1).
type accessClaims struct {
	Issuer      string           `json:"iss"`
	Subject     string           `json:"sub"`
	Audience    jwt.Audience     `json:"aud"`
	Expiry      *jwt.NumericDate `json:"exp"`
	IssuedAt    *jwt.NumericDate `json:"iat"`
	NotBefore   *jwt.NumericDate `json:"nbf,omitempty"`
	ID          string           `json:"jti"`
	ClientID    string           `json:"client_id"`
	Scope       string           `json:"scope,omitempty"`
	AuthTime    int64            `json:"auth_time,omitempty"`
	Roles       []string         `json:"roles,omitempty"`
	Permissions []string         `json:"permissions,omitempty"`
	Tenant      string           `json:"tenant,omitempty"`
	Cnf         *confirmation    `json:"cnf,omitempty"`
	Act         *actor           `json:"act,omitempty"`
	MayAct      *actor           `json:"may_act,omitempty"`
}

type confirmation struct {
	X5tS256 string `json:"x5t#S256"`
}

// actor is an act / may_act claim: who acts, and on whose behalf they
// acted in turn.
type actor struct {
	Subject string `json:"sub"`
	Issuer  string `json:"iss,omitempty"`
	Act     *actor `json:"act,omitempty"`
}

func (a *actor) depth() int {
	n := 0
	for ; a != nil; a = a.Act {
		n++
	}
	return n
}

// maxActDepth bounds delegation chains.
const maxActDepth = 8

// idClaims are the claims of an OIDC ID token (OIDC Core §2).
type idClaims struct {
	Issuer            string           `json:"iss"`
	Subject           string           `json:"sub"`
	Audience          jwt.Audience     `json:"aud"`
	Expiry            *jwt.NumericDate `json:"exp"`
	IssuedAt          *jwt.NumericDate `json:"iat"`
	ID                string           `json:"jti"`
	AuthTime          int64            `json:"auth_time,omitempty"`
	Nonce             string           `json:"nonce,omitempty"`
	AtHash            string           `json:"at_hash,omitempty"`
	AMR               []string         `json:"amr,omitempty"`
	AZP               string           `json:"azp,omitempty"`
	PreferredUsername string           `json:"preferred_username,omitempty"`
	Email             string           `json:"email,omitempty"`
	Roles             []string         `json:"roles,omitempty"`
	Tenant            string           `json:"tenant,omitempty"`
}

// tokenResponse is the token endpoint's success answer (RFC 6749 §5.1,
// RFC 8693 §2.2.1).
type tokenResponse struct {
	AccessToken     string `json:"access_token"`
	IssuedTokenType string `json:"issued_token_type,omitempty"`
	TokenType       string `json:"token_type"`
	ExpiresIn       int64  `json:"expires_in"`
	RefreshToken    string `json:"refresh_token,omitempty"`
	IDToken         string `json:"id_token,omitempty"`
	Scope           string `json:"scope,omitempty"`
}

// issued describes a grant outcome for metrics and audit.
type issued struct {
	resp    *tokenResponse
	subject string
	jti     string
	details map[string]string
	// authorities: accessSpec.authorities of the access token.
	authorities []string
	expiry      time.Time
}

func (s *Service) newID() string { return base64.RawURLEncoding.EncodeToString(s.random(16)) }

// handleToken is the token endpoint (RFC 6749 §3.2).
func (s *Service) handleToken(w http.ResponseWriter, r *http.Request) {
	start := time.Now()
	ctx := r.Context()
	grant := ""
	var (
		out    *issued
		client *authedClient
		oe     *oauthError
	)
	p, oe := readForm(w, r)
	if oe == nil {
		grant = p.get("grant_type")
		switch grant {
		case "":
			oe = oerr(errInvalidRequest, "grant_type is required")
		case GrantClientCredentials, GrantAuthorizationCode, GrantRefreshToken, GrantTokenExchange:
			client, oe = s.authenticateClient(ctx, r, p)
			if oe == nil && !client.AllowsGrant(grant) {
				oe = oerr(errUnauthorizedClient, "this client may not use grant type %s", grant)
			}
		default:
			oe = oerr(errUnsupportedGrantType, "grant types: client_credentials, authorization_code, refresh_token, token exchange")
		}
	}
	// recorded: the outcome's audit record was written, in one
	// transaction with every change the grant made (a code consumed, a
	// refresh token rotated, token IDs recorded under the grant, a family
	// revoked on reuse). client_credentials changes nothing and is
	// recorded after it, with concurrent grants in one group commit.
	recorded := false
	if oe == nil {
		if grant == GrantClientCredentials {
			out, oe = s.clientCredentials(ctx, client, p)
		} else if _, err := s.keySetFor(ctx, s.now()); err != nil {
			// A signing key first, in its own transaction (keySetFor).
			oe = serverError(err)
		} else {
			err := s.atomically(ctx, func(ctx context.Context) error {
				switch grant {
				case GrantAuthorizationCode:
					out, oe = s.authorizationCode(ctx, client, p)
				case GrantRefreshToken:
					out, oe = s.refresh(ctx, client, p)
				case GrantTokenExchange:
					out, oe = s.exchange(ctx, client, p)
				}
				if oe != nil && oe.cause != nil {
					return errRollback // the server failed: keep nothing of it
				}
				return s.auditGrant(ctx, s.tokenEvent(r, grant, client, out, oe))
			})
			switch {
			case err == nil:
				recorded = true
			case errors.Is(err, errRollback):
			default:
				// The record or the commit failed: nothing the grant did
				// is kept, and no token leaves.
				s.log.Error("token: audit log or store unavailable; withholding the token", "grant", grantLabel(grant), "err", err)
				out, oe = nil, serverError(err)
			}
		}
	}
	if oe == nil && s.authorityRevoked(out.authorities) {
		// A CA authority the token relied on was revoked while it was
		// being issued (its JWT-SVID or client certificate verified just
		// before): the revocation's sweep may have run before the token
		// was recorded, so it is revoked here and not handed out.
		toks, err := s.cfg.Store.RevokeTokenID(ctx, out.jti, out.expiry, s.now())
		s.announce(ctx, toks)
		if err != nil {
			oe = serverError(err)
		} else {
			oe = oerr(errInvalidGrant, "a CA authority this token relied on was revoked: obtain a new SVID and try again")
		}
		out, recorded = nil, false
	}
	label := grantLabel(grant)
	if client != nil {
		allowCORS(w, r, client.Client)
	}
	s.metrics.duration.WithLabelValues(label).Observe(time.Since(start).Seconds())
	if oe != nil {
		s.metrics.failures.WithLabelValues(label, reasonLabel(oe.Code)).Inc()
		if oe.cause != nil {
			s.log.Error("token: token request failed", "grant", label, "err", oe.cause)
		}
		if !recorded {
			s.audit(ctx, s.tokenEvent(r, grant, client, nil, oe))
		}
		writeOAuthError(w, oe)
		return
	}
	if !recorded {
		if err := s.auditGrant(ctx, s.tokenEvent(r, grant, client, out, nil)); err != nil {
			// The token was signed but is not handed out.
			s.log.Error("token: audit log unavailable; withholding the token", "grant", label, "err", err)
			s.metrics.failures.WithLabelValues(label, errServerError).Inc()
			writeOAuthError(w, serverError(err))
			return
		}
	}
	s.metrics.issued.WithLabelValues(label).Inc()
	writeJSON(w, http.StatusOK, out.resp)
}

// errRollback ends an atomically block whose grant failed on the
// server's side, so that nothing it did is kept.
var errRollback = errors.New("token: rolled back")

// tokenEvent is the audit record of a token request's outcome: out, or
// the refusal oe.
func (s *Service) tokenEvent(r *http.Request, grant string, client *authedClient, out *issued, oe *oauthError) AuditEvent {
	label := grantLabel(grant)
	ev := AuditEvent{Type: "oauth.token.issued", Outcome: "success", Remote: r.RemoteAddr, Details: map[string]string{"grant_type": label}}
	if grant == GrantTokenExchange {
		ev.Type = "oauth.exchange"
	}
	if client != nil {
		ev.ClientID = client.ID
		ev.Details["client_auth"] = client.method
	}
	if oe != nil {
		ev.Type, ev.Outcome, ev.Reason = "oauth.token.failed", "failure", oe.Code
		if grant == GrantTokenExchange {
			ev.Type = "oauth.exchange.failed"
		}
		ev.Details["description"] = oe.Description
		return ev
	}
	ev.Subject = out.subject
	ev.Details["jti"] = out.jti
	ev.Details["scope"] = out.resp.Scope
	for k, v := range out.details {
		ev.Details[k] = v
	}
	return ev
}

// accessSpec is what goes into an access token.
type accessSpec struct {
	subject, clientID  string
	aud, scope         []string
	ttl                time.Duration
	roles, permissions []string
	tenant             string
	authTime           time.Time
	certThumbprint     string
	act, mayAct        *actor
	grantID            string // record the jti under this grant
	// authorities are the CA authorities the token's issuance relied on
	// (Store.RecordTokenAuthorities).
	authorities []string
}

func (s *Service) issueAccess(ctx context.Context, a accessSpec) (string, *accessClaims, error) {
	now := s.now()
	ttl := min(a.ttl, MaxAccessTokenTTL)
	if ttl <= 0 {
		ttl = s.cfg.AccessTokenTTL
	}
	c := &accessClaims{
		Issuer: s.cfg.Issuer, Subject: a.subject, Audience: jwt.Audience(a.aud),
		Expiry: jwt.NewNumericDate(now.Add(ttl)), IssuedAt: jwt.NewNumericDate(now), NotBefore: jwt.NewNumericDate(now),
		ID: s.newID(), ClientID: a.clientID, Scope: strings.Join(a.scope, " "),
		Roles: a.roles, Permissions: a.permissions, Tenant: a.tenant, Act: a.act, MayAct: a.mayAct,
	}
	if !a.authTime.IsZero() {
		c.AuthTime = a.authTime.Unix()
	}
	if a.certThumbprint != "" {
		c.Cnf = &confirmation{X5tS256: a.certThumbprint}
	}
	raw, _, err := s.sign(ctx, typAccess, c)
	if err != nil {
		return "", nil, err
	}
	if a.grantID != "" {
		if err := s.cfg.Store.RecordTokenID(ctx, a.grantID, c.ID, c.Expiry.Time()); err != nil {
			return "", nil, err
		}
	}
	if len(a.authorities) > 0 {
		if err := s.cfg.Store.RecordTokenAuthorities(ctx, c.ID, c.Expiry.Time(), a.authorities); err != nil {
			return "", nil, err
		}
	}
	return raw, c, nil
}

// resolveScope checks a requested scope against the allowed set; no
// request means everything allowed.
func resolveScope(requested string, allowed []string) ([]string, *oauthError) {
	want, err := parseScope(requested)
	if err != nil {
		return nil, oerr(errInvalidScope, "%v", err)
	}
	if want == nil {
		return allowed, nil
	}
	for _, sc := range want {
		if !contains(allowed, sc) {
			return nil, oerr(errInvalidScope, "scope %q is not allowed for this client", sc)
		}
	}
	return want, nil
}

// requestedAudiences collects audience and resource parameters (RFC 8693
// §2.1, RFC 8707 §2). A resource must be an absolute URI without
// fragment.
func requestedAudiences(p params) ([]string, *oauthError) {
	var out []string
	for _, a := range p.all("audience") {
		if len(a) > 512 {
			return nil, oerr(errInvalidTarget, "audience too long")
		}
		if !contains(out, a) {
			out = append(out, a)
		}
	}
	for _, r := range p.all("resource") {
		u, err := url.Parse(r)
		if err != nil || !u.IsAbs() || u.Fragment != "" || len(r) > 512 {
			return nil, oerr(errInvalidTarget, "resource must be an absolute URI without a fragment (RFC 8707)")
		}
		if !contains(out, r) {
			out = append(out, r)
		}
	}
	return out, nil
}

// defaultAudiences are a client's token audiences when it asks for none.
func defaultAudiences(c *Client) []string {
	if len(c.Audiences) > 0 {
		return c.Audiences
	}
	return []string{c.ID}
}

func resolveAudience(p params, c *Client) ([]string, *oauthError) {
	req, oe := requestedAudiences(p)
	if oe != nil {
		return nil, oe
	}
	if len(req) == 0 {
		return defaultAudiences(c), nil
	}
	allowed := defaultAudiences(c)
	for _, a := range req {
		if !contains(allowed, a) {
			return nil, oerr(errInvalidTarget, "audience %q is not allowed for this client", a)
		}
	}
	return req, nil
}

func (c *Client) accessTTL(def time.Duration) time.Duration {
	if c.AccessTokenTTL > 0 {
		return min(time.Duration(c.AccessTokenTTL), MaxAccessTokenTTL)
	}
	return def
}

// clientCredentials is RFC 6749 §4.4. A client that authenticated with
// its certificate gets a certificate-bound token (RFC 8705 §3).
func (s *Service) clientCredentials(ctx context.Context, c *authedClient, p params) (*issued, *oauthError) {
	if c.method == AuthNone {
		return nil, oerr(errUnauthorizedClient, "a public client cannot use client_credentials")
	}
	scope, oe := resolveScope(p.get("scope"), c.Scopes)
	if oe != nil {
		return nil, oe
	}
	aud, oe := resolveAudience(p, c.Client)
	if oe != nil {
		return nil, oe
	}
	raw, cl, err := s.issueAccess(ctx, accessSpec{
		subject: c.ID, clientID: c.ID, aud: aud, scope: scope, ttl: c.accessTTL(s.cfg.AccessTokenTTL),
		roles: c.Roles, permissions: c.Permissions, tenant: c.Tenant, certThumbprint: c.certThumbprint,
		authorities: c.authorities,
	})
	if err != nil {
		return nil, serverError(err)
	}
	return &issued{
		resp:    &tokenResponse{AccessToken: raw, TokenType: "Bearer", ExpiresIn: ttlSeconds(cl, s.now()), Scope: cl.Scope},
		subject: cl.Subject, jti: cl.ID, details: map[string]string{"audience": strings.Join(aud, " ")},
		authorities: c.authorities, expiry: cl.Expiry.Time(),
	}, nil
}

func ttlSeconds(c *accessClaims, now time.Time) int64 {
	return int64(c.Expiry.Time().Sub(now).Round(time.Second) / time.Second)
}

// hashSecret hashes a high-entropy bearer value (code, refresh token)
// for storage and lookup.
func hashSecret(v string) []byte {
	h := sha256.Sum256([]byte(v))
	return h[:]
}

// validVerifier checks an RFC 7636 §4.1 code_verifier: 43-128 unreserved
// characters.
func validVerifier(v string) bool {
	if len(v) < 43 || len(v) > 128 {
		return false
	}
	for i := 0; i < len(v); i++ {
		c := v[i]
		if !(c >= 'A' && c <= 'Z' || c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-' || c == '.' || c == '_' || c == '~') {
			return false
		}
	}
	return true
}

// s256 is the PKCE S256 transform.
func s256(verifier string) string {
	h := sha256.Sum256([]byte(verifier))
	return base64.RawURLEncoding.EncodeToString(h[:])
}

// authorizationCode is RFC 6749 §4.1.3 with PKCE (RFC 7636 §4.6).
func (s *Service) authorizationCode(ctx context.Context, c *authedClient, p params) (*issued, *oauthError) {
	code, redirect, verifier := p.get("code"), p.get("redirect_uri"), p.get("code_verifier")
	if code == "" || redirect == "" {
		return nil, oerr(errInvalidRequest, "code and redirect_uri are required")
	}
	if verifier == "" {
		return nil, oerr(errInvalidRequest, "code_verifier is required: PKCE is mandatory")
	}
	if !validVerifier(verifier) {
		return nil, oerr(errInvalidRequest, "code_verifier must be 43 to 128 unreserved characters (RFC 7636 §4.1)")
	}
	now := s.now()
	// The store consumes the code only if client, redirect_uri and
	// verifier all match: someone who intercepted a code (but not the
	// verifier) can neither burn it nor make the client's own redemption
	// look like reuse, which would revoke the client's tokens.
	ac, err := s.cfg.Store.ConsumeCode(ctx, hashSecret(code), CodeRedemption{ClientID: c.ID, RedirectURI: redirect, Challenge: s256(verifier)}, now)
	switch {
	case errors.Is(err, ErrNotFound):
		return nil, oerr(errInvalidGrant, "unknown or expired authorization code")
	case errors.Is(err, ErrMismatch):
		switch {
		case ac.ClientID != c.ID:
			return nil, oerr(errInvalidGrant, "authorization code was issued to another client")
		case redirect != ac.RedirectURI:
			return nil, oerr(errInvalidGrant, "redirect_uri does not match the authorization request")
		default:
			return nil, oerr(errInvalidGrant, "code_verifier does not match the code_challenge")
		}
	case errors.Is(err, ErrReused):
		// RFC 6749 §4.1.2: a code used twice revokes what it produced.
		toks, rerr := s.cfg.Store.RevokeGrant(ctx, ac.GrantID, now)
		if rerr != nil {
			return nil, serverError(rerr)
		}
		s.revoked(ctx, toks)
		if err := s.auditGrant(ctx, AuditEvent{Type: "oauth.code.reused", Outcome: "failure", ClientID: c.ID, Subject: ac.UserID, Reason: "code_reuse",
			Details: map[string]string{"grant": ac.GrantID, "revoked_tokens": itoa(len(toks))}}); err != nil {
			return nil, serverError(err)
		}
		return nil, oerr(errInvalidGrant, "authorization code used before; tokens issued from it are revoked")
	case err != nil:
		return nil, serverError(err)
	}
	// Defence in depth: the store compared these already.
	if ac.ClientID != c.ID || redirect != ac.RedirectURI || subtle.ConstantTimeCompare([]byte(s256(verifier)), []byte(ac.Challenge)) != 1 {
		return nil, oerr(errInvalidGrant, "authorization code does not match this request")
	}
	if !now.Before(ac.ExpiresAt) {
		return nil, oerr(errInvalidGrant, "authorization code expired")
	}
	// The login's grant, held until this transaction ends (after the code
	// row, the order RevokeUserGrants locks in): a password or MFA reset
	// or user deletion that ended the user's sessions first is seen here;
	// one that comes later waits and revokes what this adds.
	lg, err := s.cfg.Store.LockGrant(ctx, ac.GrantID)
	if errors.Is(err, ErrNotFound) {
		return nil, oerr(errInvalidGrant, "the login of this authorization code is gone")
	} else if err != nil {
		return nil, serverError(err)
	}
	if !lg.RevokedAt.IsZero() {
		return nil, oerr(errInvalidGrant, "the login of this authorization code was revoked")
	}
	u, err := s.cfg.Store.UserByID(ctx, ac.UserID)
	if errors.Is(err, ErrNotFound) {
		return nil, oerr(errInvalidGrant, "the user no longer exists")
	} else if err != nil {
		return nil, serverError(err)
	}
	g := &Grant{ID: ac.GrantID, ClientID: c.ID, UserID: u.ID, Scope: ac.Scope, AuthTime: ac.AuthTime, AMR: ac.AMR, ExpiresAt: lg.ExpiresAt}
	aud := ac.RequestedAuds
	if len(aud) == 0 {
		aud = defaultAudiences(c.Client)
	}
	return s.userTokens(ctx, c, u, g, aud, ac.Scope, ac.Nonce, true)
}

// userTokens issues the access token, refresh token (when the client may
// refresh) and ID token (for the openid scope) of a user grant.
func (s *Service) userTokens(ctx context.Context, c *authedClient, u *User, g *Grant, aud, scope []string, nonce string, withRefresh bool) (*issued, *oauthError) {
	now := s.now()
	raw, cl, err := s.issueAccess(ctx, accessSpec{
		subject: u.ID, clientID: c.ID, aud: aud, scope: scope, ttl: c.accessTTL(s.cfg.AccessTokenTTL),
		roles: u.Roles, permissions: u.Permissions, tenant: u.Tenant, authTime: g.AuthTime,
		certThumbprint: c.certThumbprint, grantID: g.ID, authorities: c.authorities,
	})
	if err != nil {
		return nil, serverError(err)
	}
	resp := &tokenResponse{AccessToken: raw, TokenType: "Bearer", ExpiresIn: ttlSeconds(cl, now), Scope: cl.Scope}
	if withRefresh && c.AllowsGrant(GrantRefreshToken) {
		rt := "mlr_" + base64.RawURLEncoding.EncodeToString(s.random(32))
		exp := now.Add(s.cfg.RefreshTokenTTL)
		if !g.ExpiresAt.IsZero() && g.ExpiresAt.Before(exp) {
			exp = g.ExpiresAt
		}
		if err := s.cfg.Store.AddRefreshToken(ctx, &RefreshToken{Hash: hashSecret(rt), GrantID: g.ID, ClientID: c.ID, CreatedAt: now, ExpiresAt: exp}); err != nil {
			return nil, serverError(err)
		}
		resp.RefreshToken = rt
	}
	if contains(scope, "openid") {
		idt := &idClaims{
			Issuer: s.cfg.Issuer, Subject: u.ID, Audience: jwt.Audience{c.ID},
			Expiry: jwt.NewNumericDate(now.Add(s.cfg.IDTokenTTL)), IssuedAt: jwt.NewNumericDate(now), ID: s.newID(),
			AuthTime: g.AuthTime.Unix(), Nonce: nonce, AtHash: atHash(raw, s.cfg.SigningAlg), AMR: g.AMR, AZP: c.ID,
			PreferredUsername: u.Name, Roles: u.Roles, Tenant: u.Tenant,
		}
		if contains(scope, "email") {
			idt.Email = u.Email
		}
		if resp.IDToken, _, err = s.sign(ctx, typID, idt); err != nil {
			return nil, serverError(err)
		}
		// An ID token is a signed JWT of this issuer too, and a sidecar
		// whose rule accepts the client's ID as audience (or names none)
		// takes it as a bearer token: ending the login must end it there
		// as it ends the access tokens, so its ID is recorded the same way.
		if err := s.cfg.Store.RecordTokenID(ctx, g.ID, idt.ID, idt.Expiry.Time()); err != nil {
			return nil, serverError(err)
		}
	}
	return &issued{resp: resp, subject: u.ID, jti: cl.ID, details: map[string]string{"grant": g.ID, "audience": strings.Join(aud, " ")},
		authorities: c.authorities, expiry: cl.Expiry.Time()}, nil
}

// atHash is OIDC Core §3.1.3.6: the left half of the hash of the access
// token, with the hash of the ID token's algorithm (SHA-256 for ES256 and
// RS256; SHA-512 for EdDSA with Ed25519, as OIDC's registry says).
func atHash(accessToken, alg string) string {
	if alg == "EdDSA" {
		h := sha512.Sum512([]byte(accessToken))
		return base64.RawURLEncoding.EncodeToString(h[:32])
	}
	h := sha256.Sum256([]byte(accessToken))
	return base64.RawURLEncoding.EncodeToString(h[:16])
}

// refresh is RFC 6749 §6 with rotation: every use returns a new refresh
// token and retires the old one; presenting a retired one is treated as
// theft and revokes the whole family (OAuth 2.0 Security BCP §4.14.2).
func (s *Service) refresh(ctx context.Context, c *authedClient, p params) (*issued, *oauthError) {
	raw := p.get("refresh_token")
	if raw == "" {
		return nil, oerr(errInvalidRequest, "refresh_token is required")
	}
	now := s.now()
	h := hashSecret(raw)
	rt, err := s.cfg.Store.RefreshToken(ctx, h)
	if errors.Is(err, ErrNotFound) {
		return nil, oerr(errInvalidGrant, "unknown or expired refresh token")
	} else if err != nil {
		return nil, serverError(err)
	}
	if rt.ClientID != c.ID {
		return nil, oerr(errInvalidGrant, "refresh token was issued to another client")
	}
	// The grant is held until this transaction ends, before the refresh
	// token's row is touched (the order RevokeGrant and RevokeUserGrants
	// lock in). A reset that ended the user's sessions before reads as
	// revoked here; one that comes later waits, then revokes the refresh
	// token and the access token ID this adds: a refresh racing a
	// password or MFA reset cannot carry the family past it.
	g, err := s.cfg.Store.LockGrant(ctx, rt.GrantID)
	if errors.Is(err, ErrNotFound) {
		return nil, oerr(errInvalidGrant, "the grant of this refresh token is gone")
	} else if err != nil {
		return nil, serverError(err)
	}
	reuse := func() (*issued, *oauthError) {
		toks, err := s.cfg.Store.RevokeGrant(ctx, rt.GrantID, now)
		if err != nil {
			return nil, serverError(err)
		}
		s.revoked(ctx, toks)
		if err := s.auditGrant(ctx, AuditEvent{Type: "oauth.refresh.reused", Outcome: "failure", ClientID: c.ID, Reason: "refresh_reuse",
			Details: map[string]string{"grant": rt.GrantID, "revoked_tokens": itoa(len(toks))}}); err != nil {
			return nil, serverError(err)
		}
		return nil, oerr(errInvalidGrant, "refresh token used before; its whole family is revoked")
	}
	// A login that was ended (revoked, a password or MFA reset) or ran
	// out refuses its tokens as such, before the reuse check: presenting
	// a token of a revoked family is not theft of a live one, and there
	// is nothing left to revoke.
	if !g.RevokedAt.IsZero() || !now.Before(g.ExpiresAt) {
		return nil, oerr(errInvalidGrant, "the grant of this refresh token is revoked or expired")
	}
	if !rt.UsedAt.IsZero() || !rt.RevokedAt.IsZero() {
		return reuse()
	}
	if !now.Before(rt.ExpiresAt) {
		return nil, oerr(errInvalidGrant, "refresh token expired")
	}
	scope, oe := resolveScope(p.get("scope"), g.Scope)
	if oe != nil {
		return nil, oe
	}
	u, err := s.cfg.Store.UserByID(ctx, g.UserID)
	if errors.Is(err, ErrNotFound) {
		return nil, oerr(errInvalidGrant, "the user no longer exists")
	} else if err != nil {
		return nil, serverError(err)
	}
	// Without audience/resource the login's audiences carry on; with them,
	// the client's allowed audiences bound the request as at login.
	aud := g.Audiences
	if len(p.all("audience")) > 0 || len(p.all("resource")) > 0 || len(aud) == 0 {
		if aud, oe = resolveAudience(p, c.Client); oe != nil {
			return nil, oe
		}
	}
	// Issue first with rotation deferred: build the next token, rotate
	// atomically, and only then return tokens.
	out, oe := s.userTokens(ctx, c, u, g, aud, scope, "", false)
	if oe != nil {
		return nil, oe
	}
	next := "mlr_" + base64.RawURLEncoding.EncodeToString(s.random(32))
	exp := min64time(now.Add(s.cfg.RefreshTokenTTL), g.ExpiresAt)
	err = s.cfg.Store.RotateRefreshToken(ctx, h, &RefreshToken{Hash: hashSecret(next), GrantID: g.ID, ClientID: c.ID, CreatedAt: now, ExpiresAt: exp}, now)
	if errors.Is(err, ErrReused) {
		// Lost a race with another use of the same token: that is reuse.
		return reuse()
	} else if err != nil {
		return nil, serverError(err)
	}
	out.resp.RefreshToken = next
	return out, nil
}

func min64time(a, b time.Time) time.Time {
	if b.Before(a) {
		return b
	}
	return a
}

func itoa(n int) string { return strconv.Itoa(n) }

// hexID is used where IDs appear in URLs.
func (s *Service) hexID() string { return hex.EncodeToString(s.random(16)) }
