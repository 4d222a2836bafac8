package token

import (
	"context"
	"errors"
	"net/http"
	"strings"
	"time"
)

// refreshPrefix marks our refresh tokens, so revocation and introspection
// know where to look without a hint.
const refreshPrefix = "mlr_"

// handleRevoke is RFC 7009. The client must authenticate; it may revoke
// only its own tokens. Unknown, expired and already revoked tokens get 200
// (§2.2), so the answer reveals nothing about a token.
func (s *Service) handleRevoke(w http.ResponseWriter, r *http.Request) {
	ctx := r.Context()
	p, oe := readForm(w, r)
	if oe != nil {
		writeOAuthError(w, oe)
		return
	}
	c, oe := s.authenticateClient(ctx, r, p)
	if oe != nil {
		s.audit(ctx, AuditEvent{Type: "oauth.revoke.failed", Outcome: "failure", Reason: oe.Code, Remote: r.RemoteAddr})
		writeOAuthError(w, oe)
		return
	}
	allowCORS(w, r, c.Client)
	raw := p.get("token")
	if raw == "" {
		writeOAuthError(w, oerr(errInvalidRequest, "token is required"))
		return
	}
	switch hint := p.get("token_type_hint"); hint {
	case "", "access_token", "refresh_token":
	default:
		writeOAuthError(w, oerr(errUnsupportedTokenType, "token_type_hint must be access_token or refresh_token"))
		return
	}
	if oe := s.revokeToken(ctx, raw, c.Client, r.RemoteAddr); oe != nil {
		writeOAuthError(w, oe)
		return
	}
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(http.StatusOK)
}

// revokeToken revokes raw. by is the client asking (nil: an admin, who may
// revoke any token). A refresh token revokes its whole grant: the family
// and every access token issued under it (RFC 7009 §2.1).
func (s *Service) revokeToken(ctx context.Context, raw string, by *Client, remote string) *oauthError {
	now := s.now()
	ev := AuditEvent{Type: "oauth.revoke", Outcome: "success", Remote: remote, Details: map[string]string{}}
	if by != nil {
		ev.ClientID = by.ID
	} else {
		ev.Details["by"] = "admin"
	}
	if strings.HasPrefix(raw, refreshPrefix) {
		rt, err := s.cfg.Store.RefreshToken(ctx, hashSecret(raw))
		if errors.Is(err, ErrNotFound) {
			return nil
		} else if err != nil {
			return serverError(err)
		}
		if by != nil && rt.ClientID != by.ID {
			return oerr(errUnauthorizedClient, "the token was issued to another client")
		}
		err = s.atomically(ctx, func(ctx context.Context) error {
			toks, err := s.cfg.Store.RevokeGrant(ctx, rt.GrantID, now)
			if err != nil {
				return err
			}
			s.revoked(ctx, toks)
			ev.Details["token_type"], ev.Details["grant"], ev.Details["revoked_tokens"] = "refresh_token", rt.GrantID, itoa(len(toks))
			return s.auditGrant(ctx, ev)
		})
		if err != nil {
			return serverError(err)
		}
		return nil
	}
	var cl accessClaims
	if err := s.verify(ctx, raw, typAccess, &cl); err != nil {
		if errors.Is(err, errBadToken) {
			return nil // unknown or expired: nothing to revoke
		}
		return serverError(err)
	}
	if by != nil && cl.ClientID != by.ID {
		return oerr(errUnauthorizedClient, "the token was issued to another client")
	}
	return s.revokeJTI(ctx, cl.ID, cl.Expiry.Time(), ev)
}

// revokeJTI lists jti as revoked, and every token exchanged from it
// (transitively), in one transaction with ev, its record.
func (s *Service) revokeJTI(ctx context.Context, jti string, exp time.Time, ev AuditEvent) *oauthError {
	err := s.atomically(ctx, func(ctx context.Context) error {
		toks, err := s.cfg.Store.RevokeTokenID(ctx, jti, exp, s.now())
		if err != nil {
			return err
		}
		s.revoked(ctx, toks)
		ev.Details["token_type"], ev.Details["jti"] = "access_token", jti
		// The token itself and every token exchanged from it.
		ev.Details["revoked_tokens"] = itoa(len(toks))
		return s.auditGrant(ctx, ev)
	})
	if err != nil {
		return serverError(err)
	}
	return nil
}

// introspection is an RFC 7662 §2.2 answer. Inactive tokens are exactly
// {"active": false}: nothing else is said about them.
type introspection struct {
	Active    bool          `json:"active"`
	Scope     string        `json:"scope,omitempty"`
	ClientID  string        `json:"client_id,omitempty"`
	Username  string        `json:"username,omitempty"`
	TokenType string        `json:"token_type,omitempty"`
	Exp       int64         `json:"exp,omitempty"`
	Iat       int64         `json:"iat,omitempty"`
	Nbf       int64         `json:"nbf,omitempty"`
	Sub       string        `json:"sub,omitempty"`
	Aud       []string      `json:"aud,omitempty"`
	Iss       string        `json:"iss,omitempty"`
	JTI       string        `json:"jti,omitempty"`
	Cnf       *confirmation `json:"cnf,omitempty"`
	Act       *actor        `json:"act,omitempty"`
	Roles     []string      `json:"roles,omitempty"`
	Perms     []string      `json:"permissions,omitempty"`
	Tenant    string        `json:"tenant,omitempty"`
}

