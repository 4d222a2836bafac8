package gateway

import (
	"bytes"
	"context"
	"errors"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"go.opentelemetry.io/otel/trace"

	"github.com/moatless/moatless/internal/gateway/validate"
	"github.com/moatless/moatless/internal/gateway/waf"
	"github.com/moatless/moatless/internal/policy"
	"github.com/moatless/moatless/internal/proxy"
)

// Block reasons: the bounded "reason" label of metrics and the access
// log's block_reason.
const (
	reasonMethod       = "method"
	reasonBadRequest   = "bad_request"
	reasonURITooLong   = "uri_too_long"
	reasonHeaderLarge  = "headers_too_large"
	reasonBodyLarge    = "body_too_large"
	reasonIPDenied     = "ip_denied"
	reasonNoRoute      = "no_route"
	reasonCORS         = "cors"
	reasonRateLimited  = "rate_limited"
	reasonWAF          = "waf"
	reasonValidation   = "validation"
	reasonUnauthn      = "unauthenticated"
	reasonDenied       = "denied"
	reasonNoPolicy     = "no_policy"
	reasonExchange     = "token_exchange"
	reasonUpstream     = "upstream"
	reasonUpstreamID   = "upstream_identity"
	reasonUpstreamTime = "upstream_timeout"
)

// reqCtx is what the chain learns about one request.
type reqCtx struct {
	st        *state
	id        string
	start     time.Time
	peer      netip.Addr
	client    netip.Addr
	route     *route
	origin    string
	preflight bool
	reason    string
	identity  string
	// detail is extra for the access log: the WAF's rule IDs.
	detail string
	// body is the request body when a check needed it whole (WAF,
	// validation); r.Body then replays it.
	body     []byte
	bodyRead bool
	// req is the request as the server gave it (its body unwrapped);
	// forwarded: the forwarder has it, and settles its body (see
	// respWriter.settle); bodyDone: the body was read to its end;
	// linger: the connection closes lingering after the answer;
	// bodyBytes is the body bytes read from the client, for the traffic
	// record: by the forwarder, readBody or settle (an answer may come
	// before the body was read; the record counts what was read, not the
	// Content-Length).
	req       *http.Request
	bodyBytes int64
	forwarded bool
	bodyDone  bool
	linger    bool
	// span is the request's trace span, nil when tracing is off.
	span trace.Span
	// reqBody is r.Body as it is streamed upstream; bodyErr is the error
	// reading it from the client failed with, if it did (set by the
	// transport's goroutine that reads the body).
	reqBody clientBody
	bodyErr atomic.Pointer[error]
	// rw is the request's respWriter and hdrs the backing of the header
	// values the gateway sets on the forwarded request and its answer
	// (X-Forwarded-For, X-Request-Id), in the one allocation of reqCtx.
	rw     respWriter
	hdrs   [2]string
	decide policy.Request
	// paramFree is the normalized path as Tomcat, Jetty and Spring read
	// it (paramFreePath), "" when it has no path parameter: the WAF and
	// validation check that reading too.
	paramFree string
	// repeated names the headers of the route's header rate limits that
	// the request carried more than once, seen before the header filter
	// joins a policy-read header's fields into one (limiter.key).
	repeated []string
}

// httpsProto is the X-Forwarded-Proto value of every forwarded request;
// nothing modifies header value slices in place (as the security
// headers' slices, shared by every response).
var httpsProto = []string{"https"}

// clientBody notes the error reading the client's body failed with, so
// that a failed forward the client caused (a malformed chunk, a body cut
// short) is answered 400 and not blamed on the upstream. (The bytes read
// are counted by whoever reads: the forwarder, readBody, settle.)
type clientBody struct {
	io.ReadCloser
	rc *reqCtx
}

func (b *clientBody) Read(p []byte) (int, error) {
	n, err := b.ReadCloser.Read(p)
	if err != nil && err != io.EOF {
		b.rc.noteBodyErr(err)
	}
	return n, err
}

// noteBodyErr keeps the first error reading the client's body failed
// with (not inlined: err escapes only when there is one, not on every
// Read).
//
//go:noinline
func (rc *reqCtx) noteBodyErr(err error) { rc.bodyErr.CompareAndSwap(nil, &err) }

