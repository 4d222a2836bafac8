// Package barrier is the secrets service's encryption at rest: a root key
// (from a key file, an environment variable, or a passphrase stretched with
// argon2id) wraps a keyring of data keys, and every stored secret, transit
// key and database DSN is sealed with the keyring's active data key under
// AES-256-GCM, bound to where it is stored.
//
// The root key never reaches the store; the keyring reaches it only
// sealed. A blob sealed for one place ("kv/secret/app/3") does not open
// for another: the place is GCM associated data, so a store administrator
// cannot move ciphertexts between rows to have one secret served as
// another.
//
// Formats, version 1:
//
//	keyring: "MLKR" | 0x01 | nonce(12) | GCM(root, JSON keyring), AD = the 5-byte header
//	blob:    "MLSB" | 0x01 | term(4, big endian) | nonce(12) | GCM(data key[term], plain), AD = the 9-byte header | place
package barrier

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/hkdf"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"sync/atomic"
	"time"

	"golang.org/x/crypto/argon2"
)

// KeySize is the size of the root key and of every data key.
const KeySize = 32

// Errors callers branch on.
var (
	// ErrSealed: the barrier has no keyring yet (no root key was given).
	ErrSealed = errors.New("barrier: the secrets service is sealed")
	// ErrWrongKey: the root key (or passphrase) does not open the keyring.
	ErrWrongKey = errors.New("barrier: the root key does not open this store's keyring (wrong key or passphrase)")
	// ErrCorrupt: a sealed blob failed authentication or is malformed.
	ErrCorrupt = errors.New("barrier: sealed value is corrupt or was moved from another place")
)

const (
	keyringMagic = "MLKR"
	blobMagic    = "MLSB"
	version1     = 1
	nonceSize    = 12
	tagSize      = 16
	blobHeader   = 4 + 1 + 4
	// MaxBlob bounds what Open accepts (a KV version is at most 1 MiB of
	// JSON; transit key sets are far smaller).
	MaxBlob = 4 << 20
)

// KDF says how the root key was obtained. The zero value (Alg "") is a
// raw key; "argon2id" names a passphrase stretched with Salt and the cost
// parameters. It is stored beside the keyring in the clear: none of it is
// secret, and a server needs it to derive the key again.
type KDF struct {
	Alg     string `json:"alg,omitempty"`
	Salt    []byte `json:"salt,omitempty"`
	Memory  uint32 `json:"memory,omitempty"` // KiB
	Time    uint32 `json:"time,omitempty"`
	Threads uint8  `json:"threads,omitempty"`
}

// NewPassphraseKDF returns argon2id parameters with a fresh 16-byte salt:
// 64 MiB, 3 passes, 4 lanes (RFC 9106's second recommended option), a
// cost paid once at unseal.
func NewPassphraseKDF() (KDF, error) {
	salt := make([]byte, 16)
	if _, err := rand.Read(salt); err != nil {
		return KDF{}, fmt.Errorf("barrier: salt: %w", err)
	}
	return KDF{Alg: "argon2id", Salt: salt, Memory: 64 * 1024, Time: 3, Threads: 4}, nil
}

// MinPassphraseLen is the shortest passphrase accepted.
const MinPassphraseLen = 12

// DeriveKey stretches a passphrase into a root key with k's parameters.
func (k KDF) DeriveKey(passphrase []byte) ([]byte, error) {
	if k.Alg != "argon2id" {
		return nil, fmt.Errorf("barrier: this store's keyring is sealed with a root key, not a passphrase: give the key instead")
	}
	if len(passphrase) < MinPassphraseLen {
		return nil, fmt.Errorf("barrier: passphrase shorter than %d characters", MinPassphraseLen)
	}
	if len(k.Salt) < 16 || k.Memory < 19*1024 || k.Memory > 4<<20 || k.Time < 1 || k.Time > 20 || k.Threads < 1 {
		return nil, fmt.Errorf("barrier: stored argon2id parameters are out of range")
	}
	return argon2.IDKey(passphrase, k.Salt, k.Time, k.Memory, k.Threads, KeySize), nil
}

