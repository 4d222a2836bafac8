package config

import (
	"errors"
	"fmt"
	"io"
	"net/netip"
	"net/url"
	"regexp"
	"strings"
	"sync"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/moatless/moatless/internal/policy"
	"github.com/moatless/moatless/internal/wire"
)

// Defaults of the gateway config.
const (
	// DefaultGatewayAdmin serves /metrics, /healthz and /readyz.
	DefaultGatewayAdmin = "127.0.0.1:15200"
	// DefaultGatewayNamespace and DefaultGatewayLabels describe the
	// gateway to policies as Istio's ingress gateway is described, so
	// AuthorizationPolicy written for "istio: ingressgateway" applies.
	DefaultGatewayNamespace = "istio-system"
	// DefaultMaxBodyBytes is the largest request body forwarded (10 MiB).
	DefaultMaxBodyBytes = 10 << 20
	// DefaultMaxHeaderBytes bounds the request line and headers (64 KiB).
	DefaultMaxHeaderBytes = 64 << 10
	// DefaultMaxURIBytes bounds the request target (8 KiB).
	DefaultMaxURIBytes = 8 << 10
	// DefaultMaxConnsPerIP bounds the open connections of one client IP.
	DefaultMaxConnsPerIP = 256
	// DefaultWAFParanoia and DefaultWAFAnomalyThreshold are the Core Rule
	// Set's own defaults.
	DefaultWAFParanoia         = 1
	DefaultWAFAnomalyThreshold = 5
)

// DefaultGatewayLabels is the label set of Istio's ingress gateway.
func DefaultGatewayLabels() map[string]string { return map[string]string{"istio": "ingressgateway"} }

// Gateway is the "moatless gateway" config file: the edge in front of the
// mesh. Exactly one identity source is set (as for a sidecar). Example:
//
//	listen: "0.0.0.0:8443"
//	tls: {cert: gw.pem, key: gw-key.pem}
//	identity: {files: {cert: svid.pem, key: svid-key.pem, bundle: bundle.pem}}
//	routes:
//	  - {name: orders, host: api.example.com, path_prefix: /orders,
//	     upstreams: ["127.0.0.1:15006"], spiffe_id: "spiffe://moatless.local/ns/prod/sa/orders"}
//	policy: {files: [policies/]}
type Gateway struct {
	// Listen is the public address; required.
	Listen string     `json:"listen"`
	TLS    GatewayTLS `json:"tls"`

	Identity SidecarIdentity `json:"identity"`
	// Namespace and Labels describe the gateway to policies; default
	// DefaultGatewayNamespace and DefaultGatewayLabels.
	Namespace string            `json:"namespace,omitempty"`
	Labels    map[string]string `json:"labels,omitempty"`

	// TrustedProxies are the CIDRs whose X-Forwarded-For is believed.
	// The client address every other feature uses is the right-most
	// X-Forwarded-For entry not in these ranges, when the peer is in
	// them; otherwise the peer's own address. Default none.
	TrustedProxies []string      `json:"trusted_proxies,omitempty"`
	IP             GatewayIP     `json:"ip"`
	Limits         GatewayLimits `json:"limits"`
	WAF            GatewayWAF    `json:"waf"`
	// RateLimits are named limits routes refer to.
	RateLimits []GatewayRateLimit `json:"rate_limits,omitempty"`
	Headers    GatewayHeaders     `json:"headers"`
	// TokenExchange, when set, is the RFC 8693 endpoint routes with
	// token_exchange use.
	TokenExchange *GatewayTokenExchange `json:"token_exchange,omitempty"`
	// JWT configures issuers whose tokens are checked with a shared
	// secret (HS256) rather than a key set.
	JWT GatewayJWT `json:"jwt"`

	Routes []GatewayRoute `json:"routes"`
	Policy SidecarPolicy  `json:"policy"`

	// Admin is the address of /metrics, /healthz, /livez and /readyz;
	// default DefaultGatewayAdmin, "off" disables it. Must be loopback.
	Admin string `json:"admin,omitempty"`
	// AdminPprof serves Go's /debug/pprof/ on the admin address, for
	// profiling, as the sidecar's does. Off by default.
	AdminPprof bool `json:"admin_pprof,omitempty"`
	// AccessLog turns the JSON access log (one line per request on
	// stderr) off with false; default on.
	AccessLog   *bool              `json:"access_log,omitempty"`
	DecisionLog SidecarDecisionLog `json:"decision_log"`
	// ReloadInterval is how often the config file, TLS certificate,
	// identity and policy files are checked for changes; default 2s.
	ReloadInterval wire.Duration `json:"reload_interval,omitempty"`
	// DrainTimeout is how long requests in flight may finish after
	// SIGTERM; default 5s.
	DrainTimeout wire.Duration `json:"drain_timeout,omitempty"`
	// DisableHTTP1FastPath serves HTTP/1.1 with Go's net/http server
	// only. By default the common shape of HTTP/1.1 request (a head the
	// sidecar's strict parser accepts, no body or a Content-Length one)
	// is read by the gateway's own connection loop and answered through
	// the same handler, every check the same, at about four fifths of
	// the CPU per request; everything else (HTTP/1.0, chunked, Expect,
	// upgrades, HTTP/2) goes to net/http. Restart to change.
	DisableHTTP1FastPath bool `json:"disable_http1_fast_path,omitempty"`
}