// ServeHTTP is the gateway's request path; see the package comment for
// the order of checks.
func (g *Gateway) ServeHTTP(w0 http.ResponseWriter, r *http.Request) {
	st := g.state.Load()
	rc := &reqCtx{st: st, id: newRequestID(), start: g.now(), req: r}
	rc.hdrs[1] = rc.id
	w := &rc.rw
	w.ResponseWriter, w.rc = w0, rc
	if g.opts.Tracer != nil {
		r = g.startSpan(r, rc)
	}
	defer g.finish(w, r)
	if ap, err := netip.ParseAddrPort(r.RemoteAddr); err == nil {
		rc.peer = ap.Addr().Unmap()
	}
	lim := &st.cfg.Limits

	// The framing of an HTTP/1.x connection first, as the sidecar's strict
	// parser read the head (proxy.GuardFraming): a head net/http would
	// serve but another hop may frame differently (Content-Length beside
	// Transfer-Encoding, a duplicate Content-Length, obs-fold, a bare
	// LF...) is refused and the connection closed, so that nothing after
	// it on the connection is read as a request; after a chunked request
	// the connection closes too (the guard does not follow chunks).
	if status, closeAfter := proxy.FramingVerdict(r); status != 0 || closeAfter {
		w.Header().Set("Connection", "close")
		if status != 0 {
			rc.client = rc.peer
			reason, msg := reasonBadRequest, "malformed or ambiguous request framing"
			switch status {
			case http.StatusRequestHeaderFieldsTooLarge:
				reason, msg = reasonHeaderLarge, "request headers larger than "+strconv.Itoa(lim.MaxHeaderBytes)+" bytes"
			case http.StatusExpectationFailed:
				msg = "unsupported Expect (only 100-continue)"
			case http.StatusHTTPVersionNotSupported:
				msg = "HTTP version not supported"
			}
			g.reject(w, status, reason, msg)
			return
		}
	}

	// A request that may switch protocols (an Upgrade field, CONNECT)
	// opened the framing guard: whatever follows it on the connection may
	// be the new protocol's frames, and net/http alone reads it. Unless
	// the switch happens (the forwarder then writes the upstream's 101
	// and takes the connection over, this header unused), the connection
	// closes after the answer, as Envoy's does after a refused upgrade.
	if r.ProtoMajor == 1 && (len(r.Header["Upgrade"]) > 0 || r.Method == http.MethodConnect) {
		w.Header().Set("Connection", "close")
	}

	// The request line and head, before anything reads them further.
	// A method with a lower-case letter is refused (policy.CheckMethod):
	// "delete" would pass a DENY on DELETE and be served as one by Django
	// or Rack (and "trace" pass the refusal below).
	if policy.CheckMethod(r.Method) != nil {
		g.reject(w, http.StatusBadRequest, reasonMethod, "method must be upper case")
		return
	}
	switch r.Method {
	case http.MethodConnect, http.MethodTrace:
		w.Header().Set("Allow", "GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS")
		g.reject(w, http.StatusMethodNotAllowed, reasonMethod, "method not allowed")
		return
	}
	if len(r.RequestURI) > lim.MaxURIBytes {
		g.reject(w, http.StatusRequestURITooLong, reasonURITooLong, "request target longer than "+strconv.Itoa(lim.MaxURIBytes)+" bytes")
		return
	}
	// RFC 9113 section 8.2.1: an HTTP/2 field value that starts or ends
	// with whitespace makes the request malformed. net/http's HTTP/2
	// server passes it on; the gateway would then match " spent" (a rate
	// limit's key, a policy's header value) where the app, whose HTTP/1.1
	// parser trims it, reads "spent".
	if r.ProtoMajor == 2 && paddedFieldValue(r.Header) {
		g.reject(w, http.StatusBadRequest, reasonBadRequest, "malformed HTTP/2 field value (leading or trailing whitespace)")
		return
	}
	if headBytes(r) > lim.MaxHeaderBytes {
		g.reject(w, http.StatusRequestHeaderFieldsTooLarge, reasonHeaderLarge, "request headers larger than "+strconv.Itoa(lim.MaxHeaderBytes)+" bytes")
		return
	}
	// Origin-form only: an absolute-form target ("GET http://other/")
	// would route by one host and reach an app that reads another; a
	// fragment is never sent by a browser and means a crafted request.
	if !strings.HasPrefix(r.RequestURI, "/") || strings.IndexByte(r.RequestURI, '#') >= 0 || r.URL.Opaque != "" {
		g.reject(w, http.StatusBadRequest, reasonBadRequest, "malformed request target")
		return
	}
	// A Host the decision function cannot read as an authority is a 400
	// here, as the sidecar's path check is, rather than a request routed
	// and decided on a host it does not match.
	if policy.CheckRequestHost(r.Host) != nil {
		g.reject(w, http.StatusBadRequest, reasonBadRequest, "malformed Host")
		return
	}

	rc.client = clientAddr(rc.peer, r.Header["X-Forwarded-For"], st.trusted)
	if !ipAllowed(rc.client, st.allow, st.deny) {
		g.reject(w, http.StatusForbidden, reasonIPDenied, "client address not allowed")
		g.blocked(r, rc, reasonIPDenied, "IP rules")
		return
	}

	// The upstream is served the target policy decided on: one call
	// normalizes it as the policy set says and gives both the path routes
	// and policy match and the target forwarded, so they cannot differ.
	// A _method override in the query goes before anything decides.
	ps := g.policy.Load()
	np, err := policy.NormalizeRequestPath(r.RequestURI, ps.mode)
	if err != nil {
		g.reject(w, http.StatusBadRequest, reasonBadRequest, "malformed request path")
		return
	}
	if err := checkPathMeaning(np.Path()); err != nil {
		g.reject(w, http.StatusBadRequest, reasonBadRequest, "malformed request path: "+err.Error())
		return
	}
	np, overridden := proxy.StripMethodOverride(np)
	if np.Changed() || overridden {
		proxy.SetTarget(r.URL, np)
	}
	rc.route = st.table.lookup(canonicalHost(r.Host), np.Path())
	if rc.route == nil {
		g.reject(w, http.StatusNotFound, reasonNoRoute, "no route")
		return
	}
	rc.paramFree = policy.ParamFreePath(np.Path())
	if !routeUnambiguous(st.table, canonicalHost(r.Host), rc.route, np, rc.paramFree, r.RequestURI, ps.mode) {
		g.reject(w, http.StatusBadRequest, reasonBadRequest, "malformed request path: read with its slashes decoded or its case ignored, it selects another route")
		return
	}
	rt := rc.route

	// Header shaping, the sidecar's own code: hop-by-hop headers first,
	// from the request as received (only a WebSocket upgrade the route
	// carries survives), then every header a caller may not send, under
	// any spelling, from the header and the trailer.
	upgrade := proxy.RemoveHopHeaders(r.Header, rt.upgrades)
	if upgrade != "" && (r.Method != http.MethodGet || r.ProtoMajor != 1) {
		delete(r.Header, "Connection")
		delete(r.Header, "Upgrade")
		upgrade = ""
	}
	for _, l := range rt.limits {
		if l.kind == "header" && len(r.Header[l.arg]) > 1 {
			rc.repeated = append(rc.repeated, l.arg)
		}
	}
	ps.headers.Strip(r.Header)
	ps.headers.GuardTrailers(r)

	rc.origin = r.Header.Get("Origin")
	if rt.cors != nil && isPreflight(r) {
		rc.preflight = true
		grant, ok := rt.cors.preflight(r)
		if !ok {
			rc.origin = "" // no CORS header on a refusal
			g.reject(w, http.StatusForbidden, reasonCORS, "CORS preflight refused")
			return
		}
		rt.cors.writePreflight(w.Header(), rc.origin, grant)
		w.WriteHeader(http.StatusNoContent)
		return
	}

	if r.ContentLength > rt.maxBody {
		g.reject(w, http.StatusRequestEntityTooLarge, reasonBodyLarge, "request body larger than "+strconv.FormatInt(rt.maxBody, 10)+" bytes")
		return
	}
	if r.Body != nil && r.Body != http.NoBody {
		// The wrappers go on a copy of net/http's request: its server
		// decides what to do with a body the handler left unread by the
		// body's own type (close the connection after an unanswered
		// Expect: 100-continue or 256 KiB still to come), and would
		// otherwise read up to 256 KiB of an unknown one before the
		// answer's head, waiting for a client that waits for the answer
		// (TestGatewayAnswerUnreadBody). The fast path keeps its body
		// apart from r and needs no copy.
		if _, fast := w0.(*fastWriter); !fast {
			r = r.WithContext(r.Context())
		}
		// A streamed body is cut off at the limit: the upstream sees the
		// request fail, never a body past it.
		r.Body = http.MaxBytesReader(w0, r.Body, rt.maxBody)
		rc.reqBody.ReadCloser, rc.reqBody.rc = r.Body, rc
		r.Body = &rc.reqBody
	}

	if !g.rateLimit(w, r, rc, nil, false) {
		return
	}
	if rt.waf != nil {
		// A blocking WAF refuses a body longer than it inspects: such a
		// body is not read (announced) or not read past the limit
		// (chunked), rather than held whole in memory to be refused.
		if max := int64(rt.waf.MaxInspectBytes()); rt.waf.Blocks() && r.ContentLength > max {
			g.wafTooLarge(w, r, rc)
			return
		}
		if !g.readBody(w, r, rc) || !g.inspect(w, r, rc) {
			return
		}
	}
	if rt.valid != nil {
		if !g.readBody(w, r, rc) {
			return
		}
		if v := validateReadings(rt.valid, r, rc.body, rc.paramFree); v != nil {
			g.rejectWith(w, http.StatusBadRequest, reasonValidation, errorBody{Error: v.Message, Pointer: v.Pointer})
			return
		}
	}

	// The one decision function, as in the sidecar. The request escapes
	// (the Authorizer is an interface): it lives in reqCtx's allocation.
	req := &rc.decide
	*req = policy.Request{
		Protocol:       policy.HTTP,
		Source:         policy.Source{IP: rc.peer},
		RemoteIP:       rc.client,
		External:       true,
		Destination:    g.destination(localIP(r)),
		Time:           g.now(),
		Method:         r.Method,
		Host:           r.Host,
		Path:           np.Target(),
		NormalizedPath: np,
		Headers:        r.Header,
	}
	if r.TLS != nil {
		req.SNI = r.TLS.ServerName
	}
	dec := policy.Decision{Outcome: policy.Deny, Rule: -1, Reason: "no policy loaded"}
	if ps.authz != nil {
		// Policy matches "/admin%2Fusers" as received and as an app
		// that decodes %2F before routing reads it (/admin/users), and
		// ignoring case: a DENY on /admin/* applies to both.
		dec = ps.authz.Evaluate(req, g.opts.Verifier)
	}
	auth := req.Auth
	if auth != nil {
		rc.identity = auth.Principal
	}
	// require_token: no verified token where one is required is a 401,
	// whatever the policy said (a denial that left the token unread
	// stays the 403 it is when the request carries one).
	missing := rt.cfg.RequireToken && auth == nil && dec.Outcome != policy.Unauthenticated &&
		(dec.Outcome == policy.Allow || len(r.Header["Authorization"]) == 0)
	if missing {
		dec = policy.Decision{Outcome: policy.Unauthenticated, Rule: -1, Reason: "the route requires a token and the request carries none"}
	}
	if auth != nil && g.revoked.IdentityToken(auth.Claims) {
		// A token issued to or for a revoked identity is refused however
		// valid its signature and lifetime, as a sidecar refuses it: the
		// upstream sees only the gateway's identity (and the token only
		// when the route forwards it).
		dec = policy.Decision{Outcome: policy.Unauthenticated, Rule: -1, Reason: "invalid token: issued to or for a revoked identity"}
	}
	if auth != nil && dec.TokenIssuer == "" && dec.TokenSubject == "" {
		// Its signature verified: the record names whose token it was
		// (an override above, or an Authorizer that does not).
		dec.TokenIssuer, dec.TokenSubject = auth.Token()
	}
	g.logDecision(r, rc, dec, ps)
	rc.traceDecision(dec, ps.authz != nil, auth, g.opts.Risk)
	switch dec.Outcome {
	case policy.Allow:
	case policy.Unauthenticated:
		if missing {
			// No credentials at all: RFC 6750 section 3.1, no error code.
			w.Header().Set("Www-Authenticate", `Bearer realm="moatless"`)
			g.reject(w, http.StatusUnauthorized, reasonUnauthn, "Jwt is missing")
			return
		}
		w.Header().Set("Www-Authenticate", `Bearer error="invalid_token"`)
		g.reject(w, http.StatusUnauthorized, reasonUnauthn, "Jwt verification fails")
		return
	default:
		reason := reasonDenied
		if ps.authz == nil {
			reason = reasonNoPolicy
		}
		status := http.StatusForbidden
		if dec.Status != 0 { // a CUSTOM provider's choice, 400-599
			status = dec.Status
		}
		g.reject(w, status, reason, "RBAC: access denied")
		return
	}

	if !g.rateLimit(w, r, rc, auth, true) {
		return
	}

	// A route that names an audience gets the caller's token exchanged
	// for one scoped to it. Fail closed: no exchange, no forwarding, and
	// the caller's own token never goes on in its place.
	exchangedTok := ""
	if aud := rt.cfg.TokenExchangeAudience; aud != "" {
		if auth != nil {
			subject, ok := bearerToken(r.Header)
			if !ok || g.exchange == nil {
				g.reject(w, http.StatusForbidden, reasonExchange, "token exchange needs the token in Authorization")
				return
			}
			tok, err := g.exchange.exchange(r.Context(), subject, aud)
			if err != nil {
				g.metrics.upstreamErrors.WithLabelValues(rt.name, "token_exchange").Inc()
				g.log.Warn("token exchange failed", "route", rt.name, "audience", aud, "request_id", rc.id, "err", err)
				status := http.StatusServiceUnavailable
				if errors.Is(err, errExchangeRefused) {
					status = http.StatusForbidden
				}
				g.reject(w, status, reasonExchange, "token exchange failed")
				return
			}
			exchangedTok = tok
		}
		delete(r.Header, "Authorization")
	}

	// What the upstream is told, set after shaping so no caller copy
	// survives: the client address, the scheme, the request ID, the
	// verified claims the RequestAuthentication rule names, and the
	// headers an allowing CUSTOM provider asked for (the policy package
	// refused framing and identity headers among them).
	h := r.Header
	rc.hdrs[0] = rc.client.String()
	h["X-Forwarded-For"] = rc.hdrs[0:1:1]
	h["X-Forwarded-Proto"] = httpsProto
	h["X-Request-Id"] = rc.hdrs[1:2:2]
	if rc.span != nil {
		propagate(r)
	}
	proxy.ApplyAuth(r, auth)
	if exchangedTok != "" {
		h["Authorization"] = []string{"Bearer " + exchangedTok}
	}
	for k, v := range dec.Headers {
		h[k] = []string{v}
	}
	// A request authenticated with a token is cut off when that token's
	// jti is revoked, or the workload it was issued to or for, however
	// long it streams.
	if auth != nil {
		ctx, cancel := context.WithCancelCause(r.Context())
		defer cancel(nil)
		defer g.revoked.TrackClaims(auth.Claims, func() { cancel(errTokenRevoked) })()
		r = r.WithContext(ctx)
	}
	if rt.pool.timeout > 0 && upgrade == "" {
		ctx, cancel := context.WithTimeout(r.Context(), rt.pool.timeout)
		defer cancel()
		r = r.WithContext(ctx)
	}
	rc.forwarded = true
	n := &rc.bodyBytes
	if rc.bodyRead {
		n = nil // the forwarder reads readBody's copy
	}
	if rt.fwd.Forward(w, r, upgrade, func(c net.Conn) func() { return g.conns.track(c) }, n) {
		rc.linger = true // an early answer: the connection closes lingering (finish)
	}
	// Cut off before the upstream answered: the client is still there
	// and is told why (after the headers, the forwarder reset the stream).
	if !w.written && errors.Is(context.Cause(r.Context()), errTokenRevoked) {
		w.Header().Set("Www-Authenticate", `Bearer error="invalid_token"`)
		g.reject(w, http.StatusUnauthorized, reasonUnauthn, "token revoked")
	}
}

