package ca

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/go-jose/go-jose/v4"
	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// AuthorityKind says what an authority signs.
type AuthorityKind string

// Authority kinds.
const (
	KindX509 AuthorityKind = "x509"
	KindJWT  AuthorityKind = "jwt"
)

// AuthorityState is where an authority is in its life (see the package doc).
type AuthorityState string

// Authority states.
const (
	StatePrepared AuthorityState = "prepared"
	StateActive   AuthorityState = "active"
	StateRetired  AuthorityState = "retired"
	// StateTainted is a retired authority an operator marked compromised
	// (Taint): still in the bundle, so what it signed keeps verifying for
	// the moment it takes to replace it, but marked there so that every
	// holder replaces it at once. Revoke then removes it.
	StateTainted AuthorityState = "tainted"
	// StateRevoked is a tainted authority an operator revoked (Revoke):
	// gone from the bundle and never trusted again. Status lists it until
	// its NotAfter; it is not part of the state's authorities.
	StateRevoked AuthorityState = "revoked"
)

// Authority describes one signing key for `moatless ca show`. It holds no
// key material.
type Authority struct {
	Kind AuthorityKind `json:"kind"`
	// ID is the X.509 CA certificate's subject key ID (lower-case hex), or
	// the JWT key ID (`kid`, the RFC 7638 SHA-256 thumbprint, base64url).
	ID        string         `json:"id"`
	State     AuthorityState `json:"state"`
	NotBefore time.Time      `json:"not_before"`
	// NotAfter is when the authority expires and is dropped from the
	// bundle; nothing it signed outlives it.
	NotAfter   time.Time `json:"not_after"`
	PreparedAt time.Time `json:"prepared_at"`
	// ActivateAt is when Tick will activate a prepared authority.
	ActivateAt  time.Time `json:"activate_at,omitzero"`
	ActivatedAt time.Time `json:"activated_at,omitzero"`
	RetiredAt   time.Time `json:"retired_at,omitzero"`
	TaintedAt   time.Time `json:"tainted_at,omitzero"`
	RevokedAt   time.Time `json:"revoked_at,omitzero"`
	// Fingerprint is the SHA-256 of the X.509 certificate (lower-case
	// hex); empty for JWT authorities.
	Fingerprint string `json:"fingerprint,omitempty"`
	// Issuer is the X.509 certificate's issuer (itself for a self-signed
	// root, the upstream CA otherwise); empty for JWT authorities.
	Issuer string `json:"issuer,omitempty"`
	// Certificate is the X.509 CA certificate; nil for JWT authorities.
	Certificate *x509.Certificate `json:"-"`
}

// stateVersion is the version of the JSON schema inside the sealed blob.
const stateVersion = 1

// state is the CA's persistent state: what the sealed blob holds. A state
// value is never modified once it has been saved or published in a
// snapshot; transitions build a new one.
type state struct {
	Version     int    `json:"version"`
	TrustDomain string `json:"trust_domain"`
	// Sequence is the bundle's sequence number: it grows with every
	// change of the bundle's content.
	Sequence uint64 `json:"sequence"`
	// Generation grows with every saved state, also when the bundle does
	// not change (an activation): a replayed older state at the same
	// Sequence is told apart by it.
	Generation uint64   `json:"generation,omitempty"`
	X509       []record `json:"x509"`
	JWT        []record `json:"jwt"`
	// Revoked lists the authorities an operator revoked, kept until their
	// NotAfter: a state that holds one of them again is refused.
	Revoked []revoked `json:"revoked,omitempty"`
}

// revoked is a revoked authority as stored: no key, only what is needed
// to recognise it again.
type revoked struct {
	Kind AuthorityKind `json:"kind"`
	ID   string        `json:"id"`
	// Cert is the revoked X.509 CA certificate (DER), so that a
	// certificate it signed is recognised by its issuer; empty for JWT.
	Cert      []byte    `json:"cert,omitempty"`
	NotBefore time.Time `json:"not_before"`
	NotAfter  time.Time `json:"not_after"`
	RevokedAt time.Time `json:"revoked_at"`

	cert *x509.Certificate
}