// handleIntrospect is RFC 7662. Only authenticated confidential clients
// may introspect (§2.1, §4: unauthenticated introspection is a token
// scanning oracle). Refresh tokens are active only for the client that
// holds them.
func (s *Service) handleIntrospect(w http.ResponseWriter, r *http.Request) {
	ctx := r.Context()
	p, oe := readForm(w, r)
	if oe != nil {
		writeOAuthError(w, oe)
		return
	}
	c, oe := s.authenticateClient(ctx, r, p)
	if oe == nil && c.method == AuthNone {
		oe = oerr(errInvalidClient, "public clients may not introspect tokens")
	}
	if oe != nil {
		writeOAuthError(w, oe)
		return
	}
	raw := p.get("token")
	if raw == "" {
		writeOAuthError(w, oerr(errInvalidRequest, "token is required"))
		return
	}
	out, err := s.introspect(ctx, raw, c.Client)
	if err != nil {
		writeOAuthError(w, serverError(err))
		return
	}
	writeJSON(w, http.StatusOK, out)
}

// introspect describes raw. by nil means an admin.
func (s *Service) introspect(ctx context.Context, raw string, by *Client) (*introspection, error) {
	inactive := &introspection{Active: false}
	now := s.now()
	if strings.HasPrefix(raw, refreshPrefix) {
		rt, err := s.cfg.Store.RefreshToken(ctx, hashSecret(raw))
		if errors.Is(err, ErrNotFound) {
			return inactive, nil
		} else if err != nil {
			return nil, err
		}
		if (by != nil && rt.ClientID != by.ID) || !rt.UsedAt.IsZero() || !rt.RevokedAt.IsZero() || !now.Before(rt.ExpiresAt) {
			return inactive, nil
		}
		g, err := s.cfg.Store.Grant(ctx, rt.GrantID)
		if errors.Is(err, ErrNotFound) {
			return inactive, nil
		} else if err != nil {
			return nil, err
		}
		if !g.RevokedAt.IsZero() {
			return inactive, nil
		}
		return &introspection{Active: true, ClientID: rt.ClientID, Sub: g.UserID, Scope: strings.Join(g.Scope, " "),
			Exp: rt.ExpiresAt.Unix(), Iat: rt.CreatedAt.Unix(), Iss: s.cfg.Issuer, TokenType: "refresh_token"}, nil
	}
	cl, oe := s.validAccessToken(ctx, raw)
	if oe != nil {
		if oe.Code == errServerError {
			return nil, oe.cause
		}
		return inactive, nil
	}
	out := &introspection{
		Active: true, Scope: cl.Scope, ClientID: cl.ClientID, TokenType: "Bearer", Sub: cl.Subject, Aud: cl.Audience,
		Iss: cl.Issuer, JTI: cl.ID, Exp: cl.Expiry.Time().Unix(), Cnf: cl.Cnf, Act: cl.Act,
		Roles: cl.Roles, Perms: cl.Permissions, Tenant: cl.Tenant,
	}
	if cl.IssuedAt != nil {
		out.Iat = cl.IssuedAt.Time().Unix()
	}
	if cl.NotBefore != nil {
		out.Nbf = cl.NotBefore.Time().Unix()
	}
	if cl.AuthTime != 0 {
		if u, err := s.cfg.Store.UserByID(ctx, cl.Subject); err == nil {
			out.Username = u.Name
		}
	}
	return out, nil
}

// handleUserinfo is OIDC Core §5.3: the claims of the user an access
// token with the openid scope was issued for. A certificate-bound token
// is only accepted over a connection with the same certificate (RFC 8705
// §3).
func (s *Service) handleUserinfo(w http.ResponseWriter, r *http.Request) {
	ctx := r.Context()
	fail := func(code, desc string, status int) {
		w.Header().Set("WWW-Authenticate", `Bearer error="`+code+`", error_description="`+desc+`"`)
		writeJSON(w, status, &oauthError{Code: code, Description: desc})
	}
	auth := r.Header.Get("Authorization")
	scheme, raw, ok := strings.Cut(auth, " ")
	if !ok || !strings.EqualFold(scheme, "Bearer") || raw == "" {
		w.Header().Set("WWW-Authenticate", `Bearer realm="moatless"`)
		writeJSON(w, http.StatusUnauthorized, &oauthError{Code: errInvalidRequest, Description: "send the access token as Authorization: Bearer"})
		return
	}
	cl, oe := s.validAccessToken(ctx, raw)
	if oe != nil {
		if oe.Code == errServerError {
			writeOAuthError(w, oe)
			return
		}
		fail(errInvalidToken, "the access token is invalid, expired or revoked", http.StatusUnauthorized)
		return
	}
	if c, err := s.cfg.Store.Client(ctx, cl.ClientID); err == nil {
		allowCORS(w, r, c)
	}
	if cl.Cnf != nil {
		if _, thumb, ok := s.peerSPIFFEID(r); !ok || thumb != cl.Cnf.X5tS256 {
			fail(errInvalidToken, "the token is bound to a client certificate this connection did not present", http.StatusUnauthorized)
			return
		}
	}
	scope, _ := parseScope(cl.Scope)
	if !contains(scope, "openid") {
		fail("insufficient_scope", "the token lacks the openid scope", http.StatusForbidden)
		return
	}
	u, err := s.cfg.Store.UserByID(ctx, cl.Subject)
	if errors.Is(err, ErrNotFound) {
		fail(errInvalidToken, "the user no longer exists", http.StatusUnauthorized)
		return
	} else if err != nil {
		writeOAuthError(w, serverError(err))
		return
	}
	out := map[string]any{"sub": u.ID, "preferred_username": u.Name}
	if contains(scope, "email") && u.Email != "" {
		out["email"] = u.Email
	}
	if len(u.Roles) > 0 {
		out["roles"] = u.Roles
	}
	if u.Tenant != "" {
		out["tenant"] = u.Tenant
	}
	writeJSON(w, http.StatusOK, out)
}
