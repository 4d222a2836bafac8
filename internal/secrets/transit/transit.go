// Package transit is encryption as a service: named, versioned keys that
// encrypt, decrypt, sign, verify and HMAC without the key ever leaving
// the server, in the shape of Vault's transit engine. Ciphertexts,
// signatures and HMACs carry the key version ("vault:v3:..."), so a key
// rotates without re-encrypting anything, and min_decryption_version
// retires old versions when the data has been rewrapped.
//
// A Key is a value: the methods that change it (Rotate, settings) are
// called by the service under the store's row lock, and the result is
// sealed back. Reads share a Key between goroutines.
package transit

import (
	"crypto"
	"crypto/aes"
	"crypto/cipher"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/hkdf"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"crypto/sha512"
	"crypto/x509"
	"encoding/base64"
	"encoding/pem"
	"errors"
	"fmt"
	"hash"
	"math/big"
	"strconv"
	"strings"
	"sync"
	"time"

	"golang.org/x/crypto/chacha20poly1305"
)

// Key types.
const (
	AES256GCM96      = "aes256-gcm96"
	ChaCha20Poly1305 = "chacha20-poly1305"
	Ed25519          = "ed25519"
	ECDSAP256        = "ecdsa-p256"
)

// Errors callers map to 400.
var (
	ErrBadCiphertext = errors.New("transit: invalid ciphertext")
	ErrDecrypt       = errors.New("transit: decryption failed (tampered ciphertext, wrong key or wrong context)")
	ErrVersion       = errors.New("transit: key version not allowed")
	ErrUnsupported   = errors.New("transit: operation not supported by this key type")
)

// MaxVersions bounds how many versions a key may accumulate.
const MaxVersions = 10000

// Version is one version of a key's material.
type Version struct {
	Key       []byte    `json:"key"`      // AEAD key, ed25519 seed, or PKCS#8 ECDSA key
	HMACKey   []byte    `json:"hmac_key"` // for hmac and for convergent nonces
	CreatedAt time.Time `json:"created_at"`
}

// Key is a named transit key with all its versions.
type Key struct {
	Name                 string           `json:"name"`
	Type                 string           `json:"type"`
	Derived              bool             `json:"derived"`
	Convergent           bool             `json:"convergent_encryption"`
	Exportable           bool             `json:"exportable"`
	DeletionAllowed      bool             `json:"deletion_allowed"`
	AutoRotatePeriod     time.Duration    `json:"auto_rotate_period"`
	LatestVersion        int              `json:"latest_version"`
	MinDecryptionVersion int              `json:"min_decryption_version"`
	MinEncryptionVersion int              `json:"min_encryption_version"`
	MinAvailableVersion  int              `json:"min_available_version"`
	Versions             map[int]*Version `json:"versions"`
	CreatedAt            time.Time        `json:"created_at"`

	// aeads caches the AEAD of each version of a key that is not derived
	// (the AES key schedule is most of the cost of a small encryption).
	aeads sync.Map // int -> cipher.AEAD
}

// ValidType reports whether t is a supported key type.
func ValidType(t string) bool {
	switch t {
	case AES256GCM96, ChaCha20Poly1305, Ed25519, ECDSAP256:
		return true
	}
	return false
}

// New creates a key with version 1.
func New(name, typ string, derived, convergent bool, now time.Time) (*Key, error) {
	if typ == "" {
		typ = AES256GCM96
	}
	if !ValidType(typ) {
		return nil, fmt.Errorf("transit: unknown key type %q (want aes256-gcm96, chacha20-poly1305, ed25519 or ecdsa-p256)", typ)
	}
	if convergent && !derived {
		return nil, errors.New("transit: convergent_encryption requires derived=true")
	}
	if derived && !k(typ).symmetric() && typ != Ed25519 {
		return nil, fmt.Errorf("transit: key type %s cannot be derived", typ)
	}
	if convergent && !k(typ).symmetric() {
		return nil, fmt.Errorf("transit: key type %s cannot do convergent encryption", typ)
	}
	key := &Key{Name: name, Type: typ, Derived: derived, Convergent: convergent, Versions: map[int]*Version{},
		MinDecryptionVersion: 1, CreatedAt: now.UTC()}
	if err := key.Rotate(now); err != nil {
		return nil, err
	}
	return key, nil
}

