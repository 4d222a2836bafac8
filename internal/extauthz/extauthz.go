// Package extauthz serves Envoy's external authorization API (gRPC
// envoy.service.auth.v3.Authorization, go-control-plane's types) with
// Moatless's decision function: an existing Envoy or Istio ingress
// delegates decisions (Istio AuthorizationPolicy, RequestAuthentication
// and Rego CUSTOM providers) to "moatless server" or "moatless authz".
//
// A CheckRequest becomes a policy.Request: the source principal and
// address Envoy saw, the destination's port and principal, the HTTP
// method, path, host and headers, the TLS session's SNI, the thumbprint
// of the peer certificate Envoy reports (include_peer_certificate, for
// certificate-bound tokens) and the request time Envoy stamped. Destinations have no namespace or labels in Envoy's
// request; they come from Config.Destination, overridden per route by the
// context extensions "namespace" and "labels" ("app=web,tier=front").
// Allowed requests get the headers the policies ask for (Rego results,
// RequestAuthentication outputs); denials get 403 (or the Rego result's
// status), invalid tokens 401, as the sidecar answers them.
package extauthz

import (
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"encoding/pem"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"os"
	"runtime/debug"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	typev3 "github.com/envoyproxy/go-control-plane/envoy/type/v3"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	rpcstatus "google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	securityv1beta1 "istio.io/api/security/v1beta1"

	"github.com/moatless/moatless/internal/authn"
	"github.com/moatless/moatless/internal/policy"
	"github.com/moatless/moatless/internal/tlsconf"
)

// Record is one decision, for the embedder's audit log (Config.OnDecision).
type Record struct {
	Time          time.Time
	Source        string // caller SPIFFE ID as Envoy saw it, "" for none
	SourceIP      string
	Destination   string // "namespace:port"
	Method, Path  string // Path without the query
	Decision      policy.Decision
	PolicyVersion uint64
	// TokenIssuer and TokenSubject name the request's token whose
	// signature verified: the one that authenticated it, or the one of
	// an Unauthenticated decision refused after verifying (revoked,
	// another audience, bound to another certificate, refused by a
	// REQUIRED rule: Decision.Reason says which): whose credential was
	// presented, the caller perhaps relaying it. Empty for no token and
	// for a token that did not verify, whose claims are the sender's word.
	TokenIssuer, TokenSubject string
}

// Config configures a Server. Policy is required.
type Config struct {
	// Policy returns the policy in force and its version; a nil Set
	// denies everything (deny by default).
	Policy func() (*policy.Set, uint64)
	// Verifier validates request JWTs (RequestAuthentication); nil
	// refuses (401) every token a rule looks at.
	Verifier policy.JWTVerifier
	// Destination is the workload decisions are for when the context
	// extensions do not say (Namespace, Labels; Port comes from Envoy).
	Destination policy.Destination
	// Now stamps requests Envoy did not stamp; default time.Now.
	Now func() time.Time
	// Logger receives operational logs and DecisionLog every decision
	// (denials at warn); defaults slog.Default().
	Logger      *slog.Logger
	DecisionLog *slog.Logger
	// Registerer receives the metrics; default none.
	Registerer prometheus.Registerer
	// OnDecision, when set, is called with every denial (the server
	// audits them). It must not block.
	OnDecision func(context.Context, Record)
	// HandshakeTimeout bounds a connection's handshake (TLS on a TCP
	// listener); default 10 s. gRPC's own is 120 s: a peer that opens
	// connections and never completes one holds a descriptor and a
	// goroutine each for that long, without any credential.
	HandshakeTimeout time.Duration
	// Revocations, when set, refuses what the mesh has revoked, as a
	// sidecar does: a request whose source principal is a revoked SPIFFE
	// ID (denied: Envoy accepted its certificate, which it cannot know is
	// revoked), and a verified token issued to or for a revoked workload
	// (Unauthenticated). A revoked token ID is the Verifier's to refuse
	// (authn.Options.Revoked). *proxy.Revocations implements it.
	Revocations Revocations
}

// Revocations is what Config.Revocations asks.
type Revocations interface {
	// Peer reports whether a peer with this SPIFFE ID (or leaf serial,
	// "" when unknown) is revoked.
	Peer(id, serial string) bool
	// HasSerials reports whether any certificate is revoked by serial:
	// only then is the peer certificate Envoy reports parsed for its
	// serial.
	HasSerials() bool
	// IdentityToken reports whether a token with these verified claims
	// names a revoked workload (subject, authorized party, client or an
	// actor).
	IdentityToken(claims map[string]any) bool
}

