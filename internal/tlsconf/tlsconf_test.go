package tlsconf

import (
	"crypto/tls"
	"slices"
	"strings"
	"testing"
)

func TestCipherSuitesAreSecureAEAD(t *testing.T) {
	secure := map[uint16]bool{}
	for _, cs := range tls.CipherSuites() {
		secure[cs.ID] = true
	}
	for _, id := range CipherSuites {
		if !secure[id] {
			t.Errorf("%s is not among crypto/tls's secure suites", tls.CipherSuiteName(id))
		}
		if !AEAD(id) {
			t.Errorf("%s is offered but not AEAD", tls.CipherSuiteName(id))
		}
	}
	// CBC, RC4 and 3DES suites, secure-listed or not, are not AEAD.
	for _, cs := range append(tls.CipherSuites(), tls.InsecureCipherSuites()...) {
		notAEAD := strings.Contains(cs.Name, "_CBC_") || strings.Contains(cs.Name, "_RC4_")
		if notAEAD && AEAD(cs.ID) {
			t.Errorf("AEAD(%s) = true", cs.Name)
		}
		if !notAEAD && !AEAD(cs.ID) {
			t.Errorf("AEAD(%s) = false", cs.Name)
		}
	}
}

func TestServer(t *testing.T) {
	tests := []struct {
		name    string
		min     uint16
		wantMin uint16
	}{
		{"zero_raised_to_tls12", 0, tls.VersionTLS12},
		{"tls10_raised_to_tls12", tls.VersionTLS10, tls.VersionTLS12},
		{"tls12_kept", tls.VersionTLS12, tls.VersionTLS12},
		{"tls13_only_kept", tls.VersionTLS13, tls.VersionTLS13},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := &tls.Config{MinVersion: tt.min, CipherSuites: []uint16{tls.TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA}}
			if got := Server(c); got != c {
				t.Fatal("Server returned another config")
			}
			if c.MinVersion != tt.wantMin {
				t.Errorf("MinVersion = %x, want %x", c.MinVersion, tt.wantMin)
			}
			if !slices.Equal(c.CipherSuites, CipherSuites) {
				t.Errorf("CipherSuites = %v, want the AEAD list", c.CipherSuites)
			}
		})
	}
}
