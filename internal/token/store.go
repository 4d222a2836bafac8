package token

import (
	"context"
	"encoding/json"
	"errors"
	"time"
)

// Sentinel errors a Store returns (wrapped) and callers branch on.
var (
	// ErrNotFound: the named object does not exist.
	ErrNotFound = errors.New("token: not found")
	// ErrConflict: the object exists already (name, ID or SPIFFE ID
	// taken), or a single-use value (TOTP step, assertion jti) was used.
	ErrConflict = errors.New("token: conflict")
	// ErrReused: a single-use credential (authorization code, refresh
	// token) was presented a second time. The store still returns the
	// record so the caller can revoke what was issued from it.
	ErrReused = errors.New("token: reused")
	// ErrMismatch: an authorization code was presented by another
	// client, or with another redirect URI or PKCE verifier than it was
	// issued for. The store changed nothing and returns the record so
	// the caller can say which part did not match.
	ErrMismatch = errors.New("token: mismatch")
	// ErrTOTPEnabled: EnableTOTP found the user's TOTP enabled already
	// (another enrolment, at a login or by an admin, got there first).
	// Nothing changed.
	ErrTOTPEnabled = errors.New("token: totp enabled already")
	// ErrRevoked: RecordExchange found the subject token on the revoked
	// list. Nothing was recorded.
	ErrRevoked = errors.New("token: revoked")
	// ErrTooManyExchanges: RecordExchange found the subject token's tree
	// (the token first exchanged from and every token exchanged from it,
	// transitively) full. Nothing was recorded.
	ErrTooManyExchanges = errors.New("token: too many exchanges")
)

