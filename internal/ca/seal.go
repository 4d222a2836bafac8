package ca

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"errors"
	"fmt"
)

// The sealed state format, version 1:
//
//	"MLCA" | 0x01 | nonce (12 bytes) | AES-256-GCM ciphertext and tag
//
// The 5-byte header is the GCM associated data, so a blob relabelled with
// another version fails authentication instead of being read by the wrong
// decoder. The plaintext is the JSON state (see state.go). A future format
// takes the next version byte; this build refuses versions it does not know
// with an error that says so, instead of guessing.
const (
	sealMagic     = "MLCA"
	sealVersion1  = 1
	sealHeaderLen = len(sealMagic) + 1
	gcmNonceSize  = 12
	gcmTagSize    = 16
	// maxSealedSize bounds the blob Open accepts; the largest legitimate
	// state (maxAuthorities of each kind with upstream chains) is far
	// smaller.
	maxSealedSize = 1 << 20
)

var errSealedFormat = errors.New("ca: stored CA state is not a sealed Moatless CA state (corrupt or from another program)")

func newGCM(kek []byte) (cipher.AEAD, error) {
	block, err := aes.NewCipher(kek)
	if err != nil {
		return nil, fmt.Errorf("ca: key-encryption key: %w", err)
	}
	return cipher.NewGCM(block)
}

// seal encrypts plain under kek. The nonce is random from crypto/rand (never
// from Options.Rand: a repeated nonce under one key breaks GCM).
func seal(kek, plain []byte) ([]byte, error) {
	aead, err := newGCM(kek)
	if err != nil {
		return nil, err
	}
	out := make([]byte, sealHeaderLen+gcmNonceSize, sealHeaderLen+gcmNonceSize+len(plain)+gcmTagSize)
	copy(out, sealMagic)
	out[len(sealMagic)] = sealVersion1
	nonce := out[sealHeaderLen:]
	if _, err := rand.Read(nonce); err != nil {
		return nil, fmt.Errorf("ca: seal CA state: %w", err)
	}
	out = aead.Seal(out, nonce, plain, out[:sealHeaderLen])
	if len(out) > maxSealedSize {
		return nil, fmt.Errorf("ca: sealed CA state is %d bytes, over the %d limit", len(out), maxSealedSize)
	}
	return out, nil
}

// unseal checks the header and decrypts. Every failure of authentication
// is ErrUnseal; a blob that is not in our format at all gets a different
// error so a user is not sent looking for the wrong key.
func unseal(kek, sealed []byte) ([]byte, error) {
	if len(sealed) > maxSealedSize {
		return nil, fmt.Errorf("ca: stored CA state is %d bytes, over the %d limit", len(sealed), maxSealedSize)
	}
	if len(sealed) < sealHeaderLen || string(sealed[:len(sealMagic)]) != sealMagic {
		return nil, errSealedFormat
	}
	if v := sealed[len(sealMagic)]; v != sealVersion1 {
		return nil, fmt.Errorf("ca: stored CA state has format version %d; this build reads version %d (was it written by a newer moatless?)", v, sealVersion1)
	}
	if len(sealed) < sealHeaderLen+gcmNonceSize+gcmTagSize {
		return nil, fmt.Errorf("ca: stored CA state is truncated (%d bytes)", len(sealed))
	}
	aead, err := newGCM(kek)
	if err != nil {
		return nil, err
	}
	nonce := sealed[sealHeaderLen : sealHeaderLen+gcmNonceSize]
	plain, err := aead.Open(nil, nonce, sealed[sealHeaderLen+gcmNonceSize:], sealed[:sealHeaderLen])
	if err != nil {
		return nil, ErrUnseal
	}
	return plain, nil
}