// GatewayTLS is the public certificate, reloaded when the files change
// (a bad pair keeps the old one). TLS 1.2 and 1.3 with AEAD ciphers only.
type GatewayTLS struct {
	Cert string `json:"cert"`
	Key  string `json:"key"`
	// MinVersion is "1.2" (default) or "1.3".
	MinVersion string `json:"min_version,omitempty"`
}

// GatewayIP lists client CIDRs allowed and denied. Deny wins; an empty
// allow list allows every address not denied.
type GatewayIP struct {
	Allow []string `json:"allow,omitempty"`
	Deny  []string `json:"deny,omitempty"`
}

// GatewayLimits bound what a client may send. Zero means the default.
type GatewayLimits struct {
	// MaxBodyBytes: larger bodies get 413, a streamed one is cut off
	// there; default DefaultMaxBodyBytes.
	MaxBodyBytes int64 `json:"max_body_bytes,omitempty"`
	// MaxHeaderBytes: larger request heads get 431; default 64 KiB.
	MaxHeaderBytes int `json:"max_header_bytes,omitempty"`
	// MaxURIBytes: longer request targets get 414; default 8 KiB.
	MaxURIBytes int `json:"max_uri_bytes,omitempty"`
	// ReadHeaderTimeout bounds reading a request head (slowloris);
	// default 10s.
	ReadHeaderTimeout wire.Duration `json:"read_header_timeout,omitempty"`
	// ReadTimeout bounds reading a whole request, body included; default
	// 60s.
	ReadTimeout wire.Duration `json:"read_timeout,omitempty"`
	// HandshakeTimeout bounds the TLS handshake; default 10s.
	HandshakeTimeout wire.Duration `json:"handshake_timeout,omitempty"`
	// IdleTimeout closes idle keep-alive connections; default 2m.
	IdleTimeout wire.Duration `json:"idle_timeout,omitempty"`
	// MaxConnsPerIP bounds the open connections of one client address;
	// default DefaultMaxConnsPerIP.
	MaxConnsPerIP int `json:"max_conns_per_ip,omitempty"`
	// MaxConns bounds all open connections; default 10,000.
	MaxConns int `json:"max_conns,omitempty"`
	// LingerTimeout, LingerTime and LingerBytes bound a lingering close
	// (nginx's lingering_timeout, lingering_time and the byte cap nginx
	// does not have): after an answer to a request whose body was not
	// read (the gateway's own refusal, an upstream's early answer) the
	// connection is half-closed and what the client still sends is read
	// and discarded until it closes, goes quiet for LingerTimeout
	// (default 2s), LingerTime has passed (default 5s) or LingerBytes
	// were read (default the larger of max_body_bytes and 10 MiB; at
	// least max_body_bytes, as a client answered 413 still sends more
	// than that). Closing with the client's bytes unread would make the
	// kernel reset the connection, which can destroy the answer. New
	// connections take a reloaded value.
	LingerTimeout wire.Duration `json:"linger_timeout,omitempty"`
	LingerTime    wire.Duration `json:"linger_time,omitempty"`
	LingerBytes   int64         `json:"linger_bytes,omitempty"`
}

// The defaults and bounds of the lingering close's settings. The caps
// keep a lingering connection (a goroutine and a connection slot of its
// client's max_conns_per_ip) from being held long or fed much.
const (
	DefaultLingerTimeout = 2 * time.Second
	DefaultLingerTime    = 5 * time.Second
	// DefaultLingerBytes is the least default linger_bytes.
	DefaultLingerBytes = 10 << 20
	minLinger          = 10 * time.Millisecond
	maxLingerTimeout   = time.Minute
	maxLingerTime      = 5 * time.Minute
	// maxLingerBytes caps linger_bytes, or max_body_bytes when larger.
	maxLingerBytes = 1 << 30
)

