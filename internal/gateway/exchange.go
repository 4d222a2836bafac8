package gateway

import (
	"context"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"time"

	"github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"
	"golang.org/x/sync/singleflight"

	"github.com/moatless/moatless/internal/config"
	"github.com/moatless/moatless/internal/proxy"
)

// RFC 8693 identifiers.
const (
	grantTokenExchange = "urn:ietf:params:oauth:grant-type:token-exchange"
	tokenTypeAccess    = "urn:ietf:params:oauth:token-type:access_token"
)

// Exchange limits.
const (
	maxExchangeCache    = 10000
	maxExchangeResponse = 64 << 10
	exchangeTimeout     = 5 * time.Second
)

// errExchangeRefused: the token service answered, and refused (4xx).
var errExchangeRefused = errors.New("gateway: token exchange refused")

// exchanger trades a caller's verified token for one scoped to an
// upstream's audience at our token service (RFC 8693), so an upstream
// never sees a token that would also open other services. Answers are
// cached by (token, audience) until shortly before the new token expires,
// and concurrent requests for one pair share one exchange. Every failure
// refuses the request: the caller's own token is never forwarded in place
// of the exchanged one. Safe for concurrent use.
type exchanger struct {
	tokenURL string
	clientID string
	secret   string // "": the client authenticates with the gateway's SVID
	client   *http.Client
	now      func() time.Time

	mu    sync.Mutex
	cache map[exchangeKey]exchanged
	group singleflight.Group
	// revoked reports whether a token ID is on the mesh's revocation
	// list: a cached token revoked since (its leak reported upstream,
	// say) is exchanged again, never forwarded. nil: none is.
	revoked func(jti string) bool

	// roots verify the token service's certificate; fixed when they come
	// from token_exchange.ca_file. conns are the live connections to the
	// token service (*exchangeConn), verified again when the mesh's
	// bundle changes (recheckTrust).
	roots func() *x509.CertPool
	fixed bool
	conns sync.Map
}

// exchangeConn is a connection to the token service, registered in
// exchanger.conns while it is open.
type exchangeConn struct {
	*tls.Conn
	e *exchanger
}

func (c *exchangeConn) Close() error {
	c.e.conns.Delete(c)
	return c.Conn.Close()
}

// recheckTrust closes every connection to the token service whose
// certificate no longer verifies against the roots in force (a CA
// authority of the mesh's bundle revoked: the bundle changed), idle in
// the pool or in use, and returns how many; the next exchange dials anew.
// The rest are kept: a bundle update that revokes nothing (a key
// prepared, activated or tainted) costs no exchange. As for the mesh's
// connections, a certificate that expired while its connection was open
// is verified as of its last second.
func (e *exchanger) recheckTrust() int {
	if e.fixed {
		return 0
	}
	roots, n := e.roots(), 0
	e.conns.Range(func(k, _ any) bool {
		c := k.(*exchangeConn)
		certs := c.ConnectionState().PeerCertificates
		if len(certs) == 0 {
			return true
		}
		opts := x509.VerifyOptions{Roots: roots, Intermediates: x509.NewCertPool(), CurrentTime: e.now()}
		for _, ic := range certs[1:] {
			opts.Intermediates.AddCert(ic)
		}
		if !opts.CurrentTime.Before(certs[0].NotAfter) {
			opts.CurrentTime = certs[0].NotAfter.Add(-time.Second)
		}
		if _, err := certs[0].Verify(opts); err != nil {
			c.Close()
			n++
		}
		return true
	})
	return n
}

type exchangeKey struct {
	token    [sha256.Size]byte
	audience string
}

type exchanged struct {
	token   string
	jti     string // the exchanged token's ID: revoking it drops the entry
	expires time.Time
}

