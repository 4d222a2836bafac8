package ca

import (
	"encoding/base64"
	"encoding/hex"
	"strings"
	"testing"
)

// An authority has one spelling of its ID: 40 lower-case hex digits, or
// the canonical unpadded base64url of a 32-byte thumbprint. Another
// spelling of the same bytes is refused, not looked up as an ID that
// names nothing.
func TestIDKind(t *testing.T) {
	kid := "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8" // bytes 0..31
	skid := "c59c8259ba7bdd049b291090c954e0ece6fd563b"
	tests := []struct {
		name string
		id   string
		want AuthorityKind
	}{
		{"x509", skid, KindX509},
		{"jwt", kid, KindJWT},
		{"x509_upper_case", strings.ToUpper(skid), ""},
		{"x509_colons", "c5:9c:82:59:ba:7b:dd:04:9b:29:10:90:c9:54:e0:ec:e6:fd:56:3b", ""},
		{"x509_short", skid[:38], ""},
		{"x509_space", " " + skid, ""},
		{"jwt_padded", kid + "=", ""},
		{"jwt_std_alphabet", strings.Replace(kid, "A", "+", 1), ""},
		{"jwt_trailing_bits_set", kid[:42] + "9", ""}, // decodes to the same 32 bytes
		{"jwt_trailing_bits_set_2", kid[:42] + "_", ""},
		{"hex_digits_as_jwt", strings.Repeat("a", 42) + "c", KindJWT},
		{"empty", "", ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			k, err := IDKind(tc.id)
			if k != tc.want || (err == nil) != (tc.want != "") {
				t.Fatalf("IDKind(%q) = %q, %v; want %q", tc.id, k, err, tc.want)
			}
		})
	}
}

// FuzzIDKind: an accepted ID is the one canonical spelling of its bytes
// (20 for X.509, 32 for JWT), so two spellings never name one authority.
func FuzzIDKind(f *testing.F) {
	f.Add("c59c8259ba7bdd049b291090c954e0ece6fd563b")
	f.Add("AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8")
	f.Add("AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh9")
	f.Add("")
	f.Fuzz(func(t *testing.T, id string) {
		k, err := IDKind(id)
		if err != nil {
			if k != "" {
				t.Fatalf("IDKind(%q) = %q with error %v", id, k, err)
			}
			return
		}
		switch k {
		case KindX509:
			b, err := hex.DecodeString(id)
			if err != nil || len(b) != 20 || hex.EncodeToString(b) != id {
				t.Fatalf("accepted X.509 ID %q is not 20 bytes in lower-case hex", id)
			}
		case KindJWT:
			b, err := base64.RawURLEncoding.DecodeString(id)
			if err != nil || len(b) != 32 || base64.RawURLEncoding.EncodeToString(b) != id {
				t.Fatalf("accepted JWT ID %q is not the canonical base64url of 32 bytes", id)
			}
		default:
			t.Fatalf("IDKind(%q) = %q", id, k)
		}
	})
}
