// Package opaapi serves Open Policy Agent's REST API (v1 Data and Policy
// APIs, https://www.openpolicyagent.org/docs/rest-api) over Moatless's
// Rego modules and data, so that code and tools written for OPA work
// against the server and the sidecars unchanged:
//
//	POST /v1/data/{path}     {"input": …} → {"result": …}   (evaluate data.path)
//	GET  /v1/data/{path}                  → {"result": …}
//	PUT  /v1/data/{path}     JSON value   → 204             (write; server only)
//	DELETE /v1/data/{path}                → 204             (server only)
//	GET  /v1/policies                     → {"result": [{"id", "raw", "ast"}]}
//	GET  /v1/policies/{id}                → {"result": {"id", "raw", "ast"}}
//	PUT  /v1/policies/{id}   Rego source  → 200 {}          (server only)
//	DELETE /v1/policies/{id}              → 200 {}          (server only)
//
// A result that is undefined is a response without "result", as in OPA.
// Errors are OPA's: {"code": "invalid_parameter", "message": …, "errors":
// [{"code", "message", "location": {"file", "row", "col"}}]}. The package
// parses and answers; who may call (the server's admin credential, the
// sidecar's loopback admin listener) and how writes are stored are the
// embedder's (Handler.Writer).
package opaapi

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"os"
	"runtime"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/moatless/moatless/internal/loopback"
	"github.com/moatless/moatless/internal/policy"
)

// Limits on requests.
const (
	// MaxInputSize bounds a POST /v1/data body (the input document).
	MaxInputSize = 1 << 20
	// MaxPathSegments bounds /v1/data/{path}.
	MaxPathSegments = 64
	// DefaultEvalTimeout bounds one Data API evaluation, waiting for a
	// slot included (Handler.EvalTimeout).
	DefaultEvalTimeout = 5 * time.Second
)

// OPA's error codes.
const (
	CodeInvalidParameter = "invalid_parameter"
	CodeNotFound         = "resource_not_found"
	CodeInternal         = "internal_error"
	CodeUnauthorized     = "unauthorized"
	CodeConflict         = "resource_conflict"
)

// Error is OPA's error response.
type Error struct {
	Status  int          `json:"-"`
	Code    string       `json:"code"`
	Message string       `json:"message"`
	Errors  []ErrorCause `json:"errors,omitempty"`
}

// ErrorCause is one error of a module that did not compile.
type ErrorCause struct {
	Code     string    `json:"code"`
	Message  string    `json:"message"`
	Location *Location `json:"location,omitempty"`
}

// Location is where in a module an error is.
type Location struct {
	File string `json:"file"`
	Row  int    `json:"row"`
	Col  int    `json:"col"`
}

func (e *Error) Error() string { return e.Message }

// Errorf is an OPA error with a status.
func Errorf(status int, code, format string, args ...any) *Error {
	return &Error{Status: status, Code: code, Message: fmt.Sprintf(format, args...)}
}

// ErrNotFound is what a Writer returns for a document or module that does
// not exist (404, resource_not_found).
var ErrNotFound = errors.New("not found")

// ErrExists is what a Writer returns when a PUT with If-None-Match: *
// finds the document present (304).
var ErrExists = errors.New("exists")

// CompileError turns a module or data refusal into OPA's 400: for a
// *policy.RegoError, "error(s) occurred while compiling module(s)" with
// each of OPA's errors and its location.
func CompileError(err error) *Error {
	var re *policy.RegoError
	if !errors.As(err, &re) || re.Msg != "" {
		return Errorf(http.StatusBadRequest, CodeInvalidParameter, "%s", strings.TrimPrefix(err.Error(), "rego: "))
	}
	e := Errorf(http.StatusBadRequest, CodeInvalidParameter, "error(s) occurred while compiling module(s)")
	e.Errors = errorCauses(re)
	return e
}

// Writer stores writes; nil makes the API read-only (405 for writes).
// Paths are data paths split into keys ([] is the whole of data).
type Writer interface {
	PutData(r *http.Request, path []string, value any, ifNoneMatch bool) error
	DeleteData(r *http.Request, path []string) error
	PutPolicy(r *http.Request, id, source string) error
	DeletePolicy(r *http.Request, id string) error
}