// GatewayWAF configures the Coraza engine with the embedded OWASP Core
// Rule Set. Routes turn it on with waf: {enabled: true}.
type GatewayWAF struct {
	// Mode is "block" (default: a request over the anomaly threshold gets
	// 403) or "detect" (logged only).
	Mode string `json:"mode,omitempty"`
	// ParanoiaLevel 1 (default) to 4.
	ParanoiaLevel int `json:"paranoia_level,omitempty"`
	// InboundAnomalyThreshold is the score that blocks; default 5.
	InboundAnomalyThreshold int `json:"inbound_anomaly_threshold,omitempty"`
	// Exclusions are rule IDs removed everywhere.
	Exclusions []int `json:"exclusions,omitempty"`
	// MaxInspectBytes is the largest body the rules read; default
	// 128 KiB. In block mode a larger body on a route with the WAF on is
	// refused (413) uninspected, as ModSecurity's
	// SecRequestBodyLimitAction Reject does: an attack placed past the
	// limit would otherwise pass. In detect mode the first
	// MaxInspectBytes are inspected and the request is logged as one
	// that would be blocked.
	MaxInspectBytes int `json:"max_inspect_bytes,omitempty"`
}

// GatewayRateLimit is one named sliding-window limit.
type GatewayRateLimit struct {
	Name string `json:"name"`
	// Key is what is counted: "ip", "route", "jwt:<claim>" (jwt:sub,
	// jwt:client_id) or "header:<Name>".
	Key    string        `json:"key"`
	Limit  int64         `json:"limit"`
	Window wire.Duration `json:"window"`
	// Store is "memory" (default) or "redis://host:port/db": replicas
	// sharing one Redis share the limit.
	Store string `json:"store,omitempty"`
	// OnStoreError is "allow" (default: fail open) or "deny" (429) when
	// Redis cannot be reached.
	OnStoreError string `json:"on_store_error,omitempty"`
}

// GatewayHeaders are the security headers set on every response, the
// gateway's own errors included. Empty means the default; "off" leaves a
// header out.
type GatewayHeaders struct {
	// HSTS default "max-age=31536000; includeSubDomains".
	HSTS string `json:"hsts,omitempty"`
	// CSP default "default-src 'none'; frame-ancestors 'none'".
	CSP string `json:"csp,omitempty"`
	// FrameOptions default "DENY".
	FrameOptions string `json:"frame_options,omitempty"`
	// ReferrerPolicy default "no-referrer".
	ReferrerPolicy string `json:"referrer_policy,omitempty"`
	// PermissionsPolicy default "camera=(), microphone=(), geolocation=()".
	PermissionsPolicy string `json:"permissions_policy,omitempty"`
	// CrossOriginOpenerPolicy default "same-origin".
	CrossOriginOpenerPolicy string `json:"cross_origin_opener_policy,omitempty"`
	// X-Content-Type-Options is always "nosniff"; Server, X-Powered-By
	// and X-AspNet-Version are always removed.
}

// GatewayTokenExchange is the RFC 8693 token endpoint (our token
// service) the gateway trades a user's token at for one scoped to the
// upstream's audience.
type GatewayTokenExchange struct {
	// TokenURL is the endpoint, "https://127.0.0.1:8443/oauth2/token".
	TokenURL string `json:"token_url"`
	ClientID string `json:"client_id"`
	// ClientSecretFile holds the client secret; empty: the client
	// authenticates with the gateway's SVID (mTLS).
	ClientSecretFile string `json:"client_secret_file,omitempty"`
	// CAFile verifies the endpoint's certificate; default the system
	// roots (join mode: also the mesh bundle).
	CAFile string `json:"ca_file,omitempty"`
}

// GatewayJWT adds shared-secret issuers to RequestAuthentication.
type GatewayJWT struct {
	HMACIssuers []GatewayHMACIssuer `json:"hmac_issuers,omitempty"`
}

// GatewayHMACIssuer is an issuer whose tokens are HMAC-signed with a
// shared secret. Its one algorithm is accepted for it, only with this
// secret, and no other issuer's token may use HMAC (so an RS256 issuer
// cannot be downgraded with its public key as the secret). Its
// RequestAuthentication rules name no jwks or jwksUri.
type GatewayHMACIssuer struct {
	Issuer string `json:"issuer"`
	// Algorithm is HS256 (default), HS384 or HS512.
	Algorithm string `json:"algorithm,omitempty"`
	// SecretFile holds the secret: its bytes as they are, one trailing
	// newline aside; at least 32 bytes (48 for HS384, 64 for HS512). Read
	// at start: a new secret needs a restart.
	SecretFile string `json:"secret_file"`
}