// Store is the persistence the token service needs. internal/store
// implements it on SQLite and PostgreSQL (store.DB.OAuth()). Every method
// is safe for concurrent use, including from several server replicas on
// one PostgreSQL database: the single-use operations (ConsumeCode,
// RotateRefreshToken, EnableTOTP, UseTOTPStep, UseRecoveryCode,
// UseAssertionJTI) are atomic compare-and-set operations in the
// database, never read-then-write in the caller.
type Store interface {
	// Atomically runs fn in one transaction and commits it when fn
	// returns nil; otherwise nothing fn did is kept. Every Store method
	// fn calls with the context fn is given runs in that transaction,
	// and so must Config.Audit when given that context: a change and its
	// audit record commit together or not at all. A call inside fn joins
	// the transaction.
	Atomically(ctx context.Context, fn func(ctx context.Context) error) error

	// CreateClient stores a new client; ErrConflict when its ID, name or
	// SPIFFE ID is taken.
	CreateClient(ctx context.Context, c *Client) error
	// Client returns the client with this ID, or ErrNotFound.
	Client(ctx context.Context, id string) (*Client, error)
	// ClientBySPIFFEID returns the client registered with this SPIFFE ID
	// for tls_client_auth, or ErrNotFound.
	ClientBySPIFFEID(ctx context.Context, spiffeID string) (*Client, error)
	// Clients lists every client, ordered by name.
	Clients(ctx context.Context) ([]*Client, error)
	// SetClientSecret replaces a client's secret hash; the old hash
	// stays valid until previousUntil (zero: not at all). ErrNotFound.
	SetClientSecret(ctx context.Context, id string, hash []byte, previousUntil, at time.Time) error
	// DeleteClient deletes a client; ErrNotFound.
	DeleteClient(ctx context.Context, id string) error

	// CreateUser stores a new user; ErrConflict when the name is taken.
	CreateUser(ctx context.Context, u *User) error
	// User returns the user with this name, or ErrNotFound.
	User(ctx context.Context, name string) (*User, error)
	// UserByID returns the user with this ID, or ErrNotFound.
	UserByID(ctx context.Context, id string) (*User, error)
	// LockUser is UserByID inside Atomically, holding the user until the
	// transaction ends, so a concurrent RevokeUserGrants either committed
	// before (SessionsEpoch moved) or waits for the transaction and then
	// also ends what it opened. An error outside Atomically.
	LockUser(ctx context.Context, id string) (*User, error)
	// Users lists every user, ordered by name.
	Users(ctx context.Context) ([]*User, error)
	// UpdateUser writes the user's password hash and spec, never the
	// TOTP state (see StartTOTP, EnableTOTP, ResetTOTP); ErrNotFound.
	UpdateUser(ctx context.Context, u *User) error
	// StartTOTP stores a pending (not enabled) TOTP key, but only if the
	// user's TOTP is not enabled, atomically: ErrTOTPEnabled otherwise
	// (nothing changed); ErrNotFound for an unknown user.
	StartTOTP(ctx context.Context, userID string, sealed []byte, at time.Time) error
	// ResetTOTP turns TOTP off, forgets the key and deletes the recovery
	// codes, in one transaction; ErrNotFound.
	ResetTOTP(ctx context.Context, userID string, at time.Time) error
	// DeleteUser deletes a user and their recovery codes; ErrNotFound.
	DeleteUser(ctx context.Context, name string) error
	// UseTOTPStep records that the TOTP code of time step was accepted
	// for the user. ErrConflict when step is not greater than the last
	// step recorded: that code (or an older one) was used already.
	UseTOTPStep(ctx context.Context, userID string, step int64) error
	// EnableTOTP turns on TOTP for the user with the confirmed key sealed,
	// records step as its last accepted time step and replaces the user's
	// recovery codes with recoveryHashes, in one transaction, but only if
	// the user's TOTP is not enabled: the check and the write are one
	// conditional statement in the database, so of several concurrent
	// enrolments (on any replica) exactly one succeeds. ErrTOTPEnabled
	// when the user's TOTP was enabled already (nothing changed);
	// ErrNotFound for an unknown user.
	EnableTOTP(ctx context.Context, userID string, sealed []byte, step int64, recoveryHashes [][]byte, at time.Time) error
	// SetRecoveryCodes replaces the user's recovery code hashes.
	SetRecoveryCodes(ctx context.Context, userID string, hashes [][]byte) error
	// UseRecoveryCode deletes the recovery code with this hash;
	// ErrNotFound when the user has no such (unused) code.
	UseRecoveryCode(ctx context.Context, userID string, hash []byte) error
	// RecoveryCodesLeft counts the user's unused recovery codes.
	RecoveryCodesLeft(ctx context.Context, userID string) (int, error)

	// SigningKeys lists every stored signing key, oldest first.
	SigningKeys(ctx context.Context) ([]*SigningKey, error)
	// AddSigningKey stores a new signing key; ErrConflict on a kid clash.
	AddSigningKey(ctx context.Context, k *SigningKey) error
	// RetireSigningKeys sets RetireAt to at on every key that would still
	// sign at at (activated, not retired), so none of them signs again,
	// and brings their ExpireAt forward to expireBy when it is later.
	RetireSigningKeys(ctx context.Context, at, expireBy time.Time) error
	// RevokeSigningKey deletes the key kid at once, whatever its
	// schedule; ErrNotFound when there is none.
	RevokeSigningKey(ctx context.Context, kid string) error
	// DeleteSigningKeys deletes keys whose ExpireAt is before t.
	DeleteSigningKeys(ctx context.Context, before time.Time) (int, error)

	// AddGrant stores the grant an authorization code or refresh token
	// family belongs to.
	AddGrant(ctx context.Context, g *Grant) error
	// Grant returns a grant by ID, or ErrNotFound.
	Grant(ctx context.Context, id string) (*Grant, error)
	// LockGrant is Grant inside Atomically, holding the grant until the
	// transaction ends: a concurrent RevokeGrant or RevokeUserGrants
	// either committed before (and the grant reads revoked) or waits,
	// and then also revokes what the transaction added to the grant. An
	// error outside Atomically.
	LockGrant(ctx context.Context, id string) (*Grant, error)
	// RecordTokenID remembers that an access token with this jti was
	// issued under the grant, so revoking the grant can revoke it.
	RecordTokenID(ctx context.Context, grantID, jti string, exp time.Time) error
	// TokenGrant returns the grant an access token ID was recorded under,
	// or ErrNotFound (client_credentials tokens have none).
	TokenGrant(ctx context.Context, jti string) (string, error)
	// RevokeGrant marks the grant and all its refresh tokens revoked and
	// adds the unexpired access token IDs issued under it to the revoked
	// list. It returns the token IDs it newly revoked (for OnRevoke).
	// Revoking a revoked grant returns none and no error.
	RevokeGrant(ctx context.Context, grantID string, at time.Time) ([]RevokedToken, error)
	// RevokeUserGrants ends every session of a user atomically (one
	// transaction): it moves the user's SessionsEpoch, revokes all their
	// grants and refresh tokens,
	// deletes their unredeemed authorization codes, and adds the
	// unexpired access token IDs issued under their grants to the revoked
	// list. It returns the number of grants it revoked and the token IDs
	// it newly revoked (for OnRevoke). A user with no sessions, or an
	// unknown user ID, gets 0, none and no error.
	RevokeUserGrants(ctx context.Context, userID string, at time.Time) (int, []RevokedToken, error)
	// RevokeClientGrants is RevokeUserGrants for every session a client
	// was given: its grants, their refresh tokens, its unredeemed codes,
	// and the unexpired access token IDs issued under them.
	RevokeClientGrants(ctx context.Context, clientID string, at time.Time) (int, []RevokedToken, error)

	// AddCode stores an authorization code (by hash).
	AddCode(ctx context.Context, c *AuthCode) error
	// ConsumeCode marks the code used and returns it, but only if want
	// matches what the code was issued for (client, redirect URI, PKCE
	// challenge), in one conditional statement. ErrNotFound for an
	// unknown code; ErrMismatch when want does not match, whether or not
	// the code was used (nothing changes, so someone who intercepted a
	// code cannot burn it, nor make the real redemption look like
	// reuse); ErrReused when it matches and the code was used before
	// (RFC 6749 §4.1.2: the caller revokes its grant). Both come with the
	// record. Expiry is the caller's check.
	ConsumeCode(ctx context.Context, hash []byte, want CodeRedemption, at time.Time) (*AuthCode, error)

	// AddRefreshToken stores a refresh token (by hash).
	AddRefreshToken(ctx context.Context, t *RefreshToken) error
	// RefreshToken returns a refresh token by hash, or ErrNotFound.
	RefreshToken(ctx context.Context, hash []byte) (*RefreshToken, error)
	// RotateRefreshToken marks the token with oldHash used and stores
	// next, atomically. ErrReused when the old token was used or revoked
	// already (a concurrent rotation counts as reuse).
	RotateRefreshToken(ctx context.Context, oldHash []byte, next *RefreshToken, at time.Time) error

	// RevokeTokenID adds an access token ID to the revoked list until
	// exp, and with it every unexpired token exchanged from it
	// (RecordExchange), transitively, in one transaction. It returns the
	// IDs it newly listed (for OnRevoke).
	RevokeTokenID(ctx context.Context, jti string, exp, at time.Time) ([]RevokedToken, error)
	// RecordExchange records that token jti (expiring at exp) was
	// exchanged from token parent (expiring at parentExp), so that
	// revoking parent revokes jti. ErrRevoked when parent is on the
	// revoked list: a revocation of parent either committed before
	// (ErrRevoked) or waits for this transaction and then revokes jti.
	// ErrTooManyExchanges when the tree parent belongs to holds limit
	// exchanged tokens already. Inside Atomically.
	RecordExchange(ctx context.Context, parent string, parentExp time.Time, jti string, exp time.Time, limit int) error
	// RecordTokenAuthorities records that access token jti (expiring at
	// exp) was issued on the strength of these CA authorities (the key
	// that signed a JWT-SVID, the authorities of an X509-SVID's chain),
	// so that RevokeAuthorityTokens can revoke it. It joins the
	// transaction of an Atomically context.
	RecordTokenAuthorities(ctx context.Context, jti string, exp time.Time, authorities []string) error
	// RevokeAuthorityTokens revokes (as RevokeTokenID: with every token
	// exchanged from them) the unexpired, unrevoked tokens recorded
	// under any of the authorities, and returns the IDs it newly listed.
	RevokeAuthorityTokens(ctx context.Context, authorities []string, at time.Time) ([]RevokedToken, error)
	// TokenIDRevoked reports whether the ID is on the revoked list.
	TokenIDRevoked(ctx context.Context, jti string) (bool, error)
	// RevokedTokenIDs lists the revoked IDs that expire after now.
	RevokedTokenIDs(ctx context.Context, now time.Time) ([]RevokedToken, error)

	// UseAssertionJTI records a client assertion's jti until exp;
	// ErrConflict when the client used it before (a replay).
	UseAssertionJTI(ctx context.Context, clientID, jti string, exp time.Time) error

	// RecordLoginFailure counts a failed login against key and returns
	// the count, starting again from 1 when the last failure was before
	// forgetBefore. It is one atomic statement (replicas count together).
	RecordLoginFailure(ctx context.Context, key string, at, forgetBefore time.Time) (int, error)
	// LockLogin makes key wait until until (never shortening a lock).
	LockLogin(ctx context.Context, key string, until time.Time) error
	// LoginLockedUntil returns the latest lock of the keys (zero if none).
	LoginLockedUntil(ctx context.Context, keys []string) (time.Time, error)
	// ClearLoginFailures forgets key's failures and lock.
	ClearLoginFailures(ctx context.Context, key string) error

	// Prune deletes expired codes, refresh tokens, grants, token IDs and
	// assertion jtis (everything that expired before now), and login
	// throttle counters idle for an hour and not locked.
	Prune(ctx context.Context, now time.Time) error
}

