package authn

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rsa"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"

	jose "github.com/go-jose/go-jose/v4"
)

// Algorithms are the JWS algorithms a token may use, all asymmetric. "none"
// and the HMAC algorithms (HS256/384/512) are never accepted: with a key
// set of public keys, HMAC would let anyone holding the public key (that
// is, anyone) sign (the RS256→HS256 confusion of RFC 8725 section 2.1).
var Algorithms = []jose.SignatureAlgorithm{
	jose.RS256, jose.RS384, jose.RS512,
	jose.PS256, jose.PS384, jose.PS512,
	jose.ES256, jose.ES384, jose.ES512,
	jose.EdDSA,
}

// Key-set limits. A JWKS with more keys than maxJWKSKeys is refused as a
// whole; RSA keys outside [minRSABits, maxRSABits] are skipped (short keys
// are breakable, huge ones make every verification expensive).
const (
	maxJWKSKeys = 100
	minRSABits  = 2048
	maxRSABits  = 8192
	// maxKIDLen bounds a kid in a token or a key set.
	maxKIDLen = 256
	// maxTriesWithoutKID bounds how many keys a token without kid may
	// cost: each try is a signature verification an attacker can trigger.
	maxTriesWithoutKID = 8
)

// errNoUsableKeys: the document parsed but no key in it can verify.
var errNoUsableKeys = errors.New("no usable signing key in key set")

// jwk is one usable verification key.
type jwk struct {
	kid    string
	hasKID bool
	// alg is the key's own alg restriction, "" when it has none.
	alg jose.SignatureAlgorithm
	pub crypto.PublicKey // *rsa.PublicKey, *ecdsa.PublicKey or ed25519.PublicKey
}

// keySet is an immutable parsed JWKS. Its pointer identity is the key-set
// generation: verified-token cache entries remember the set they were
// checked against and are re-verified when it changes.
type keySet struct {
	keys   []*jwk
	byKID  map[string][]*jwk
	noKID  []*jwk
	digest [sha256.Size]byte // of the document, to notice an unchanged refresh
}

// skippedKey reports a key left out of a set, for a log line. It never
// holds key material: only the kid, the key type and why.
type skippedKey struct {
	kid    string
	kty    string
	reason string
}

// parseJWKS parses a JSON Web Key Set (RFC 7517 section 5) strictly: one
// JSON object without duplicate members, a "keys" array of at most
// maxJWKSKeys entries. Keys that cannot be used for verification here are
// skipped and reported (symmetric keys, private keys, encryption keys,
// unsupported types or curves, weak RSA, an alg outside Algorithms);
// usable keys are kept. A set with no usable key is an error, so a fetch
// that returns one never replaces a working set.
func parseJWKS(data []byte) (*keySet, []skippedKey, error) {
	if err := checkStrictJSON(data); err != nil {
		return nil, nil, fmt.Errorf("key set: %w", err)
	}
	var doc struct {
		Keys *[]json.RawMessage `json:"keys"`
	}
	if err := json.Unmarshal(data, &doc); err != nil {
		return nil, nil, fmt.Errorf("key set: %w", err)
	}
	if doc.Keys == nil {
		return nil, nil, errors.New(`key set: no "keys" member`)
	}
	if n := len(*doc.Keys); n > maxJWKSKeys {
		return nil, nil, fmt.Errorf("key set: %d keys, more than the limit of %d", n, maxJWKSKeys)
	}
	ks := &keySet{byKID: map[string][]*jwk{}, digest: sha256.Sum256(data)}
	var skipped []skippedKey
	for _, raw := range *doc.Keys {
		k, sk := parseJWK(raw)
		if k == nil {
			skipped = append(skipped, sk)
			continue
		}
		ks.keys = append(ks.keys, k)
		if k.hasKID {
			ks.byKID[k.kid] = append(ks.byKID[k.kid], k)
		} else {
			ks.noKID = append(ks.noKID, k)
		}
	}
	if len(ks.keys) == 0 {
		return nil, skipped, errNoUsableKeys
	}
	return ks, skipped, nil
}

// jwkMeta holds the members go-jose does not expose or that we check
// before handing the key to it.
type jwkMeta struct {
	Kty    string   `json:"kty"`
	Kid    *string  `json:"kid"`
	Use    string   `json:"use"`
	KeyOps []string `json:"key_ops"`
	Alg    string   `json:"alg"`
	// D is the private exponent (RSA, EC, OKP): its presence alone says
	// private key material was published.
	D json.RawMessage `json:"d"`
}