// paddedFieldValue reports whether a value of h starts or ends with a
// space or a tab.
func paddedFieldValue(h http.Header) bool {
	for _, vv := range h {
		for _, v := range vv {
			if n := len(v); n > 0 && (v[0] == ' ' || v[0] == '\t' || v[n-1] == ' ' || v[n-1] == '\t') {
				return true
			}
		}
	}
	return false
}

// errTokenRevoked cancels an in-flight request whose token was revoked.
var errTokenRevoked = errors.New("gateway: token revoked")

// headBytes is the size of the request line and headers as sent (HTTP/2's
// pseudo-headers counted like a request line).
func headBytes(r *http.Request) int {
	n := len(r.Method) + len(r.RequestURI) + len(r.Proto) + len(r.Host) + 16
	for k, vv := range r.Header {
		for _, v := range vv {
			n += len(k) + len(v) + 4
		}
	}
	return n
}

func localIP(r *http.Request) netip.Addr {
	if a, ok := r.Context().Value(http.LocalAddrContextKey).(net.Addr); ok {
		return addrIP(a)
	}
	return netip.Addr{}
}

// upstreamFailed answers a request the forwarder could not deliver: 502
// when the upstream's identity was refused (logged as an error: a
// misconfigured or impersonated upstream), 504 on the route's timeout,
// 503 when no upstream could be reached.
func (g *Gateway) upstreamFailed(w http.ResponseWriter, r *http.Request, rt *route, err error) {
	rw, ok := w.(*respWriter)
	if !ok {
		w.WriteHeader(http.StatusBadGateway)
		return
	}
	switch {
	case errors.Is(err, proxy.ErrPeerNotAllowed), errors.Is(err, proxy.ErrPeerUnverified), errors.Is(err, proxy.ErrPeerRevoked):
		g.metrics.upstreamErrors.WithLabelValues(rt.name, "identity").Inc()
		g.log.Error("upstream identity refused", "route", rt.name, "want", rt.cfg.SPIFFEID, "request_id", rw.rc.id, "err", err)
		g.reject(rw, http.StatusBadGateway, reasonUpstreamID, "upstream identity refused")
	case errors.Is(err, context.DeadlineExceeded):
		g.metrics.upstreamErrors.WithLabelValues(rt.name, "timeout").Inc()
		g.reject(rw, http.StatusGatewayTimeout, reasonUpstreamTime, "upstream timed out")
	default:
		kind := "other"
		var op *net.OpError
		if errors.As(err, &op) && op.Op == "dial" || errors.Is(err, errNoUpstream) {
			kind = "connect"
		}
		var bodyErr error
		if p := rw.rc.bodyErr.Load(); p != nil {
			bodyErr = *p
		}
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) || errors.As(bodyErr, &mbe) {
			g.reject(rw, http.StatusRequestEntityTooLarge, reasonBodyLarge, "request body larger than "+strconv.FormatInt(mbe.Limit, 10)+" bytes")
			return
		}
		if bodyErr != nil {
			// The client's body failed, not the upstream.
			g.reject(rw, http.StatusBadRequest, reasonBadRequest, "request body could not be read")
			return
		}
		g.metrics.upstreamErrors.WithLabelValues(rt.name, kind).Inc()
		status := http.StatusBadGateway
		if kind == "connect" {
			status = http.StatusServiceUnavailable
		}
		g.reject(rw, status, reasonUpstream, "upstream unavailable")
	}
}