// The reasons of the refusals Config.Revocations makes.
const (
	ReasonSourceRevoked          = "the source's SPIFFE ID is revoked"
	ReasonTokenOfRevokedIdentity = "invalid token: issued to or for a revoked identity"
)

// Server answers Check calls.
type Server struct {
	authv3.UnimplementedAuthorizationServer
	cfg       Config
	decisions *prometheus.CounterVec
	custom    *prometheus.CounterVec
	outputs   atomic.Pointer[outputMemo]
}

// New checks cfg and builds a Server; it listens on nothing (Serve does).
func New(cfg Config) (*Server, error) {
	if cfg.Policy == nil {
		return nil, errors.New("extauthz: config: a policy source is required")
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.HandshakeTimeout <= 0 {
		cfg.HandshakeTimeout = 10 * time.Second
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.DecisionLog == nil {
		cfg.DecisionLog = cfg.Logger
	}
	s := &Server{cfg: cfg,
		decisions: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "moatless_authz_decisions_total",
			Help: "ext_authz Check decisions by outcome and deciding policy (namespace/name, empty when none).",
		}, []string{"decision", "policy"}),
		custom: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "moatless_authz_custom_decisions_total",
			Help: "CUSTOM provider (Rego) evaluations of ext_authz checks by provider and result: allow, deny, error or timeout.",
		}, []string{"provider", "result"}),
	}
	if cfg.Registerer != nil {
		for _, c := range []prometheus.Collector{s.decisions, s.custom} {
			if err := cfg.Registerer.Register(c); err != nil {
				return nil, err
			}
		}
	}
	return s, nil
}

// Request converts a CheckRequest into the request the decision function
// takes, with def as the destination's namespace and labels unless the
// context extensions name them. Errors are malformed requests (a source
// address that is not an IP, bad labels).
func Request(cr *authv3.CheckRequest, def policy.Destination, now time.Time) (*policy.Request, error) {
	a := cr.GetAttributes()
	req := &policy.Request{Protocol: policy.TCP, Headers: http.Header{}, Time: now}
	if t := a.GetRequest().GetTime(); t != nil && t.IsValid() {
		req.Time = t.AsTime()
	}
	req.Source.Principal = spiffePrincipal(a.GetSource().GetPrincipal())
	if sa := a.GetSource().GetAddress().GetSocketAddress(); sa != nil && sa.GetAddress() != "" {
		ip, err := netip.ParseAddr(sa.GetAddress())
		if err != nil {
			return nil, fmt.Errorf("source address %q is not an IP", sa.GetAddress())
		}
		req.Source.IP = ip.Unmap()
	}
	req.RemoteIP = req.Source.IP
	req.Source.CertSHA256 = certThumbprint(a.GetSource().GetCertificate())
	req.Destination = policy.Destination{Namespace: def.Namespace, Labels: def.Labels}
	if ds := a.GetDestination().GetAddress().GetSocketAddress(); ds != nil {
		req.Destination.Port = int(ds.GetPortValue())
		if ip, err := netip.ParseAddr(ds.GetAddress()); err == nil {
			req.Destination.IP = ip.Unmap()
		}
	}
	req.Destination.Principal = spiffePrincipal(a.GetDestination().GetPrincipal())
	ext := a.GetContextExtensions()
	if ns, ok := ext["namespace"]; ok {
		req.Destination.Namespace = ns
	}
	if ls, ok := ext["labels"]; ok {
		labels, err := parseLabels(ls)
		if err != nil {
			return nil, err
		}
		req.Destination.Labels = labels
	}
	req.SNI = a.GetTlsSession().GetSni()
	h := a.GetRequest().GetHttp()
	if h == nil {
		return req, nil // a network (L4) check
	}
	req.Protocol = policy.HTTP
	req.Method, req.Host, req.Path = h.GetMethod(), h.GetHost(), h.GetPath()
	if req.Path == "" {
		// Envoy sends every HTTP request's target; none is not "/".
		return nil, errors.New("the HTTP request has no path")
	}
	for k, v := range h.GetHeaders() {
		if strings.HasPrefix(k, ":") {
			continue // pseudo-headers are the fields above
		}
		req.Headers[http.CanonicalHeaderKey(k)] = []string{v}
	}
	for _, hv := range h.GetHeaderMap().GetHeaders() {
		if strings.HasPrefix(hv.GetKey(), ":") {
			continue
		}
		v := hv.GetValue()
		if v == "" {
			v = string(hv.GetRawValue())
		}
		req.Headers.Add(http.CanonicalHeaderKey(hv.GetKey()), v)
	}
	return req, nil
}