// record is one authority as stored.
type record struct {
	ID    string         `json:"id"`
	State AuthorityState `json:"state"`
	Key   []byte         `json:"key"`            // PKCS#8 DER private key
	Cert  []byte         `json:"cert,omitempty"` // X.509: the CA certificate, DER
	// Chain holds the upstream certificates above Cert, excluding roots
	// (X.509 with an upstream only); SVID chains carry them.
	Chain [][]byte `json:"chain,omitempty"`
	// Roots are the trust anchors of Cert when it was signed by an
	// upstream CA; a self-signed Cert is its own anchor.
	Roots [][]byte `json:"roots,omitempty"`
	// RootsOf, in a stored state only, names the earlier X.509 record
	// whose Roots this record's are (encodeState stores a large upstream
	// bundle once, not once per authority); decodeState puts them back.
	RootsOf string `json:"roots_of,omitempty"`
	// Parent is "" for a self-signed root, else the SHA-256 (hex) of the
	// upstream signing certificate, to notice a change of upstream.
	Parent      string    `json:"parent,omitempty"`
	NotBefore   time.Time `json:"not_before"`
	NotAfter    time.Time `json:"not_after"`
	PreparedAt  time.Time `json:"prepared_at"`
	ActivateAt  time.Time `json:"activate_at,omitzero"`
	ActivatedAt time.Time `json:"activated_at,omitzero"`
	RetiredAt   time.Time `json:"retired_at,omitzero"`
	TaintedAt   time.Time `json:"tainted_at,omitzero"`

	p *parsed // decoded key and certificates; shared, never mutated
}

type parsed struct {
	signer crypto.Signer
	cert   *x509.Certificate   // X.509 only
	chain  []*x509.Certificate // X.509 only
	roots  []*x509.Certificate // X.509 only
}

// anchors are the certificates a record contributes to the bundle.
func (r *record) anchors() []*x509.Certificate {
	if r.Parent == "" {
		return []*x509.Certificate{r.p.cert}
	}
	return r.p.roots
}

// compactStateSize is the plain state size above which encodeState
// stores each distinct upstream bundle once (RootsOf). Every X.509
// authority signed by an upstream CA holds the upstream roots, so a
// bundle of a few hundred KiB, repeated by the prepared, active and
// retired authorities, would take the sealed state past maxSealedSize
// after a rotation or two: the next rotation could not be saved and the
// CA would run out of an active authority. Below it the state is written
// as before, so replicas of an older build still read it.
const compactStateSize = 256 << 10

// encodeState encodes st for sealing. A state over compactStateSize
// stores each X.509 record's Roots once: a later record with the same
// roots names the first by RootsOf. st is not modified.
func encodeState(st *state) ([]byte, error) {
	b, err := json.Marshal(st)
	if err != nil {
		return nil, fmt.Errorf("ca: encode CA state: %w", err)
	}
	if len(b) <= compactStateSize {
		return b, nil
	}
	cp := *st
	cp.X509 = slices.Clone(st.X509)
	compacted := false
	for i := range cp.X509 {
		r := &cp.X509[i]
		if len(r.Roots) == 0 {
			continue
		}
		for j := range i {
			if o := st.X509[j]; len(o.Roots) > 0 && slices.EqualFunc(o.Roots, r.Roots, bytes.Equal) && cp.X509[j].RootsOf == "" {
				r.Roots, r.RootsOf, compacted = nil, o.ID, true
				break
			}
		}
	}
	if !compacted {
		return b, nil
	}
	clear(b)
	if b, err = json.Marshal(&cp); err != nil {
		return nil, fmt.Errorf("ca: encode CA state: %w", err)
	}
	return b, nil
}

// expandRoots puts back the Roots of the X.509 records that name an
// earlier record's by RootsOf (encodeState), so the state in memory
// always holds every record's roots.
func expandRoots(list []record) error {
	for i := range list {
		r := &list[i]
		if r.RootsOf == "" {
			continue
		}
		if len(r.Roots) > 0 {
			return fmt.Errorf("X.509 authority %d has both roots and roots_of", i)
		}
		j := slices.IndexFunc(list[:i], func(o record) bool { return o.ID == r.RootsOf })
		if j < 0 || list[j].RootsOf != "" || len(list[j].Roots) == 0 {
			return fmt.Errorf("X.509 authority %d: roots_of %q names no earlier authority with roots", i, r.RootsOf)
		}
		r.Roots, r.RootsOf = list[j].Roots, ""
	}
	return nil
}