// Handler serves the API. Rego returns the modules and data in force (nil
// for none: an empty data document).
type Handler struct {
	Rego   func() *policy.Rego
	Writer Writer
	Logger *slog.Logger
	// MaxWriteSize bounds PUT bodies; default 16 MiB.
	MaxWriteSize int64
	// EvalTimeout bounds one Data API query, from its arrival to its
	// result; past it the answer is OPA's 500 (503 when no evaluation
	// slot came free). Default DefaultEvalTimeout. A caller hands the
	// modules any input, and one a policy loops on would otherwise run
	// for as long as the caller stays connected: OPA's server has no such
	// bound, the decision path has one (a RegoProvider's timeout).
	EvalTimeout time.Duration
	// MaxEvals bounds the queries evaluated at once, so that callers of
	// this API cannot take every CPU from the decisions the process
	// serves; default half of GOMAXPROCS, at least 1.
	MaxEvals int

	slotsOnce sync.Once
	slots     chan struct{}
}

// Register adds the routes to mux, each wrapped by wrap (authentication;
// nil for none).
func (h *Handler) Register(mux *http.ServeMux, wrap func(http.Handler) http.Handler) {
	if wrap == nil {
		wrap = func(x http.Handler) http.Handler { return x }
	}
	data := wrap(http.HandlerFunc(h.serveData))
	pols := wrap(http.HandlerFunc(h.servePolicies))
	mux.Handle("/v1/data", data)
	mux.Handle("/v1/data/", data)
	mux.Handle("/v1/policies", pols)
	mux.Handle("/v1/policies/", pols)
}

// DataRequest is a parsed /v1/data request.
type DataRequest struct {
	Method string
	// Path is the data path, split and percent-decoded ([]: all of data).
	Path []string
	// Input is the input document of a POST (or GET ?input=), nil for none.
	Input    any
	HasInput bool
	// Value is the document a PUT writes.
	Value       any
	Pretty      bool
	IfNoneMatch bool
}

// ParseDataRequest parses a Data API request: the escaped URL path (which
// must start with /v1/data), the query and, for POST and PUT, the body
// (at most limit bytes). Errors are *Error, ready to answer.
func ParseDataRequest(method, escapedPath string, query url.Values, header http.Header, body io.Reader, limit int64) (*DataRequest, error) {
	req := &DataRequest{Method: method}
	rest, ok := strings.CutPrefix(escapedPath, "/v1/data")
	if !ok || (rest != "" && rest[0] != '/') {
		return nil, Errorf(http.StatusNotFound, CodeNotFound, "not a data path: %q", escapedPath)
	}
	path, err := SplitPath(rest)
	if err != nil {
		return nil, Errorf(http.StatusBadRequest, CodeInvalidParameter, "%v", err)
	}
	req.Path = path
	for k, vs := range query {
		switch k {
		case "pretty":
			req.Pretty = len(vs) > 0 && vs[len(vs)-1] != "false"
		case "input":
			if method != http.MethodGet {
				return nil, Errorf(http.StatusBadRequest, CodeInvalidParameter, "input may be a query parameter only of GET")
			}
			if len(vs) != 1 || int64(len(vs[0])) > limit {
				return nil, Errorf(http.StatusBadRequest, CodeInvalidParameter, "input: give one JSON document of at most %d KiB", limit>>10)
			}
			v, err := policy.ParseDataJSON(strings.NewReader(vs[0]), limit)
			if err != nil {
				return nil, Errorf(http.StatusBadRequest, CodeInvalidParameter, "input: %v", err)
			}
			req.Input, req.HasInput = v, true
		case "provenance", "explain", "metrics", "instrument", "strict-builtin-errors":
			// OPA's diagnostics; answered without them.
		default:
			return nil, Errorf(http.StatusBadRequest, CodeInvalidParameter, "unknown query parameter %q", k)
		}
	}
	switch method {
	case http.MethodGet, http.MethodDelete:
		return req, nil
	case http.MethodPost, http.MethodPut:
	default:
		return nil, Errorf(http.StatusMethodNotAllowed, CodeInvalidParameter, "method %s is not allowed on /v1/data", method)
	}
	if enc := header.Get("Content-Encoding"); enc != "" && enc != "identity" {
		return nil, Errorf(http.StatusUnsupportedMediaType, CodeInvalidParameter, "Content-Encoding %q is not supported", enc)
	}
	// As OPA's server: the body is JSON whatever the Content-Type says
	// (curl -d sends a form type), except YAML, which is not supported.
	if ct := strings.ToLower(header.Get("Content-Type")); strings.Contains(ct, "yaml") {
		return nil, Errorf(http.StatusUnsupportedMediaType, CodeInvalidParameter, "Content-Type %q: send application/json", ct)
	}
	b, err := io.ReadAll(io.LimitReader(body, limit+1))
	if err != nil {
		return nil, Errorf(http.StatusBadRequest, CodeInvalidParameter, "read body: %v", err)
	}
	if int64(len(b)) > limit {
		return nil, Errorf(http.StatusRequestEntityTooLarge, CodeInvalidParameter, "body is larger than %d KiB", limit>>10)
	}
	if method == http.MethodPut {
		v, err := policy.ParseDataJSON(bytes.NewReader(b), limit)
		if err != nil {
			return nil, Errorf(http.StatusBadRequest, CodeInvalidParameter, "body: %v", err)
		}
		req.Value = v
		req.IfNoneMatch = strings.TrimSpace(header.Get("If-None-Match")) == "*"
		return req, nil
	}
	if len(bytes.TrimSpace(b)) == 0 {
		return req, nil // a query without input
	}
	v, err := policy.ParseDataJSON(bytes.NewReader(b), limit)
	if err != nil {
		return nil, Errorf(http.StatusBadRequest, CodeInvalidParameter, "body: %v", err)
	}
	obj, ok := v.(map[string]any)
	if !ok {
		return nil, Errorf(http.StatusBadRequest, CodeInvalidParameter, `body: want {"input": …}`)
	}
	for k, x := range obj {
		if k != "input" {
			return nil, Errorf(http.StatusBadRequest, CodeInvalidParameter, "body: unknown field %q (want input)", k)
		}
		req.Input, req.HasInput = x, true
	}
	return req, nil
}