// finish counts the request and writes its access log line.
func (g *Gateway) finish(w *respWriter, r *http.Request) {
	rc := w.rc
	if rc.linger {
		if _, fast := w.ResponseWriter.(*fastWriter); !fast {
			// After the access log line: the client may see the
			// connection end as soon as the lingering close begins.
			defer g.lingerHijacked(w)
		}
	}
	d := g.now().Sub(rc.start)
	route := ""
	if rc.route != nil {
		route = rc.route.name
	}
	status := w.status
	if !w.written {
		status = 499 // the client went away before an answer
	}
	g.metrics.requests.WithLabelValues(route, statusClass(status), rc.reason).Inc()
	rc.endSpan(status)
	g.metrics.duration.WithLabelValues(route).Observe(d.Seconds())
	if rec := g.opts.Recorder; rec != nil {
		g.observe(rec, rc, r, status, w.bytes, d)
	}
	if g.access == nil {
		return
	}
	g.access.write(&accessEntry{
		time: rc.start.Add(d), requestID: rc.id, client: addrString(rc.client),
		method: r.Method, host: truncate(r.Host, 256), path: truncate(r.URL.Path, 1024), proto: r.Proto,
		route: route, status: status, bytes: w.bytes, requestBytes: rc.bodyBytes, duration: d,
		identity: rc.identity, blockReason: rc.reason, detail: rc.detail,
	})
}