// decodeState parses and fully validates the plaintext state: strict JSON
// (unknown fields and trailing data refused), the trust domain, and every
// authority's key and certificate. A state that fails is refused whole.
func decodeState(plain []byte, td spiffeid.TrustDomain) (*state, error) {
	dec := json.NewDecoder(bytes.NewReader(plain))
	dec.DisallowUnknownFields()
	var st state
	if err := dec.Decode(&st); err != nil {
		return nil, fmt.Errorf("ca: saved CA state is invalid: %w", err)
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		return nil, errors.New("ca: saved CA state is invalid: trailing data")
	}
	if st.Version != stateVersion {
		return nil, fmt.Errorf("ca: saved CA state has schema version %d; this build reads %d", st.Version, stateVersion)
	}
	if st.TrustDomain != td.Name() {
		return nil, fmt.Errorf("ca: saved CA state is for trust domain %q, but the server is configured for %q: use the data directory of that trust domain, or a new one", st.TrustDomain, td.Name())
	}
	if len(st.X509) > 2*maxAuthorities {
		return nil, fmt.Errorf("ca: saved CA state is invalid: %d %s authorities", len(st.X509), KindX509)
	}
	for i := range st.JWT {
		if st.JWT[i].RootsOf != "" {
			return nil, fmt.Errorf("ca: saved CA state is invalid: %s authority %d: JWT authority with X.509 fields", KindJWT, i)
		}
	}
	if err := expandRoots(st.X509); err != nil {
		return nil, fmt.Errorf("ca: saved CA state is invalid: %w", err)
	}
	for _, k := range []struct {
		kind AuthorityKind
		list []record
	}{{KindX509, st.X509}, {KindJWT, st.JWT}} {
		if len(k.list) > 2*maxAuthorities {
			return nil, fmt.Errorf("ca: saved CA state is invalid: %d %s authorities", len(k.list), k.kind)
		}
		var active, prepared int
		ids := map[string]bool{}
		for i := range k.list {
			r := &k.list[i]
			if err := r.parse(k.kind, td); err != nil {
				return nil, fmt.Errorf("ca: saved CA state is invalid: %s authority %d: %w", k.kind, i, err)
			}
			if ids[r.ID] {
				return nil, fmt.Errorf("ca: saved CA state is invalid: duplicate %s authority %s", k.kind, r.ID)
			}
			ids[r.ID] = true
			switch r.State {
			case StateActive:
				active++
			case StatePrepared:
				prepared++
			}
		}
		if active > 1 || prepared > 1 {
			return nil, fmt.Errorf("ca: saved CA state is invalid: %d active and %d prepared %s authorities", active, prepared, k.kind)
		}
	}
	if len(st.Revoked) > maxRevoked {
		return nil, fmt.Errorf("ca: saved CA state is invalid: %d revoked authorities", len(st.Revoked))
	}
	for i := range st.Revoked {
		v := &st.Revoked[i]
		if err := v.parse(); err != nil {
			return nil, fmt.Errorf("ca: saved CA state is invalid: revoked authority %d: %w", i, err)
		}
		if st.holds(v.ID) {
			return nil, fmt.Errorf("ca: saved CA state is invalid: revoked %s authority %s is still an authority", v.Kind, v.ID)
		}
	}
	return &st, nil
}