type k string

func (t k) symmetric() bool { return t == AES256GCM96 || t == ChaCha20Poly1305 }

// Symmetric reports whether the key encrypts (rather than signs).
func (key *Key) Symmetric() bool { return k(key.Type).symmetric() }

// Rotate adds a new latest version.
func (key *Key) Rotate(now time.Time) error {
	if key.LatestVersion >= MaxVersions {
		return fmt.Errorf("transit: key %s has %d versions; trim old ones first", key.Name, MaxVersions)
	}
	v := &Version{HMACKey: make([]byte, 32), CreatedAt: now.UTC()}
	if _, err := rand.Read(v.HMACKey); err != nil {
		return err
	}
	switch key.Type {
	case AES256GCM96, ChaCha20Poly1305:
		v.Key = make([]byte, 32)
		if _, err := rand.Read(v.Key); err != nil {
			return err
		}
	case Ed25519:
		v.Key = make([]byte, ed25519.SeedSize)
		if _, err := rand.Read(v.Key); err != nil {
			return err
		}
	case ECDSAP256:
		pk, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			return err
		}
		if v.Key, err = x509.MarshalPKCS8PrivateKey(pk); err != nil {
			return err
		}
	}
	key.LatestVersion++
	key.Versions[key.LatestVersion] = v
	return nil
}

// encryptVersion picks the version to encrypt with: latest when 0.
func (key *Key) encryptVersion(v int) (int, *Version, error) {
	if v == 0 {
		v = key.LatestVersion
	}
	if v < 1 || v > key.LatestVersion || v < key.MinEncryptionVersion || v < key.MinDecryptionVersion {
		return 0, nil, fmt.Errorf("%w: version %d cannot be used to encrypt or sign (latest %d, min_decryption_version %d, min_encryption_version %d)",
			ErrVersion, v, key.LatestVersion, key.MinDecryptionVersion, key.MinEncryptionVersion)
	}
	kv := key.Versions[v]
	if kv == nil {
		return 0, nil, fmt.Errorf("%w: version %d was trimmed", ErrVersion, v)
	}
	return v, kv, nil
}

func (key *Key) decryptVersion(v int) (*Version, error) {
	if v < key.MinDecryptionVersion {
		return nil, fmt.Errorf("%w: ciphertext version %d is below min_decryption_version %d", ErrVersion, v, key.MinDecryptionVersion)
	}
	kv := key.Versions[v]
	if v > key.LatestVersion || kv == nil {
		return nil, fmt.Errorf("%w: no version %d of key %s", ErrVersion, v, key.Name)
	}
	return kv, nil
}

// material returns the version's key for context: derived keys are
// HKDF-SHA256(key, salt=nil, info="moatless transit v1" || context).
func (key *Key) material(kv *Version, context []byte) ([]byte, error) {
	if !key.Derived {
		if len(context) > 0 {
			return nil, errors.New("transit: context given for a key that is not derived")
		}
		return kv.Key, nil
	}
	if len(context) == 0 {
		return nil, errors.New("transit: context is required for a derived key")
	}
	return hkdf.Key(sha256.New, kv.Key, nil, "moatless transit v1\x00"+string(context), len(kv.Key))
}

// aeadFor is the AEAD of version v for context, cached when the key is
// not derived.
func (key *Key) aeadFor(v int, kv *Version, context []byte) (cipher.AEAD, error) {
	if !key.Derived {
		if a, ok := key.aeads.Load(v); ok {
			if len(context) > 0 {
				return nil, errors.New("transit: context given for a key that is not derived")
			}
			return a.(cipher.AEAD), nil
		}
	}
	m, err := key.material(kv, context)
	if err != nil {
		return nil, err
	}
	a, err := key.aead(m)
	if err != nil {
		return nil, err
	}
	if !key.Derived {
		key.aeads.Store(v, a)
	}
	return a, nil
}

