package ca

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"fmt"
	"net/url"
	"slices"
	"time"

	"github.com/go-jose/go-jose/v4"
	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// caBackdate is how far a new CA certificate's NotBefore is set in the
// past, so relying parties whose clocks run a little behind accept it.
const caBackdate = time.Minute

// advance computes the state that follows st at now. It returns st itself
// when nothing is due. rotate asks for an admin rotation (see Rotate).
// Callers hold c.mu. Nothing here has effects beyond generating keys.
func (c *CA) advance(st *state, now time.Time, rotate bool) (*state, bool, error) {
	x, xch, err := c.advanceKind(KindX509, st.X509, now, rotate)
	if err != nil {
		return nil, false, err
	}
	j, jch, err := c.advanceKind(KindJWT, st.JWT, now, rotate)
	if err != nil {
		return nil, false, err
	}
	// A revoked authority is remembered until its NotAfter; by then
	// nothing it signed is valid, and a state that still held it would
	// drop it as expired.
	rev := slices.DeleteFunc(slices.Clone(st.Revoked), func(v revoked) bool { return !now.Before(v.NotAfter) })
	if !xch && !jch && len(rev) == len(st.Revoked) {
		return st, false, nil
	}
	next := &state{Version: stateVersion, TrustDomain: st.TrustDomain, Sequence: st.Sequence, Generation: st.Generation + 1, X509: x, JWT: j, Revoked: rev}
	changed := bundleKey(st) != bundleKey(next)
	if changed {
		next.Sequence++
	}
	return next, changed, nil
}

func (c *CA) defaultTTL(kind AuthorityKind) time.Duration {
	if kind == KindX509 {
		return c.o.X509SVIDTTL
	}
	return c.o.JWTSVIDTTL
}

// activationTarget is when, by schedule, the successor of the active
// authority a should start signing: at 5/6 of a's life, or earlier if a
// would otherwise have to cap default-TTL SVIDs.
func (c *CA) activationTarget(kind AuthorityKind, a *record) time.Time {
	life := a.NotAfter.Sub(a.NotBefore)
	t := a.NotBefore.Add(life / 6 * 5)
	if capAt := a.NotAfter.Add(-c.defaultTTL(kind)); capAt.Before(t) {
		t = capAt
	}
	return t
}

// prepareAt is when the successor of a is prepared: at half of a's life,
// or earlier if that would not leave ActivationDelay before the target.
func (c *CA) prepareAt(kind AuthorityKind, a *record) time.Time {
	t := a.NotBefore.Add(a.NotAfter.Sub(a.NotBefore) / 2)
	if latest := c.activationTarget(kind, a).Add(-c.o.ActivationDelay); latest.Before(t) {
		t = latest
	}
	return t
}

func find(list []record, s AuthorityState) int {
	for i := range list {
		if list[i].State == s {
			return i
		}
	}
	return -1
}

