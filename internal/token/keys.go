package token

import (
	"context"
	"crypto"
	"crypto/aes"
	"crypto/cipher"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rsa"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"time"

	"github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"
)

// signingAlgs is the allow-list every JWT we verify is parsed with: our
// own tokens use one of these, and "none" or HMAC can never be accepted.
var signingAlgs = []jose.SignatureAlgorithm{jose.ES256, jose.RS256, jose.EdDSA}

// JWT "typ" header values.
const (
	typAccess = "at+jwt" // RFC 9068 §2.1
	typID     = "JWT"
)

// sealedKeyAAD binds a sealed key to its kid, so a sealed blob cannot be
// swapped between rows.
func sealedKeyAAD(kid string) []byte { return []byte("moatless oauth signing key v1 " + kid) }

// seal encrypts plaintext with AES-256-GCM under key; the output is
// nonce || ciphertext.
func seal(key, plaintext, aad []byte, rnd io.Reader) ([]byte, error) {
	block, err := aes.NewCipher(key)
	if err != nil {
		return nil, err
	}
	aead, err := cipher.NewGCM(block)
	if err != nil {
		return nil, err
	}
	nonce := make([]byte, aead.NonceSize())
	if _, err := io.ReadFull(rnd, nonce); err != nil {
		return nil, err
	}
	return aead.Seal(nonce, nonce, plaintext, aad), nil
}

// errUnseal is deliberately uninformative: a bad key and tampered data
// look the same.
var errUnseal = errors.New("token: cannot unseal: wrong KEK or tampered data")

func unseal(key, sealed, aad []byte) ([]byte, error) {
	block, err := aes.NewCipher(key)
	if err != nil {
		return nil, err
	}
	aead, err := cipher.NewGCM(block)
	if err != nil {
		return nil, err
	}
	if len(sealed) < aead.NonceSize()+aead.Overhead() {
		return nil, errUnseal
	}
	pt, err := aead.Open(nil, sealed[:aead.NonceSize()], sealed[aead.NonceSize():], aad)
	if err != nil {
		return nil, errUnseal
	}
	return pt, nil
}

// loadedKey is a signing key ready to use.
type loadedKey struct {
	kid                      string
	alg                      jose.SignatureAlgorithm
	public                   jose.JSONWebKey
	activate, retire, expire time.Time
	accessSigner, idSigner   jose.Signer
}

// keySet is an immutable snapshot of the signing keys, swapped atomically.
type keySet struct {
	keys []*loadedKey // ordered by activation
	byID map[string]*loadedKey
}

// signer returns the key that signs at t: the most recently activated key
// whose signing window contains t.
func (ks *keySet) signer(t time.Time) *loadedKey {
	if ks == nil {
		return nil
	}
	var best *loadedKey
	for _, k := range ks.keys {
		if !t.Before(k.activate) && t.Before(k.retire) {
			best = k
		}
	}
	return best
}

func (ks *keySet) byIDOrNil(kid string) *loadedKey {
	if ks == nil {
		return nil
	}
	return ks.byID[kid]
}

// verifier returns the key with kid if it is still published at t.
func (ks *keySet) verifier(kid string, t time.Time) *loadedKey {
	if ks == nil {
		return nil
	}
	k := ks.byID[kid]
	if k == nil || !t.Before(k.expire) {
		return nil
	}
	return k
}

func generateKey(alg string, rnd io.Reader) (crypto.Signer, error) {
	switch alg {
	case "ES256":
		return ecdsa.GenerateKey(elliptic.P256(), rnd)
	case "RS256":
		return rsa.GenerateKey(rnd, 2048)
	case "EdDSA":
		_, priv, err := ed25519.GenerateKey(rnd)
		return priv, err
	}
	return nil, fmt.Errorf("token: unsupported signing algorithm %q", alg)
}