func (key *Key) aead(m []byte) (cipher.AEAD, error) {
	if key.Type == ChaCha20Poly1305 {
		return chacha20poly1305.New(m)
	}
	b, err := aes.NewCipher(m)
	if err != nil {
		return nil, err
	}
	return cipher.NewGCM(b)
}

// Prefix is what every ciphertext, signature and HMAC starts with.
const Prefix = "vault:v"

// Encrypt encrypts plaintext with version (0: latest) for context.
// Convergent keys derive the nonce from the plaintext and context, so
// equal inputs give equal ciphertexts (for lookups on encrypted columns);
// otherwise the nonce is random.
func (key *Key) Encrypt(plaintext, context []byte, version int) (string, error) {
	if !key.Symmetric() {
		return "", fmt.Errorf("%w: %s keys sign, they do not encrypt", ErrUnsupported, key.Type)
	}
	v, kv, err := key.encryptVersion(version)
	if err != nil {
		return "", err
	}
	a, err := key.aeadFor(v, kv, context)
	if err != nil {
		return "", err
	}
	nonce := make([]byte, a.NonceSize())
	if key.Convergent {
		mac := hmac.New(sha256.New, kv.HMACKey)
		mac.Write([]byte("moatless convergent nonce v1\x00"))
		mac.Write([]byte(strconv.Itoa(len(context))))
		mac.Write([]byte{0})
		mac.Write(context)
		mac.Write(plaintext)
		copy(nonce, mac.Sum(nil))
	} else if _, err := rand.Read(nonce); err != nil {
		return "", err
	}
	out := a.Seal(nonce, nonce, plaintext, nil)
	return Prefix + strconv.Itoa(v) + ":" + base64.StdEncoding.EncodeToString(out), nil
}

// MaxCiphertext bounds a ciphertext string.
const MaxCiphertext = 48 << 20

// ParseVersioned splits "vault:vN:payload" into N and the payload.
func ParseVersioned(s string) (int, string, error) {
	if len(s) > MaxCiphertext || !strings.HasPrefix(s, Prefix) {
		return 0, "", fmt.Errorf("%w: must start with %q", ErrBadCiphertext, Prefix+"N:")
	}
	rest := s[len(Prefix):]
	num, payload, ok := strings.Cut(rest, ":")
	if !ok || num == "" || len(num) > 9 || num[0] == '0' {
		return 0, "", fmt.Errorf("%w: malformed version", ErrBadCiphertext)
	}
	v, err := strconv.Atoi(num)
	if err != nil || v < 1 {
		return 0, "", fmt.Errorf("%w: malformed version", ErrBadCiphertext)
	}
	return v, payload, nil
}

// Decrypt decrypts a ciphertext from Encrypt, returning the plaintext and
// the version that encrypted it.
func (key *Key) Decrypt(ciphertext string, context []byte) ([]byte, int, error) {
	if !key.Symmetric() {
		return nil, 0, fmt.Errorf("%w: %s keys sign, they do not decrypt", ErrUnsupported, key.Type)
	}
	v, payload, err := ParseVersioned(ciphertext)
	if err != nil {
		return nil, 0, err
	}
	raw, err := base64.StdEncoding.DecodeString(payload)
	if err != nil {
		return nil, 0, fmt.Errorf("%w: payload is not base64", ErrBadCiphertext)
	}
	kv, err := key.decryptVersion(v)
	if err != nil {
		return nil, 0, err
	}
	a, err := key.aeadFor(v, kv, context)
	if err != nil {
		return nil, 0, err
	}
	if len(raw) < a.NonceSize()+a.Overhead() {
		return nil, 0, fmt.Errorf("%w: too short", ErrBadCiphertext)
	}
	plain, err := a.Open(nil, raw[:a.NonceSize()], raw[a.NonceSize():], nil)
	if err != nil {
		return nil, 0, ErrDecrypt
	}
	return plain, v, nil
}

