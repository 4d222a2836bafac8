package token

import (
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
)

// assertionType is the only client_assertion_type (RFC 7523 §2.2).
const assertionType = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"

// assertionAlgs are the algorithms a private_key_jwt client may sign
// with: asymmetric only (no "none", no HMAC).
var assertionAlgs = []jose.SignatureAlgorithm{jose.ES256, jose.ES384, jose.RS256, jose.PS256, jose.EdDSA}

// maxAssertionLifetime bounds exp - now of a client assertion, so the
// replay cache need only remember jtis this long.
const maxAssertionLifetime = 5 * time.Minute

// maxClientIDLen bounds client IDs in requests.
const maxClientIDLen = 256

// authedClient is the result of client authentication.
type authedClient struct {
	*Client
	method string
	// certThumbprint is the SHA-256 of the TLS client certificate when
	// the client authenticated with it (for cnf.x5t#S256, RFC 8705 §3).
	certThumbprint string
	// spiffeID is the verified SPIFFE ID of the TLS peer, when any.
	spiffeID string
	// authorities are the CA authorities the client's X509-SVID depends
	// on (tls_client_auth): its tokens are revoked with them.
	authorities []string
}

// actorID names the client in act claims and audit records: its SPIFFE ID
// when it proved one, else its client ID.
func (c *authedClient) actorID() string {
	if c.spiffeID != "" {
		return c.spiffeID
	}
	return c.ID
}

// clientSecretHash is how secrets are stored: the secret is 256 random
// bits, so SHA-256 is preimage-safe and a slow hash would add nothing.
func clientSecretHash(secret string) []byte {
	h := sha256.Sum256([]byte(secret))
	return h[:]
}

var errClientAuth = &oauthError{Code: errInvalidClient, Description: "client authentication failed"}

// peerSPIFFEID returns the verified SPIFFE ID of the TLS client
// certificate and the certificate's SHA-256 thumbprint.
func (s *Service) peerSPIFFEID(r *http.Request) (spiffeid.ID, string, bool) {
	if r.TLS == nil || len(r.TLS.PeerCertificates) == 0 {
		return spiffeid.ID{}, "", false
	}
	sum := sha256.Sum256(r.TLS.PeerCertificates[0].Raw)
	thumb := base64.RawURLEncoding.EncodeToString(sum[:])
	if s.cfg.SVIDPeer != nil {
		id, ok := s.cfg.SVIDPeer(r)
		return id, thumb, ok
	}
	// Only a chain the TLS stack verified counts: PeerCertificates alone
	// may be anything the client sent.
	if len(r.TLS.VerifiedChains) == 0 || len(r.TLS.VerifiedChains[0]) == 0 {
		return spiffeid.ID{}, "", false
	}
	leaf := r.TLS.VerifiedChains[0][0]
	id, err := x509svid.IDFromCert(leaf)
	if err != nil {
		return spiffeid.ID{}, "", false
	}
	sum = sha256.Sum256(leaf.Raw)
	return id, base64.RawURLEncoding.EncodeToString(sum[:]), true
}

// certAuthorities names the CA authority that issued the request's TLS
// client certificate: the hex of the leaf's authority key ID, which is
// how the CA names its X.509 authorities (the subject key ID of the
// signing certificate; under an upstream CA, the Moatless intermediate,
// the only authority of the chain `moatless ca revoke` can revoke). The
// leaf is the one the handshake verified, so its signed AKID is
// authentic. nil without one.
func certAuthorities(r *http.Request) []string {
	if r.TLS == nil || len(r.TLS.PeerCertificates) == 0 {
		return nil
	}
	akid := r.TLS.PeerCertificates[0].AuthorityKeyId
	if len(akid) == 0 || len(akid) > 64 {
		return nil
	}
	return []string{hex.EncodeToString(akid)}
}

