package token

import (
	"net/http"
	"net/url"
)

// Endpoint paths, relative to the issuer URL's path.
const (
	PathDiscovery     = "/.well-known/openid-configuration"
	PathASMetadata    = "/.well-known/oauth-authorization-server"
	PathJWKS          = "/.well-known/jwks.json"
	PathToken         = "/oauth2/token"
	PathAuthorize     = "/oauth2/authorize"
	PathLogin         = "/oauth2/login"
	PathRevoke        = "/oauth2/revoke"
	PathIntrospect    = "/oauth2/introspect"
	PathUserinfo      = "/oauth2/userinfo"
	AdminPathPrefix   = "/v1/admin/oauth/"
	jwksCacheSeconds  = "300"
	discoveryCacheAge = "3600"
)

func (s *Service) issuerPath() string {
	u, _ := url.Parse(s.cfg.Issuer)
	return u.Path
}

func (s *Service) routes() http.Handler {
	mux := http.NewServeMux()
	base := s.issuerPath()
	mux.HandleFunc("GET "+base+PathDiscovery, s.handleDiscovery)
	mux.HandleFunc("GET "+base+PathASMetadata, s.handleDiscovery)
	mux.HandleFunc("GET "+base+PathJWKS, s.handleJWKS)
	mux.HandleFunc(base+PathToken, s.handleToken)
	mux.HandleFunc(base+PathAuthorize, s.handleAuthorize)
	mux.HandleFunc(base+PathLogin, s.handleLogin)
	mux.HandleFunc(base+PathRevoke, s.handleRevoke)
	mux.HandleFunc(base+PathIntrospect, s.handleIntrospect)
	mux.HandleFunc("GET "+base+PathUserinfo, s.handleUserinfo)
	mux.HandleFunc("POST "+base+PathUserinfo, s.handleUserinfo)
	for _, p := range []string{PathToken, PathRevoke, PathUserinfo} {
		mux.HandleFunc("OPTIONS "+base+p, preflight)
	}
	return s.guard(mux)
}

// guard answers 503 once the service is closed and bounds request bodies.
func (s *Service) guard(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if s.closed.Load() {
			writeJSON(w, http.StatusServiceUnavailable, &oauthError{Code: "temporarily_unavailable", Description: "the token service is shutting down"})
			return
		}
		r.Body = http.MaxBytesReader(w, r.Body, MaxFormSize)
		next.ServeHTTP(w, r)
	})
}

// discovery is the OIDC Discovery 1.0 / RFC 8414 metadata document.
type discovery struct {
	Issuer                            string   `json:"issuer"`
	AuthorizationEndpoint             string   `json:"authorization_endpoint"`
	TokenEndpoint                     string   `json:"token_endpoint"`
	JWKSURI                           string   `json:"jwks_uri"`
	UserinfoEndpoint                  string   `json:"userinfo_endpoint"`
	RevocationEndpoint                string   `json:"revocation_endpoint"`
	IntrospectionEndpoint             string   `json:"introspection_endpoint"`
	ResponseTypes                     []string `json:"response_types_supported"`
	ResponseModes                     []string `json:"response_modes_supported"`
	GrantTypes                        []string `json:"grant_types_supported"`
	SubjectTypes                      []string `json:"subject_types_supported"`
	IDTokenAlgs                       []string `json:"id_token_signing_alg_values_supported"`
	TokenAuthMethods                  []string `json:"token_endpoint_auth_methods_supported"`
	TokenAuthAlgs                     []string `json:"token_endpoint_auth_signing_alg_values_supported"`
	RevocationAuthMethods             []string `json:"revocation_endpoint_auth_methods_supported"`
	IntrospectionAuthMethods          []string `json:"introspection_endpoint_auth_methods_supported"`
	CodeChallengeMethods              []string `json:"code_challenge_methods_supported"`
	Scopes                            []string `json:"scopes_supported"`
	Claims                            []string `json:"claims_supported"`
	TLSClientCertificateBoundTokens   bool     `json:"tls_client_certificate_bound_access_tokens"`
	AuthorizationResponseIssParameter bool     `json:"authorization_response_iss_parameter_supported"`
	RequestParameterSupported         bool     `json:"request_parameter_supported"`
	RequestURIParameterSupported      bool     `json:"request_uri_parameter_supported"`
	ClaimsParameterSupported          bool     `json:"claims_parameter_supported"`
}