func hashFor(alg string) (func() hash.Hash, crypto.Hash, error) {
	switch alg {
	case "", "sha2-256":
		return sha256.New, crypto.SHA256, nil
	case "sha2-384":
		return sha512.New384, crypto.SHA384, nil
	case "sha2-512":
		return sha512.New, crypto.SHA512, nil
	}
	return nil, 0, fmt.Errorf("transit: unsupported hash algorithm %q (want sha2-256, sha2-384 or sha2-512)", alg)
}

// HMAC computes the HMAC of input with version's HMAC key (0: latest).
func (key *Key) HMAC(input []byte, version int, alg string) (string, error) {
	v, kv, err := key.encryptVersion(version)
	if err != nil {
		return "", err
	}
	h, _, err := hashFor(alg)
	if err != nil {
		return "", err
	}
	mac := hmac.New(h, kv.HMACKey)
	mac.Write(input)
	return Prefix + strconv.Itoa(v) + ":" + base64.StdEncoding.EncodeToString(mac.Sum(nil)), nil
}

// VerifyHMAC checks an HMAC from HMAC in constant time.
func (key *Key) VerifyHMAC(input []byte, tag, alg string) (bool, error) {
	v, payload, err := ParseVersioned(tag)
	if err != nil {
		return false, err
	}
	kv, err := key.decryptVersion(v)
	if err != nil {
		return false, err
	}
	want, err := base64.StdEncoding.DecodeString(payload)
	if err != nil {
		return false, fmt.Errorf("%w: hmac is not base64", ErrBadCiphertext)
	}
	h, _, err := hashFor(alg)
	if err != nil {
		return false, err
	}
	mac := hmac.New(h, kv.HMACKey)
	mac.Write(input)
	return hmac.Equal(mac.Sum(nil), want), nil
}

func (key *Key) signer(kv *Version, context []byte) (crypto.Signer, error) {
	switch key.Type {
	case Ed25519:
		seed, err := key.material(kv, context)
		if err != nil {
			return nil, err
		}
		return ed25519.NewKeyFromSeed(seed), nil
	case ECDSAP256:
		pk, err := x509.ParsePKCS8PrivateKey(kv.Key)
		if err != nil {
			return nil, err
		}
		return pk.(*ecdsa.PrivateKey), nil
	}
	return nil, fmt.Errorf("%w: %s keys encrypt, they do not sign", ErrUnsupported, key.Type)
}

// SignOptions are the sign/verify request's knobs.
type SignOptions struct {
	HashAlgorithm string // sha2-256 (default), sha2-384, sha2-512; ignored by ed25519
	Prehashed     bool   // input is already the digest (ecdsa only)
	Marshaling    string // asn1 (default) or jws (ecdsa only)
	Context       []byte // derived ed25519 keys
}

// Sign signs input with version (0: latest).
func (key *Key) Sign(input []byte, version int, o SignOptions) (string, error) {
	v, kv, err := key.encryptVersion(version)
	if err != nil {
		return "", err
	}
	s, err := key.signer(kv, o.Context)
	if err != nil {
		return "", err
	}
	var sig []byte
	switch key.Type {
	case Ed25519:
		if o.Prehashed {
			return "", fmt.Errorf("%w: ed25519 signs the message, not a digest", ErrUnsupported)
		}
		sig, err = s.Sign(rand.Reader, input, crypto.Hash(0))
	case ECDSAP256:
		digest, err := digestOf(input, o)
		if err != nil {
			return "", err
		}
		pk := s.(*ecdsa.PrivateKey)
		switch o.Marshaling {
		case "", "asn1":
			sig, err = ecdsa.SignASN1(rand.Reader, pk, digest)
			if err != nil {
				return "", err
			}
		case "jws":
			r, ss, err := ecdsa.Sign(rand.Reader, pk, digest)
			if err != nil {
				return "", err
			}
			sig = make([]byte, 64)
			r.FillBytes(sig[:32])
			ss.FillBytes(sig[32:])
			return Prefix + strconv.Itoa(v) + ":" + base64.RawURLEncoding.EncodeToString(sig), nil
		default:
			return "", fmt.Errorf("transit: marshaling_algorithm %q: want asn1 or jws", o.Marshaling)
		}
	}
	if err != nil {
		return "", err
	}
	return Prefix + strconv.Itoa(v) + ":" + base64.StdEncoding.EncodeToString(sig), nil
}