// ParseKey reads a root key from a key file or variable: exactly 32 raw
// bytes, or 32 bytes in standard or URL-safe base64, or hex, with
// surrounding white space ignored. The error never quotes the input.
func ParseKey(b []byte) ([]byte, error) {
	if len(b) == KeySize {
		return append([]byte(nil), b...), nil
	}
	s := strings.TrimSpace(string(b))
	for _, dec := range []func(string) ([]byte, error){
		base64.StdEncoding.DecodeString, base64.RawStdEncoding.DecodeString,
		base64.URLEncoding.DecodeString, base64.RawURLEncoding.DecodeString, hex.DecodeString,
	} {
		if k, err := dec(s); err == nil && len(k) == KeySize {
			return k, nil
		}
	}
	return nil, fmt.Errorf("barrier: a root key is %d bytes, raw or in base64 or hex (generate one with: head -c 32 /dev/urandom | base64)", KeySize)
}

// NewKey returns a fresh random root key.
func NewKey() ([]byte, error) {
	k := make([]byte, KeySize)
	if _, err := rand.Read(k); err != nil {
		return nil, fmt.Errorf("barrier: generate key: %w", err)
	}
	return k, nil
}

// Keyring holds the data keys by term; Active seals, every term opens.
// A Keyring is immutable once built: Rotate returns a new one.
type Keyring struct {
	active uint32
	keys   map[uint32]cipher.AEAD
	raw    []keyringTerm
}

type keyringTerm struct {
	Term      uint32    `json:"term"`
	Key       []byte    `json:"key"`
	CreatedAt time.Time `json:"created_at"`
}

type keyringJSON struct {
	Active uint32        `json:"active"`
	Terms  []keyringTerm `json:"terms"`
}

// NewKeyring returns a keyring with one fresh data key, term 1.
func NewKeyring(now time.Time) (*Keyring, error) {
	k, err := NewKey()
	if err != nil {
		return nil, err
	}
	return buildKeyring(keyringJSON{Active: 1, Terms: []keyringTerm{{Term: 1, Key: k, CreatedAt: now.UTC()}}})
}

func buildKeyring(j keyringJSON) (*Keyring, error) {
	kr := &Keyring{active: j.Active, keys: map[uint32]cipher.AEAD{}, raw: j.Terms}
	for _, t := range j.Terms {
		if len(t.Key) != KeySize || t.Term == 0 {
			return nil, fmt.Errorf("barrier: keyring term %d is malformed", t.Term)
		}
		a, err := newGCM(t.Key)
		if err != nil {
			return nil, err
		}
		kr.keys[t.Term] = a
	}
	if kr.keys[kr.active] == nil {
		return nil, fmt.Errorf("barrier: keyring has no active term %d", kr.active)
	}
	return kr, nil
}

// Rotate returns a keyring with a new active data key; older terms still
// open what they sealed.
func (k *Keyring) Rotate(now time.Time) (*Keyring, error) {
	key, err := NewKey()
	if err != nil {
		return nil, err
	}
	j := keyringJSON{Active: k.active + 1, Terms: append(append([]keyringTerm(nil), k.raw...), keyringTerm{Term: k.active + 1, Key: key, CreatedAt: now.UTC()})}
	return buildKeyring(j)
}

// Term is the active term.
func (k *Keyring) Term() uint32 { return k.active }

func newGCM(key []byte) (cipher.AEAD, error) {
	b, err := aes.NewCipher(key)
	if err != nil {
		return nil, fmt.Errorf("barrier: %w", err)
	}
	return cipher.NewGCM(b)
}

// SealKeyring encrypts the keyring under the root key.
func (k *Keyring) SealKeyring(root []byte) ([]byte, error) {
	if len(root) != KeySize {
		return nil, fmt.Errorf("barrier: root key must be %d bytes", KeySize)
	}
	plain, err := json.Marshal(keyringJSON{Active: k.active, Terms: k.raw})
	if err != nil {
		return nil, err
	}
	defer clear(plain)
	a, err := newGCM(root)
	if err != nil {
		return nil, err
	}
	out := make([]byte, 5+nonceSize, 5+nonceSize+len(plain)+tagSize)
	copy(out, keyringMagic)
	out[4] = version1
	if _, err := rand.Read(out[5:]); err != nil {
		return nil, fmt.Errorf("barrier: nonce: %w", err)
	}
	return a.Seal(out, out[5:5+nonceSize], plain, out[:5]), nil
}