// parse decodes and checks one stored authority and sets r.p.
func (r *record) parse(kind AuthorityKind, td spiffeid.TrustDomain) error {
	switch r.State {
	case StatePrepared, StateActive, StateRetired:
		if !r.TaintedAt.IsZero() {
			return errors.New("a taint time on an authority that is not tainted")
		}
	case StateTainted:
		if r.TaintedAt.IsZero() {
			return errors.New("tainted without a taint time")
		}
	default:
		return fmt.Errorf("unknown state %q", r.State)
	}
	if r.NotBefore.IsZero() || !r.NotAfter.After(r.NotBefore) {
		return errors.New("bad validity period")
	}
	if r.State == StatePrepared && r.ActivateAt.IsZero() {
		return errors.New("prepared without an activation time")
	}
	k, err := x509.ParsePKCS8PrivateKey(r.Key)
	if err != nil {
		return fmt.Errorf("private key: %w", err)
	}
	signer, ok := k.(crypto.Signer)
	if !ok {
		return fmt.Errorf("private key of type %T cannot sign", k)
	}
	p := &parsed{signer: signer}
	switch kind {
	case KindJWT:
		if len(r.Cert) > 0 || len(r.Chain) > 0 || len(r.Roots) > 0 || r.Parent != "" {
			return errors.New("JWT authority with X.509 fields")
		}
		ek, ok := signer.(*ecdsa.PrivateKey)
		if !ok || ek.Curve != elliptic.P256() {
			return errors.New("JWT key is not ECDSA P-256")
		}
		kid, err := jwtKeyID(signer.Public())
		if err != nil {
			return err
		}
		if kid != r.ID {
			return fmt.Errorf("key ID %q does not match the key", r.ID)
		}
	case KindX509:
		cert, err := x509.ParseCertificate(r.Cert)
		if err != nil {
			return fmt.Errorf("certificate: %w", err)
		}
		if !cert.IsCA || !cert.BasicConstraintsValid || cert.KeyUsage&x509.KeyUsageCertSign == 0 {
			return errors.New("certificate is not a signing certificate")
		}
		if pub, ok := signer.Public().(interface{ Equal(crypto.PublicKey) bool }); !ok || !pub.Equal(cert.PublicKey) {
			return errors.New("certificate does not match the private key")
		}
		if hex.EncodeToString(cert.SubjectKeyId) != r.ID {
			return fmt.Errorf("ID %q does not match the certificate's subject key ID", r.ID)
		}
		if !cert.NotBefore.Equal(r.NotBefore) || !cert.NotAfter.Equal(r.NotAfter) {
			return errors.New("validity period does not match the certificate")
		}
		if len(cert.URIs) != 1 || cert.URIs[0].String() != td.IDString() {
			return errors.New("certificate is not for this trust domain")
		}
		p.cert = cert
		for _, der := range r.Chain {
			c, err := x509.ParseCertificate(der)
			if err != nil {
				return fmt.Errorf("upstream chain: %w", err)
			}
			p.chain = append(p.chain, c)
		}
		for _, der := range r.Roots {
			c, err := x509.ParseCertificate(der)
			if err != nil {
				return fmt.Errorf("upstream root: %w", err)
			}
			p.roots = append(p.roots, c)
		}
		if r.Parent == "" {
			if len(r.Chain) > 0 || len(r.Roots) > 0 {
				return errors.New("self-signed root with an upstream chain")
			}
			if err := cert.CheckSignatureFrom(cert); err != nil {
				return fmt.Errorf("self-signed root: %w", err)
			}
		} else {
			if len(p.roots) == 0 {
				return errors.New("upstream-signed certificate without roots")
			}
			// At NotAfter−1s every certificate on the path is valid: an
			// intermediate is never made to outlive its upstream.
			if _, err := verifyCAChain(cert, p.chain, p.roots, cert.NotAfter.Add(-time.Second)); err != nil {
				return err
			}
		}
	default:
		return fmt.Errorf("unknown kind %q", kind)
	}
	r.p = p
	return nil
}

// parse checks a revoked record and sets v.cert.
func (v *revoked) parse() error {
	if v.ID == "" || v.RevokedAt.IsZero() || !v.NotAfter.After(v.NotBefore) {
		return errors.New("incomplete record")
	}
	switch v.Kind {
	case KindJWT:
		if len(v.Cert) > 0 {
			return errors.New("JWT authority with a certificate")
		}
	case KindX509:
		cert, err := x509.ParseCertificate(v.Cert)
		if err != nil {
			return fmt.Errorf("certificate: %w", err)
		}
		if hex.EncodeToString(cert.SubjectKeyId) != v.ID {
			return fmt.Errorf("ID %q does not match the certificate's subject key ID", v.ID)
		}
		v.cert = cert
	default:
		return fmt.Errorf("unknown kind %q", v.Kind)
	}
	return nil
}

// holds reports whether id is one of st's authorities (of either kind).
func (st *state) holds(id string) bool {
	for _, l := range [][]record{st.X509, st.JWT} {
		for i := range l {
			if l[i].ID == id {
				return true
			}
		}
	}
	return false
}