func digestOf(input []byte, o SignOptions) ([]byte, error) {
	h, ch, err := hashFor(o.HashAlgorithm)
	if err != nil {
		return nil, err
	}
	if o.Prehashed {
		if len(input) != ch.Size() {
			return nil, fmt.Errorf("transit: prehashed input is %d bytes; %s digests are %d", len(input), o.HashAlgorithm, ch.Size())
		}
		return input, nil
	}
	d := h()
	d.Write(input)
	return d.Sum(nil), nil
}

// Verify checks a signature from Sign.
func (key *Key) Verify(input []byte, signature string, o SignOptions) (bool, error) {
	v, payload, err := ParseVersioned(signature)
	if err != nil {
		return false, err
	}
	kv, err := key.decryptVersion(v)
	if err != nil {
		return false, err
	}
	s, err := key.signer(kv, o.Context)
	if err != nil {
		return false, err
	}
	enc := base64.StdEncoding
	if o.Marshaling == "jws" {
		enc = base64.RawURLEncoding
	}
	sig, err := enc.DecodeString(payload)
	if err != nil {
		return false, fmt.Errorf("%w: signature is not base64", ErrBadCiphertext)
	}
	switch key.Type {
	case Ed25519:
		return ed25519.Verify(s.Public().(ed25519.PublicKey), input, sig), nil
	default:
		digest, err := digestOf(input, o)
		if err != nil {
			return false, err
		}
		pub := s.Public().(*ecdsa.PublicKey)
		if o.Marshaling == "jws" {
			if len(sig) != 64 {
				return false, nil
			}
			r, ss := new(big.Int).SetBytes(sig[:32]), new(big.Int).SetBytes(sig[32:])
			return ecdsa.Verify(pub, digest, r, ss), nil
		}
		return ecdsa.VerifyASN1(pub, digest, sig), nil
	}
}

// PublicKey returns version v's public key (PEM for ECDSA, base64 for
// ed25519, as Vault shows them); "" for symmetric keys.
func (key *Key) PublicKey(v int) (string, error) {
	kv := key.Versions[v]
	if kv == nil || key.Symmetric() {
		return "", nil
	}
	if key.Type == Ed25519 && key.Derived {
		return "", nil // per-context keys: no single public key
	}
	s, err := key.signer(kv, nil)
	if err != nil {
		return "", err
	}
	if key.Type == Ed25519 {
		return base64.StdEncoding.EncodeToString(s.Public().(ed25519.PublicKey)), nil
	}
	der, err := x509.MarshalPKIXPublicKey(s.Public())
	if err != nil {
		return "", err
	}
	return string(pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der})), nil
}

// Trim drops versions below minAvailable (which may not exceed
// min_decryption_version or min_encryption_version).
func (key *Key) Trim(minAvailable int) error {
	if minAvailable > key.MinDecryptionVersion || (key.MinEncryptionVersion > 0 && minAvailable > key.MinEncryptionVersion) {
		return fmt.Errorf("transit: min_available_version %d exceeds min_decryption_version or min_encryption_version", minAvailable)
	}
	for v := range key.Versions {
		if v < minAvailable {
			delete(key.Versions, v)
		}
	}
	key.MinAvailableVersion = minAvailable
	return nil
}