// newSigningKey makes a key signing in [activate, activate+rotation),
// published until its last token can have expired.
func (s *Service) newSigningKey(activate time.Time) (*SigningKey, error) {
	priv, err := generateKey(s.cfg.SigningAlg, s.cfg.Rand)
	if err != nil {
		return nil, fmt.Errorf("token: generate signing key: %w", err)
	}
	pub := jose.JSONWebKey{Key: priv.Public(), Algorithm: s.cfg.SigningAlg, Use: "sig"}
	tp, err := pub.Thumbprint(crypto.SHA256)
	if err != nil {
		return nil, fmt.Errorf("token: key thumbprint: %w", err)
	}
	// The kid is the RFC 7638 thumbprint: stable, unique, and derived
	// from public data only.
	pub.KeyID = base64.RawURLEncoding.EncodeToString(tp)
	pubJSON, err := pub.MarshalJSON()
	if err != nil {
		return nil, fmt.Errorf("token: marshal public key: %w", err)
	}
	der, err := x509.MarshalPKCS8PrivateKey(priv)
	if err != nil {
		return nil, fmt.Errorf("token: marshal signing key: %w", err)
	}
	sealed, err := seal(s.cfg.KEK, der, sealedKeyAAD(pub.KeyID), s.cfg.Rand)
	clear(der)
	if err != nil {
		return nil, fmt.Errorf("token: seal signing key: %w", err)
	}
	retire := activate.Add(s.cfg.KeyRotation)
	return &SigningKey{
		KID: pub.KeyID, Alg: s.cfg.SigningAlg, Sealed: sealed, Public: pubJSON,
		CreatedAt: s.now(), ActivateAt: activate, RetireAt: retire,
		ExpireAt: retire.Add(s.maxTokenTTL()),
	}, nil
}

// maxTokenTTL is the longest any token we sign can live, plus leeway for
// clock skew at relying parties.
func (s *Service) maxTokenTTL() time.Duration {
	return max(MaxAccessTokenTTL, s.cfg.IDTokenTTL, s.cfg.ExchangeTTL) + 5*time.Minute
}

func (s *Service) loadKey(sk *SigningKey) (*loadedKey, error) {
	der, err := unseal(s.cfg.KEK, sk.Sealed, sealedKeyAAD(sk.KID))
	if err != nil {
		return nil, fmt.Errorf("token: signing key %s: %w", sk.KID, err)
	}
	privAny, err := x509.ParsePKCS8PrivateKey(der)
	clear(der)
	if err != nil {
		return nil, fmt.Errorf("token: signing key %s: %w", sk.KID, err)
	}
	priv, ok := privAny.(crypto.Signer)
	if !ok {
		return nil, fmt.Errorf("token: signing key %s is not a signer", sk.KID)
	}
	alg := jose.SignatureAlgorithm(sk.Alg)
	k := &loadedKey{
		kid: sk.KID, alg: alg, activate: sk.ActivateAt, retire: sk.RetireAt, expire: sk.ExpireAt,
		public: jose.JSONWebKey{Key: priv.Public(), KeyID: sk.KID, Algorithm: sk.Alg, Use: "sig"},
	}
	jwk := jose.JSONWebKey{Key: priv, KeyID: sk.KID, Algorithm: sk.Alg}
	if k.accessSigner, err = jose.NewSigner(jose.SigningKey{Algorithm: alg, Key: jwk}, (&jose.SignerOptions{}).WithType(typAccess)); err != nil {
		return nil, fmt.Errorf("token: signing key %s: %w", sk.KID, err)
	}
	if k.idSigner, err = jose.NewSigner(jose.SigningKey{Algorithm: alg, Key: jwk}, (&jose.SignerOptions{}).WithType(typID)); err != nil {
		return nil, fmt.Errorf("token: signing key %s: %w", sk.KID, err)
	}
	return k, nil
}

// RotateKeys makes a new signing key that signs from now on: the
// emergency rotation, when a key may have leaked or the algorithm must
// change at once. Relying parties meet its kid before their JWKS cache
// expires and must fetch the JWKS again (standard OIDC clients do). The
// old keys stay published until their last tokens expire.
func (s *Service) RotateKeys(ctx context.Context) (string, error) {
	s.keysMu.Lock()
	defer s.keysMu.Unlock()
	now := s.now()
	k, err := s.newSigningKey(now)
	if err != nil {
		return "", err
	}
	err = s.atomically(ctx, func(ctx context.Context) error {
		if err := s.cfg.Store.RetireSigningKeys(ctx, now, now.Add(s.maxTokenTTL())); err != nil {
			return err
		}
		if err := s.cfg.Store.AddSigningKey(ctx, k); err != nil {
			return err
		}
		return s.auditGrant(ctx, AuditEvent{Type: "oauth.key.rotated", Outcome: "success", Details: map[string]string{"kid": k.KID, "alg": k.Alg}})
	})
	if err != nil {
		return "", fmt.Errorf("token: rotate keys: %w", err)
	}
	s.log.Warn("token: signing key rotated on request", "kid", k.KID, "alg", k.Alg)
	return k.KID, s.rotateKeysLocked(ctx)
}

// ErrKeySigning: RevokeKey was asked to revoke the key that signs now.
var ErrKeySigning = errors.New("token: the key signs now")