// isRevoked reports whether st lists id as revoked.
func (st *state) isRevoked(id string) bool {
	for i := range st.Revoked {
		if st.Revoked[i].ID == id {
			return true
		}
	}
	return false
}

// verifyCAChain checks that the CA certificate cert chains through
// intermediates to one of roots at time at.
func verifyCAChain(cert *x509.Certificate, intermediates, roots []*x509.Certificate, at time.Time) ([][]*x509.Certificate, error) {
	rp, ip := x509.NewCertPool(), x509.NewCertPool()
	for _, c := range roots {
		rp.AddCert(c)
	}
	for _, c := range intermediates {
		ip.AddCert(c)
	}
	chains, err := cert.Verify(x509.VerifyOptions{
		Roots:         rp,
		Intermediates: ip,
		CurrentTime:   at,
		KeyUsages:     []x509.ExtKeyUsage{x509.ExtKeyUsageAny},
	})
	if err != nil {
		return nil, fmt.Errorf("certificate does not chain to the upstream roots: %w", err)
	}
	return chains, nil
}

// jwtKeyID is the RFC 7638 JWK thumbprint (SHA-256, base64url): stable for
// a key, and different keys never share one.
func jwtKeyID(pub crypto.PublicKey) (string, error) {
	tp, err := (&jose.JSONWebKey{Key: pub}).Thumbprint(crypto.SHA256)
	if err != nil {
		return "", fmt.Errorf("ca: JWT key thumbprint: %w", err)
	}
	return base64.RawURLEncoding.EncodeToString(tp), nil
}

// bundleKey identifies the bundle's content (anchors and JWT keys, not the
// sequence number), so a transition knows whether the bundle changed.
func bundleKey(st *state) string {
	var parts []string
	for i := range st.X509 {
		for _, c := range st.X509[i].anchors() {
			sum := sha256.Sum256(c.Raw)
			parts = append(parts, "x:"+hex.EncodeToString(sum[:]))
		}
	}
	for i := range st.JWT {
		parts = append(parts, "j:"+st.JWT[i].ID)
	}
	for _, l := range [][]record{st.X509, st.JWT} {
		for i := range l {
			if l[i].State == StateTainted {
				parts = append(parts, "t:"+l[i].ID)
			}
		}
	}
	sort.Strings(parts)
	return strings.Join(slices.Compact(parts), ",")
}

// buildBundle makes the go-spiffe bundle for a state.
func buildBundle(td spiffeid.TrustDomain, st *state, refresh time.Duration) (*spiffebundle.Bundle, error) {
	b := spiffebundle.New(td)
	for i := range st.X509 {
		for _, c := range st.X509[i].anchors() {
			b.AddX509Authority(c) // ignores duplicates
		}
	}
	for i := range st.JWT {
		r := &st.JWT[i]
		if err := b.AddJWTAuthority(r.ID, r.p.signer.Public()); err != nil {
			return nil, fmt.Errorf("ca: build bundle: %w", err)
		}
	}
	b.SetSequenceNumber(st.Sequence)
	b.SetRefreshHint(refresh)
	return b, nil
}

func authorityStatus(kind AuthorityKind, r *record) Authority {
	a := Authority{
		Kind:        kind,
		ID:          r.ID,
		State:       r.State,
		NotBefore:   r.NotBefore,
		NotAfter:    r.NotAfter,
		PreparedAt:  r.PreparedAt,
		ActivatedAt: r.ActivatedAt,
		RetiredAt:   r.RetiredAt,
		TaintedAt:   r.TaintedAt,
	}
	if r.State == StatePrepared {
		a.ActivateAt = r.ActivateAt
	}
	if kind == KindX509 {
		sum := sha256.Sum256(r.p.cert.Raw)
		a.Fingerprint = hex.EncodeToString(sum[:])
		a.Issuer = r.p.cert.Issuer.String()
		a.Certificate = r.p.cert
	}
	return a
}

// publicKeyEqual reports whether two public keys are the same key.
func publicKeyEqual(a, b crypto.PublicKey) bool {
	switch k := a.(type) {
	case *ecdsa.PublicKey:
		return k.Equal(b)
	case *rsa.PublicKey:
		return k.Equal(b)
	case ed25519.PublicKey:
		return k.Equal(b)
	}
	return false
}