// spiffePrincipal is the principal policies match for Envoy's p: a
// SPIFFE ID without "spiffe://", as Istio writes principals, and ""
// (no principal, as a plaintext peer) for anything else. Envoy's
// principal is a certificate's URI SAN, else its DNS SAN, else its
// subject: names a CA may take from the requester ("CN=x/ns/prod/sa/admin"),
// which namespace and suffix patterns would otherwise match. A sidecar
// admits SPIFFE certificates only, and "moatless policy check" refuses
// any other principal.
func spiffePrincipal(p string) string {
	if p == "" {
		return ""
	}
	if _, err := spiffeid.FromString(p); err != nil {
		return ""
	}
	// A valid ID is its own canonical form (lower-case scheme and trust
	// domain, no trailing "/"): what follows the scheme as sent.
	return p[len("spiffe://"):]
}

// maxPeerCertificate bounds the encoded peer certificate read.
const maxPeerCertificate = 64 << 10

// certThumbprint is the RFC 8705 thumbprint (policy.CertThumbprint) of
// the peer certificate Envoy reports (include_peer_certificate: PEM,
// URL-encoded), which a certificate-bound token must match as it must
// match the sidecar's connection. "" for none, and for anything but one
// URL-encoded PEM CERTIFICATE block: a bound token is then refused, and
// nothing else changes.
func certThumbprint(enc string) string {
	der := peerCertDER(enc)
	if der == nil {
		return ""
	}
	sum := sha256.Sum256(der)
	return base64.RawURLEncoding.EncodeToString(sum[:])
}

// peerCertDER is the DER of the peer certificate Envoy reports: nil for
// none, and for anything but one URL-encoded PEM CERTIFICATE block.
func peerCertDER(enc string) []byte {
	if enc == "" || len(enc) > maxPeerCertificate {
		return nil
	}
	text, err := url.PathUnescape(enc)
	if err != nil {
		return nil
	}
	b, rest := pem.Decode([]byte(text))
	if b == nil || b.Type != "CERTIFICATE" || len(b.Headers) != 0 || len(bytes.TrimSpace(rest)) != 0 {
		return nil
	}
	return b.Bytes
}

// peerSerial is the serial number (hex) of the peer certificate Envoy
// reports, for the revocation check of a certificate revoked by serial
// (a node's re-attestation with replace, say) while its SPIFFE ID is
// not; "" when Envoy sends none or it does not parse.
func (s *Server) peerSerial(cr *authv3.CheckRequest) string {
	if !s.cfg.Revocations.HasSerials() {
		return "" // no certificate is revoked by serial: nothing to parse
	}
	der := peerCertDER(cr.GetAttributes().GetSource().GetCertificate())
	if der == nil {
		return ""
	}
	c, err := x509.ParseCertificate(der)
	if err != nil {
		return ""
	}
	return c.SerialNumber.Text(16)
}

func parseLabels(s string) (map[string]string, error) {
	out := map[string]string{}
	for _, kv := range strings.Split(s, ",") {
		k, v, ok := strings.Cut(strings.TrimSpace(kv), "=")
		if !ok || k == "" {
			return nil, fmt.Errorf("context extension labels %q: want key=value[,key=value]", s)
		}
		out[k] = v
	}
	return out, nil
}