// statusClasses are the metrics' status labels, one string each instead
// of one built per request.
var statusClasses = [...]string{"0xx", "1xx", "2xx", "3xx", "4xx", "5xx", "6xx", "7xx", "8xx", "9xx"}

// statusClass is the class label of status ("2xx"), as
// strconv.Itoa(status/100)+"xx" spells it for any status.
func statusClass(status int) string {
	if c := status / 100; status >= 0 && c < len(statusClasses) {
		return statusClasses[c]
	}
	return strconv.Itoa(status/100) + "xx"
}

// observe counts the request in the traffic record: an outbound edge to
// the route's upstream, or an inbound one from the internet when no route
// was chosen. The decision is what
// the gateway did: allow when nothing stopped it (whatever the upstream
// answered), unauthenticated for a missing or invalid token, deny for
// every other block, with the block reason.
func (g *Gateway) observe(rec *proxy.Recorder, rc *reqCtx, r *http.Request, status int, respBytes int64, d time.Duration) {
	o := proxy.Observation{
		Direction: proxy.DirectionOutbound, Port: g.port, Protocol: "http", Method: r.Method, Path: r.URL.Path,
		Decision: policy.Allow.String(), Reason: rc.reason, Status: status, ReqBytes: rc.bodyBytes, RespBytes: respBytes, Latency: d,
	}
	if rc.route != nil {
		o.Destination = rc.route.cfg.SPIFFEID
	} else {
		// Stopped before a route was chosen: a request from the
		// internet (no principal) to the gateway itself.
		o.Direction = proxy.DirectionInbound
	}
	switch rc.reason {
	case "", reasonUpstream, reasonUpstreamTime:
	case reasonUnauthn:
		o.Decision = policy.Unauthenticated.String()
	default:
		o.Decision = policy.Deny.String()
	}
	rec.Observe(&o)
}