// GatewayRoute sends requests for Host (any host when empty) whose path
// starts with PathPrefix to an upstream sidecar. The longest matching
// prefix wins; a host route beats a host-less one.
type GatewayRoute struct {
	Name       string `json:"name"`
	Host       string `json:"host,omitempty"`
	PathPrefix string `json:"path_prefix"`
	// Upstreams are the upstream sidecars' inbound "host:port"s.
	Upstreams []string `json:"upstreams"`
	// SPIFFEID every upstream must present.
	SPIFFEID   string `json:"spiffe_id"`
	ServerName string `json:"server_name,omitempty"`
	// LoadBalancing is "round_robin" (default) or "least_requests".
	LoadBalancing string              `json:"load_balancing,omitempty"`
	HealthCheck   *GatewayHealthCheck `json:"health_check,omitempty"`
	// Retries of idempotent requests on another upstream after a
	// connection failure; default 2 (0 with retries: -1).
	Retries int `json:"retries,omitempty"`
	// Timeout bounds the whole exchange with the upstream; default none.
	Timeout wire.Duration `json:"timeout,omitempty"`
	// UpstreamHTTP2 multiplexes requests on HTTP/2 to the upstream.
	UpstreamHTTP2 bool `json:"upstream_http2,omitempty"`
	// Upgrades lists the protocols a request may switch to (HTTP/1.1 GET
	// with Upgrade); only websocket is accepted. Default [websocket]; []
	// forwards none.
	Upgrades []string `json:"upgrades,omitempty"`

	CORS *GatewayCORS `json:"cors,omitempty"`
	// RateLimits names limits from the top-level rate_limits, all applied.
	RateLimits []string           `json:"rate_limits,omitempty"`
	WAF        *GatewayRouteWAF   `json:"waf,omitempty"`
	Validation *GatewayValidation `json:"validation,omitempty"`
	// RequireToken answers 401 (WWW-Authenticate: Bearer) to a request
	// that carries no token a RequestAuthentication rule verified, as
	// Envoy's jwt_authn "requires" does, instead of leaving it to
	// AuthorizationPolicy (which, as in Istio, would answer 403). Default
	// false.
	RequireToken bool `json:"require_token,omitempty"`
	// TokenExchangeAudience, when set, trades the caller's verified token
	// for one with this audience before forwarding (RFC 8693).
	TokenExchangeAudience string `json:"token_exchange_audience,omitempty"`
	// MaxBodyBytes overrides limits.max_body_bytes for this route.
	MaxBodyBytes int64 `json:"max_body_bytes,omitempty"`
}

// GatewayHealthCheck probes each upstream; one that fails is skipped
// until it answers again.
type GatewayHealthCheck struct {
	// Path probed with GET; any status below 500 is healthy.
	Path     string        `json:"path"`
	Interval wire.Duration `json:"interval,omitempty"` // default 5s
	Timeout  wire.Duration `json:"timeout,omitempty"`  // default 2s
}

// GatewayCORS answers preflights and marks responses for listed origins.
type GatewayCORS struct {
	// Origins allowed exactly ("https://app.example.com"); "*" allows
	// any origin but never with credentials.
	Origins []string `json:"origins"`
	// Methods default GET, HEAD, POST.
	Methods []string `json:"methods,omitempty"`
	// Headers the browser may send; default Content-Type, Authorization.
	Headers       []string      `json:"headers,omitempty"`
	ExposeHeaders []string      `json:"expose_headers,omitempty"`
	Credentials   bool          `json:"credentials,omitempty"`
	MaxAge        wire.Duration `json:"max_age,omitempty"` // default 10m
}

// GatewayRouteWAF turns the WAF on for a route.
type GatewayRouteWAF struct {
	Enabled bool `json:"enabled"`
	// Exclusions are rule IDs removed for this route only.
	Exclusions []int `json:"exclusions,omitempty"`
}

// GatewayValidation checks JSON request bodies (and, with OpenAPI,
// parameters) before forwarding: 400 with the first violation.
type GatewayValidation struct {
	// JSONSchema is a JSON Schema file every JSON body must satisfy.
	JSONSchema string `json:"json_schema,omitempty"`
	// OpenAPI is an OpenAPI 3 document; requests must match one of its
	// operations (path, method, parameters, body).
	OpenAPI string `json:"openapi,omitempty"`
}

// DefaultGateway returns a config with every default filled in and no
// route.
func DefaultGateway() Gateway {
	return Gateway{
		Namespace:      DefaultGatewayNamespace,
		Admin:          DefaultGatewayAdmin,
		ReloadInterval: wire.Duration(DefaultSidecarReload),
		DrainTimeout:   wire.Duration(5 * time.Second),
		Policy:         SidecarPolicy{RootNamespace: DefaultRootNamespace, PathNormalization: "MERGE_SLASHES"},
	}
}

// ParseGateway reads a gateway config strictly (unknown keys are errors
// naming the key and its line) over the defaults, then validates it.
func ParseGateway(r io.Reader) (Gateway, error) {
	return loadRole(DefaultGateway(), "", r)
}

