package barrier

import (
	"bytes"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"strings"
	"testing"
	"time"
)

func TestSealOpen(t *testing.T) {
	now := time.Unix(1700000000, 0)
	kr, err := NewKeyring(now)
	if err != nil {
		t.Fatal(err)
	}
	blob, err := kr.Seal("kv/secret/app/1", []byte("hunter2"))
	if err != nil {
		t.Fatal(err)
	}
	if bytes.Contains(blob, []byte("hunter2")) {
		t.Fatal("plaintext visible in blob")
	}
	got, err := kr.Open("kv/secret/app/1", blob)
	if err != nil || string(got) != "hunter2" {
		t.Fatalf("Open = %q, %v", got, err)
	}
	tests := []struct {
		name  string
		place string
		blob  func() []byte
	}{
		{"other_place", "kv/secret/app/2", func() []byte { return blob }},
		{"flipped_byte", "kv/secret/app/1", func() []byte { b := bytes.Clone(blob); b[len(b)-1] ^= 1; return b }},
		{"truncated", "kv/secret/app/1", func() []byte { return blob[:20] }},
		{"wrong_magic", "kv/secret/app/1", func() []byte { b := bytes.Clone(blob); b[0] = 'X'; return b }},
		{"unknown_term", "kv/secret/app/1", func() []byte { b := bytes.Clone(blob); b[8] = 9; return b }},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := kr.Open(tc.place, tc.blob()); !errors.Is(err, ErrCorrupt) {
				t.Fatalf("err = %v, want ErrCorrupt", err)
			}
		})
	}
	// Rotation: the old term still opens, the new one seals.
	kr2, err := kr.Rotate(now)
	if err != nil {
		t.Fatal(err)
	}
	if got, err := kr2.Open("kv/secret/app/1", blob); err != nil || string(got) != "hunter2" {
		t.Fatalf("after rotate: %q, %v", got, err)
	}
	b2, _ := kr2.Seal("x", []byte("y"))
	if _, err := kr.Open("x", b2); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("old keyring opened a new term: %v", err)
	}
}

func TestKeyringRootKey(t *testing.T) {
	kr, _ := NewKeyring(time.Now())
	root, _ := NewKey()
	sealed, err := kr.SealKeyring(root)
	if err != nil {
		t.Fatal(err)
	}
	kr2, err := OpenKeyring(root, sealed)
	if err != nil {
		t.Fatal(err)
	}
	blob, _ := kr.Seal("p", []byte("v"))
	if v, err := kr2.Open("p", blob); err != nil || string(v) != "v" {
		t.Fatalf("reopened keyring: %q %v", v, err)
	}
	wrong, _ := NewKey()
	if _, err := OpenKeyring(wrong, sealed); !errors.Is(err, ErrWrongKey) {
		t.Fatalf("wrong key: %v", err)
	}
	if _, err := OpenKeyring(root, []byte("garbage")); err == nil || errors.Is(err, ErrWrongKey) {
		t.Fatalf("garbage keyring: %v", err)
	}
}

func TestParseKey(t *testing.T) {
	raw := bytes.Repeat([]byte{7}, 32)
	tests := []struct {
		name string
		in   []byte
		ok   bool
	}{
		{"raw_32_bytes", raw, true},
		{"base64_with_newline", []byte(base64.StdEncoding.EncodeToString(raw) + "\n"), true},
		{"base64url_unpadded", []byte(base64.RawURLEncoding.EncodeToString(raw)), true},
		{"hex", []byte(hex.EncodeToString(raw)), true},
		{"too_short", []byte("c2hvcnQ="), false},
		{"empty", nil, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			k, err := ParseKey(tc.in)
			if tc.ok != (err == nil) {
				t.Fatalf("err = %v", err)
			}
			if tc.ok && !bytes.Equal(k, raw) {
				t.Fatal("wrong key")
			}
			if err != nil && strings.Contains(err.Error(), string(tc.in)) && len(tc.in) > 0 {
				t.Fatal("error quotes the input")
			}
		})
	}
}

func TestPassphrase(t *testing.T) {
	k, err := NewPassphraseKDF()
	if err != nil {
		t.Fatal(err)
	}
	k.Memory, k.Time = 19*1024, 1 // keep the test quick
	a, err := k.DeriveKey([]byte("correct horse battery"))
	if err != nil {
		t.Fatal(err)
	}
	b, _ := k.DeriveKey([]byte("correct horse battery"))
	c, _ := k.DeriveKey([]byte("correct horse batterz"))
	if !bytes.Equal(a, b) || bytes.Equal(a, c) || len(a) != KeySize {
		t.Fatal("derivation is not a function of the passphrase")
	}
	if _, err := k.DeriveKey([]byte("short")); err == nil {
		t.Fatal("short passphrase accepted")
	}
	if _, err := (KDF{}).DeriveKey([]byte("correct horse battery")); err == nil {
		t.Fatal("raw-key keyring accepted a passphrase")
	}
}

func TestBarrierSealed(t *testing.T) {
	var b Barrier
	if _, err := b.Seal("p", nil); !errors.Is(err, ErrSealed) {
		t.Fatalf("sealed barrier sealed: %v", err)
	}
	kr, _ := NewKeyring(time.Now())
	b.Set(kr)
	if b.Sealed() {
		t.Fatal("still sealed")
	}
}

func FuzzOpen(f *testing.F) {
	kr, _ := NewKeyring(time.Unix(0, 0))
	blob, _ := kr.Seal("p", []byte("v"))
	f.Add(blob)
	f.Add([]byte("MLSB\x01\x00\x00\x00\x01"))
	f.Fuzz(func(t *testing.T, b []byte) {
		if v, err := kr.Open("p", b); err == nil && !bytes.Equal(b, blob) && string(v) != "v" {
			t.Fatalf("forged blob opened: %q", v)
		}
	})
}

func FuzzParseKey(f *testing.F) {
	f.Add([]byte("AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA="))
	f.Fuzz(func(t *testing.T, b []byte) {
		if k, err := ParseKey(b); err == nil && len(k) != KeySize {
			t.Fatalf("key of %d bytes", len(k))
		}
	})
}
