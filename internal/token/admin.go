package token

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"regexp"
	"strings"
	"sync"
	"time"

	"github.com/go-jose/go-jose/v4"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// The admin API lives under AdminPathPrefix. The server mounts
// AdminHandler behind its admin authentication (admin token or admin
// client certificate); this package does no admin authentication itself.
// Bodies are JSON objects decoded strictly (unknown fields are errors);
// errors are {"errors": ["..."]} with 400, 404 or 409.
//
//	GET    clients                      list clients
//	POST   clients                      create (answer holds client_secret, shown once)
//	GET    clients/{id}                 show
//	DELETE clients/{id}                 delete
//	POST   clients/{id}/rotate-secret   new secret (shown once); the old one stops working,
//	                                    or after {"grace": "1h"} (at most 7 days)
//	GET    users                        list users
//	POST   users                        create
//	GET    users/{name}                 show
//	DELETE users/{name}                 delete (ends the user's sessions first)
//	POST   users/{name}/password        set password {"password": …}; ends the user's sessions
//	POST   users/{name}/mfa             start TOTP enrolment → otpauth URI, key, QR PNG
//	POST   users/{name}/mfa/confirm     {"code": …} → recovery codes (shown once)
//	DELETE users/{name}/mfa             reset MFA (key and recovery codes); ends the user's sessions
//	POST   tokens/revoke                {"token": …} or {"jti": …, "expires_at": …}
//	POST   tokens/introspect            {"token": …}
//	GET    tokens/revoked               revoked access token IDs
//	GET    keys                         signing keys (public data only)
//	POST   keys/rotate                  emergency rotation: a new key signs from now on
//	POST   keys/{kid}/revoke            remove a (leaked) key that no longer signs: it
//	                                    leaves the JWKS and its tokens stop verifying
func (s *Service) AdminHandler() http.Handler { return s.admin }

func (s *Service) adminRoutes() http.Handler {
	mux := http.NewServeMux()
	p := strings.TrimSuffix(AdminPathPrefix, "/")
	mux.HandleFunc("GET "+p+"/clients", s.adminListClients)
	mux.HandleFunc("POST "+p+"/clients", s.adminCreateClient)
	mux.HandleFunc("GET "+p+"/clients/{id}", s.adminGetClient)
	mux.HandleFunc("DELETE "+p+"/clients/{id}", s.adminDeleteClient)
	mux.HandleFunc("POST "+p+"/clients/{id}/rotate-secret", s.adminRotateSecret)
	mux.HandleFunc("GET "+p+"/users", s.adminListUsers)
	mux.HandleFunc("POST "+p+"/users", s.adminCreateUser)
	mux.HandleFunc("GET "+p+"/users/{name}", s.adminGetUser)
	mux.HandleFunc("DELETE "+p+"/users/{name}", s.adminDeleteUser)
	mux.HandleFunc("POST "+p+"/users/{name}/password", s.adminSetPassword)
	mux.HandleFunc("POST "+p+"/users/{name}/mfa", s.adminStartMFA)
	mux.HandleFunc("POST "+p+"/users/{name}/mfa/confirm", s.adminConfirmMFA)
	mux.HandleFunc("DELETE "+p+"/users/{name}/mfa", s.adminResetMFA)
	mux.HandleFunc("POST "+p+"/tokens/revoke", s.adminRevoke)
	mux.HandleFunc("POST "+p+"/tokens/introspect", s.adminIntrospect)
	mux.HandleFunc("GET "+p+"/tokens/revoked", s.adminRevokedList)
	mux.HandleFunc("GET "+p+"/keys", s.adminKeys)
	mux.HandleFunc("POST "+p+"/keys/rotate", s.adminRotateKeys)
	mux.HandleFunc("POST "+p+"/keys/{kid}/revoke", s.adminRevokeKey)
	mux.HandleFunc(p+"/", func(w http.ResponseWriter, r *http.Request) {
		adminError(w, http.StatusNotFound, "no such admin endpoint: %s %s", r.Method, r.URL.Path)
	})
	return s.guardAdmin(mux)
}

func (s *Service) guardAdmin(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if s.closed.Load() {
			adminError(w, http.StatusServiceUnavailable, "the token service is shutting down")
			return
		}
		w.Header().Set("Cache-Control", "no-store")
		next.ServeHTTP(w, r)
	})
}

// maxAdminBody bounds admin request bodies.
const maxAdminBody = 256 << 10