// LoadGateway is ParseGateway for a file; errors name the file.
func LoadGateway(path string) (Gateway, error) {
	return loadRole(DefaultGateway(), path, nil)
}

func (c *Gateway) fillDefaults() { c.FillDefaults() }

// FillDefaults puts the defaults in every field left zero.
func (c *Gateway) FillDefaults() {
	d := DefaultGateway()
	if c.Namespace == "" {
		c.Namespace = d.Namespace
	}
	if c.Labels == nil {
		c.Labels = DefaultGatewayLabels()
	}
	if c.Admin == "" {
		c.Admin = d.Admin
	}
	if c.ReloadInterval <= 0 {
		c.ReloadInterval = d.ReloadInterval
	}
	if c.DrainTimeout <= 0 {
		c.DrainTimeout = d.DrainTimeout
	}
	fillMeshDefaults(&c.Policy, &c.Identity, d.Policy)
	if c.TLS.MinVersion == "" {
		c.TLS.MinVersion = "1.2"
	}
	l := &c.Limits
	setDef(&l.MaxBodyBytes, DefaultMaxBodyBytes)
	setDef(&l.MaxHeaderBytes, DefaultMaxHeaderBytes)
	setDef(&l.MaxURIBytes, DefaultMaxURIBytes)
	setDef(&l.MaxConnsPerIP, DefaultMaxConnsPerIP)
	setDef(&l.MaxConns, 10000)
	setDef(&l.ReadHeaderTimeout, wire.Duration(10*time.Second))
	setDef(&l.ReadTimeout, wire.Duration(60*time.Second))
	setDef(&l.HandshakeTimeout, wire.Duration(10*time.Second))
	setDef(&l.IdleTimeout, wire.Duration(2*time.Minute))
	// Only zero (unset) takes a lingering default: a negative value is
	// an error (Validate), not a request for the default.
	if l.LingerTimeout == 0 {
		l.LingerTimeout = wire.Duration(DefaultLingerTimeout)
	}
	if l.LingerTime == 0 {
		l.LingerTime = wire.Duration(DefaultLingerTime)
	}
	if l.LingerBytes == 0 {
		l.LingerBytes = max(l.MaxBodyBytes, DefaultLingerBytes)
	}
	if c.WAF.Mode == "" {
		c.WAF.Mode = "block"
	}
	setDef(&c.WAF.ParanoiaLevel, DefaultWAFParanoia)
	setDef(&c.WAF.InboundAnomalyThreshold, DefaultWAFAnomalyThreshold)
	setDef(&c.WAF.MaxInspectBytes, 128<<10)
	for i := range c.RateLimits {
		rl := &c.RateLimits[i]
		if rl.Store == "" {
			rl.Store = "memory"
		}
		if rl.OnStoreError == "" {
			rl.OnStoreError = "allow"
		}
	}
	for i := range c.Routes {
		r := &c.Routes[i]
		if r.LoadBalancing == "" {
			r.LoadBalancing = "round_robin"
		}
		switch {
		case r.Retries == 0:
			r.Retries = 2
		case r.Retries < 0:
			r.Retries = 0
		}
		if hc := r.HealthCheck; hc != nil {
			setDef(&hc.Interval, wire.Duration(5*time.Second))
			setDef(&hc.Timeout, wire.Duration(2*time.Second))
		}
		if r.CORS != nil {
			setDef(&r.CORS.MaxAge, wire.Duration(10*time.Minute))
		}
	}
}

func setDef[T int | int64 | wire.Duration](p *T, def T) {
	if *p <= 0 {
		*p = def
	}
}

// Compiled on first use, not at start: a bounded repetition such as {0,61}
// compiles to tens of KB, and every role of the one binary (the sidecar
// too) would otherwise allocate and keep it.
var (
	rateLimitName = sync.OnceValue(func() *regexp.Regexp { return regexp.MustCompile(`^[a-z0-9][a-z0-9_-]{0,62}$`) })
	headerName    = regexp.MustCompile("^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")
	claimName     = sync.OnceValue(func() *regexp.Regexp { return regexp.MustCompile(`^[A-Za-z0-9_.:-]{1,64}$`) })
)