// advanceKind applies the schedule to the authorities of one kind.
func (c *CA) advanceKind(kind AuthorityKind, in []record, now time.Time, rotate bool) ([]record, bool, error) {
	log := c.o.Logger
	changed := false
	out := make([]record, 0, len(in)+1)
	for _, r := range in {
		switch {
		case !now.Before(r.NotAfter):
			// Expired: whatever it signed has expired too.
			log.Info("ca: dropped expired authority", "kind", kind, "id", r.ID, "state", r.State, "not_after", r.NotAfter)
			changed = true
		case kind == KindX509 && r.State == StatePrepared && r.Parent != c.parent:
			// Prepared under a parent no longer configured; it signed nothing.
			log.Info("ca: dropped prepared authority of a previous upstream", "kind", kind, "id", r.ID)
			changed = true
		default:
			out = append(out, r)
		}
	}
	for range 4 {
		a, p := find(out, StateActive), find(out, StatePrepared)
		if p >= 0 && (a < 0 || !now.Before(out[p].ActivateAt)) {
			if a >= 0 {
				out[a].State = StateRetired
				out[a].RetiredAt = now
				log.Info("ca: retired authority", "kind", kind, "id", out[a].ID, "drop_at", out[a].NotAfter)
			} else if now.Before(out[p].ActivateAt) {
				log.Warn("ca: no valid authority; activating a new one before its publication delay (SVIDs it signs may not verify until peers fetch the new bundle)", "kind", kind, "id", out[p].ID)
			}
			out[p].State = StateActive
			out[p].ActivatedAt = now
			out[p].ActivateAt = time.Time{}
			log.Info("ca: activated authority", "kind", kind, "id", out[p].ID, "not_after", out[p].NotAfter)
			changed = true
			continue
		}
		if p >= 0 {
			if rotate {
				if earliest := out[p].PreparedAt.Add(c.o.ActivationDelay); earliest.Before(out[p].ActivateAt) {
					out[p].ActivateAt = earliest
					log.Info("ca: brought activation forward", "kind", kind, "id", out[p].ID, "activate_at", earliest)
					changed = true
				}
			}
			break
		}
		var activateAt time.Time
		switch {
		case a < 0:
			activateAt = now // nothing can sign: no choice but at once
			if len(in) > 0 {
				log.Warn("ca: no valid authority left (was the server down longer than its life?); activating a new one at once: peers accept its SVIDs only once they have the new bundle", "kind", kind)
			}
		case rotate:
			if len(out) >= maxAuthorities {
				return nil, false, fmt.Errorf("%w: %d %s authorities; retired ones are dropped at their NotAfter", ErrTooManyAuthorities, len(out), kind)
			}
			activateAt = now.Add(c.o.ActivationDelay)
		case kind == KindX509 && out[a].Parent != c.parent:
			log.Info("ca: upstream CA changed; rotating the X.509 authority", "id", out[a].ID)
			activateAt = now.Add(c.o.ActivationDelay)
		case !now.Before(c.prepareAt(kind, &out[a])):
			activateAt = c.activationTarget(kind, &out[a])
			if earliest := now.Add(c.o.ActivationDelay); activateAt.Before(earliest) {
				activateAt = earliest
			}
		default:
			return out, changed, nil
		}
		r, err := c.newAuthority(kind, now, activateAt)
		if err != nil {
			return nil, false, err
		}
		log.Info("ca: prepared authority", "kind", kind, "id", r.ID, "activate_at", activateAt, "not_after", r.NotAfter)
		out = append(out, r)
		changed = true
		rotate = false
	}
	return out, changed, nil
}