// OpenKeyring decrypts a sealed keyring with the root key: ErrWrongKey
// when authentication fails.
func OpenKeyring(root, sealed []byte) (*Keyring, error) {
	if len(root) != KeySize {
		return nil, fmt.Errorf("barrier: root key must be %d bytes", KeySize)
	}
	if len(sealed) < 5+nonceSize+tagSize || len(sealed) > MaxBlob || string(sealed[:4]) != keyringMagic {
		return nil, errors.New("barrier: the stored keyring is not a Moatless keyring (corrupt store?)")
	}
	if sealed[4] != version1 {
		return nil, fmt.Errorf("barrier: the stored keyring has format %d; this build reads %d", sealed[4], version1)
	}
	a, err := newGCM(root)
	if err != nil {
		return nil, err
	}
	plain, err := a.Open(nil, sealed[5:5+nonceSize], sealed[5+nonceSize:], sealed[:5])
	if err != nil {
		return nil, ErrWrongKey
	}
	defer clear(plain)
	var j keyringJSON
	if err := json.Unmarshal(plain, &j); err != nil {
		return nil, fmt.Errorf("barrier: keyring: %w", err)
	}
	return buildKeyring(j)
}

// Seal encrypts plain for place with the active data key.
func (k *Keyring) Seal(place string, plain []byte) ([]byte, error) {
	out := make([]byte, blobHeader+nonceSize, blobHeader+nonceSize+len(plain)+tagSize)
	copy(out, blobMagic)
	out[4] = version1
	binary.BigEndian.PutUint32(out[5:9], k.active)
	if _, err := rand.Read(out[blobHeader:]); err != nil {
		return nil, fmt.Errorf("barrier: nonce: %w", err)
	}
	ad := append(append(make([]byte, 0, blobHeader+len(place)), out[:blobHeader]...), place...)
	return k.keys[k.active].Seal(out, out[blobHeader:blobHeader+nonceSize], plain, ad), nil
}

// Open decrypts a blob sealed for place. Every failure is ErrCorrupt (or
// names an unknown term), never the plaintext.
func (k *Keyring) Open(place string, blob []byte) ([]byte, error) {
	if len(blob) < blobHeader+nonceSize+tagSize || len(blob) > MaxBlob || string(blob[:4]) != blobMagic || blob[4] != version1 {
		return nil, ErrCorrupt
	}
	term := binary.BigEndian.Uint32(blob[5:9])
	a := k.keys[term]
	if a == nil {
		return nil, fmt.Errorf("%w: data key term %d is not in the keyring", ErrCorrupt, term)
	}
	ad := append(append(make([]byte, 0, blobHeader+len(place)), blob[:blobHeader]...), place...)
	plain, err := a.Open(nil, blob[blobHeader:blobHeader+nonceSize], blob[blobHeader+nonceSize:], ad)
	if err != nil {
		return nil, ErrCorrupt
	}
	return plain, nil
}

// Barrier holds the keyring once unsealed. Safe for concurrent use.
type Barrier struct{ kr atomic.Pointer[Keyring] }

// Set installs the keyring (unseal).
func (b *Barrier) Set(k *Keyring) { b.kr.Store(k) }

// Keyring returns the keyring, or ErrSealed.
func (b *Barrier) Keyring() (*Keyring, error) {
	if k := b.kr.Load(); k != nil {
		return k, nil
	}
	return nil, ErrSealed
}

// Sealed reports whether no keyring is installed.
func (b *Barrier) Sealed() bool { return b.kr.Load() == nil }

// Seal seals with the installed keyring (ErrSealed without one).
func (b *Barrier) Seal(place string, plain []byte) ([]byte, error) {
	k, err := b.Keyring()
	if err != nil {
		return nil, err
	}
	return k.Seal(place, plain)
}

// Open opens with the installed keyring (ErrSealed without one).
func (b *Barrier) Open(place string, blob []byte) ([]byte, error) {
	k, err := b.Keyring()
	if err != nil {
		return nil, err
	}
	return k.Open(place, blob)
}

// Derive returns a 32-byte key for label, stable across keyring rotations
// (it is derived from the first term's data key): the audit HMAC key.
func (k *Keyring) Derive(label string) ([]byte, error) {
	first := k.raw[0]
	for _, t := range k.raw {
		if t.Term < first.Term {
			first = t
		}
	}
	return hkdf.Key(sha256.New, first.Key, nil, "moatless barrier derive v1\x00"+label, KeySize)
}
