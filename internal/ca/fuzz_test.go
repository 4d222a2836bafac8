package ca

import (
	"bytes"
	"context"
	"crypto/x509"
	"encoding/pem"
	"net/url"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
)

// FuzzUnseal: any stored blob either fails or unseals to a state this CA
// sealed (which then decodes); it never panics. Mutated blobs fail
// authentication. (Seeds are sealed in the coordinating process with other
// keys but the same KEK, so "what was sealed" is checked by decoding.)
func FuzzUnseal(f *testing.F) {
	e := newEnv(f, nil)
	good, _ := e.store.snapshot()
	f.Add(good)
	f.Add([]byte("MLCA\x01"))
	f.Add([]byte("MLCA\x02" + string(good[5:])))
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, b []byte) {
		got, err := unseal(testKEK, b)
		if err != nil {
			if bytes.HasPrefix(b, []byte("MLCA\x01")) && len(b) >= sealHeaderLen+gcmNonceSize+gcmTagSize && len(b) <= maxSealedSize && !isErr(err, ErrUnseal) {
				t.Fatalf("well-formed blob failed with %v, want ErrUnseal", err)
			}
			return
		}
		if _, err := decodeState(got, testTD); err != nil {
			t.Fatalf("a blob unsealed to something we never sealed: %v", err)
		}
	})
}

// FuzzDecodeState: the plaintext state parser refuses or accepts; when it
// accepts, the state must build a usable snapshot and re-encode to a state
// that decodes the same.
func FuzzDecodeState(f *testing.F) {
	e := newEnv(f, nil)
	e.clock.Advance(13 * time.Hour)
	if _, err := e.ca.Tick(context.Background()); err != nil {
		f.Fatal(err)
	}
	blob, _ := e.store.snapshot()
	plain, err := unseal(testKEK, blob)
	if err != nil {
		f.Fatal(err)
	}
	f.Add(plain)
	// A state with tainted and revoked authorities of both kinds.
	ctx := context.Background()
	for _, k := range []AuthorityKind{KindX509, KindJWT} {
		old := idsIn(e.ca, k, StateActive)[0]
		if _, _, err := e.ca.Activate(ctx, k, ""); err != nil {
			f.Fatal(err)
		}
		if _, _, err := e.ca.Taint(ctx, k, old); err != nil {
			f.Fatal(err)
		}
		if _, _, err := e.ca.Revoke(ctx, k, old); err != nil {
			f.Fatal(err)
		}
		e.clock.Advance(time.Minute)
		if _, _, err := e.ca.Prepare(ctx, k); err != nil {
			f.Fatal(err)
		}
		if _, _, err := e.ca.Activate(ctx, k, ""); err != nil {
			f.Fatal(err)
		}
		if _, _, err := e.ca.Prepare(ctx, k); err != nil {
			f.Fatal(err)
		}
		if _, _, err := e.ca.Activate(ctx, k, ""); err != nil {
			f.Fatal(err)
		}
		if _, _, err := e.ca.Taint(ctx, k, idsIn(e.ca, k, StateRetired)[0]); err != nil {
			f.Fatal(err)
		}
	}
	blob, _ = e.store.snapshot()
	if plain, err = unseal(testKEK, blob); err != nil {
		f.Fatal(err)
	}
	f.Add(plain)
	f.Add([]byte(`{"version":1,"trust_domain":"example.org","sequence":1,"x509":[],"jwt":[]}`))
	f.Add([]byte(`{"version":1,"trust_domain":"example.org","x509":[{"state":"active","key":"AA=="}]}`))
	f.Add([]byte(`null`))
	f.Fuzz(func(t *testing.T, b []byte) {
		st, err := decodeState(b, testTD)
		if err != nil {
			return
		}
		if _, err := e.ca.buildSnapshot(st); err != nil {
			t.Fatalf("accepted state does not build: %v", err)
		}
		again, err := encodeState(st)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := decodeState(again, testTD); err != nil {
			t.Fatalf("re-encoded state refused: %v", err)
		}
	})
}

// FuzzSignX509SVID: whatever the CSR bytes, the CA refuses with
// ErrInvalidCSR or issues a conforming SVID for the requested ID alone.
func FuzzSignX509SVID(f *testing.F) {
	e := newEnv(f, nil)
	f.Add(csrFor(f, newP256(f), nil))
	f.Add(csrFor(f, newP256(f), &x509.CertificateRequest{URIs: []*url.URL{mustURL(f, "spiffe://example.org/other")}, DNSNames: []string{"x"}}))
	f.Add([]byte{0x30, 0x00})
	f.Fuzz(func(t *testing.T, csr []byte) {
		is, err := e.ca.SignX509SVID(csr, testID, 0)
		if err != nil {
			if !isErr(err, ErrInvalidCSR) {
				t.Fatalf("error is not ErrInvalidCSR: %v", err)
			}
			return
		}
		leaf := is.Chain[0]
		if len(leaf.URIs) != 1 || leaf.URIs[0].String() != testID.String() || len(leaf.DNSNames) != 0 || leaf.IsCA {
			t.Fatalf("issued a non-conforming SVID: %v %v", leaf.URIs, leaf.DNSNames)
		}
		if _, _, err := x509svid.Verify(is.Chain, e.ca.Bundle(), x509svid.WithTime(e.clock.Now())); err != nil {
			t.Fatalf("issued SVID does not verify: %v", err)
		}
	})
}

// FuzzParseUpstream: the upstream PEM parser never panics and accepts only
// a key that matches a CA certificate chaining to the roots.
func FuzzParseUpstream(f *testing.F) {
	now := time.Now()
	org := newOrgPKI(f, now, 24*time.Hour)
	certPEM, rootPEM := pemCerts(org.inter), pemCerts(org.root)
	der, _ := x509.MarshalPKCS8PrivateKey(org.interKey)
	keyPEM := pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der})
	f.Add(certPEM, keyPEM, rootPEM)
	f.Add(append(certPEM, rootPEM...), keyPEM, []byte{})
	f.Add([]byte("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"), keyPEM, rootPEM)
	f.Fuzz(func(t *testing.T, c, k, r []byte) {
		u, err := parseUpstream(c, k, r)
		if err != nil {
			return
		}
		if !publicKeyEqual(u.Signer.Public(), u.Chain[0].PublicKey) || !u.Chain[0].IsCA || len(u.Roots) == 0 {
			t.Fatalf("accepted an invalid upstream")
		}
	})
}