// Validate checks the config; each error names the field.
func (c *Gateway) Validate() error {
	var errs []error
	add := func(format string, args ...any) { errs = append(errs, fmt.Errorf("config: "+format, args...)) }

	if err := checkHostPort(c.Listen); err != nil {
		add("listen: %v", err)
	}
	if c.TLS.Cert == "" || c.TLS.Key == "" {
		add("tls: cert and key are required (the gateway serves HTTPS only)")
	}
	if !oneOf(c.TLS.MinVersion, "1.2", "1.3") {
		add("tls.min_version: %q is not 1.2 or 1.3", c.TLS.MinVersion)
	}
	errs = append(errs, c.Identity.validate()...)
	for i, s := range c.TrustedProxies {
		if _, err := ParsePrefix(s); err != nil {
			add("trusted_proxies[%d]: %v", i, err)
		}
	}
	for i, s := range c.IP.Allow {
		if _, err := ParsePrefix(s); err != nil {
			add("ip.allow[%d]: %v", i, err)
		}
	}
	for i, s := range c.IP.Deny {
		if _, err := ParsePrefix(s); err != nil {
			add("ip.deny[%d]: %v", i, err)
		}
	}
	l := c.Limits
	if l.MaxHeaderBytes < 1024 || l.MaxHeaderBytes > 1<<20 {
		add("limits.max_header_bytes: %d is not between 1024 and 1048576", l.MaxHeaderBytes)
	}
	if l.MaxURIBytes < 256 || l.MaxURIBytes > l.MaxHeaderBytes {
		add("limits.max_uri_bytes: %d is not between 256 and max_header_bytes", l.MaxURIBytes)
	}
	errs = append(errs, l.validateLinger()...)
	if !oneOf(c.WAF.Mode, "block", "detect") {
		add("waf.mode: %q is not block or detect", c.WAF.Mode)
	}
	if p := c.WAF.ParanoiaLevel; p < 1 || p > 4 {
		add("waf.paranoia_level: %d is not 1 to 4", p)
	}
	if t := c.WAF.InboundAnomalyThreshold; t < 1 || t > 10000 {
		add("waf.inbound_anomaly_threshold: %d is not 1 to 10000", t)
	}
	for i, id := range c.WAF.Exclusions {
		if id <= 0 {
			add("waf.exclusions[%d]: %d is not a rule ID", i, id)
		}
	}
	limits := map[string]bool{}
	for i, rl := range c.RateLimits {
		f := fmt.Sprintf("rate_limits[%d]", i)
		if !rateLimitName().MatchString(rl.Name) {
			add("%s.name: %q must be lower-case letters, digits, '-' or '_'", f, rl.Name)
		} else if limits[rl.Name] {
			add("%s.name: %q used twice", f, rl.Name)
		}
		limits[rl.Name] = true
		if err := checkRateLimitKey(rl.Key); err != nil {
			add("%s.key: %v", f, err)
		}
		if rl.Limit <= 0 {
			add("%s.limit: must be positive", f)
		}
		if w := rl.Window.Std(); w < time.Second || w > 24*time.Hour {
			add("%s.window: %s is not between 1s and 24h", f, w)
		}
		if rl.Store != "memory" {
			u, err := url.Parse(rl.Store)
			if err != nil || (u.Scheme != "redis" && u.Scheme != "rediss") || u.Host == "" {
				add("%s.store: %q is not memory or redis://host:port/db", f, rl.Store)
			}
		}
		if !oneOf(rl.OnStoreError, "allow", "deny") {
			add("%s.on_store_error: %q is not allow or deny", f, rl.OnStoreError)
		}
	}
	if te := c.TokenExchange; te != nil {
		if u, err := url.Parse(te.TokenURL); err != nil || u.Scheme != "https" || u.Host == "" {
			add("token_exchange.token_url: %q is not an https URL", te.TokenURL)
		}
		if te.ClientID == "" {
			add("token_exchange.client_id: required")
		}
	}
	issuers := map[string]bool{}
	for i, h := range c.JWT.HMACIssuers {
		f := fmt.Sprintf("jwt.hmac_issuers[%d]", i)
		if h.Issuer == "" {
			add("%s.issuer: required", f)
		} else if issuers[h.Issuer] {
			add("%s.issuer: %q listed twice", f, h.Issuer)
		}
		issuers[h.Issuer] = true
		if h.SecretFile == "" {
			add("%s.secret_file: required", f)
		}
		if !oneOf(h.Algorithm, "", "HS256", "HS384", "HS512") {
			add("%s.algorithm: %q is not HS256, HS384 or HS512", f, h.Algorithm)
		}
	}
	if len(c.Routes) == 0 {
		add("routes: at least one route is required")
	}
	routeNames := map[string]bool{}
	routeKeys := map[string]string{}
	for i, r := range c.Routes {
		f := fmt.Sprintf("routes[%d]", i)
		if !rateLimitName().MatchString(r.Name) {
			add("%s.name: %q must be lower-case letters, digits, '-' or '_'", f, r.Name)
		} else if routeNames[r.Name] {
			add("%s.name: %q used twice", f, r.Name)
		}
		routeNames[r.Name] = true
		if r.Host != "" && !validHost(r.Host) {
			add("%s.host: %q is not a host name", f, r.Host)
		}
		if !strings.HasPrefix(r.PathPrefix, "/") || strings.ContainsAny(r.PathPrefix, "?#%\\") || strings.Contains(r.PathPrefix, "/../") || strings.Contains(r.PathPrefix, "/./") || strings.Contains(r.PathPrefix, "//") {
			add("%s.path_prefix: %q must start with / and hold no query, fragment, escape, dot segment or empty segment", f, r.PathPrefix)
		}
		key := strings.ToLower(r.Host) + " " + r.PathPrefix
		if prev, ok := routeKeys[key]; ok {
			add("%s: same host and path_prefix as %s", f, prev)
		}
		routeKeys[key] = f
		if len(r.Upstreams) == 0 {
			add("%s.upstreams: at least one upstream is required", f)
		}
		for j, u := range r.Upstreams {
			if err := checkHostPort(u); err != nil {
				add("%s.upstreams[%d]: %v", f, j, err)
			}
		}
		if _, err := spiffeid.FromString(r.SPIFFEID); err != nil {
			add("%s.spiffe_id: %q: %v", f, r.SPIFFEID, err)
		}
		if !oneOf(r.LoadBalancing, "round_robin", "least_requests") {
			add("%s.load_balancing: %q is not round_robin or least_requests", f, r.LoadBalancing)
		}
		if r.Retries > 10 {
			add("%s.retries: %d is more than 10", f, r.Retries)
		}
		checkUpgrades(f, "http", r.Upgrades, add)
		if hc := r.HealthCheck; hc != nil && !strings.HasPrefix(hc.Path, "/") {
			add("%s.health_check.path: %q must start with /", f, hc.Path)
		}
		if cors := r.CORS; cors != nil {
			if len(cors.Origins) == 0 {
				add("%s.cors.origins: at least one origin is required", f)
			}
			for j, o := range cors.Origins {
				if o == "*" {
					if cors.Credentials {
						add("%s.cors.origins[%d]: \"*\" cannot be used with credentials", f, j)
					}
					continue
				}
				u, err := url.Parse(o)
				if err != nil || (u.Scheme != "https" && u.Scheme != "http") || u.Host == "" || u.Path != "" || u.RawQuery != "" || u.User != nil || o != strings.ToLower(o) {
					add("%s.cors.origins[%d]: %q is not an origin (scheme://host[:port], lower case)", f, j, o)
				}
			}
			for j, m := range cors.Methods {
				if !headerName.MatchString(m) {
					add("%s.cors.methods[%d]: %q is not a method", f, j, m)
				}
			}
			for j, h := range append(append([]string{}, cors.Headers...), cors.ExposeHeaders...) {
				if !headerName.MatchString(h) {
					add("%s.cors: %q (entry %d) is not a header name", f, h, j)
				}
			}
		}
		for j, n := range r.RateLimits {
			if !limits[n] {
				add("%s.rate_limits[%d]: no rate limit named %q", f, j, n)
			}
		}
		if w := r.WAF; w != nil {
			for j, id := range w.Exclusions {
				if id <= 0 {
					add("%s.waf.exclusions[%d]: %d is not a rule ID", f, j, id)
				}
			}
		}
		if v := r.Validation; v != nil && v.JSONSchema == "" && v.OpenAPI == "" {
			add("%s.validation: set json_schema or openapi", f)
		}
		if v := r.Validation; v != nil && v.JSONSchema != "" && v.OpenAPI != "" {
			add("%s.validation: set only one of json_schema or openapi", f)
		}
		if r.TokenExchangeAudience != "" && c.TokenExchange == nil {
			add("%s.token_exchange_audience: needs the top-level token_exchange", f)
		}
		if r.MaxBodyBytes < 0 {
			add("%s.max_body_bytes: negative", f)
		}
	}
	if c.Admin != "off" {
		if err := checkHostPort(c.Admin); err != nil {
			add("admin: %v", err)
		} else if !isLoopback(c.Admin) {
			add("admin: %q is not a loopback address", c.Admin)
		}
	}
	if r := c.DecisionLog.AllowSampleRate; r < 0 || r > 1 {
		add("decision_log.allow_sample_rate: %v is not between 0 and 1", r)
	}
	if _, err := policy.ParsePathNormalization(c.Policy.PathNormalization); err != nil {
		add("policy.path_normalization: %q is not NONE, BASE, MERGE_SLASHES or DECODE_AND_MERGE_SLASHES", c.Policy.PathNormalization)
	}
	if c.Identity.Join != nil && len(c.Policy.Files) > 0 {
		add("policy.files: policies come from the server in join mode")
	}
	return errors.Join(errs...)
}