// Check decides one request with the policy in force. A request that
// cannot be read, and any policy failure, is denied: ext_authz never
// fails open on Moatless's side.
func (s *Server) Check(ctx context.Context, cr *authv3.CheckRequest) (*authv3.CheckResponse, error) {
	set, version := s.cfg.Policy()
	req, err := Request(cr, s.cfg.Destination, s.cfg.Now())
	var dec policy.Decision
	var forged []string
	var tokIss, tokSub string
	switch {
	case err != nil:
		dec = policy.Decision{Outcome: policy.Deny, Rule: -1, Reason: "bad check request: " + err.Error()}
	case set == nil:
		dec = policy.Decision{Outcome: policy.Deny, Rule: -1, Reason: policy.ReasonNoSet}
	case s.cfg.Revocations != nil && s.cfg.Revocations.Peer(cr.GetAttributes().GetSource().GetPrincipal(), s.peerSerial(cr)):
		dec = policy.Decision{Outcome: policy.Deny, Rule: -1, Reason: ReasonSourceRevoked}
	default:
		v := s.cfg.Verifier
		if v == nil {
			v = refuseTokens{}
		}
		tv := &tokenVerdict{v: v}
		forged, dec = s.decide(set, req, tv)
		// The token whose signature verified, the one that
		// authenticated the request or the one refused after verifying
		// (Evaluate names both), for the record, as a sidecar's.
		tokIss, tokSub = dec.TokenIssuer, dec.TokenSubject
		if dec.Outcome == policy.Unauthenticated && tokIss == "" && tokSub == "" {
			tokIss, tokSub = tv.verifiedToken()
		}
		if a := tv.revokedIdentity(s.cfg.Revocations); a != nil {
			// Whatever the policy said with it: a token issued to or for
			// a revoked identity is refused however valid its signature
			// and lifetime, as a sidecar and the gateway refuse it. Its
			// claims verified, so they name the token.
			dec = policy.Decision{Outcome: policy.Unauthenticated, Rule: -1, Reason: ReasonTokenOfRevokedIdentity}
			tokIss, _ = a.Claims["iss"].(string)
			tokSub, _ = a.Claims["sub"].(string)
		}
	}
	s.record(ctx, cr, req, dec, version, tokIss, tokSub)
	return response(dec, req, forged), nil
}

// tokenVerdict is the verifier of one Check, keeping its refusal and
// the tokens it verified.
type tokenVerdict struct {
	v     policy.JWTVerifier
	err   error
	auths []*policy.Auth
}

func (t *tokenVerdict) Verify(rules []*securityv1beta1.JWTRule, req *policy.Request) (*policy.Auth, error) {
	a, err := t.v.Verify(rules, req)
	t.err = err
	if a != nil && err == nil {
		t.auths = append(t.auths, a)
	}
	return a, err
}

// revokedIdentity is a verified token of this Check issued to or for a
// workload r says is revoked, nil when none (or r is nil).
func (t *tokenVerdict) revokedIdentity(r Revocations) *policy.Auth {
	if r == nil {
		return nil
	}
	for _, a := range t.auths {
		if r.IdentityToken(a.Claims) {
			return a
		}
	}
	return nil
}

// verifiedToken is the issuer and subject of a token refused after its
// signature verified (authn's VerifiedToken), "" for any other refusal.
func (t *tokenVerdict) verifiedToken() (issuer, subject string) {
	var vt interface{ VerifiedToken() (string, string) }
	if t.err == nil || !errors.As(t.err, &vt) {
		return "", ""
	}
	return vt.VerifiedToken()
}

// decide evaluates req, denying on a panic: gRPC does not recover a
// handler's, the process would exit, and an Envoy configured with
// failure_mode_allow reads an unreachable ext_authz server as an allow.
func (s *Server) decide(set *policy.Set, req *policy.Request, v policy.JWTVerifier) (forged []string, dec policy.Decision) {
	defer func() {
		if p := recover(); p != nil {
			s.cfg.Logger.Error("ext_authz decision panicked; denied", "panic", fmt.Sprint(p), "stack", string(debug.Stack()))
			forged, dec = nil, policy.Decision{Outcome: policy.Deny, Rule: -1, Reason: "internal error"}
		}
	}()
	forged = s.forgedHeaders(set, req)
	return forged, set.Evaluate(req, v)
}