// newExchanger builds the client of c. The token service's certificate is
// verified against c.CAFile, or the system roots and the mesh's trust
// bundle; without a client secret the gateway presents its SVID (the
// token service's tls_client_auth by SPIFFE ID).
func newExchanger(c *config.GatewayTokenExchange, id proxy.Identity, read func(string) ([]byte, error), now func() time.Time) (*exchanger, error) {
	e := &exchanger{tokenURL: c.TokenURL, clientID: c.ClientID, now: now, cache: map[exchangeKey]exchanged{}}
	if c.ClientSecretFile != "" {
		b, err := read(c.ClientSecretFile)
		if err != nil {
			return nil, fmt.Errorf("gateway: token_exchange.client_secret_file: %w", err)
		}
		e.secret = strings.TrimRight(string(b), "\r\n")
		if e.secret == "" {
			return nil, errors.New("gateway: token_exchange.client_secret_file: empty")
		}
	}
	var fixed *x509.CertPool
	if c.CAFile != "" {
		b, err := read(c.CAFile)
		if err != nil {
			return nil, fmt.Errorf("gateway: token_exchange.ca_file: %w", err)
		}
		fixed = x509.NewCertPool()
		if !fixed.AppendCertsFromPEM(b) {
			return nil, fmt.Errorf("gateway: token_exchange.ca_file: no PEM certificate in %s", c.CAFile)
		}
	}
	roots := func() *x509.CertPool {
		if fixed != nil {
			return fixed
		}
		pool, err := x509.SystemCertPool()
		if err != nil {
			pool = x509.NewCertPool()
		}
		if svid, err := id.GetX509SVID(); err == nil && svid != nil {
			if b, err := id.GetX509BundleForTrustDomain(svid.ID.TrustDomain()); err == nil {
				for _, ca := range b.X509Authorities() {
					pool.AddCert(ca)
				}
			}
		}
		return pool
	}
	e.roots, e.fixed = roots, fixed != nil
	dialer := &net.Dialer{Timeout: exchangeTimeout}
	tr := &http.Transport{
		// The roots and the SVID are read per connection: both rotate.
		DialTLSContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			host, _, _ := net.SplitHostPort(addr)
			cfg := &tls.Config{RootCAs: roots(), ServerName: host, MinVersion: tls.VersionTLS12}
			if e.secret == "" {
				cfg.GetClientCertificate = func(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
					svid, err := id.GetX509SVID()
					if err != nil {
						return nil, err
					}
					cert := &tls.Certificate{PrivateKey: svid.PrivateKey}
					for _, c := range svid.Certificates {
						cert.Certificate = append(cert.Certificate, c.Raw)
					}
					return cert, nil
				}
			}
			c, err := (&tls.Dialer{NetDialer: dialer, Config: cfg}).DialContext(ctx, network, addr)
			if err != nil {
				return nil, err
			}
			ec := &exchangeConn{Conn: c.(*tls.Conn), e: e}
			e.conns.Store(ec, struct{}{})
			return ec, nil
		},
		MaxIdleConnsPerHost: 16,
		IdleConnTimeout:     90 * time.Second,
	}
	e.client = &http.Client{Transport: tr, Timeout: exchangeTimeout,
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	return e, nil
}

// exchange returns a token for audience in place of subject, from the
// cache or the token service. A refusal wraps errExchangeRefused; any
// other error is the token service being unreachable or broken.
func (e *exchanger) exchange(ctx context.Context, subject, audience string) (string, error) {
	k := exchangeKey{token: sha256.Sum256([]byte(subject)), audience: audience}
	now := e.now()
	e.mu.Lock()
	if c, ok := e.cache[k]; ok && now.Before(c.expires) {
		if c.jti == "" || e.revoked == nil || !e.revoked(c.jti) {
			e.mu.Unlock()
			return c.token, nil
		}
		delete(e.cache, k)
	}
	e.mu.Unlock()
	v, err, _ := e.group.Do(string(k.token[:])+"\x00"+audience, func() (any, error) {
		// The caller's context may end first; the exchange serves every
		// waiter, so it runs on its own bounded one.
		ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), exchangeTimeout)
		defer cancel()
		tok, ttl, err := e.request(ctx, subject, audience)
		if err != nil {
			return nil, err
		}
		// Used until shortly before it expires: a tenth of its life, at
		// most 10 s, is left for the upstream to check it.
		margin := min(ttl/10, 10*time.Second)
		jti := tokenID(tok)
		if jti != "" && e.revoked != nil && e.revoked(jti) {
			return nil, fmt.Errorf("%w: the token service issued a revoked token", errExchangeRefused)
		}
		e.put(k, exchanged{token: tok, jti: jti, expires: e.now().Add(ttl - margin)})
		return tok, nil
	})
	if err != nil {
		return "", err
	}
	return v.(string), nil
}

