package transit

import (
	"bytes"
	"crypto/sha256"
	"errors"
	"strings"
	"testing"
	"time"
)

var t0 = time.Unix(1700000000, 0)

func TestEncryptDecryptRotate(t *testing.T) {
	for _, typ := range []string{AES256GCM96, ChaCha20Poly1305} {
		t.Run(typ, func(t *testing.T) {
			k, err := New("orders", typ, false, false, t0)
			if err != nil {
				t.Fatal(err)
			}
			ct, err := k.Encrypt([]byte("4111 1111 1111 1111"), nil, 0)
			if err != nil {
				t.Fatal(err)
			}
			if !strings.HasPrefix(ct, "vault:v1:") {
				t.Fatalf("ciphertext %q", ct)
			}
			pt, v, err := k.Decrypt(ct, nil)
			if err != nil || string(pt) != "4111 1111 1111 1111" || v != 1 {
				t.Fatalf("Decrypt = %q v%d %v", pt, v, err)
			}
			k.Rotate(t0)
			ct2, _ := k.Encrypt([]byte("x"), nil, 0)
			if !strings.HasPrefix(ct2, "vault:v2:") {
				t.Fatalf("after rotate: %q", ct2)
			}
			if _, _, err := k.Decrypt(ct, nil); err != nil {
				t.Fatalf("old version no longer decrypts: %v", err)
			}
			k.MinDecryptionVersion = 2
			if _, _, err := k.Decrypt(ct, nil); !errors.Is(err, ErrVersion) {
				t.Fatalf("below min_decryption_version: %v", err)
			}
			if _, err := k.Encrypt([]byte("x"), nil, 1); !errors.Is(err, ErrVersion) {
				t.Fatalf("encrypt with retired version: %v", err)
			}
		})
	}
}

func TestTamperedCiphertextRefused(t *testing.T) {
	k, _ := New("k", AES256GCM96, false, false, t0)
	ct, _ := k.Encrypt([]byte("secret"), nil, 0)
	tests := []struct {
		name string
		ct   string
		want error
	}{
		{"flipped_payload", ct[:20] + flip(ct[20:]), ErrDecrypt},
		{"no_prefix", strings.TrimPrefix(ct, "vault:"), ErrBadCiphertext},
		{"leading_zero_version", strings.Replace(ct, "v1", "v01", 1), ErrBadCiphertext},
		{"unknown_version", strings.Replace(ct, "v1", "v7", 1), ErrVersion},
		{"not_base64", "vault:v1:!!!", ErrBadCiphertext},
		{"too_short", "vault:v1:AAAA", ErrBadCiphertext},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if _, _, err := k.Decrypt(tc.ct, nil); !errors.Is(err, tc.want) {
				t.Fatalf("err = %v, want %v", err, tc.want)
			}
		})
	}
}

func flip(s string) string {
	if s[0] == 'A' {
		return "B" + s[1:]
	}
	return "A" + s[1:]
}

func TestDerivedConvergent(t *testing.T) {
	k, err := New("pii", AES256GCM96, true, true, t0)
	if err != nil {
		t.Fatal(err)
	}
	ctx := []byte("customer-42")
	a, _ := k.Encrypt([]byte("123-45-6789"), ctx, 0)
	b, _ := k.Encrypt([]byte("123-45-6789"), ctx, 0)
	c, _ := k.Encrypt([]byte("123-45-6789"), []byte("customer-43"), 0)
	if a != b || a == c {
		t.Fatalf("convergence: a==b %v, a==c %v", a == b, a == c)
	}
	if _, _, err := k.Decrypt(a, []byte("customer-43")); !errors.Is(err, ErrDecrypt) {
		t.Fatalf("wrong context decrypted: %v", err)
	}
	if _, err := k.Encrypt([]byte("x"), nil, 0); err == nil {
		t.Fatal("derived key encrypted without context")
	}
	if _, err := New("x", AES256GCM96, false, true, t0); err == nil {
		t.Fatal("convergent without derived accepted")
	}
}

func TestSignVerify(t *testing.T) {
	for _, typ := range []string{Ed25519, ECDSAP256} {
		t.Run(typ, func(t *testing.T) {
			k, _ := New("signer", typ, false, false, t0)
			for _, o := range []SignOptions{{}, {HashAlgorithm: "sha2-512"}, {Marshaling: "jws"}} {
				if typ == Ed25519 && o.Marshaling == "jws" {
					continue
				}
				sig, err := k.Sign([]byte("release-1.2.3"), 0, o)
				if err != nil {
					t.Fatal(err)
				}
				if ok, err := k.Verify([]byte("release-1.2.3"), sig, o); !ok || err != nil {
					t.Fatalf("verify %+v: %v %v", o, ok, err)
				}
				if ok, _ := k.Verify([]byte("release-1.2.4"), sig, o); ok {
					t.Fatalf("verify of another message succeeded %+v", o)
				}
			}
			if _, err := k.Encrypt([]byte("x"), nil, 0); !errors.Is(err, ErrUnsupported) {
				t.Fatalf("signing key encrypted: %v", err)
			}
			if pk, err := k.PublicKey(1); err != nil || pk == "" {
				t.Fatalf("public key: %q %v", pk, err)
			}
		})
	}
	k, _ := New("p", ECDSAP256, false, false, t0)
	d := sha256.Sum256([]byte("m"))
	sig, err := k.Sign(d[:], 0, SignOptions{Prehashed: true})
	if err != nil {
		t.Fatal(err)
	}
	if ok, _ := k.Verify([]byte("m"), sig, SignOptions{}); !ok {
		t.Fatal("prehashed signature does not verify against the message")
	}
}

func TestHMAC(t *testing.T) {
	k, _ := New("h", AES256GCM96, false, false, t0)
	tag, err := k.HMAC([]byte("msg"), 0, "")
	if err != nil {
		t.Fatal(err)
	}
	if ok, _ := k.VerifyHMAC([]byte("msg"), tag, ""); !ok {
		t.Fatal("hmac does not verify")
	}
	if ok, _ := k.VerifyHMAC([]byte("msh"), tag, ""); ok {
		t.Fatal("hmac of other input verified")
	}
}

func FuzzDecrypt(f *testing.F) {
	k, _ := New("f", AES256GCM96, false, false, t0)
	ct, _ := k.Encrypt([]byte("p"), nil, 0)
	f.Add(ct)
	f.Add("vault:v1:")
	f.Add("vault:v999999999:AAAA")
	f.Fuzz(func(t *testing.T, s string) {
		pt, _, err := k.Decrypt(s, nil)
		if err == nil && s != ct && !bytes.Equal(pt, []byte("p")) {
			t.Fatalf("forged ciphertext decrypted to %q", pt)
		}
		k.VerifyHMAC([]byte("x"), s, "")
	})
}