// Client authentication methods (RFC 7591 token_endpoint_auth_method).
const (
	AuthSecretBasic   = "client_secret_basic"
	AuthSecretPost    = "client_secret_post"
	AuthPrivateKeyJWT = "private_key_jwt"
	AuthTLSClient     = "tls_client_auth"
	// AuthNone is a public client (a browser or native app): it may use
	// only authorization_code (PKCE is always required) and refresh_token.
	AuthNone = "none"
)

// Grant types.
const (
	GrantClientCredentials = "client_credentials"
	GrantAuthorizationCode = "authorization_code"
	GrantRefreshToken      = "refresh_token"
	GrantTokenExchange     = "urn:ietf:params:oauth:grant-type:token-exchange"
)

// Client is a registered OAuth client. SecretHash is SHA-256 of the
// secret (a 256-bit random value, so a slow hash adds nothing) and is
// empty for clients that do not use a secret.
type Client struct {
	ID         string `json:"client_id"`
	Name       string `json:"name"`
	SecretHash []byte `json:"-"`
	// PreviousSecretHash is the secret before the last rotation, valid
	// until PreviousSecretUntil (a rotation with a grace period).
	PreviousSecretHash  []byte    `json:"-"`
	PreviousSecretUntil time.Time `json:"previous_secret_valid_until,omitzero"`
	CreatedAt           time.Time `json:"created_at"`
	UpdatedAt           time.Time `json:"updated_at"`
	ClientSpec
}