// RevokeKey removes the signing key kid for good, for a key that may
// have leaked: it leaves the JWKS at once, and every token it signed (or
// that was forged with it) stops verifying here (introspection, userinfo,
// exchange) at once, and at relying parties when they next fetch the JWKS;
// holders of legitimate tokens it signed get new ones. The key that signs
// now cannot be revoked (ErrKeySigning): RotateKeys first, which makes a
// successor sign at once. Other replicas drop the key at their next Tick
// (the server's runs every 30 s); until then they still accept its
// tokens. ErrNotFound for an unknown kid.
func (s *Service) RevokeKey(ctx context.Context, kid string) error {
	s.keysMu.Lock()
	defer s.keysMu.Unlock()
	// A fresh view of the store: another replica may have rotated.
	if err := s.rotateKeysLocked(ctx); err != nil {
		return err
	}
	ks := s.keys.Load()
	k := ks.byIDOrNil(kid)
	if k == nil {
		return fmt.Errorf("token: signing key %q: %w", kid, ErrNotFound)
	}
	if ks.signer(s.now()) == k {
		return fmt.Errorf("token: signing key %q: %w; rotate first (POST keys/rotate), then revoke it", kid, ErrKeySigning)
	}
	err := s.atomically(ctx, func(ctx context.Context) error {
		if err := s.cfg.Store.RevokeSigningKey(ctx, kid); err != nil {
			return err
		}
		return s.auditGrant(ctx, AuditEvent{Type: "oauth.key.revoked", Outcome: "success", Details: map[string]string{"kid": kid, "alg": string(k.alg)}})
	})
	if err != nil {
		return fmt.Errorf("token: revoke signing key: %w", err)
	}
	s.log.Warn("token: signing key revoked on request; the tokens it signed no longer verify", "kid", kid)
	return s.rotateKeysLocked(ctx)
}

// rotateKeys implements the key part of Tick.
func (s *Service) rotateKeys(ctx context.Context) error {
	s.keysMu.Lock()
	defer s.keysMu.Unlock()
	return s.rotateKeysLocked(ctx)
}

func (s *Service) rotateKeysLocked(ctx context.Context) error {
	now := s.now()
	st := s.cfg.Store
	if _, err := st.DeleteSigningKeys(ctx, now); err != nil {
		return fmt.Errorf("token: rotate keys: %w", err)
	}
	stored, err := st.SigningKeys(ctx)
	if err != nil {
		return fmt.Errorf("token: rotate keys: %w", err)
	}
	var active, next *SigningKey
	for _, k := range stored {
		if !now.Before(k.ActivateAt) && now.Before(k.RetireAt) {
			active = k
		}
		if k.ActivateAt.After(now) {
			next = k
		}
	}
	add := func(activate time.Time, why string) error {
		k, err := s.newSigningKey(activate)
		if err != nil {
			return err
		}
		err = s.atomically(ctx, func(ctx context.Context) error {
			if err := st.AddSigningKey(ctx, k); err != nil {
				return err
			}
			return s.auditGrant(ctx, AuditEvent{Type: "oauth.key.created", Outcome: "success", Details: map[string]string{"kid": k.KID, "alg": k.Alg, "activate_at": k.ActivateAt.Format(time.RFC3339)}})
		})
		if err != nil {
			return fmt.Errorf("token: rotate keys: %w", err)
		}
		s.log.Info("token: new signing key", "kid", k.KID, "alg", k.Alg, "activates", k.ActivateAt, "reason", why)
		stored = append(stored, k)
		return nil
	}
	if active == nil {
		// First start, or the service was down past the last retirement:
		// sign at once (nobody can have cached a key that never existed).
		if next != nil && next.ActivateAt.Sub(now) < time.Minute {
			active = next
		} else if err := add(now, "no active key"); err != nil {
			return err
		} else {
			active = stored[len(stored)-1]
		}
	}
	switch {
	case next == nil && !now.Before(active.RetireAt.Add(-s.cfg.KeyPublishAhead)):
		if err := add(active.RetireAt, "scheduled rotation"); err != nil {
			return err
		}
	case next == nil && active.Alg != s.cfg.SigningAlg:
		// The configured algorithm changed: publish a key of the new
		// one ahead; it signs from then on, and the old key stays
		// published for its tokens.
		if err := add(now.Add(s.cfg.KeyPublishAhead), "signing algorithm changed"); err != nil {
			return err
		}
	}
	set := &keySet{byID: map[string]*loadedKey{}}
	old := s.keys.Load()
	for _, sk := range stored {
		var lk *loadedKey
		if prev := old.byIDOrNil(sk.KID); prev != nil {
			// Reuse the unsealed key and signers; take the schedule from
			// the store, where a rotation may have changed it.
			cp := *prev
			cp.activate, cp.retire, cp.expire = sk.ActivateAt, sk.RetireAt, sk.ExpireAt
			lk = &cp
		} else if lk, err = s.loadKey(sk); err != nil {
			return err
		}
		set.keys = append(set.keys, lk)
		set.byID[lk.kid] = lk
	}
	s.keys.Store(set)
	s.metrics.keys.Set(float64(len(set.keys)))
	return nil
}