func (s *Service) handleDiscovery(w http.ResponseWriter, r *http.Request) {
	iss := s.cfg.Issuer
	auth := []string{AuthSecretBasic, AuthSecretPost, AuthPrivateKeyJWT, AuthTLSClient, AuthNone}
	d := discovery{
		Issuer: iss, AuthorizationEndpoint: iss + PathAuthorize, TokenEndpoint: iss + PathToken, JWKSURI: iss + PathJWKS,
		UserinfoEndpoint: iss + PathUserinfo, RevocationEndpoint: iss + PathRevoke, IntrospectionEndpoint: iss + PathIntrospect,
		ResponseTypes: []string{"code"}, ResponseModes: []string{"query"},
		GrantTypes:   []string{GrantAuthorizationCode, GrantClientCredentials, GrantRefreshToken, GrantTokenExchange},
		SubjectTypes: []string{"public"}, IDTokenAlgs: []string{s.cfg.SigningAlg},
		TokenAuthMethods: auth, TokenAuthAlgs: []string{"ES256", "ES384", "RS256", "PS256", "EdDSA"},
		RevocationAuthMethods: auth, IntrospectionAuthMethods: auth[:4],
		CodeChallengeMethods: []string{"S256"}, Scopes: []string{"openid", "email", "offline_access"},
		Claims: []string{"iss", "sub", "aud", "exp", "iat", "auth_time", "nonce", "at_hash", "amr", "azp",
			"preferred_username", "email", "roles", "permissions", "tenant", "client_id", "scope", "jti", "cnf", "act"},
		TLSClientCertificateBoundTokens: true, AuthorizationResponseIssParameter: true,
	}
	w.Header().Set("Cache-Control", "public, max-age="+discoveryCacheAge)
	w.Header().Set("Content-Type", "application/json")
	writeJSONCached(w, d)
}

func (s *Service) handleJWKS(w http.ResponseWriter, r *http.Request) {
	set, err := s.JWKS(r.Context())
	if err != nil {
		s.log.Error("token: jwks", "err", err)
		writeOAuthError(w, serverError(err))
		return
	}
	// Short caching: relying parties see the next key well within
	// KeyPublishAhead.
	w.Header().Set("Cache-Control", "public, max-age="+jwksCacheSeconds)
	w.Header().Set("Content-Type", "application/jwk-set+json")
	writeJSONCached(w, set)
}

// allowCORS lets a browser at one of the client's registered origins read
// the answer (CORS). Only exact origins registered on the client count,
// and credentials (cookies) are never allowed.
func allowCORS(w http.ResponseWriter, r *http.Request, c *Client) {
	origin := r.Header.Get("Origin")
	if origin == "" || c == nil || !contains(c.CORSOrigins, origin) {
		return
	}
	h := w.Header()
	h.Set("Access-Control-Allow-Origin", origin)
	h.Add("Vary", "Origin")
}

// preflight answers CORS preflight requests for the endpoints browsers
// call. It grants nothing by itself: whether the answer may be read is
// decided per client on the actual request (allowCORS).
func preflight(w http.ResponseWriter, r *http.Request) {
	h := w.Header()
	if origin := r.Header.Get("Origin"); origin != "" {
		h.Set("Access-Control-Allow-Origin", origin)
		h.Add("Vary", "Origin")
	}
	h.Set("Access-Control-Allow-Methods", "POST, GET")
	h.Set("Access-Control-Allow-Headers", "Authorization, Content-Type")
	h.Set("Access-Control-Max-Age", "600")
	w.WriteHeader(http.StatusNoContent)
}