// parseJWK turns one key-set entry into a usable key, or says why not.
func parseJWK(raw json.RawMessage) (*jwk, skippedKey) {
	var meta jwkMeta
	if err := json.Unmarshal(raw, &meta); err != nil {
		return nil, skippedKey{reason: "not a JSON object with string members"}
	}
	sk := skippedKey{kty: meta.Kty}
	if meta.Kid != nil {
		sk.kid = *meta.Kid
		if len(sk.kid) > maxKIDLen {
			sk.kid = sk.kid[:maxKIDLen]
			return nil, withReason(sk, "kid longer than 256 bytes")
		}
	}
	switch meta.Kty {
	case "RSA", "EC", "OKP":
	case "oct":
		return nil, withReason(sk, "symmetric key (HMAC is never accepted)")
	default:
		return nil, withReason(sk, "unsupported key type")
	}
	if meta.D != nil {
		// Refuse before parsing: validating a private key is costly, and
		// a published private key is compromised whatever it is.
		return nil, withReason(sk, "private key material published in a key set")
	}
	if meta.Use != "" && meta.Use != "sig" {
		return nil, withReason(sk, "key use is not sig")
	}
	if meta.KeyOps != nil && !slices.Contains(meta.KeyOps, "verify") {
		return nil, withReason(sk, "key_ops does not include verify")
	}
	var alg jose.SignatureAlgorithm
	if meta.Alg != "" {
		alg = jose.SignatureAlgorithm(meta.Alg)
		if !slices.Contains(Algorithms, alg) {
			return nil, withReason(sk, "key alg is not an accepted signature algorithm")
		}
	}
	var k jose.JSONWebKey
	if err := k.UnmarshalJSON(raw); err != nil {
		// go-jose's message can name a field but never carries key bytes;
		// still, keep the reason generic so no parser detail leaks.
		return nil, withReason(sk, "invalid key parameters")
	}
	if !k.IsPublic() {
		return nil, withReason(sk, "private key material published in a key set")
	}
	out := &jwk{alg: alg, kid: sk.kid, hasKID: meta.Kid != nil}
	switch pub := k.Key.(type) {
	case *rsa.PublicKey:
		if bits := pub.N.BitLen(); bits < minRSABits || bits > maxRSABits {
			return nil, withReason(sk, fmt.Sprintf("RSA key of %d bits (accepted: %d to %d)", bits, minRSABits, maxRSABits))
		}
		out.pub = pub
	case *ecdsa.PublicKey:
		switch pub.Curve {
		case elliptic.P256(), elliptic.P384(), elliptic.P521():
		default:
			return nil, withReason(sk, "unsupported elliptic curve")
		}
		out.pub = pub
	case ed25519.PublicKey:
		out.pub = pub
	default:
		return nil, withReason(sk, "unsupported key type")
	}
	if alg != "" && !keyFits(out.pub, alg) {
		return nil, withReason(sk, "key alg does not match the key type")
	}
	return out, sk
}

func withReason(sk skippedKey, reason string) skippedKey {
	sk.reason = reason
	return sk
}

// keyFits reports whether pub can verify signatures made with alg: RSA keys
// for RS* and PS*, each ECDSA curve for its one ES* algorithm, Ed25519 for
// EdDSA. This is the alg/key agreement RFC 8725 section 3.1 asks for.
func keyFits(pub crypto.PublicKey, alg jose.SignatureAlgorithm) bool {
	switch p := pub.(type) {
	case *rsa.PublicKey:
		return strings.HasPrefix(string(alg), "RS") || strings.HasPrefix(string(alg), "PS")
	case *ecdsa.PublicKey:
		switch alg {
		case jose.ES256:
			return p.Curve == elliptic.P256()
		case jose.ES384:
			return p.Curve == elliptic.P384()
		case jose.ES512:
			return p.Curve == elliptic.P521()
		}
		return false
	case ed25519.PublicKey:
		return alg == jose.EdDSA
	}
	return false
}

// candidates returns the keys that may verify a token with this alg and
// kid. With a kid, only keys carrying exactly that kid qualify (keys the
// set publishes without any kid are tried too, as Envoy does: their owner
// made them usable for any token). Without a kid, every fitting key does,
// at most maxTriesWithoutKID of them. ErrUnknownKey means no key has the
// kid (a refresh may help); ErrKeyMismatch means keys with the kid exist
// but none fits alg.
func (ks *keySet) candidates(alg jose.SignatureAlgorithm, kid string, hasKID bool) ([]*jwk, error) {
	var pool []*jwk
	if hasKID {
		pool = ks.byKID[kid]
		if len(pool) == 0 {
			pool = ks.noKID
		}
		if len(pool) == 0 {
			return nil, tokenErr(ErrUnknownKey, "kid "+quote(kid))
		}
	} else {
		pool = ks.keys
	}
	var out []*jwk
	for _, k := range pool {
		if k.alg != "" && k.alg != alg {
			continue
		}
		if !keyFits(k.pub, alg) {
			continue
		}
		out = append(out, k)
		if !hasKID && len(out) == maxTriesWithoutKID {
			break
		}
	}
	if len(out) == 0 {
		if hasKID {
			return nil, tokenErr(ErrKeyMismatch, "kid "+quote(kid)+" cannot verify alg "+quote(string(alg)))
		}
		return nil, tokenErr(ErrUnknownKey, "no key for alg "+quote(string(alg)))
	}
	return out, nil
}

// kids lists the key IDs in the set, for a log line on rotation.
func (ks *keySet) kids() []string {
	out := make([]string, 0, len(ks.keys))
	for _, k := range ks.keys {
		if k.hasKID {
			out = append(out, k.kid)
		}
	}
	return out
}