func adminError(w http.ResponseWriter, status int, format string, args ...any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	json.NewEncoder(w).Encode(map[string][]string{"errors": {fmt.Sprintf(format, args...)}})
}

func adminJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(status)
	json.NewEncoder(w).Encode(v)
}

// decodeAdmin decodes exactly one JSON object into v, strictly.
func decodeAdmin(w http.ResponseWriter, r *http.Request, v any) bool {
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, maxAdminBody))
	if err != nil {
		adminError(w, http.StatusRequestEntityTooLarge, "request body larger than %d bytes", maxAdminBody)
		return false
	}
	if err := decodeStrictJSON(body, v); err != nil {
		adminError(w, http.StatusBadRequest, "%v", err)
		return false
	}
	return true
}

func decodeStrictJSON(body []byte, v any) error {
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return fmt.Errorf("bad JSON body: %w", err)
	}
	if dec.More() {
		return errors.New("bad JSON body: more than one value")
	}
	if _, err := dec.Token(); err != io.EOF {
		return errors.New("bad JSON body: trailing data")
	}
	return nil
}

// storeError maps store errors to admin answers.
func (s *Service) storeError(w http.ResponseWriter, what string, err error) {
	switch {
	case errors.Is(err, ErrNotFound):
		adminError(w, http.StatusNotFound, "%s not found", what)
	case errors.Is(err, ErrConflict):
		adminError(w, http.StatusConflict, "%s already exists (name, ID or SPIFFE ID taken)", what)
	default:
		s.log.Error("token: admin", "what", what, "err", err)
		adminError(w, http.StatusInternalServerError, "the server could not complete the request")
	}
}

// createError answers a failed CreateClient or CreateUser: 400 with the
// message after the ErrInvalid prefix for a request the admin must correct,
// anything else as storeError does (404, 409, or a logged 500 that says
// nothing of the cause).
func (s *Service) createError(w http.ResponseWriter, what string, err error) {
	if errors.Is(err, ErrInvalid) {
		adminError(w, http.StatusBadRequest, "%s", strings.TrimPrefix(err.Error(), ErrInvalid.Error()+": "))
		return
	}
	s.storeError(w, what, err)
}

// adminList answers a list endpoint with {key: list}, an empty list as []
// (never null, so clients can range over it), or a failed read as
// storeError does for what.
func adminList[T any](s *Service, w http.ResponseWriter, what, key string, list []T, err error) {
	if err != nil {
		s.storeError(w, what, err)
		return
	}
	if list == nil {
		list = []T{}
	}
	adminJSON(w, http.StatusOK, map[string]any{key: list})
}

