package ca

import (
	"crypto/ecdsa"
	"crypto/rand"
	"crypto/sha256"
	"testing"
)

// BenchmarkSignX509SVID measures issuance as the server does it: parse the
// CSR, verify its signature, sign the certificate (crypto/x509 also
// verifies what it signed) and parse the result. P-256 throughout.
//
//	go test -run '^$' -bench 'SignX509SVID|SignJWTSVID' -benchmem ./internal/ca/
func BenchmarkSignX509SVID(b *testing.B) {
	e := newEnv(b, nil)
	csr := csrFor(b, newP256(b), nil)
	b.Run("serial", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if _, err := e.ca.SignX509SVID(csr, testID, 0); err != nil {
				b.Fatal(err)
			}
		}
		b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "svids/s")
	})
	b.Run("parallel", func(b *testing.B) {
		b.ReportAllocs()
		b.RunParallel(func(pb *testing.PB) {
			for pb.Next() {
				if _, err := e.ca.SignX509SVID(csr, testID, 0); err != nil {
					b.Error(err)
					return
				}
			}
		})
		b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "svids/s")
	})
}

func BenchmarkSignJWTSVID(b *testing.B) {
	e := newEnv(b, nil)
	aud := []string{"spiffe://example.org/reports"}
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if _, _, err := e.ca.SignJWTSVID(testID, aud, 0); err != nil {
				b.Error(err)
				return
			}
		}
	})
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "svids/s")
}

// BenchmarkP256Baseline measures the primitives issuance is made of, on the
// same machine, so the issuance figure can be read against the hardware:
// an X509-SVID costs two P-256 verifications (the CSR's proof of
// possession, and crypto/x509's check of its own signature) and one
// signature, plus ASN.1 work.
func BenchmarkP256Baseline(b *testing.B) {
	key := newP256(b)
	digest := sha256.Sum256([]byte("tbs"))
	sig, err := ecdsa.SignASN1(rand.Reader, key, digest[:])
	if err != nil {
		b.Fatal(err)
	}
	b.Run("sign", func(b *testing.B) {
		for b.Loop() {
			if _, err := ecdsa.SignASN1(rand.Reader, key, digest[:]); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("verify", func(b *testing.B) {
		for b.Loop() {
			if !ecdsa.VerifyASN1(&key.PublicKey, digest[:], sig) {
				b.Fatal("bad signature")
			}
		}
	})
}