// validate checks that exactly one identity source is set, and each is
// complete; the sidecar and the gateway share it.
func (id *SidecarIdentity) validate() []error {
	var errs []error
	add := func(format string, args ...any) { errs = append(errs, fmt.Errorf("config: "+format, args...)) }
	n := 0
	if id.WorkloadAPI != "" {
		n++
		u, err := url.Parse(id.WorkloadAPI)
		if err != nil || (u.Scheme != "unix" && u.Scheme != "tcp") {
			add("identity.workload_api: %q is not a unix:///path or tcp://host:port address", id.WorkloadAPI)
		}
	}
	if f := id.Files; f != nil {
		n++
		if f.Cert == "" || f.Key == "" || f.Bundle == "" {
			add("identity.files: cert, key and bundle are all required")
		}
	}
	if j := id.Join; j != nil {
		n++
		if err := j.Server.Validate("identity.join.server"); err != nil {
			add("%s", strings.TrimPrefix(err.Error(), "config: "))
		}
		if j.TokenFile == "" {
			add("identity.join.token_file: required")
		}
		if j.ServerBundle == "" {
			add("identity.join.server_bundle: required")
		}
	}
	switch {
	case n == 0:
		add("identity: set one of workload_api, files or join")
	case n > 1:
		add("identity: set only one of workload_api, files or join")
	}
	return errs
}