func addrString(a netip.Addr) string {
	if !a.IsValid() {
		return ""
	}
	return a.String()
}

func truncate(s string, n int) string {
	if len(s) > n {
		return s[:n]
	}
	return s
}

// logDecision records the policy decision: every deny, allows as
// sampled; denies also go to the audit sink.
func (g *Gateway) logDecision(r *http.Request, rc *reqCtx, dec policy.Decision, ps *policyState) {
	if dec.Outcome == policy.Allow && !g.sampleAllow() {
		return
	}
	g.decisionRecordToken(r, rc, dec.Outcome.String(), dec.Policy, dec.Rule, dec.Reason, reasonCode(dec, ps.authz != nil), ps.version, dec.TokenIssuer, dec.TokenSubject)
}

func reasonCode(d policy.Decision, loaded bool) string {
	switch {
	case !loaded:
		return "no_policy"
	case d.Outcome == policy.Allow:
		return "allowed"
	case d.Outcome == policy.Unauthenticated:
		return "invalid_token"
	case d.Policy != "" && d.Action != "ALLOW":
		return "deny_rule"
	}
	return "no_allow_match"
}

// blocked records a request stopped before the policy decision (IP
// rules, rate limit, WAF) as a deny with its reason.
func (g *Gateway) blocked(r *http.Request, rc *reqCtx, code, reason string) {
	g.decisionRecord(r, rc, policy.Deny.String(), "", -1, reason, code, g.policy.Load().version)
}