// Compiled on first use, not at start: a bounded repetition such as {0,61}
// compiles to tens of KB, and every role of the one binary (the sidecar
// too) would otherwise allocate and keep it.
var nameRE = sync.OnceValue(func() *regexp.Regexp { return regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._@+-]{0,127}$`) })

// ClientRequest is the body of POST clients.
type ClientRequest struct {
	ID   string `json:"client_id,omitempty"` // default: the name
	Name string `json:"name"`
	ClientSpec
}

// ClientAnswer is a client as the admin API shows it; Secret is set only
// in the answers to create and rotate-secret.
type ClientAnswer struct {
	*Client
	Secret string `json:"client_secret,omitempty"`
}

// validateClient checks a client registration and fills in defaults.
func validateClient(c *ClientRequest) error {
	if !nameRE().MatchString(c.Name) {
		return errors.New("name must be 1-128 characters of letters, digits and . _ @ + -, starting with a letter or digit")
	}
	if c.ID == "" {
		c.ID = c.Name
	}
	if !nameRE().MatchString(c.ID) {
		return errors.New("client_id must be 1-128 characters of letters, digits and . _ @ + -")
	}
	// A client's tokens carry its ID as sub, a user's their user ID: a
	// client named like a user would get tokens that policies and
	// userinfo take for that user's (RFC 9700 §4.15).
	if strings.HasPrefix(c.ID, userIDPrefix) {
		return fmt.Errorf("client_id may not begin with %q: user IDs do, and tokens name both in sub", userIDPrefix)
	}
	if len(c.GrantTypes) == 0 {
		return errors.New("grant_types: give at least one (client_credentials, authorization_code, refresh_token, " + GrantTokenExchange + ")")
	}
	for _, g := range c.GrantTypes {
		switch g {
		case GrantClientCredentials, GrantAuthorizationCode, GrantRefreshToken, GrantTokenExchange:
		case "token_exchange", "token-exchange":
			return fmt.Errorf("grant type %q: write %s", g, GrantTokenExchange)
		default:
			return fmt.Errorf("unknown grant type %q", g)
		}
	}
	if c.AuthMethod == "" {
		switch {
		case c.SPIFFEID != "":
			c.AuthMethod = AuthTLSClient
		case len(c.JWKS) > 0:
			c.AuthMethod = AuthPrivateKeyJWT
		default:
			c.AuthMethod = AuthSecretBasic
		}
	}
	switch c.AuthMethod {
	case AuthSecretBasic, AuthSecretPost, AuthNone:
	case AuthPrivateKeyJWT:
		var set jose.JSONWebKeySet
		if err := json.Unmarshal(c.JWKS, &set); err != nil || len(set.Keys) == 0 {
			return errors.New("private_key_jwt needs jwks: a JWK Set with the client's public keys")
		}
		for _, k := range set.Keys {
			if !k.IsPublic() || !k.Valid() {
				return errors.New("jwks must hold valid public keys only (never send a private key)")
			}
		}
	case AuthTLSClient:
		if _, err := spiffeid.FromString(c.SPIFFEID); err != nil {
			return fmt.Errorf("tls_client_auth needs spiffe_id, a valid SPIFFE ID: %v", err)
		}
	default:
		return fmt.Errorf("unknown token_endpoint_auth_method %q", c.AuthMethod)
	}
	if c.SPIFFEID != "" && c.AuthMethod != AuthTLSClient {
		return errors.New("spiffe_id is for tls_client_auth clients")
	}
	if len(c.JWKS) > 0 && c.AuthMethod != AuthPrivateKeyJWT {
		return errors.New("jwks is for private_key_jwt clients")
	}
	if c.AuthMethod == AuthNone && (c.AllowsGrant(GrantClientCredentials) || c.AllowsGrant(GrantTokenExchange)) {
		return errors.New("a public client (auth method none) may only use authorization_code and refresh_token")
	}
	if c.AllowsGrant(GrantAuthorizationCode) && len(c.RedirectURIs) == 0 {
		return errors.New("authorization_code needs at least one redirect_uri")
	}
	for _, u := range c.RedirectURIs {
		if err := validRedirectURI(u); err != nil {
			return err
		}
	}
	for _, o := range c.CORSOrigins {
		if err := validOrigin(o); err != nil {
			return err
		}
	}
	if _, err := parseScope(strings.Join(c.Scopes, " ")); err != nil {
		return fmt.Errorf("scopes: %v", err)
	}
	for _, list := range [][]string{c.Audiences, c.ExchangeAudiences} {
		for _, a := range list {
			if a == "" || a == "*" || len(a) > 512 || strings.ContainsAny(a, " \t\r\n") {
				return fmt.Errorf("audience %q: name each audience; no wildcards, spaces or empty names", a)
			}
		}
	}
	if len(c.ExchangeAudiences) > 0 && !c.AllowsGrant(GrantTokenExchange) {
		return errors.New("exchange_audiences needs the token exchange grant type")
	}
	if c.AccessTokenTTL < 0 || time.Duration(c.AccessTokenTTL) > MaxAccessTokenTTL {
		return fmt.Errorf("access_token_ttl must be at most %v", MaxAccessTokenTTL)
	}
	return nil
}

// validRedirectURI accepts absolute https URIs, http only on loopback
// (RFC 8252 §7.3), and private-use schemes for native apps (§7.1); never
// a fragment.
func validRedirectURI(raw string) error {
	u, err := url.Parse(raw)
	if err != nil || !u.IsAbs() || u.Fragment != "" || strings.Contains(raw, "#") || len(raw) > 2048 {
		return fmt.Errorf("redirect_uri %q must be an absolute URI without a fragment", raw)
	}
	switch u.Scheme {
	case "https":
		if u.Host == "" {
			return fmt.Errorf("redirect_uri %q has no host", raw)
		}
	case "http":
		if h := u.Hostname(); h != "127.0.0.1" && h != "::1" && h != "localhost" {
			return fmt.Errorf("redirect_uri %q: plain http only for loopback (RFC 8252)", raw)
		}
	case "javascript", "data", "file", "vbscript":
		return fmt.Errorf("redirect_uri %q: scheme not allowed", raw)
	default:
		if !strings.Contains(u.Scheme, ".") {
			return fmt.Errorf("redirect_uri %q: private-use schemes must be reverse domain names (RFC 8252 §7.1)", raw)
		}
	}
	return nil
}

// validOrigin accepts a browser origin exactly as browsers send it:
// scheme://host[:port], https (http only on loopback), nothing else.
func validOrigin(o string) error {
	u, err := url.Parse(o)
	bad := fmt.Errorf("cors_origins %q: want an origin like https://app.example.com (scheme, host and port only)", o)
	if err != nil || u.Host == "" || u.Path != "" || u.RawQuery != "" || u.Fragment != "" || u.User != nil || strings.HasSuffix(o, "/") {
		return bad
	}
	switch u.Scheme {
	case "https":
	case "http":
		if h := u.Hostname(); h != "127.0.0.1" && h != "::1" && h != "localhost" {
			return fmt.Errorf("cors_origins %q: plain http only for loopback", o)
		}
	default:
		return bad
	}
	return nil
}

func (s *Service) newClientSecret() string {
	return "mls_" + base64.RawURLEncoding.EncodeToString(s.random(32))
}

// CreateClient registers a client and returns it with its secret (empty
// for clients that use none). Errors wrapping ErrInvalid describe a bad
// registration; ErrConflict a taken ID, name or SPIFFE ID.
func (s *Service) CreateClient(ctx context.Context, req ClientRequest) (*ClientAnswer, error) {
	if err := validateClient(&req); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrInvalid, err)
	}
	now := s.now()
	c := &Client{ID: req.ID, Name: req.Name, CreatedAt: now, UpdatedAt: now, ClientSpec: req.ClientSpec}
	var secret string
	if c.AuthMethod == AuthSecretBasic || c.AuthMethod == AuthSecretPost {
		secret = s.newClientSecret()
		c.SecretHash = clientSecretHash(secret)
	}
	err := s.atomically(ctx, func(ctx context.Context) error {
		if err := s.cfg.Store.CreateClient(ctx, c); err != nil {
			return err
		}
		return s.auditGrant(ctx, AuditEvent{Type: "oauth.client.created", Outcome: "success", Subject: c.ID,
			Details: map[string]string{"auth_method": c.AuthMethod, "grant_types": strings.Join(c.GrantTypes, " ")}})
	})
	if err != nil {
		return nil, err
	}
	return &ClientAnswer{Client: c, Secret: secret}, nil
}

// ErrInvalid marks a request an admin must correct.
var ErrInvalid = errors.New("token: invalid request")

func (s *Service) adminCreateClient(w http.ResponseWriter, r *http.Request) {
	var req ClientRequest
	if !decodeAdmin(w, r, &req) {
		return
	}
	ans, err := s.CreateClient(r.Context(), req)
	if err != nil {
		s.createError(w, "client", err)
		return
	}
	adminJSON(w, http.StatusCreated, ans)
}

func (s *Service) adminListClients(w http.ResponseWriter, r *http.Request) {
	cs, err := s.cfg.Store.Clients(r.Context())
	adminList(s, w, "clients", "clients", cs, err)
}

func (s *Service) adminGetClient(w http.ResponseWriter, r *http.Request) {
	c, err := s.cfg.Store.Client(r.Context(), r.PathValue("id"))
	if err != nil {
		s.storeError(w, "client", err)
		return
	}
	adminJSON(w, http.StatusOK, &ClientAnswer{Client: c})
}

// adminDeleteClient deletes a client and ends every session it was given,
// in one transaction with the record. Client IDs are names an admin
// chooses: a client created again under the same ID (with fewer scopes, or
// as a public client) must not inherit the old one's refresh families and
// codes, which carry the old grant's scopes.
func (s *Service) adminDeleteClient(w http.ResponseWriter, r *http.Request) {
	id := r.PathValue("id")
	err := s.atomically(r.Context(), func(ctx context.Context) error {
		if err := s.cfg.Store.DeleteClient(ctx, id); err != nil {
			return err
		}
		grants, toks, err := s.cfg.Store.RevokeClientGrants(ctx, id, s.now())
		if err != nil {
			return err
		}
		s.revoked(ctx, toks)
		return s.auditGrant(ctx, AuditEvent{Type: "oauth.client.deleted", Outcome: "success", Subject: id,
			Details: map[string]string{"grants": itoa(grants), "revoked_tokens": itoa(len(toks))}})
	})
	if err != nil {
		s.storeError(w, "client", err)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

// MaxSecretGrace bounds how long a rotated-out secret stays valid.
const MaxSecretGrace = 7 * 24 * time.Hour

func (s *Service) adminRotateSecret(w http.ResponseWriter, r *http.Request) {
	ctx := r.Context()
	var req struct {
		// Grace keeps the old secret valid this long (default 0: it stops
		// working at once), so clients can be updated without downtime.
		Grace Duration `json:"grace,omitempty"`
	}
	if !decodeAdminOptional(w, r, &req) {
		return
	}
	if req.Grace < 0 || time.Duration(req.Grace) > MaxSecretGrace {
		adminError(w, http.StatusBadRequest, "grace must be between 0 and %v", MaxSecretGrace)
		return
	}
	c, err := s.cfg.Store.Client(ctx, r.PathValue("id"))
	if err != nil {
		s.storeError(w, "client", err)
		return
	}
	if c.AuthMethod != AuthSecretBasic && c.AuthMethod != AuthSecretPost {
		adminError(w, http.StatusBadRequest, "client %s authenticates with %s, not a secret", c.ID, c.AuthMethod)
		return
	}
	secret := s.newClientSecret()
	var until time.Time
	if req.Grace > 0 {
		until = s.now().Add(time.Duration(req.Grace))
	}
	err = s.atomically(ctx, func(ctx context.Context) error {
		if err := s.cfg.Store.SetClientSecret(ctx, c.ID, clientSecretHash(secret), until, s.now()); err != nil {
			return err
		}
		return s.auditGrant(ctx, AuditEvent{Type: "oauth.client.secret_rotated", Outcome: "success", Subject: c.ID,
			Details: map[string]string{"grace": time.Duration(req.Grace).String()}})
	})
	if err != nil {
		s.storeError(w, "client", err)
		return
	}
	c.UpdatedAt, c.PreviousSecretUntil = s.now(), until
	adminJSON(w, http.StatusOK, &ClientAnswer{Client: c, Secret: secret})
}

// UserRequest is the body of POST users.
type UserRequest struct {
	Name     string `json:"name"`
	Password string `json:"password"`
	UserSpec
}

// userIDPrefix begins every user ID, and no client ID (validateClient).
const userIDPrefix = "u_"

// CreateUser adds a user with an argon2id password hash.
func (s *Service) CreateUser(ctx context.Context, req UserRequest) (*User, error) {
	if !nameRE().MatchString(req.Name) {
		return nil, fmt.Errorf("%w: name must be 1-128 characters of letters, digits and . _ @ + -", ErrInvalid)
	}
	if err := checkNewPassword(req.Password); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrInvalid, err)
	}
	if err := s.acquireHash(ctx); err != nil {
		return nil, fmt.Errorf("token: password hashing busy: %w", err)
	}
	hash, err := hashPassword(s.cfg.Rand, req.Password, *s.cfg.Argon2)
	s.releaseHash()
	if err != nil {
		return nil, err
	}
	now := s.now()
	u := &User{ID: userIDPrefix + s.hexID(), Name: req.Name, PasswordHash: hash, CreatedAt: now, UpdatedAt: now, UserSpec: req.UserSpec}
	err = s.atomically(ctx, func(ctx context.Context) error {
		if err := s.cfg.Store.CreateUser(ctx, u); err != nil {
			return err
		}
		return s.auditGrant(ctx, AuditEvent{Type: "oauth.user.created", Outcome: "success", Subject: u.ID, Details: map[string]string{"username": u.Name}})
	})
	if err != nil {
		return nil, err
	}
	return u, nil
}

func (s *Service) adminCreateUser(w http.ResponseWriter, r *http.Request) {
	var req UserRequest
	if !decodeAdmin(w, r, &req) {
		return
	}
	u, err := s.CreateUser(r.Context(), req)
	if err != nil {
		s.createError(w, "user", err)
		return
	}
	adminJSON(w, http.StatusCreated, u)
}

func (s *Service) adminListUsers(w http.ResponseWriter, r *http.Request) {
	us, err := s.cfg.Store.Users(r.Context())
	adminList(s, w, "users", "users", us, err)
}

func (s *Service) adminGetUser(w http.ResponseWriter, r *http.Request) {
	u, err := s.cfg.Store.User(r.Context(), r.PathValue("name"))
	if err != nil {
		s.storeError(w, "user", err)
		return
	}
	left, err := s.cfg.Store.RecoveryCodesLeft(r.Context(), u.ID)
	if err != nil {
		s.storeError(w, "user", err)
		return
	}
	adminJSON(w, http.StatusOK, struct {
		*User
		RecoveryCodesLeft int `json:"recovery_codes_left"`
	}{u, left})
}

// endSessions ends every session of the user: all their grants and
// refresh token families are revoked and their unredeemed codes dropped,
// and the access token IDs issued under them go to OnRevoke, so sidecars
// refuse those tokens within a second instead of until they expire. An
// admin resets a password or second factor, or deletes a user, because
// someone else may hold them; sessions opened with them must not outlive
// that (refresh families last up to RefreshFamilyTTL). Callers run it in
// the atomically block of the action itself, so the action and the end
// of the sessions commit together (with their records) or not at all.
// It returns the record of it, oauth.user.sessions_revoked with the
// action in Details["action"], for the caller to write with its own after
// its last change (records last: see atomically).
//
// A refresh or code redemption racing it cannot keep a family alive:
// those lock the grant (Store.LockGrant) in their own transaction, so
// they either commit first, and what they added is revoked here, or find
// the grant revoked.
func (s *Service) endSessions(ctx context.Context, userID, because string) (AuditEvent, error) {
	grants, toks, err := s.cfg.Store.RevokeUserGrants(ctx, userID, s.now())
	if err != nil {
		return AuditEvent{}, err
	}
	s.revoked(ctx, toks)
	return AuditEvent{Type: "oauth.user.sessions_revoked", Outcome: "success", Subject: userID,
		Details: map[string]string{"action": because, "grants": itoa(grants), "revoked_tokens": itoa(len(toks))}}, nil
}

// adminDeleteUser ends the user's sessions and deletes them, in one
// transaction with both records.
func (s *Service) adminDeleteUser(w http.ResponseWriter, r *http.Request) {
	ctx := r.Context()
	name := r.PathValue("name")
	u, err := s.cfg.Store.User(ctx, name)
	if err != nil {
		s.storeError(w, "user", err)
		return
	}
	err = s.atomically(ctx, func(ctx context.Context) error {
		ended, err := s.endSessions(ctx, u.ID, "user_deleted")
		if err != nil {
			return err
		}
		if err := s.cfg.Store.DeleteUser(ctx, name); err != nil {
			return err
		}
		return s.auditAll(ctx, ended, AuditEvent{Type: "oauth.user.deleted", Outcome: "success", Subject: u.ID, Details: map[string]string{"username": name}})
	})
	if err != nil {
		s.storeError(w, "user", err)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

func (s *Service) adminSetPassword(w http.ResponseWriter, r *http.Request) {
	var req struct {
		Password string `json:"password"`
	}
	if !decodeAdmin(w, r, &req) {
		return
	}
	if err := checkNewPassword(req.Password); err != nil {
		adminError(w, http.StatusBadRequest, "%v", err)
		return
	}
	ctx := r.Context()
	u, err := s.cfg.Store.User(ctx, r.PathValue("name"))
	if err != nil {
		s.storeError(w, "user", err)
		return
	}
	if err := s.acquireHash(ctx); err != nil {
		adminError(w, http.StatusServiceUnavailable, "password hashing is busy; try again")
		return
	}
	u.PasswordHash, err = hashPassword(s.cfg.Rand, req.Password, *s.cfg.Argon2)
	s.releaseHash()
	if err != nil {
		s.storeError(w, "user", err)
		return
	}
	u.UpdatedAt = s.now()
	err = s.atomically(ctx, func(ctx context.Context) error {
		if err := s.cfg.Store.UpdateUser(ctx, u); err != nil {
			return err
		}
		ended, err := s.endSessions(ctx, u.ID, "password_set")
		if err != nil {
			return err
		}
		return s.auditAll(ctx, AuditEvent{Type: "oauth.user.password_set", Outcome: "success", Subject: u.ID}, ended)
	})
	if err != nil {
		s.storeError(w, "user", err)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

// adminStartMFA makes a new TOTP key for the user, pending until
// confirmed with a code. A user with MFA on must be reset first.
func (s *Service) adminStartMFA(w http.ResponseWriter, r *http.Request) {
	ctx := r.Context()
	if !decodeAdminEmpty(w, r) {
		return
	}
	u, err := s.cfg.Store.User(ctx, r.PathValue("name"))
	if err != nil {
		s.storeError(w, "user", err)
		return
	}
	if u.TOTPEnabled {
		adminError(w, http.StatusConflict, "user %s has MFA on already; reset it first (moatless oauth user reset-mfa)", u.Name)
		return
	}
	key, sealed, err := s.newTOTPKey(u)
	if err != nil {
		s.storeError(w, "user", err)
		return
	}
	err = s.atomically(ctx, func(ctx context.Context) error {
		if err := s.cfg.Store.StartTOTP(ctx, u.ID, sealed, s.now()); err != nil {
			return err
		}
		return s.auditGrant(ctx, AuditEvent{Type: "oauth.mfa.enrolment_started", Outcome: "success", Subject: u.ID})
	})
	if errors.Is(err, ErrTOTPEnabled) {
		// An enrolment completed since the user was read.
		adminError(w, http.StatusConflict, "user %s has MFA on already; reset it first (moatless oauth user reset-mfa)", u.Name)
		return
	}
	if err != nil {
		s.storeError(w, "user", err)
		return
	}
	adminJSON(w, http.StatusOK, &Enrollment{Secret: key.Secret(), URI: key.URL(), QRPNG: qrPNG(key)})
}

// decodeAdminEmpty accepts an empty body or an empty JSON object.
func decodeAdminEmpty(w http.ResponseWriter, r *http.Request) bool {
	return decodeAdminOptional(w, r, &struct{}{})
}

// decodeAdminOptional is decodeAdmin for endpoints whose body may be
// left out: an empty (or all-space) body leaves v as it is; anything
// else must be exactly one JSON object for v, decoded strictly.
func decodeAdminOptional(w http.ResponseWriter, r *http.Request, v any) bool {
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, maxAdminBody))
	if err != nil {
		adminError(w, http.StatusRequestEntityTooLarge, "request body too large")
		return false
	}
	if len(bytes.TrimSpace(body)) == 0 {
		return true
	}
	if err := decodeStrictJSON(body, v); err != nil {
		adminError(w, http.StatusBadRequest, "%v", err)
		return false
	}
	return true
}

func (s *Service) adminConfirmMFA(w http.ResponseWriter, r *http.Request) {
	var req struct {
		Code string `json:"code"`
	}
	if !decodeAdmin(w, r, &req) {
		return
	}
	ctx := r.Context()
	u, err := s.cfg.Store.User(ctx, r.PathValue("name"))
	if err != nil {
		s.storeError(w, "user", err)
		return
	}
	if u.TOTPEnabled || u.TOTPSecret == nil {
		adminError(w, http.StatusConflict, "user %s has no pending MFA enrolment; start one with moatless oauth user mfa-enroll", u.Name)
		return
	}
	secret, err := unseal(s.cfg.KEK, u.TOTPSecret, totpAAD(u.ID))
	if err != nil {
		s.storeError(w, "user", err)
		return
	}
	step, ok := matchTOTP(string(secret), strings.TrimSpace(req.Code), s.now())
	if !ok {
		s.metrics.mfa.WithLabelValues("failed").Inc()
		s.audit(ctx, AuditEvent{Type: "oauth.mfa.failed", Outcome: "failure", Subject: u.ID, Reason: "wrong_code", Details: map[string]string{"via": "admin_confirm"}})
		adminError(w, http.StatusBadRequest, "wrong code: check the device's clock and send the current code")
		return
	}
	var codes []string
	err = s.atomically(ctx, func(ctx context.Context) error {
		var err error
		if codes, err = s.enableTOTP(ctx, u, u.TOTPSecret, step); err != nil {
			return err
		}
		return s.auditGrant(ctx, AuditEvent{Type: "oauth.mfa.enrolled", Outcome: "success", Subject: u.ID, Details: map[string]string{"via": "admin"}})
	})
	if errors.Is(err, ErrTOTPEnabled) {
		// The user enrolled at a login meanwhile.
		adminError(w, http.StatusConflict, "user %s has MFA on already; reset it first (moatless oauth user reset-mfa)", u.Name)
		return
	}
	if err != nil {
		s.storeError(w, "user", err)
		return
	}
	s.metrics.mfa.WithLabelValues("enrolled").Inc()
	adminJSON(w, http.StatusOK, &Enrollment{RecoveryCodes: codes})
}

func (s *Service) adminResetMFA(w http.ResponseWriter, r *http.Request) {
	ctx := r.Context()
	u, err := s.cfg.Store.User(ctx, r.PathValue("name"))
	if err != nil {
		s.storeError(w, "user", err)
		return
	}
	err = s.atomically(ctx, func(ctx context.Context) error {
		if err := s.cfg.Store.ResetTOTP(ctx, u.ID, s.now()); err != nil {
			return err
		}
		ended, err := s.endSessions(ctx, u.ID, "mfa_reset")
		if err != nil {
			return err
		}
		return s.auditAll(ctx, AuditEvent{Type: "oauth.mfa.reset", Outcome: "success", Subject: u.ID}, ended)
	})
	if err != nil {
		s.storeError(w, "user", err)
		return
	}
	s.metrics.mfa.WithLabelValues("reset").Inc()
	w.WriteHeader(http.StatusNoContent)
}

// RevokeRequest is the body of POST tokens/revoke: a token, or a token ID
// (with its expiry when known; else the longest access token lifetime).
type RevokeRequest struct {
	Token     string    `json:"token,omitempty"`
	JTI       string    `json:"jti,omitempty"`
	ExpiresAt time.Time `json:"expires_at,omitempty"`
}

func (s *Service) adminRevoke(w http.ResponseWriter, r *http.Request) {
	var req RevokeRequest
	if !decodeAdmin(w, r, &req) {
		return
	}
	ctx := r.Context()
	var oe *oauthError
	switch {
	case (req.Token == "") == (req.JTI == ""):
		adminError(w, http.StatusBadRequest, "give either token or jti")
		return
	case req.Token != "":
		oe = s.revokeToken(ctx, req.Token, nil, r.RemoteAddr)
	default:
		if len(req.JTI) > 256 {
			adminError(w, http.StatusBadRequest, "jti too long")
			return
		}
		exp := req.ExpiresAt
		if exp.IsZero() {
			exp = s.now().Add(MaxAccessTokenTTL + 5*time.Minute)
		}
		oe = s.revokeJTI(ctx, req.JTI, exp, AuditEvent{Type: "oauth.revoke", Outcome: "success", Remote: r.RemoteAddr, Details: map[string]string{"by": "admin"}})
	}
	if oe != nil {
		s.storeError(w, "token", oe.cause)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

func (s *Service) adminIntrospect(w http.ResponseWriter, r *http.Request) {
	var req struct {
		Token string `json:"token"`
	}
	if !decodeAdmin(w, r, &req) {
		return
	}
	if req.Token == "" {
		adminError(w, http.StatusBadRequest, "token is required")
		return
	}
	out, err := s.introspect(r.Context(), req.Token, nil)
	if err != nil {
		s.storeError(w, "token", err)
		return
	}
	adminJSON(w, http.StatusOK, out)
}

func (s *Service) adminRevokedList(w http.ResponseWriter, r *http.Request) {
	list, err := s.RevokedTokenIDs(r.Context())
	adminList(s, w, "revoked tokens", "revoked", list, err)
}

// KeyInfo describes a signing key (public data only).
type KeyInfo struct {
	KID        string    `json:"kid"`
	Alg        string    `json:"alg"`
	State      string    `json:"state"` // next, signing, retired
	ActivateAt time.Time `json:"activate_at"`
	RetireAt   time.Time `json:"retire_at"`
	ExpireAt   time.Time `json:"expire_at"`
}

func (s *Service) adminKeys(w http.ResponseWriter, r *http.Request) {
	ks, err := s.keySetFor(r.Context(), s.now())
	if err != nil {
		s.storeError(w, "keys", err)
		return
	}
	now := s.now()
	signer := ks.signer(now)
	out := []KeyInfo{}
	for _, k := range ks.keys {
		st := "retired"
		switch {
		case now.Before(k.activate):
			st = "next"
		case k == signer:
			st = "signing"
		}
		out = append(out, KeyInfo{KID: k.kid, Alg: string(k.alg), State: st, ActivateAt: k.activate.UTC(), RetireAt: k.retire.UTC(), ExpireAt: k.expire.UTC()})
	}
	adminJSON(w, http.StatusOK, map[string]any{"keys": out})
}

func (s *Service) adminRotateKeys(w http.ResponseWriter, r *http.Request) {
	if !decodeAdminEmpty(w, r) {
		return
	}
	if _, err := s.RotateKeys(r.Context()); err != nil {
		s.storeError(w, "keys", err)
		return
	}
	s.adminKeys(w, r)
}

func (s *Service) adminRevokeKey(w http.ResponseWriter, r *http.Request) {
	if !decodeAdminEmpty(w, r) {
		return
	}
	kid := r.PathValue("kid")
	switch err := s.RevokeKey(r.Context(), kid); {
	case errors.Is(err, ErrKeySigning):
		adminError(w, http.StatusConflict, "signing key %q signs now: rotate first (POST keys/rotate), then revoke it", kid)
		return
	case err != nil:
		s.storeError(w, "signing key", err)
		return
	}
	s.adminKeys(w, r)
}