// ClientSpec is a client's configuration: what it may ask for and what
// its tokens carry. It is stored as JSON.
type ClientSpec struct {
	// AuthMethod is how the client authenticates at the token endpoint.
	AuthMethod string `json:"token_endpoint_auth_method"`
	// GrantTypes the client may use.
	GrantTypes []string `json:"grant_types"`
	// Scopes the client may ask for; a request without scope gets all.
	Scopes []string `json:"scopes,omitempty"`
	// Audiences the client's access tokens may be for; a request without
	// audience/resource gets all of them (the client ID when empty).
	Audiences []string `json:"audiences,omitempty"`
	// RedirectURIs for authorization_code, matched exactly.
	RedirectURIs []string `json:"redirect_uris,omitempty"`
	// CORSOrigins are the browser origins ("https://app.example.com")
	// allowed to read this client's answers from the token, revocation
	// and userinfo endpoints: what a single-page app needs. Empty: none.
	CORSOrigins []string `json:"cors_origins,omitempty"`
	// JWKS holds the public keys of a private_key_jwt client.
	JWKS json.RawMessage `json:"jwks,omitempty"`
	// SPIFFEID of a tls_client_auth client: the verified URI SAN of its
	// TLS client certificate must equal it (RFC 8705 §2.1.2 in SPIFFE
	// terms).
	SPIFFEID string `json:"spiffe_id,omitempty"`
	// ExchangeAudiences are the audiences this client may obtain by token
	// exchange (RFC 8693). Empty: none. "*" is not accepted: which
	// service may exchange for which audience is explicit policy.
	ExchangeAudiences []string `json:"exchange_audiences,omitempty"`
	// Roles, Permissions and Tenant go into client_credentials tokens.
	Roles       []string `json:"roles,omitempty"`
	Permissions []string `json:"permissions,omitempty"`
	Tenant      string   `json:"tenant,omitempty"`
	// AccessTokenTTL overrides the service default (≤ 15 min).
	AccessTokenTTL Duration `json:"access_token_ttl,omitempty"`
}

// AllowsGrant reports whether the client may use grant type g.
func (c *ClientSpec) AllowsGrant(g string) bool { return contains(c.GrantTypes, g) }