// forgedHeaders deletes from req, before it is decided, the headers a
// caller may not send, and returns their names as sent (lower case) for
// Envoy to remove from an allowed request: the headers
// RequestAuthentication writes for the app (outputClaimToHeaders,
// outputPayloadToHeader) under any spelling, on requests with a token or
// without, and the "_" twins of the headers policies read (every "_" name
// when a Rego provider reads them all) and of the headers the rules read
// tokens from (x_jwt_assertion, a token nobody verified, for
// x-jwt-assertion). Envoy forwards what ext_authz does
// not remove, and WSGI, CGI, PHP and Rack read x_user and X-User as one
// variable, so the app would take a caller's copy for the verified one.
// These are the sidecar's rules (internal/proxy/headers.go), so a request
// reaches the app through Envoy as it would through the sidecar.
func (s *Server) forgedHeaders(set *policy.Set, req *policy.Request) []string {
	var owned, tokens []string
	if rules := set.JWTRules(req.Destination); len(rules) > 0 {
		owned, tokens = s.ruleHeaders(rules)
	}
	underscore := false
	for k := range req.Headers {
		if strings.IndexByte(k, '_') >= 0 {
			underscore = true
			break
		}
	}
	if len(owned) == 0 && !underscore {
		return nil
	}
	// The "_" spelling of a header tokens are read from is not read by
	// the verifier, and is read by the app as the header it verified.
	// (Clipped: the memo's slice is shared by concurrent checks.)
	read := slices.Clip(tokens)
	all := false
	if underscore {
		names, a := set.RequestHeaders(req.Destination)
		all = a
		for _, h := range names {
			// A name the policy spells with "_" is its own.
			if !strings.Contains(h, "_") {
				read = append(read, foldHeaderName(h))
			}
		}
	}
	var out []string
	for k := range req.Headers {
		folds := func(f string) bool { return foldsTo(k, f) }
		if slices.ContainsFunc(owned, folds) || (strings.IndexByte(k, '_') >= 0 && (all || slices.ContainsFunc(read, folds))) {
			delete(req.Headers, k)
			out = append(out, strings.ToLower(k))
		}
	}
	slices.Sort(out)
	return out
}

// outputMemo is the folded output and token headers of one rule list.
type outputMemo struct {
	rules          []*securityv1beta1.JWTRule
	output, tokens []string
}

// ruleHeaders returns authn.OutputHeaders(rules) and
// authn.TokenHeaders(rules) folded (foldHeaderName), remembered for the
// last rule list: a policy set returns the same list for a destination
// until it is replaced.
func (s *Server) ruleHeaders(rules []*securityv1beta1.JWTRule) (output, tokens []string) {
	if m := s.outputs.Load(); m != nil && len(m.rules) == len(rules) && &m.rules[0] == &rules[0] {
		return m.output, m.tokens
	}
	output = authn.OutputHeaders(rules)
	for i, h := range output {
		output[i] = foldHeaderName(h)
	}
	for _, h := range authn.TokenHeaders(rules) {
		// A name the rule spells with "_" is its own.
		if !strings.Contains(h, "_") {
			tokens = append(tokens, foldHeaderName(h))
		}
	}
	s.outputs.Store(&outputMemo{rules: rules, output: output, tokens: tokens})
	return output, tokens
}

// foldsTo reports whether foldHeaderName(h) == f, without allocating for
// names up to 64 bytes.
func foldsTo(h, f string) bool {
	if len(h) != len(f) {
		return false
	}
	var buf [64]byte
	return string(policy.AppendCGIName(buf[:0], h)) == f
}

// foldHeaderName is h as a CGI-style app compares it
// (policy.AppendCGIName).
func foldHeaderName(h string) string {
	return string(policy.AppendCGIName(nil, h))
}

type refuseTokens struct{}

func (refuseTokens) Verify(rules []*securityv1beta1.JWTRule, _ *policy.Request) (*policy.Auth, error) {
	if len(rules) == 0 {
		return nil, nil
	}
	return nil, errors.New("extauthz: no JWT verifier configured")
}