// authenticateClient authenticates the client of a token, revocation or
// introspection request by exactly one method (RFC 6749 §2.3): HTTP Basic
// or form client_secret, a private_key_jwt assertion, the TLS client
// certificate's SPIFFE ID, or none for a public client. The presented
// method must be one the client is registered for, so a client cannot be
// downgraded to a weaker method. Every failure is the same invalid_client
// answer: it does not reveal whether the client exists.
func (s *Service) authenticateClient(ctx context.Context, r *http.Request, p params) (*authedClient, *oauthError) {
	formID := p.get("client_id")
	formSecret := p.get("client_secret")
	assertion := p.get("client_assertion")
	basicID, basicSecret, hasBasic := r.BasicAuth()
	if hasBasic {
		// RFC 6749 §2.3.1: both parts are form-urlencoded first.
		var err1, err2 error
		basicID, err1 = url.QueryUnescape(basicID)
		basicSecret, err2 = url.QueryUnescape(basicSecret)
		if err1 != nil || err2 != nil {
			return nil, oerr(errInvalidRequest, "malformed HTTP Basic credentials")
		}
	} else if r.Header.Get("Authorization") != "" {
		return nil, oerr(errInvalidRequest, "only HTTP Basic client authentication is accepted in the Authorization header")
	}
	methods := 0
	for _, b := range []bool{hasBasic, formSecret != "", assertion != ""} {
		if b {
			methods++
		}
	}
	if methods > 1 {
		return nil, oerr(errInvalidRequest, "use exactly one client authentication method")
	}
	if p.get("client_assertion_type") != "" && assertion == "" {
		return nil, oerr(errInvalidRequest, "client_assertion_type without client_assertion")
	}
	if len(formID) > maxClientIDLen || len(basicID) > maxClientIDLen {
		return nil, errClientAuth
	}
	switch {
	case hasBasic:
		if formID != "" && formID != basicID {
			return nil, oerr(errInvalidRequest, "client_id does not match the HTTP Basic user")
		}
		return s.authSecret(ctx, basicID, basicSecret, AuthSecretBasic)
	case formSecret != "":
		if formID == "" {
			return nil, oerr(errInvalidRequest, "client_secret without client_id")
		}
		return s.authSecret(ctx, formID, formSecret, AuthSecretPost)
	case assertion != "":
		if p.get("client_assertion_type") != assertionType {
			return nil, oerr(errInvalidRequest, "client_assertion_type must be %s", assertionType)
		}
		return s.authAssertion(ctx, formID, assertion)
	}
	// No secret and no assertion: mutual TLS, or a public client.
	peer, thumb, hasPeer := s.peerSPIFFEID(r)
	var (
		c   *Client
		err error
	)
	switch {
	case formID != "":
		c, err = s.cfg.Store.Client(ctx, formID)
	case hasPeer:
		c, err = s.cfg.Store.ClientBySPIFFEID(ctx, peer.String())
	default:
		return nil, oerr(errInvalidClient, "no client authentication: send client_id with a secret or assertion, or present your SVID over mutual TLS")
	}
	if errors.Is(err, ErrNotFound) {
		return nil, errClientAuth
	}
	if err != nil {
		return nil, serverError(err)
	}
	switch c.AuthMethod {
	case AuthTLSClient:
		if !hasPeer || c.SPIFFEID == "" || peer.String() != c.SPIFFEID {
			return nil, errClientAuth
		}
		return &authedClient{Client: c, method: AuthTLSClient, certThumbprint: thumb, spiffeID: peer.String(), authorities: certAuthorities(r)}, nil
	case AuthNone:
		return &authedClient{Client: c, method: AuthNone}, nil
	}
	return nil, errClientAuth
}

// dummySecretHash is compared against when the client does not exist, so
// unknown and known clients take the same path.
var dummySecretHash = clientSecretHash("moatless-no-such-client")

// authSecret checks a client secret presented by method (HTTP Basic or
// the form): the client must be registered for exactly that method, as
// RFC 7591's token_endpoint_auth_method says, so a client registered for
// client_secret_basic cannot be authenticated with client_secret_post (a
// secret in request bodies, which more often end up in logs), nor the
// reverse.
func (s *Service) authSecret(ctx context.Context, id, secret, method string) (*authedClient, *oauthError) {
	c, err := s.cfg.Store.Client(ctx, id)
	if err != nil && !errors.Is(err, ErrNotFound) {
		return nil, serverError(err)
	}
	want, prev := dummySecretHash, dummySecretHash
	if c != nil && len(c.SecretHash) > 0 {
		want = c.SecretHash
	}
	prevValid := c != nil && len(c.PreviousSecretHash) > 0 && s.now().Before(c.PreviousSecretUntil)
	if prevValid {
		prev = c.PreviousSecretHash
	}
	// Both comparisons always run, so timing says nothing about which
	// secret (if any) matched.
	got := clientSecretHash(secret)
	cur := subtle.ConstantTimeCompare(got, want) == 1
	old := subtle.ConstantTimeCompare(got, prev) == 1 && prevValid
	ok := cur || old
	if c == nil || !ok || c.AuthMethod != method {
		return nil, errClientAuth
	}
	return &authedClient{Client: c, method: method}, nil
}