func (e *exchanger) put(k exchangeKey, x exchanged) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if len(e.cache) >= maxExchangeCache {
		now := e.now()
		for k, c := range e.cache {
			if !now.Before(c.expires) {
				delete(e.cache, k)
			}
		}
		if len(e.cache) >= maxExchangeCache {
			clear(e.cache)
		}
	}
	e.cache[k] = x
}

// request makes one exchange. Errors never hold a token.
func (e *exchanger) request(ctx context.Context, subject, audience string) (string, time.Duration, error) {
	form := url.Values{
		"grant_type":         {grantTokenExchange},
		"subject_token":      {subject},
		"subject_token_type": {tokenTypeAccess},
		"audience":           {audience},
	}
	if e.secret == "" {
		form.Set("client_id", e.clientID) // RFC 8705 §2: tls_client_auth names the client
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, e.tokenURL, strings.NewReader(form.Encode()))
	if err != nil {
		return "", 0, err
	}
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	req.Header.Set("Accept", "application/json")
	if e.secret != "" {
		req.SetBasicAuth(url.QueryEscape(e.clientID), url.QueryEscape(e.secret))
	}
	resp, err := e.client.Do(req)
	if err != nil {
		var ue *url.Error
		if errors.As(err, &ue) {
			err = ue.Err // url.Error would print the token URL only, but keep it short
		}
		return "", 0, fmt.Errorf("gateway: token exchange: %w", err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, maxExchangeResponse+1))
	if err != nil || len(body) > maxExchangeResponse {
		return "", 0, fmt.Errorf("gateway: token exchange: reading the answer failed or it is over %d bytes", maxExchangeResponse)
	}
	var ans struct {
		AccessToken     string `json:"access_token"`
		IssuedTokenType string `json:"issued_token_type"`
		TokenType       string `json:"token_type"`
		ExpiresIn       int64  `json:"expires_in"`
		Error           string `json:"error"`
	}
	_ = json.Unmarshal(body, &ans)
	switch {
	case resp.StatusCode >= 400 && resp.StatusCode < 500:
		return "", 0, fmt.Errorf("%w: %d %s", errExchangeRefused, resp.StatusCode, oauthCode(ans.Error))
	case resp.StatusCode != http.StatusOK:
		return "", 0, fmt.Errorf("gateway: token exchange: status %d", resp.StatusCode)
	case ans.AccessToken == "" || !strings.EqualFold(ans.TokenType, "Bearer") || ans.ExpiresIn <= 0:
		return "", 0, errors.New("gateway: token exchange: the answer has no bearer access token with a lifetime")
	case ans.IssuedTokenType != "" && ans.IssuedTokenType != tokenTypeAccess && ans.IssuedTokenType != "urn:ietf:params:oauth:token-type:jwt":
		return "", 0, fmt.Errorf("gateway: token exchange: issued token type %q", oauthCode(ans.IssuedTokenType))
	}
	return ans.AccessToken, time.Duration(ans.ExpiresIn) * time.Second, nil
}

// tokenID reads the jti of a JWS our token service issued over TLS (its
// signature is the upstream's to check), or "" when it is not one: an
// opaque token is cached without a revocation check.
func tokenID(tok string) string {
	jws, err := jwt.ParseSigned(tok, exchangedAlgs)
	if err != nil {
		return ""
	}
	var cl jwt.Claims
	if jws.UnsafeClaimsWithoutVerification(&cl) != nil {
		return ""
	}
	return cl.ID
}

// exchangedAlgs are the token service's signing algorithms
// (token.Config.SigningAlg).
var exchangedAlgs = []jose.SignatureAlgorithm{jose.ES256, jose.RS256, jose.EdDSA}

// oauthCode keeps an error code from the token service fit for a log
// line: short, printable ASCII.
func oauthCode(s string) string {
	if len(s) > 64 {
		s = s[:64]
	}
	for i := 0; i < len(s); i++ {
		if s[i] < 0x21 || s[i] > 0x7e {
			return "?"
		}
	}
	return s
}