// newAuthority generates a key and, for X.509, its CA certificate.
func (c *CA) newAuthority(kind AuthorityKind, now, activateAt time.Time) (record, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return record{}, fmt.Errorf("ca: generate %s authority key: %w", kind, err)
	}
	pkcs8, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return record{}, fmt.Errorf("ca: encode %s authority key: %w", kind, err)
	}
	nb := now.Add(-caBackdate).Truncate(time.Second)
	r := record{
		State:      StatePrepared,
		Key:        pkcs8,
		NotBefore:  nb,
		NotAfter:   nb.Add(c.o.CATTL),
		PreparedAt: now,
		ActivateAt: activateAt,
	}
	if kind == KindJWT {
		if r.ID, err = jwtKeyID(key.Public()); err != nil {
			return record{}, err
		}
		r.p = &parsed{signer: key}
		return r, nil
	}

	skid, err := subjectKeyID(key.Public())
	if err != nil {
		return record{}, err
	}
	r.ID = hex.EncodeToString(skid)
	serial, err := c.newSerial()
	if err != nil {
		return record{}, err
	}
	tmpl := &x509.Certificate{
		SerialNumber: serial,
		Subject: pkix.Name{
			Organization: []string{"Moatless"},
			CommonName:   "Moatless CA " + c.o.TrustDomain.Name(),
			SerialNumber: r.ID, // distinct subjects across rotations
		},
		NotBefore:             r.NotBefore,
		NotAfter:              r.NotAfter,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
		// The CA signs only leaves; a stolen CA key cannot mint sub-CAs
		// that validators would accept.
		MaxPathLen:     0,
		MaxPathLenZero: true,
		SubjectKeyId:   skid,
		// A signing certificate SHOULD be an SVID; its ID has no path.
		URIs: []*url.URL{c.o.TrustDomain.ID().URL()},
	}
	parent, signer := tmpl, crypto.Signer(key)
	if up := c.o.Upstream; up != nil {
		if !now.Before(up.notAfter) {
			return record{}, fmt.Errorf("ca: upstream CA certificate expired at %s: renew it and restart the server", up.notAfter.Format(time.RFC3339))
		}
		if up.notAfter.Before(r.NotAfter) {
			r.NotAfter = up.notAfter
			tmpl.NotAfter = up.notAfter
			if r.NotAfter.Sub(now) < 6*max(c.o.X509SVIDTTL, c.o.ActivationDelay) {
				c.o.Logger.Warn("ca: upstream CA certificate expires soon; renew it", "not_after", up.notAfter)
			}
		}
		if nb := up.Chain[0].NotBefore; r.NotBefore.Before(nb) {
			r.NotBefore, tmpl.NotBefore = nb, nb
		}
		parent, signer = up.Chain[0], up.Signer
		tmpl.Subject.CommonName = "Moatless intermediate CA " + c.o.TrustDomain.Name()
		for _, cert := range up.Chain {
			// A root signing our intermediates itself is not sent: the
			// validator already holds it.
			if !slices.ContainsFunc(up.Roots, cert.Equal) {
				r.Chain = append(r.Chain, cert.Raw)
			}
		}
		for _, cert := range up.Roots {
			r.Roots = append(r.Roots, cert.Raw)
		}
		r.Parent = c.parent
	}
	der, err := x509.CreateCertificate(c.o.Rand, tmpl, parent, key.Public(), signer)
	if err != nil {
		return record{}, fmt.Errorf("ca: sign %s authority certificate: %w", kind, err)
	}
	r.Cert = der
	if err := r.parse(KindX509, c.o.TrustDomain); err != nil {
		return record{}, fmt.Errorf("ca: new X.509 authority: %w", err)
	}
	if c.o.Upstream != nil {
		if err := c.checkSVIDsVerify(&r, now); err != nil {
			return record{}, err
		}
	}
	return r, nil
}

// checkSVIDsVerify signs a throwaway X509-SVID (a fresh key, discarded)
// under the new upstream-signed intermediate r and verifies it to the
// upstream roots for each of its extended key usages, as RFC 5280
// validators (crypto/x509, OpenSSL and so Envoy) do. An upstream CA whose
// own constraints leave no room below it (a path length on a CA above it
// that counts our intermediate, name constraints that exclude the trust
// domain, an extended key usage without serverAuth or clientAuth) is
// refused here, when the intermediate is prepared, rather than found when
// it activates and no SVID it signs verifies anywhere.
func (c *CA) checkSVIDsVerify(r *record, now time.Time) error {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return fmt.Errorf("ca: generate probe key: %w", err)
	}
	serial, err := c.newSerial()
	if err != nil {
		return err
	}
	id, err := spiffeid.FromSegments(c.o.TrustDomain, "moatless", "ca-probe")
	if err != nil {
		return fmt.Errorf("ca: probe SPIFFE ID: %w", err)
	}
	tmpl := svidTemplate(key.Public(), serial, id, r.NotBefore, r.NotAfter)
	der, err := x509.CreateCertificate(c.o.Rand, tmpl, r.p.cert, key.Public(), r.p.signer)
	if err != nil {
		return fmt.Errorf("ca: sign probe X509-SVID: %w", err)
	}
	leaf, err := x509.ParseCertificate(der)
	if err != nil {
		return fmt.Errorf("ca: parse probe X509-SVID: %w", err)
	}
	roots, inter := x509.NewCertPool(), x509.NewCertPool()
	for _, cert := range r.p.roots {
		roots.AddCert(cert)
	}
	inter.AddCert(r.p.cert)
	for _, cert := range r.p.chain {
		inter.AddCert(cert)
	}
	for _, eku := range svidExtKeyUsages {
		_, err := leaf.Verify(x509.VerifyOptions{Roots: roots, Intermediates: inter, CurrentTime: now, KeyUsages: []x509.ExtKeyUsage{eku}})
		if err != nil {
			return fmt.Errorf("ca: upstream: an X509-SVID signed below this upstream CA would not verify (%s): its certificate or one above it has a constraint (path length, name constraints, extended key usage) that leaves no room for the Moatless intermediate and its SVIDs: %w", ekuName(eku), err)
		}
	}
	return nil
}