// keySetFor returns the key set, loading (and rotating) if there is no
// key that signs at t. Inside an atomically block it never rotates: a key
// made there would be in use before its transaction committed, and gone
// if it rolled back (callers make sure of a key before the block).
func (s *Service) keySetFor(ctx context.Context, t time.Time) (*keySet, error) {
	ks := s.keys.Load()
	if ks.signer(t) == nil {
		if _, in := ctx.Value(pendingKey{}).(*pending); in {
			return nil, errors.New("token: no active signing key")
		}
		if err := s.rotateKeys(ctx); err != nil {
			return nil, err
		}
		ks = s.keys.Load()
	}
	return ks, nil
}

// sign serializes claims and signs them with the key active now.
func (s *Service) sign(ctx context.Context, typ string, claims any) (string, string, error) {
	ks, err := s.keySetFor(ctx, s.now())
	if err != nil {
		return "", "", err
	}
	k := ks.signer(s.now())
	if k == nil {
		return "", "", errors.New("token: no active signing key")
	}
	payload, err := json.Marshal(claims)
	if err != nil {
		return "", "", fmt.Errorf("token: marshal claims: %w", err)
	}
	signer := k.accessSigner
	if typ == typID {
		signer = k.idSigner
	}
	obj, err := signer.Sign(payload)
	if err != nil {
		return "", "", fmt.Errorf("token: sign: %w", err)
	}
	out, err := obj.CompactSerialize()
	return out, k.kid, err
}

// JWKS returns the public keys as a JWK Set: every key that signs, will
// sign, or signed a token that may not have expired yet.
func (s *Service) JWKS(ctx context.Context) (jose.JSONWebKeySet, error) {
	ks, err := s.keySetFor(ctx, s.now())
	if err != nil {
		return jose.JSONWebKeySet{}, err
	}
	now := s.now()
	set := jose.JSONWebKeySet{Keys: []jose.JSONWebKey{}}
	for _, k := range ks.keys {
		if now.Before(k.expire) {
			set.Keys = append(set.Keys, k.public)
		}
	}
	return set, nil
}

// errBadToken is the one error a caller of verify sees for any token we
// did not issue or that is no longer valid; the reason goes to the logs
// at debug level only.
var errBadToken = errors.New("token: invalid token")

// verify checks a JWT we signed: allowed algorithm, known and published
// key, signature, typ header, iss, and exp/nbf/iat against now. It does
// not check revocation or audience.
func (s *Service) verify(ctx context.Context, raw, typ string, dest any) error {
	if len(raw) > maxTokenLen {
		return errBadToken
	}
	tok, err := jwt.ParseSigned(raw, signingAlgs)
	if err != nil || len(tok.Headers) != 1 {
		return errBadToken
	}
	h := tok.Headers[0]
	if t, _ := h.ExtraHeaders[jose.HeaderType].(string); t != typ {
		return errBadToken
	}
	ks, err := s.keySetFor(ctx, s.now())
	if err != nil {
		return err
	}
	k := ks.verifier(h.KeyID, s.now())
	if k == nil || string(k.alg) != h.Algorithm {
		return errBadToken
	}
	var std jwt.Claims
	if err := tok.Claims(k.public.Key, &std, dest); err != nil {
		return errBadToken
	}
	// nbf and iat get leeway for replicas whose clocks differ slightly
	// (and iat's one-second granularity); exp gets none.
	if err := std.ValidateWithLeeway(jwt.Expected{Issuer: s.cfg.Issuer, Time: s.now()}, clockLeeway); err != nil {
		return errBadToken
	}
	if std.Expiry == nil || std.ID == "" || !s.now().Before(std.Expiry.Time()) {
		return errBadToken
	}
	return nil
}

// clockLeeway is the clock skew tolerated on nbf and iat.
const clockLeeway = 30 * time.Second

// maxTokenLen bounds any token we parse.
const maxTokenLen = 16 << 10