// response is Envoy's answer to dec; an allow removes the forged headers
// (forgedHeaders) but those it sets, which it overwrites, and the token's
// header or query parameter unless its rule forwards it.
func response(dec policy.Decision, req *policy.Request, forged []string) *authv3.CheckResponse {
	switch dec.Outcome {
	case policy.Allow:
		ok := &authv3.OkHttpResponse{}
		set := func(k, v string) {
			ok.Headers = append(ok.Headers, &corev3.HeaderValueOption{
				Header:       &corev3.HeaderValue{Key: strings.ToLower(k), Value: v},
				AppendAction: corev3.HeaderValueOption_OVERWRITE_IF_EXISTS_OR_ADD,
			})
		}
		if req != nil && req.Auth != nil {
			for _, k := range req.Auth.RemoveHeaders {
				ok.HeadersToRemove = append(ok.HeadersToRemove, strings.ToLower(k))
			}
			// A token read from the query leaves it too, unless the rule
			// forwards it: a bearer token in the URL reaches the app's
			// access logs and the Referer of every link it serves.
			ok.QueryParametersToRemove = append(ok.QueryParametersToRemove, req.Auth.RemoveQueryParams...)
			for _, k := range sortedKeys(req.Auth.SetHeaders) {
				set(k, req.Auth.SetHeaders[k])
			}
		}
		for _, k := range sortedKeys(dec.Headers) {
			set(k, dec.Headers[k])
		}
		isSet := func(k string) bool {
			return slices.ContainsFunc(ok.Headers, func(h *corev3.HeaderValueOption) bool { return h.GetHeader().GetKey() == k })
		}
		for _, k := range forged {
			// A name set here is overwritten (every copy) and must not
			// also be removed, whichever edit Envoy makes first.
			if !isSet(k) {
				ok.HeadersToRemove = append(ok.HeadersToRemove, k)
			}
		}
		if req != nil && len(ok.Headers) > 0 {
			// The "_" spelling of a header set here (a Rego result's) would
			// reach a CGI-style app as the same variable.
			var twins []string
			for k := range req.Headers {
				if l := strings.ToLower(k); strings.IndexByte(l, '_') >= 0 && !isSet(l) && isSet(foldHeaderName(l)) {
					twins = append(twins, l)
				}
			}
			slices.Sort(twins)
			ok.HeadersToRemove = append(ok.HeadersToRemove, twins...)
		}
		return &authv3.CheckResponse{Status: &rpcstatus.Status{Code: int32(codes.OK)}, HttpResponse: &authv3.CheckResponse_OkResponse{OkResponse: ok}}
	case policy.Unauthenticated:
		return &authv3.CheckResponse{
			Status: &rpcstatus.Status{Code: int32(codes.Unauthenticated), Message: dec.Reason},
			HttpResponse: &authv3.CheckResponse_DeniedResponse{DeniedResponse: &authv3.DeniedHttpResponse{
				Status: &typev3.HttpStatus{Code: typev3.StatusCode_Unauthorized},
				Headers: []*corev3.HeaderValueOption{{Header: &corev3.HeaderValue{Key: "www-authenticate", Value: `Bearer error="invalid_token"`},
					AppendAction: corev3.HeaderValueOption_OVERWRITE_IF_EXISTS_OR_ADD}},
				Body: "Jwt verification fails",
			}},
		}
	}
	code := typev3.StatusCode_Forbidden
	if dec.Status != 0 {
		code = typev3.StatusCode(dec.Status)
	}
	return &authv3.CheckResponse{
		Status: &rpcstatus.Status{Code: int32(codes.PermissionDenied), Message: dec.Reason},
		HttpResponse: &authv3.CheckResponse_DeniedResponse{DeniedResponse: &authv3.DeniedHttpResponse{
			Status: &typev3.HttpStatus{Code: code}, Body: "RBAC: access denied",
		}},
	}
}

func sortedKeys(m map[string]string) []string {
	ks := make([]string, 0, len(m))
	for k := range m {
		ks = append(ks, k)
	}
	slices.Sort(ks)
	return ks
}