func ekuName(eku x509.ExtKeyUsage) string {
	if eku == x509.ExtKeyUsageClientAuth {
		return "as a TLS client"
	}
	return "as a TLS server"
}

// snapshot is an immutable view of one state, what signers read.
type snapshot struct {
	st     *state
	blob   []byte      // the sealed bytes of st as stored
	x509   *x509Signer // nil when no X.509 authority is active
	jwt    *jwtSigner  // nil when no JWT authority is active
	bundle *spiffebundle.Bundle
	status []Authority // the state's authorities (not the revoked ones)
	// revoked lists the revoked authorities; all is status and revoked,
	// each kind ordered by NotBefore, for Status.
	revoked []Authority
	all     []Authority
	// bySubject is each X.509 authority's (and revoked authority's) state
	// by the raw subject of its certificate, for IssuerState.
	bySubject map[string]issuer
}

// issuer is what IssuerState reports.
type issuer struct {
	id    string
	state AuthorityState
}

type x509Signer struct {
	cert     *x509.Certificate
	key      crypto.Signer
	chain    []*x509.Certificate // what follows the leaf in an SVID chain
	notAfter time.Time           // earliest NotAfter along the chain
}

type jwtSigner struct {
	kid      string
	signer   jose.Signer // safe for concurrent use: Sign only reads it
	notAfter time.Time
}

func (c *CA) buildSnapshot(st *state) (*snapshot, error) {
	s := &snapshot{st: st, bySubject: map[string]issuer{}}
	for i := range st.Revoked {
		v := &st.Revoked[i]
		a := Authority{Kind: v.Kind, ID: v.ID, State: StateRevoked, NotBefore: v.NotBefore, NotAfter: v.NotAfter, RevokedAt: v.RevokedAt}
		if v.cert != nil {
			sum := sha256.Sum256(v.cert.Raw)
			a.Fingerprint = hex.EncodeToString(sum[:])
			a.Issuer = v.cert.Issuer.String()
			s.bySubject[string(v.cert.RawSubject)] = issuer{v.ID, StateRevoked}
		}
		s.revoked = append(s.revoked, a)
	}
	for i := range st.X509 {
		r := &st.X509[i]
		s.status = append(s.status, authorityStatus(KindX509, r))
		s.bySubject[string(r.p.cert.RawSubject)] = issuer{r.ID, r.State}
		if r.State != StateActive {
			continue
		}
		x := &x509Signer{cert: r.p.cert, key: r.p.signer, notAfter: r.p.cert.NotAfter}
		if r.Parent != "" {
			x.chain = append([]*x509.Certificate{r.p.cert}, r.p.chain...)
			for _, cert := range r.p.chain {
				if cert.NotAfter.Before(x.notAfter) {
					x.notAfter = cert.NotAfter
				}
			}
		}
		s.x509 = x
	}
	for i := range st.JWT {
		r := &st.JWT[i]
		s.status = append(s.status, authorityStatus(KindJWT, r))
		if r.State != StateActive {
			continue
		}
		sig, err := jose.NewSigner(
			jose.SigningKey{Algorithm: jose.ES256, Key: jose.JSONWebKey{Key: r.p.signer, KeyID: r.ID}},
			(&jose.SignerOptions{}).WithType("JWT"),
		)
		if err != nil {
			return nil, fmt.Errorf("ca: JWT signer: %w", err)
		}
		s.jwt = &jwtSigner{kid: r.ID, signer: sig, notAfter: r.NotAfter}
	}
	byKindThenTime := func(a, b Authority) int {
		if a.Kind != b.Kind {
			if a.Kind == KindX509 {
				return -1
			}
			return 1
		}
		return a.NotBefore.Compare(b.NotBefore)
	}
	slices.SortStableFunc(s.status, byKindThenTime)
	s.all = append(slices.Clone(s.status), s.revoked...)
	slices.SortStableFunc(s.all, byKindThenTime)
	var err error
	if s.bundle, err = buildBundle(c.o.TrustDomain, st, c.o.RefreshHint); err != nil {
		return nil, err
	}
	return s, nil
}
