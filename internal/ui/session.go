package ui

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"crypto/subtle"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"sync"
	"time"
)

// Cookie names. The __Host- prefix makes the browser refuse the cookie
// unless it is Secure, has Path=/ and no Domain, so no sibling host or
// plaintext page can plant or overwrite it.
const (
	sessionCookie   = "__Host-moatless-ui"
	loginCSRFCookie = "__Host-moatless-ui-login"
	oidcStateCookie = "__Host-moatless-ui-oidc"
)

// maxCookieLen bounds a sealed cookie before it is decoded.
const maxCookieLen = 4096

// Login methods recorded in a session.
const (
	MethodAdminToken = "admin-token"
	MethodOIDC       = "oidc"
)

// session is what a session cookie carries, sealed (AES-256-GCM) so the
// browser can neither read nor change it. It holds no credential: the
// admin token is checked once at login and never stored.
type session struct {
	// Purpose tells sealed values apart: "session", "oidc" (the state of
	// a login in progress) or "login" (the login form's CSRF value).
	Purpose string `json:"p"`
	// ID names the session for logout (the revoked list) and the audit log.
	ID string `json:"id"`
	// Actor is who acts: "admin-token" or "user:<name>".
	Actor  string `json:"a,omitempty"`
	Method string `json:"m,omitempty"`
	// UserID is the token service's user ID of an OIDC login, checked
	// again on every request (a deleted user or a lost role ends it).
	UserID string `json:"u,omitempty"`
	// Binding ties an admin-token session to the admin token in force
	// (AdminAuth.Binding): --reset-admin-token ends every such session.
	Binding []byte `json:"b,omitempty"`
	// CSRF is the synchronizer token every state-changing request must
	// carry (header X-CSRF-Token or form field csrf_token).
	CSRF     string `json:"c,omitempty"`
	IssuedAt int64  `json:"iat"`
	Expires  int64  `json:"exp"`
	// OIDC login state (Purpose "oidc").
	State    string `json:"s,omitempty"`
	Nonce    string `json:"n,omitempty"`
	Verifier string `json:"v,omitempty"`
}

// sealer seals and opens cookie values with AES-256-GCM. The cookie name
// is the additional data, so a value cannot be moved from one cookie to
// another.
type sealer struct{ aead cipher.AEAD }

func newSealer(key []byte) (*sealer, error) {
	if len(key) != 32 {
		return nil, fmt.Errorf("ui: session key: want 32 bytes, got %d", len(key))
	}
	b, err := aes.NewCipher(key)
	if err != nil {
		return nil, fmt.Errorf("ui: session key: %w", err)
	}
	aead, err := cipher.NewGCM(b)
	if err != nil {
		return nil, fmt.Errorf("ui: session key: %w", err)
	}
	return &sealer{aead: aead}, nil
}

func (s *sealer) seal(name string, v *session) (string, error) {
	pt, err := json.Marshal(v)
	if err != nil {
		return "", err
	}
	nonce := make([]byte, s.aead.NonceSize())
	if _, err := rand.Read(nonce); err != nil {
		return "", err
	}
	ct := s.aead.Seal(nonce, nonce, pt, []byte(name))
	return base64.RawURLEncoding.EncodeToString(ct), nil
}

// errBadCookie is any cookie that does not open: forged, truncated,
// sealed under another key (a rotated KEK), or for another cookie.
var errBadCookie = errors.New("ui: cookie does not open")

// open opens a sealed value of cookie name, checking its purpose and that
// it has not expired at now. Any failure is errBadCookie or an expiry.
func (s *sealer) open(name, purpose, value string, now time.Time) (*session, error) {
	if value == "" || len(value) > maxCookieLen {
		return nil, errBadCookie
	}
	ct, err := base64.RawURLEncoding.DecodeString(value)
	if err != nil || len(ct) < s.aead.NonceSize()+s.aead.Overhead() {
		return nil, errBadCookie
	}
	pt, err := s.aead.Open(nil, ct[:s.aead.NonceSize()], ct[s.aead.NonceSize():], []byte(name))
	if err != nil {
		return nil, errBadCookie
	}
	var v session
	if err := json.Unmarshal(pt, &v); err != nil || v.Purpose != purpose || v.ID == "" {
		return nil, errBadCookie
	}
	if now.Unix() >= v.Expires {
		return nil, errSessionExpired
	}
	return &v, nil
}

var errSessionExpired = errors.New("ui: session expired")

// randomToken returns n random bytes, base64url.
func randomToken(n int) string {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		panic(err) // crypto/rand never fails on supported platforms
	}
	return base64.RawURLEncoding.EncodeToString(b)
}

// equalSecret compares two secrets in constant time (the length is not
// secret: every token here has a fixed length).
func equalSecret(a, b string) bool {
	return a != "" && subtle.ConstantTimeCompare([]byte(a), []byte(b)) == 1
}

// setCookie sets a sealed cookie: Secure, HttpOnly, Path=/ (the __Host-
// prefix requires it), SameSite as given, lasting until exp.
func setCookie(w http.ResponseWriter, name, value string, exp time.Time, now time.Time, same http.SameSite) {
	http.SetCookie(w, &http.Cookie{Name: name, Value: value, Path: "/", Secure: true, HttpOnly: true, SameSite: same,
		MaxAge: max(1, int(exp.Sub(now).Seconds()))})
}

func clearCookie(w http.ResponseWriter, name string) {
	http.SetCookie(w, &http.Cookie{Name: name, Value: "", Path: "/", Secure: true, HttpOnly: true, SameSite: http.SameSiteStrictMode, MaxAge: -1})
}

// ended remembers sessions that logged out until they would have expired
// anyway, in this process: the one record without Config.Sessions, and in
// front of it a cache of the sessions known to have ended. Bounded: beyond max
// entries the oldest expired ones go first, and if none has expired the
// list still grows (a logout is an authenticated, CSRF-checked action).
type ended struct {
	mu  sync.Mutex
	ids map[string]int64 // session ID -> expiry (unix)
}

func (e *ended) add(id string, exp int64, now time.Time) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.ids == nil {
		e.ids = map[string]int64{}
	}
	if len(e.ids) >= 10000 {
		for k, x := range e.ids {
			if x <= now.Unix() {
				delete(e.ids, k)
			}
		}
	}
	e.ids[id] = exp
}

func (e *ended) has(id string) bool {
	e.mu.Lock()
	defer e.mu.Unlock()
	_, ok := e.ids[id]
	return ok
}