// User is an end user who logs in on the login page.
type User struct {
	ID           string `json:"id"`
	Name         string `json:"name"`
	PasswordHash string `json:"-"` // PHC-encoded argon2id
	// TOTPSecret is the TOTP key sealed with the KEK; nil when none.
	TOTPSecret []byte `json:"-"`
	// TOTPEnabled is set once enrolment was confirmed with a valid code.
	TOTPEnabled bool `json:"mfa_enabled"`
	// TOTPLastStep is the last accepted time step (replay protection).
	TOTPLastStep int64     `json:"-"`
	CreatedAt    time.Time `json:"created_at"`
	UpdatedAt    time.Time `json:"updated_at"`
	// SessionsEpoch counts the times the user's sessions were ended
	// (RevokeUserGrants). A login remembers it from the password check
	// and completes only if it has not moved.
	SessionsEpoch int64 `json:"-"`
	UserSpec
}

// UserSpec is what an admin configures on a user. It is stored as JSON.
type UserSpec struct {
	Email       string   `json:"email,omitempty"`
	Roles       []string `json:"roles,omitempty"`
	Permissions []string `json:"permissions,omitempty"`
	Tenant      string   `json:"tenant,omitempty"`
	// RequireMFA makes the login page enrol the user in TOTP at their next
	// login if they have none, and refuse logins without a second factor.
	RequireMFA bool `json:"require_mfa,omitempty"`
}

// SigningKey is a token signing key. The private key (PKCS#8) is sealed
// with the KEK; Public is the public JWK as JSON.
type SigningKey struct {
	KID        string
	Alg        string
	Sealed     []byte
	Public     []byte
	CreatedAt  time.Time
	ActivateAt time.Time // signs from here (published before it)
	RetireAt   time.Time // stops signing here
	ExpireAt   time.Time // leaves the JWKS here: after its last token expired
}

// Grant is one user's consent to one client, from which an authorization
// code, and then a family of refresh and access tokens, descend.
type Grant struct {
	ID       string
	ClientID string
	UserID   string
	Scope    []string
	AuthTime time.Time
	AMR      []string
	// Audiences the authorization request asked for; empty: the client's
	// default audiences.
	Audiences []string
	CreatedAt time.Time
	ExpiresAt time.Time // absolute end of the refresh token family
	RevokedAt time.Time // zero while valid
}

// AuthCode is an issued authorization code, stored by hash.
type AuthCode struct {
	Hash          []byte
	GrantID       string
	ClientID      string
	UserID        string
	RedirectURI   string
	Scope         []string
	Nonce         string
	Challenge     string // PKCE S256 code_challenge
	AuthTime      time.Time
	AMR           []string
	CreatedAt     time.Time
	ExpiresAt     time.Time
	UsedAt        time.Time
	RequestedAuds []string // audience the client asked for; empty: default
}

// CodeRedemption is what a token request presents along with an
// authorization code (RFC 6749 §4.1.3, RFC 7636 §4.6).
type CodeRedemption struct {
	ClientID    string // the authenticated client
	RedirectURI string // the redirect_uri parameter
	// Challenge is the S256 transform of the code_verifier parameter,
	// compared with the code's code_challenge. The challenge travelled
	// through the browser, so comparing it is not a secret comparison.
	Challenge string
}

// RefreshToken is an issued refresh token, stored by hash.
type RefreshToken struct {
	Hash      []byte
	GrantID   string
	ClientID  string
	CreatedAt time.Time
	ExpiresAt time.Time
	UsedAt    time.Time // set when rotated
	RevokedAt time.Time
}

// RevokedToken is a revoked access token ID with its expiry, after which
// the entry is useless.
type RevokedToken struct {
	JTI       string    `json:"jti"`
	ExpiresAt time.Time `json:"expires_at"`
}

// Duration is a time.Duration that is a Go duration string in JSON.
type Duration time.Duration

func (d Duration) MarshalJSON() ([]byte, error) { return json.Marshal(time.Duration(d).String()) }

func (d *Duration) UnmarshalJSON(b []byte) error {
	var s string
	if err := json.Unmarshal(b, &s); err != nil {
		return errors.New("token: duration must be a string like \"10m\"")
	}
	v, err := time.ParseDuration(s)
	if err != nil {
		return errors.New("token: bad duration " + s)
	}
	*d = Duration(v)
	return nil
}

func contains(list []string, v string) bool {
	for _, s := range list {
		if s == v {
			return true
		}
	}
	return false
}