// SplitPath splits an escaped path ("/a/b%2Fc" → [a b/c]); "" and "/" are
// the root. Empty segments, more than MaxPathSegments and bad escapes are
// errors.
func SplitPath(escaped string) ([]string, error) {
	escaped = strings.TrimPrefix(escaped, "/")
	escaped = strings.TrimSuffix(escaped, "/")
	if escaped == "" {
		return []string{}, nil
	}
	raw := strings.Split(escaped, "/")
	if len(raw) > MaxPathSegments {
		return nil, fmt.Errorf("path has more than %d segments", MaxPathSegments)
	}
	out := make([]string, len(raw))
	for i, s := range raw {
		if s == "" {
			return nil, errors.New("path has an empty segment")
		}
		u, err := url.PathUnescape(s)
		if err != nil {
			return nil, fmt.Errorf("path segment %q: %v", s, err)
		}
		if u == "" || strings.ContainsRune(u, 0) {
			return nil, fmt.Errorf("path segment %q is empty or holds NUL", s)
		}
		out[i] = u
	}
	return out, nil
}

func (h *Handler) log() *slog.Logger {
	if h.Logger != nil {
		return h.Logger
	}
	return slog.Default()
}

func (h *Handler) evalTimeout() time.Duration {
	if h.EvalTimeout > 0 {
		return h.EvalTimeout
	}
	return DefaultEvalTimeout
}

// evalSlots is the semaphore of MaxEvals.
func (h *Handler) evalSlots() chan struct{} {
	h.slotsOnce.Do(func() {
		n := h.MaxEvals
		if n <= 0 {
			n = max(1, runtime.GOMAXPROCS(0)/2)
		}
		h.slots = make(chan struct{}, n)
	})
	return h.slots
}

func (h *Handler) maxWrite() int64 {
	if h.MaxWriteSize > 0 {
		return h.MaxWriteSize
	}
	return 16 << 20
}

// fail answers err in OPA's shape: an *Error as is, ErrNotFound as 404,
// a compile error as OPA's 400, anything else as 500 (logged, not shown).
func (h *Handler) fail(w http.ResponseWriter, err error) {
	var oe *Error
	var re *policy.RegoError
	switch {
	case errors.As(err, &oe):
	case errors.As(err, &re):
		oe = CompileError(err)
	case errors.Is(err, ErrNotFound):
		oe = Errorf(http.StatusNotFound, CodeNotFound, "storage_not_found_error: %s", strings.TrimSuffix(err.Error(), ": "+ErrNotFound.Error()))
	default:
		h.log().Error("OPA API request failed", "err", err)
		oe = Errorf(http.StatusInternalServerError, CodeInternal, "internal error; see the log")
	}
	writeJSON(w, oe.Status, oe, false)
}