func (g *Gateway) decisionRecord(r *http.Request, rc *reqCtx, outcome, pol string, rule int, reason, code string, version uint64) {
	g.decisionRecordToken(r, rc, outcome, pol, rule, reason, code, version, "", "")
}

// decisionRecordToken logs a decision and hands a denial to the audit
// sink. tokIss and tokSub name the request's token whose signature
// verified (policy.Decision.TokenSubject), "" for none: whose
// credential it was, never the token itself.
func (g *Gateway) decisionRecordToken(r *http.Request, rc *reqCtx, outcome, pol string, rule int, reason, code string, version uint64, tokIss, tokSub string) {
	ev := proxy.DecisionEvent{
		Time: g.now(), Listener: "gateway", SourceIP: addrString(rc.client),
		Destination: g.opts.Config.Namespace + ":" + strconv.Itoa(g.port), Protocol: "http",
		Method: r.Method, RequestID: rc.id, Path: truncate(r.URL.Path, 1024), Decision: outcome,
		Policy: pol, Rule: rule, Reason: reason, ReasonCode: proxy.Reason(code), PolicyVersion: version,
		TraceID:     proxy.TraceIDOf(r.Context()),
		TokenIssuer: truncate(tokIss, proxy.MaxTokenName), TokenSubject: truncate(tokSub, proxy.MaxTokenName),
	}
	if rc.route != nil {
		ev.Destination += "/" + rc.route.name
	}
	level := slog.LevelInfo
	if outcome != policy.Allow.String() {
		level = slog.LevelWarn
	}
	var tok []slog.Attr
	if ev.TokenIssuer != "" || ev.TokenSubject != "" {
		tok = []slog.Attr{slog.String("token_issuer", ev.TokenIssuer), slog.String("token_subject", ev.TokenSubject)}
	}
	g.decision.LogAttrs(context.Background(), level, "decision", append([]slog.Attr{
		slog.String("listener", ev.Listener),
		slog.String("source_ip", ev.SourceIP),
		slog.String("destination", ev.Destination),
		slog.String("method", ev.Method),
		slog.String("path", ev.Path),
		slog.String("request_id", ev.RequestID),
		slog.String("decision", ev.Decision),
		slog.String("policy", ev.Policy),
		slog.Int("rule", ev.Rule),
		slog.String("reason", ev.Reason),
		slog.String("reason_code", string(ev.ReasonCode)),
		slog.Uint64("policy_version", ev.PolicyVersion),
		slog.String("trace_id", ev.TraceID),
	}, tok...)...)
	if outcome != policy.Allow.String() && g.opts.Audit != nil {
		g.opts.Audit.Record(context.Background(), ev)
	}
}

func (g *Gateway) sampleAllow() bool {
	r := g.opts.Config.DecisionLog.AllowSampleRate
	switch {
	case r <= 0:
		return false
	case r >= 1:
		return true
	}
	return randFloat() < r
}

func randFloat() float64 { return rand.Float64() }

// readBody reads the whole body (already bounded by the route's limit)
// for the checks that need it, and makes r replay it, also for a retry
// on another upstream.
func (g *Gateway) readBody(w *respWriter, r *http.Request, rc *reqCtx) bool {
	if rc.bodyRead {
		return true
	}
	rc.bodyRead = true
	if r.Body == nil || r.Body == http.NoBody {
		return true
	}
	body := io.Reader(r.Body)
	if e := rc.route.waf; e != nil && e.Blocks() {
		// One byte past what the WAF inspects is enough to refuse.
		body = io.LimitReader(r.Body, int64(e.MaxInspectBytes())+1)
	}
	b, err := io.ReadAll(body)
	// A body cut at the WAF's limit is not done: the rest is left unread
	// for the answer's settling (a lingering close), not closed here —
	// net/http's Close would read a chunked body's rest first, waiting
	// for a client that waits for the answer.
	cut := false
	if lr, ok := body.(*io.LimitedReader); ok && lr.N == 0 {
		cut = true
	} else {
		r.Body.Close()
	}
	rc.bodyBytes, rc.bodyDone = int64(len(b)), err == nil && !cut
	if err != nil {
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			g.reject(w, http.StatusRequestEntityTooLarge, reasonBodyLarge, "request body larger than "+strconv.FormatInt(mbe.Limit, 10)+" bytes")
			return false
		}
		g.reject(w, http.StatusBadRequest, reasonBadRequest, "request body could not be read")
		return false
	}
	rc.body = b
	r.ContentLength = int64(len(b))
	r.TransferEncoding = nil
	r.Body = io.NopCloser(bytes.NewReader(b))
	r.GetBody = func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(b)), nil }
	return true
}