// ParsePrefix reads a CIDR ("10.0.0.0/8") or a single address (a /32 or
// /128), masked; IPv4-mapped IPv6 is unmapped so it matches IPv4 peers.
func ParsePrefix(s string) (netip.Prefix, error) {
	if strings.Contains(s, "/") {
		p, err := netip.ParsePrefix(s)
		if err != nil {
			return netip.Prefix{}, fmt.Errorf("%q is not a CIDR", s)
		}
		if p.Addr().Is4In6() && p.Bits() >= 96 {
			p = netip.PrefixFrom(p.Addr().Unmap(), p.Bits()-96)
		}
		return p.Masked(), nil
	}
	a, err := netip.ParseAddr(s)
	if err != nil || a.Zone() != "" {
		return netip.Prefix{}, fmt.Errorf("%q is not an IP address or CIDR", s)
	}
	a = a.Unmap()
	return netip.PrefixFrom(a, a.BitLen()), nil
}

func checkRateLimitKey(k string) error {
	switch {
	case k == "ip", k == "route":
		return nil
	case strings.HasPrefix(k, "jwt:"):
		if !claimName().MatchString(k[4:]) {
			return fmt.Errorf("%q: claim name must be 1-64 letters, digits, '_', '.', ':' or '-'", k)
		}
		return nil
	case strings.HasPrefix(k, "header:"):
		if !headerName.MatchString(k[7:]) {
			return fmt.Errorf("%q: not a header name", k)
		}
		return nil
	}
	return fmt.Errorf("%q is not ip, route, jwt:<claim> or header:<name>", k)
}

// validHost accepts a DNS name (letters, digits, '-', '.') or an IP
// literal, without port.
func validHost(h string) bool {
	if _, err := netip.ParseAddr(strings.Trim(h, "[]")); err == nil {
		return true
	}
	if len(h) > 253 || strings.HasPrefix(h, ".") || strings.HasSuffix(h, ".") || strings.Contains(h, "..") {
		return false
	}
	for i := 0; i < len(h); i++ {
		c := h[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '.') {
			return false
		}
	}
	return h != ""
}

// validateLinger checks the lingering close's settings (defaults
// filled): each within its bounds, the idle bound not over the total,
// and the byte cap not under the body limit.
func (l GatewayLimits) validateLinger() []error {
	var errs []error
	add := func(format string, args ...any) { errs = append(errs, fmt.Errorf("config: "+format, args...)) }
	if d := l.LingerTimeout.Std(); d < minLinger || d > maxLingerTimeout {
		add("limits.linger_timeout: %s is not between %s and %s", d, minLinger, maxLingerTimeout)
	}
	if d := l.LingerTime.Std(); d < minLinger || d > maxLingerTime {
		add("limits.linger_time: %s is not between %s and %s", d, minLinger, maxLingerTime)
	} else if l.LingerTimeout > l.LingerTime {
		add("limits.linger_timeout: %s is longer than limits.linger_time %s", l.LingerTimeout.Std(), d)
	}
	switch top := max(maxLingerBytes, l.MaxBodyBytes); {
	case l.LingerBytes < l.MaxBodyBytes:
		add("limits.linger_bytes: %d is less than limits.max_body_bytes %d (a client answered 413 still sends its body)", l.LingerBytes, l.MaxBodyBytes)
	case l.LingerBytes > top:
		add("limits.linger_bytes: %d is more than %d", l.LingerBytes, top)
	}
	return errs
}