func writeJSON(w http.ResponseWriter, status int, v any, pretty bool) {
	var b []byte
	var err error
	if pretty {
		b, err = json.MarshalIndent(v, "", "  ")
	} else {
		b, err = json.Marshal(v)
	}
	if err != nil {
		status, b = http.StatusInternalServerError, []byte(`{"code":"internal_error","message":"cannot encode the result"}`)
	}
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(status)
	w.Write(append(b, '\n'))
}

// LoopbackOnly refuses (403) callers whose address is not loopback: the
// sidecar's admin listener binds to loopback, and this keeps its OPA API
// there even if a future configuration did not. It also refuses a Host
// other than a loopback address or localhost: a web page the host's
// browser opens can have its name re-resolved to 127.0.0.1 (DNS
// rebinding) and then call from loopback, under its own name, reading the
// answers as its own origin's (loopback.HostAllowed). And it refuses a
// request a proxy relayed (relayedBy): the proxy's clients are not local
// users at all.
func LoopbackOnly(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if _, msg := loopbackRefusal(r); msg != "" {
			writeJSON(w, http.StatusForbidden, Errorf(http.StatusForbidden, CodeUnauthorized, "%s", msg), false)
			return
		}
		next.ServeHTTP(w, r)
	})
}

// Reasons a loopback API refuses a request, the reason label of
// moatless_admin_api_refused_total.
const (
	refusedNotLoopback = "not_loopback"
	refusedHost        = "host"
	refusedForwarded   = "forwarded"
	refusedUnknown     = "unknown_caller"
	refusedNotAllowed  = "not_allowed"
)

// loopbackRefusal returns why LoopbackOnly refuses r (the reason label,
// and the message for the caller), or "" twice.
func loopbackRefusal(r *http.Request) (reason, msg string) {
	if _, ok := loopbackRemote(r); !ok {
		return refusedNotLoopback, "this API answers loopback callers only"
	}
	if !loopback.HostAllowed(r.Host, "") {
		return refusedHost, fmt.Sprintf("this API answers loopback callers only: call it as localhost or a loopback address, not %q", r.Host)
	}
	if h := relayedBy(r.Header); h != "" {
		return refusedForwarded, fmt.Sprintf("this API answers local users only, not requests a proxy relayed (header %s): call it directly", h)
	}
	return "", ""
}

// relayedBy returns the name of the first header in h that proxies add to
// the requests they relay — RFC 7239 Forwarded, X-Forwarded-*, Via, the
// client-address headers of common proxies, tunnels and CDNs, Envoy's
// x-envoy-* — or "" when there is none. Names are compared as proxies
// and apps read them: case-insensitively, with _ taken for -.
//
// The kernel names the local user holding the client's socket; a proxy
// or tunnel run as root or as the sidecar's user (cloudflared, Caddy,
// Envoy, Squid, an SSRF-prone app) holds that socket for clients who are
// no local user at all. A request it relays is refused by the mark it
// leaves; one that leaves none is the proxy operator's to prevent (see
// docs/sidecar.md).
func relayedBy(h http.Header) string {
	for k := range h {
		n := strings.ToLower(strings.ReplaceAll(k, "_", "-"))
		switch {
		case n == "forwarded", n == "via", n == "x-real-ip", n == "true-client-ip",
			n == "cf-connecting-ip", n == "x-client-ip", n == "x-cluster-client-ip",
			n == "fastly-client-ip", n == "x-original-forwarded-for",
			strings.HasPrefix(n, "x-forwarded-"), strings.HasPrefix(n, "x-envoy-"):
			return k
		}
	}
	return ""
}

// loopbackRemote is the caller's address when it is loopback.
func loopbackRemote(r *http.Request) (netip.AddrPort, bool) {
	ap, err := netip.ParseAddrPort(r.RemoteAddr)
	if err != nil || !ap.Addr().Unmap().IsLoopback() {
		return netip.AddrPort{}, false
	}
	return ap, true
}