// inspect runs the route's WAF. A block is a 403 naming only the request
// ID; the decision log and the audit record name the matched rule IDs,
// never any part of the request (body, cookies, Authorization).
func (g *Gateway) inspect(w *respWriter, r *http.Request, rc *reqCtx) bool {
	local := netip.AddrPortFrom(localIP(r), uint16(g.port))
	peerPort := uint16(0)
	if ap, err := netip.ParseAddrPort(r.RemoteAddr); err == nil {
		peerPort = ap.Port()
	}
	client := netip.AddrPortFrom(rc.client, peerPort)
	v, err := rc.route.waf.Inspect(r, rc.body, client, local)
	if alt := rc.paramFree; err == nil && !v.WouldBlock && alt != "" {
		// Tomcat, Jetty and Spring serve the path without its
		// parameters: the rules read it so too ("/dump.sql;x" is a
		// request for a .sql file to them), and either reading blocks.
		r2 := r.WithContext(r.Context())
		r2.RequestURI = alt
		if i := strings.IndexByte(r.RequestURI, '?'); i >= 0 {
			r2.RequestURI += r.RequestURI[i:]
		}
		v, err = rc.route.waf.Inspect(r2, rc.body, client, local)
	}
	if err != nil {
		// A request the engine cannot process is not let through.
		g.log.Error("waf failed", "route", rc.route.name, "request_id", rc.id, "err", err)
		v = waf.Verdict{Blocked: true, WouldBlock: true}
	}
	ids := make([]string, len(v.RuleIDs))
	for i, id := range v.RuleIDs {
		ids[i] = strconv.Itoa(id)
	}
	switch {
	case v.Blocked && v.TooLarge:
		g.wafTooLarge(w, r, rc)
		return false
	case v.Blocked:
		g.metrics.wafMatches.WithLabelValues(rc.route.name, "block").Inc()
		rc.detail = "waf rules " + strings.Join(ids, ",")
		why := "waf: rules " + strings.Join(ids, ", ")
		if v.Malformed != "" {
			rc.detail, why = "waf "+v.Malformed, "waf: "+v.Malformed
		}
		g.reject(w, http.StatusForbidden, reasonWAF, "request blocked by the web application firewall")
		g.blocked(r, rc, reasonWAF, why)
		return false
	case v.WouldBlock:
		g.metrics.wafMatches.WithLabelValues(rc.route.name, "detect").Inc()
		rc.detail = "waf detect rules " + strings.Join(ids, ",")
		switch {
		case v.TooLarge:
			rc.detail += " (body over max_inspect_bytes)"
		case v.Malformed != "":
			rc.detail = "waf detect " + v.Malformed
		}
		g.decisionRecord(r, rc, "allow", "", -1, "waf detection only: rules "+strings.Join(ids, ", ")+" "+v.Malformed, "waf_detect", g.policy.Load().version)
	default:
		g.metrics.wafMatches.WithLabelValues(rc.route.name, "pass").Inc()
	}
	return true
}

// wafTooLarge refuses a body longer than the route's WAF inspects (413).
func (g *Gateway) wafTooLarge(w *respWriter, r *http.Request, rc *reqCtx) {
	g.metrics.wafMatches.WithLabelValues(rc.route.name, "block").Inc()
	rc.detail = "waf body over max_inspect_bytes"
	max := strconv.Itoa(rc.route.waf.MaxInspectBytes())
	g.reject(w, http.StatusRequestEntityTooLarge, reasonWAF, "request body larger than the web application firewall inspects ("+max+" bytes)")
	g.blocked(r, rc, reasonWAF, "waf: body larger than max_inspect_bytes ("+max+")")
}

// validateReadings validates r (its body given) against val, and again
// with the path as Tomcat, Jetty and Spring read it, alt (paramFreePath),
// unless that is "": an OpenAPI operation is chosen by the path, and the
// app may serve either reading, so the request must be valid under both
// ("/orders/admin;x" is /orders/{id} as received and /orders/admin to a
// Java app).
func validateReadings(val validate.Validator, r *http.Request, body []byte, alt string) *validate.Violation {
	if v := val.Validate(r.Context(), r, body); v != nil || alt == "" {
		return v
	}
	dec, err := url.PathUnescape(alt)
	if err != nil {
		return &validate.Violation{Message: "malformed request path"}
	}
	r2 := r.WithContext(r.Context())
	u := *r.URL
	u.Path, u.RawPath = dec, alt
	r2.URL = &u
	return val.Validate(r.Context(), r2, body)
}

// bearerToken is the token of the request's one Authorization header,
// "Bearer <token>" (the scheme in any case).
func bearerToken(h http.Header) (string, bool) {
	v := h["Authorization"]
	if len(v) != 1 || len(v[0]) < 8 || !strings.EqualFold(v[0][:7], "bearer ") {
		return "", false
	}
	tok := strings.TrimSpace(v[0][7:])
	return tok, tok != ""
}