// assertionClaims are the claims of a client assertion (RFC 7523 §3).
type assertionClaims struct {
	jwt.Claims
}

// authAssertion verifies a private_key_jwt client assertion: signed by a
// key in the client's registered JWKS with an asymmetric algorithm;
// iss = sub = client_id; aud naming our token endpoint or issuer; exp in
// the future and at most maxAssertionLifetime away; a jti never seen
// before from this client (replay protection).
func (s *Service) authAssertion(ctx context.Context, formID, raw string) (*authedClient, *oauthError) {
	claimsID, header, err := peekAssertion(raw)
	if err != nil {
		return nil, oerr(errInvalidClient, "malformed client assertion")
	}
	if formID != "" && formID != claimsID {
		return nil, oerr(errInvalidClient, "client_id does not match the assertion's subject")
	}
	c, err := s.cfg.Store.Client(ctx, claimsID)
	if errors.Is(err, ErrNotFound) {
		return nil, errClientAuth
	}
	if err != nil {
		return nil, serverError(err)
	}
	if c.AuthMethod != AuthPrivateKeyJWT || len(c.JWKS) == 0 {
		return nil, errClientAuth
	}
	var set jose.JSONWebKeySet
	if err := json.Unmarshal(c.JWKS, &set); err != nil {
		return nil, serverError(err)
	}
	var key *jose.JSONWebKey
	switch {
	case header.KeyID != "":
		if ks := set.Key(header.KeyID); len(ks) > 0 {
			key = &ks[0]
		}
	case len(set.Keys) == 1:
		key = &set.Keys[0]
	}
	if key == nil || !key.IsPublic() || (key.Algorithm != "" && key.Algorithm != header.Algorithm) {
		return nil, errClientAuth
	}
	tok, err := jwt.ParseSigned(raw, assertionAlgs)
	if err != nil {
		return nil, errClientAuth
	}
	var cl assertionClaims
	if err := tok.Claims(key.Key, &cl); err != nil {
		return nil, errClientAuth
	}
	now := s.now()
	if cl.Issuer != c.ID || cl.Subject != c.ID || cl.ID == "" || cl.Expiry == nil || len(cl.ID) > 256 {
		return nil, errClientAuth
	}
	if !cl.Audience.Contains(s.cfg.Issuer+"/oauth2/token") && !cl.Audience.Contains(s.cfg.Issuer) {
		return nil, errClientAuth
	}
	exp := cl.Expiry.Time()
	if !now.Before(exp) || exp.Sub(now) > maxAssertionLifetime {
		return nil, oerr(errInvalidClient, "client assertion expired or lives longer than %v", maxAssertionLifetime)
	}
	if cl.NotBefore != nil && now.Add(time.Minute).Before(cl.NotBefore.Time()) {
		return nil, errClientAuth
	}
	if err := s.cfg.Store.UseAssertionJTI(ctx, c.ID, cl.ID, exp); err != nil {
		if errors.Is(err, ErrConflict) {
			return nil, oerr(errInvalidClient, "client assertion replayed (jti used before)")
		}
		return nil, serverError(err)
	}
	return &authedClient{Client: c, method: AuthPrivateKeyJWT}, nil
}

// peekAssertion reads the subject and header of an assertion before its
// signature is checked, to find the client and its key. Nothing read
// here is trusted until the signature verifies.
func peekAssertion(raw string) (string, jose.Header, error) {
	if len(raw) > maxTokenLen {
		return "", jose.Header{}, errors.New("assertion too long")
	}
	tok, err := jwt.ParseSigned(raw, assertionAlgs)
	if err != nil {
		return "", jose.Header{}, err
	}
	if len(tok.Headers) != 1 {
		return "", jose.Header{}, errors.New("assertion must have one signature")
	}
	var cl jwt.Claims
	if err := tok.UnsafeClaimsWithoutVerification(&cl); err != nil {
		return "", jose.Header{}, err
	}
	if cl.Subject == "" || len(cl.Subject) > maxClientIDLen || strings.ContainsAny(cl.Subject, "\x00") {
		return "", jose.Header{}, errors.New("assertion without subject")
	}
	return cl.Subject, tok.Headers[0], nil
}