// NewRefusedCounter returns moatless_admin_api_refused_total{api, reason}
// for LocalUsers.Refused: the requests a loopback API refused, by API
// (LocalUsers.API) and reason — not_loopback, host (not a loopback Host:
// DNS rebinding), forwarded (relayed by a proxy), unknown_caller (the
// kernel named no user), not_allowed (a user not admitted). The caller
// registers it.
func NewRefusedCounter() *prometheus.CounterVec {
	return prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "moatless_admin_api_refused_total",
		Help: "Requests to a loopback admin API (the OPA API, pprof) refused, by API and reason: not_loopback, host (a Host that is no loopback address: DNS rebinding), forwarded (relayed by a proxy), unknown_caller, not_allowed (a local user not admitted).",
	}, []string{"api", "reason"})
}

// LocalUsers keeps a loopback OPA API to the local users who may read it.
//
// A port on 127.0.0.1 is open to every user of the host; the API hands
// out every Rego module and data document in force (which may hold
// names, addresses, thresholds — the map of what the workload may do)
// and evaluates them on any input. LocalUsers admits root, the uid this
// process runs as (either can read the process's files and memory
// anyway) and UIDs — for a sidecar, the app's users it already lets act
// as the workload (outbound_allowed_uids). Every other caller gets 403
// and a log line naming its uid. The kernel says who the caller is, by
// the owner of the client's end of the TCP connection (ClientUID), asked
// at every request; a caller it cannot name is refused too.
//
// The owner is the user who created the client's socket: a process it
// handed the socket to (fork, SCM_RIGHTS) or that changed its uid since
// is taken for that user, as with SO_PEERCRED. So is a proxy's client:
// a request bearing a proxy's mark is refused (LoopbackOnly), but an
// admitted user's proxy that marks nothing relays for its clients.
type LocalUsers struct {
	// UIDs are admitted besides root and the effective uid.
	UIDs []uint32
	// ClientUID returns the uid holding the client end of the loopback
	// connection from client to server; the data plane passes
	// proxy.LoopbackClientUID. Nil refuses every caller (platforms
	// where the kernel cannot be asked).
	ClientUID func(client, server netip.AddrPort) (uint32, error)
	Logger    *slog.Logger
	// Refused, when set, counts refusals (NewRefusedCounter) under the
	// label api=API.
	Refused *prometheus.CounterVec
	// API names the API in logs and metrics; default "opa".
	API string
}

// Wrap is LoopbackOnly, then the user check.
func (u *LocalUsers) Wrap(next http.Handler) http.Handler {
	own := uint32(os.Geteuid())
	api := u.API
	if api == "" {
		api = "opa"
	}
	log := u.Logger
	if log == nil {
		log = slog.Default()
	}
	logMsg, what := "OPA API request refused", "this OPA API"
	if api != "opa" {
		logMsg, what = "admin API request refused", "this API ("+api+")"
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var detail []any
		reason, msg := loopbackRefusal(r)
		switch reason {
		case "":
			uid, err := u.clientUID(r)
			switch {
			case err != nil:
				reason, msg = refusedUnknown, what+" cannot tell which local user is calling, and answers only the users the operator admitted"
				detail = []any{"err", err.Error()}
			case uid == 0 || uid == own || slices.Contains(u.UIDs, uid):
				next.ServeHTTP(w, r)
				return
			default:
				reason, msg = refusedNotAllowed, fmt.Sprintf("uid %d may not use %s: it answers only the local users the operator admitted", uid, what)
				detail = []any{"uid", uid}
			}
		case refusedHost:
			detail = []any{"host", r.Host}
		case refusedForwarded:
			detail = []any{"header", relayedBy(r.Header)}
		}
		if u.Refused != nil {
			u.Refused.WithLabelValues(api, reason).Inc()
		}
		attrs := append([]any{"source", r.RemoteAddr, "method", r.Method, "path", r.URL.Path, "reason", reason}, detail...)
		if api != "opa" {
			attrs = append(attrs, "api", api)
		}
		log.Warn(logMsg, attrs...)
		writeJSON(w, http.StatusForbidden, Errorf(http.StatusForbidden, CodeUnauthorized, "%s", msg), false)
	})
}

func (u *LocalUsers) clientUID(r *http.Request) (uint32, error) {
	if u.ClientUID == nil {
		return 0, errors.New("the local caller cannot be identified on " + runtime.GOOS)
	}
	client, ok := loopbackRemote(r)
	la, isTCP := r.Context().Value(http.LocalAddrContextKey).(*net.TCPAddr)
	if !ok || !isTCP {
		return 0, fmt.Errorf("not a loopback TCP connection (from %s)", r.RemoteAddr)
	}
	return u.ClientUID(client, la.AddrPort())
}