// record counts and logs a decision (every denial and every decision a
// CUSTOM provider took part in; other allows are only counted) and hands
// denials to OnDecision.
func (s *Server) record(ctx context.Context, cr *authv3.CheckRequest, req *policy.Request, dec policy.Decision, version uint64, tokIss, tokSub string) {
	s.decisions.WithLabelValues(dec.Outcome.String(), dec.Policy).Inc()
	for _, c := range dec.Custom {
		s.custom.WithLabelValues(c.Provider, c.Result).Inc()
	}
	if dec.Outcome == policy.Allow && len(dec.Custom) == 0 {
		return
	}
	a := cr.GetAttributes()
	rec := Record{Time: s.cfg.Now(), Source: a.GetSource().GetPrincipal(), Decision: dec, PolicyVersion: version,
		TokenIssuer: tokIss, TokenSubject: tokSub}
	if req != nil {
		rec.SourceIP = addr(req.Source.IP)
		rec.Destination = req.Destination.Namespace + ":" + strconv.Itoa(req.Destination.Port)
		rec.Method = req.Method
		rec.Path, _, _ = strings.Cut(req.Path, "?") // tokens may travel in the query
	}
	attrs := []slog.Attr{
		slog.String("source", rec.Source), slog.String("source_ip", rec.SourceIP), slog.String("destination", rec.Destination),
		slog.String("method", rec.Method), slog.String("path", rec.Path), slog.String("decision", dec.Outcome.String()),
		slog.String("policy", dec.Policy), slog.Int("rule", dec.Rule), slog.String("reason", dec.Reason), slog.Uint64("policy_version", version),
	}
	if tokSub != "" || tokIss != "" {
		attrs = append(attrs, slog.String("token_issuer", tokIss), slog.String("token_subject", tokSub))
	}
	for i, c := range dec.Custom {
		attrs = append(attrs, slog.Group("custom_"+strconv.Itoa(i), slog.String("provider", c.Provider), slog.String("query", c.Query),
			slog.String("result", c.Result), slog.String("input_sha256", c.InputSHA256), slog.String("error", c.Error)))
	}
	level := slog.LevelInfo
	if dec.Outcome != policy.Allow {
		level = slog.LevelWarn
	}
	s.cfg.DecisionLog.LogAttrs(ctx, level, "decision", attrs...)
	if dec.Outcome != policy.Allow && s.cfg.OnDecision != nil {
		s.cfg.OnDecision(ctx, rec)
	}
}

func addr(ip netip.Addr) string {
	if !ip.IsValid() {
		return ""
	}
	return ip.String()
}

// Listen binds addr: "unix:/path" (a socket only the allowed UIDs may
// use, checked with SO_PEERCRED on every connection; the file is made
// 0660) or "host:port", which needs tlsConf with client certificates
// required (mutual TLS): ext_authz decisions and the requests they carry
// are nothing to serve to just anyone.
func Listen(addr string, tlsConf *tls.Config, allowUIDs []uint32) (net.Listener, credentials.TransportCredentials, error) {
	if p, ok := strings.CutPrefix(addr, "unix:"); ok {
		if p == "" {
			return nil, nil, errors.New("extauthz: empty unix socket path")
		}
		// Only a stale socket is replaced: a path naming anything else is
		// a mistake, and its file is not ours to delete.
		if fi, err := os.Lstat(p); err == nil && fi.Mode().Type() != os.ModeSocket {
			return nil, nil, fmt.Errorf("extauthz: %s exists and is not a socket; give a socket path", p)
		}
		if err := os.Remove(p); err != nil && !errors.Is(err, os.ErrNotExist) {
			return nil, nil, fmt.Errorf("extauthz: %w", err)
		}
		l, err := net.Listen("unix", p)
		if err != nil {
			return nil, nil, fmt.Errorf("extauthz: %w", err)
		}
		if err := os.Chmod(p, 0o660); err != nil {
			l.Close()
			return nil, nil, fmt.Errorf("extauthz: %w", err)
		}
		if len(allowUIDs) == 0 {
			allowUIDs = []uint32{uint32(os.Geteuid())}
		}
		return l, peerUIDs{allow: allowUIDs}, nil
	}
	if tlsConf == nil || tlsConf.ClientAuth != tls.RequireAndVerifyClientCert {
		return nil, nil, fmt.Errorf("extauthz: %s: a TCP listener needs mutual TLS (a certificate, a key and the client CA)", addr)
	}
	l, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, nil, fmt.Errorf("extauthz: %w", err)
	}
	// AEAD suites only under TLS 1.2, whatever the caller's config says;
	// the caller's config is not modified.
	return l, credentials.NewTLS(tlsconf.Server(tlsConf.Clone())), nil
}

// Serve serves Check on l until ctx ends.
func (s *Server) Serve(ctx context.Context, l net.Listener, creds credentials.TransportCredentials) error {
	g := grpc.NewServer(grpc.Creds(creds), grpc.MaxRecvMsgSize(4<<20), grpc.ConnectionTimeout(s.cfg.HandshakeTimeout))
	authv3.RegisterAuthorizationServer(g, s)
	errc := make(chan error, 1)
	go func() { errc <- g.Serve(l) }()
	select {
	case <-ctx.Done():
		g.GracefulStop()
		return nil
	case err := <-errc:
		return err
	}
}
