package secrets

import (
	"bytes"
	"context"
	"database/sql"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"sort"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/moatless/moatless/internal/audit"
	"github.com/moatless/moatless/internal/secrets/acl"
	"github.com/moatless/moatless/internal/secrets/barrier"
	"github.com/moatless/moatless/internal/store"
)

// MaxBody bounds request bodies (a KV secret, a transit batch).
const MaxBody = 2 << 20

// Audit kinds of the secrets service.
const (
	KindRequest = "secrets.request" // every request, with op, path and outcome
	KindLogin   = "secrets.login"
)

// envelope is Vault's response envelope.
type envelope struct {
	RequestID     string    `json:"request_id"`
	LeaseID       string    `json:"lease_id"`
	Renewable     bool      `json:"renewable"`
	LeaseDuration int64     `json:"lease_duration"`
	Data          any       `json:"data"`
	WrapInfo      any       `json:"wrap_info"`
	Warnings      []string  `json:"warnings"`
	Auth          *authInfo `json:"auth"`
	MountType     string    `json:"mount_type,omitempty"`
}

// authInfo is the auth block of a login response.
type authInfo struct {
	ClientToken   string            `json:"client_token"`
	Accessor      string            `json:"accessor"`
	Policies      []string          `json:"policies"`
	TokenPolicies []string          `json:"token_policies"`
	Metadata      map[string]string `json:"metadata"`
	LeaseDuration int64             `json:"lease_duration"`
	Renewable     bool              `json:"renewable"`
	EntityID      string            `json:"entity_id"`
	TokenType     string            `json:"token_type"`
	Orphan        bool              `json:"orphan"`
	NumUses       int64             `json:"num_uses"`
}

// apiError is an error with its status and a message safe to return.
type apiError struct {
	status int
	msg    string
	// body, when set, is answered instead of {"errors": [...]} (Vault
	// answers some failures with data: a KV read of a deleted version, a
	// transit batch with failed items).
	body *envelope
}

func (e *apiError) Error() string { return e.msg }

func errf(status int, format string, args ...any) error {
	return &apiError{status: status, msg: fmt.Sprintf(format, args...)}
}

func badRequest(format string, args ...any) error {
	return errf(http.StatusBadRequest, format, args...)
}

var errPermission = &apiError{status: http.StatusForbidden, msg: "permission denied"}

// req is one request being served.
type req struct {
	s    *Service
	w    http.ResponseWriter
	r    *http.Request
	ctx  context.Context
	path string // after /v1/, no leading or trailing slash
	op   string // read, list, create, update, patch, delete
	id   string // request_id
	tok  *tokenCtx
	q    map[string]string
	body *params

	// details go into the audit record (never secret values: HMACs).
	details map[string]string
	audited bool
	engine  string
	start   time.Time
}

// ServeHTTP serves everything under /v1/ that the service owns.
func (s *Service) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	rq := &req{s: s, w: w, r: r, ctx: r.Context(), id: newUUID(), details: map[string]string{}, start: time.Now()}
	resp, err := rq.serve()
	rq.finish(resp, err)
}

// Handler returns the service as an http.Handler.
func (s *Service) Handler() http.Handler { return s }

func (rq *req) serve() (*envelope, error) {
	r := rq.r
	raw := r.URL.EscapedPath()
	if !strings.HasPrefix(raw, "/v1/") {
		return nil, errf(http.StatusNotFound, "no handler for route %q", r.URL.Path)
	}
	p, err := cleanPath(strings.TrimPrefix(r.URL.Path, "/v1/"))
	if err != nil {
		return nil, err
	}
	if strings.Contains(raw, "%2F") || strings.Contains(raw, "%2f") {
		return nil, badRequest("encoded slashes are not allowed in paths")
	}
	rq.path = p
	rq.engine, _, _ = strings.Cut(p, "/")
	if rq.engine == "agent" || rq.engine == "admin" {
		// The server's own APIs: not the secrets service's to answer.
		rq.audited = true
		return nil, errf(http.StatusNotFound, "no such endpoint: %s %s", r.Method, r.URL.Path)
	}
	if err := rq.readQuery(); err != nil {
		return nil, err
	}
	switch r.Method {
	case http.MethodGet, http.MethodHead:
		rq.op = "read"
		if rq.q["list"] == "true" {
			rq.op = "list"
		}
	case "LIST":
		rq.op = "list"
	case http.MethodPost, http.MethodPut:
		rq.op = "update" // endpoints that create refine this (existence check)
	case http.MethodPatch:
		rq.op = "patch"
	case http.MethodDelete:
		rq.op = "delete"
	default:
		return nil, errf(http.StatusMethodNotAllowed, "unsupported operation %s", r.Method)
	}
	if r.Method == http.MethodPost || r.Method == http.MethodPut || r.Method == http.MethodPatch {
		if err := rq.readBody(); err != nil {
			return nil, err
		}
	} else {
		rq.body = &params{m: map[string]json.RawMessage{}, used: map[string]bool{}}
		if r.Body != nil {
			b, _ := io.ReadAll(io.LimitReader(r.Body, 1))
			if len(b) > 0 && r.Method != http.MethodDelete {
				return nil, badRequest("%s takes no body", r.Method)
			}
		}
	}
	// Unauthenticated endpoints: seal status and logins (their
	// credentials are in the body or the TLS handshake).
	switch p {
	case "sys/seal-status", "sys/health":
		return rq.s.sealStatus(rq)
	}
	if rq.s.Sealed() {
		if p == "sys/unseal" {
			return rq.s.unsealAPI(rq)
		}
		return nil, errf(http.StatusServiceUnavailable, "%s", *rq.s.sealMsg.Load())
	}
	switch p {
	case "sys/unseal":
		return rq.s.unsealAPI(rq)
	case "auth/approle/login":
		return rq.s.approleLogin(rq)
	case "auth/cert/login":
		return rq.s.certLogin(rq)
	case "auth/jwt/login":
		return rq.s.jwtLogin(rq)
	}
	if err := rq.s.authenticate(rq); err != nil {
		return nil, err
	}
	return rq.s.route(rq)
}

// cleanPath refuses dot segments, empty segments, control characters and
// over-long paths instead of cleaning them: a path that would be read one
// way by the ACL and another by the handler is an attack, not a typo.
func cleanPath(p string) (string, error) {
	p = strings.TrimSuffix(p, "/")
	if p == "" {
		return "", errf(http.StatusNotFound, "no handler for route \"\"")
	}
	if len(p) > acl.MaxPathLen {
		return "", badRequest("path longer than %d bytes", acl.MaxPathLen)
	}
	for _, seg := range strings.Split(p, "/") {
		if seg == "" || seg == "." || seg == ".." {
			return "", badRequest("path %q: empty, \".\" and \"..\" segments are not allowed", p)
		}
		for _, c := range seg {
			if c < 0x20 || c == 0x7f || c == '*' || c == '+' {
				return "", badRequest("path %q: control characters, '*' and '+' are not allowed", p)
			}
		}
	}
	return p, nil
}

func (rq *req) readQuery() error {
	rq.q = map[string]string{}
	for k, v := range rq.r.URL.Query() {
		if len(v) != 1 {
			return badRequest("query parameter %q given more than once", k)
		}
		rq.q[k] = v[0]
	}
	return nil
}

func (rq *req) readBody() error {
	var b []byte
	var err error
	if rq.r.ContentLength > MaxBody {
		// Refused by its header, before a byte of it is read.
		return errf(http.StatusRequestEntityTooLarge, "body larger than %d bytes", MaxBody)
	}
	if n := rq.r.ContentLength; n > 0 {
		b, err = readAnnounced(rq.r.Body, int(n))
	} else {
		b, err = io.ReadAll(io.LimitReader(rq.r.Body, MaxBody+1))
	}
	if err != nil {
		return badRequest("read body: %v", err)
	}
	if len(b) > MaxBody {
		return errf(http.StatusRequestEntityTooLarge, "body larger than %d bytes", MaxBody)
	}
	p, err := parseParams(b)
	if err != nil {
		return err
	}
	rq.body = p
	return nil
}

// maxBodyChunk is the most of a body's buffer allocated ahead of the
// bytes that fill it.
const maxBodyChunk = 64 << 10

// readAnnounced reads a body of Content-Length n (at most MaxBody) into a
// buffer that ends at exactly n bytes, but grows (doubling, from
// maxBodyChunk) only as the body arrives: the body is read before the
// token is checked, and a buffer of the announced size allocated up front
// let anyone hold MaxBody per request (per HTTP/2 stream) by sending
// headers alone. A body shorter or longer than n is an error.
func readAnnounced(r io.Reader, n int) ([]byte, error) {
	b := make([]byte, 0, min(n, maxBodyChunk))
	for len(b) < n {
		if len(b) == cap(b) {
			b = append(make([]byte, 0, min(2*cap(b), n)), b...)
		}
		m, err := r.Read(b[len(b):cap(b)])
		b = b[:len(b)+m]
		if errors.Is(err, io.EOF) && len(b) < n {
			return nil, io.ErrUnexpectedEOF
		}
		if err != nil && !errors.Is(err, io.EOF) {
			return nil, err
		}
	}
	if m, _ := r.Read(make([]byte, 1)); m > 0 {
		return nil, errors.New("body longer than its Content-Length")
	}
	return b, nil
}

// aclPath is the path the ACL decides on: the request path, with a
// trailing "/" for a list, as Vault checks a list (a policy grants
// listing with "secret/metadata/app/" or "secret/metadata/app/*", and a
// deny on "secret/metadata/app/" stops it).
func (rq *req) aclPath() string {
	if rq.op == "list" {
		return rq.path + "/"
	}
	return rq.path
}

// need checks the token's capability on the request's aclPath (or on
// path when given). Denials are audited by finish.
func (rq *req) need(c acl.Capability, path ...string) error {
	p := rq.aclPath()
	if len(path) > 0 {
		p = path[0]
	}
	if !rq.tok.acl.Allowed(p, c) {
		rq.details["denied_capability"] = strings.Join(c.Names(), ",")
		return errPermission
	}
	return nil
}

// noRoute answers a path nothing serves: 404, as in Vault, for a caller
// with some capability on the path, and 403 for one with none, so an
// unprivileged caller cannot tell a missing mount, role or endpoint from
// a forbidden one (Vault checks the ACL before routing).
func (rq *req) noRoute(detail ...string) error {
	if rq.tok == nil || rq.tok.acl.Capabilities(rq.aclPath()) == 0 {
		rq.details["denied_capability"] = "any"
		return errPermission
	}
	msg := fmt.Sprintf("no handler for route %q", rq.path)
	if len(detail) > 0 {
		msg += ": " + detail[0]
	}
	return errf(http.StatusNotFound, "%s", msg)
}

// needOp checks the capability of the request's operation.
func (rq *req) needOp() error {
	c, _ := acl.ParseCapability(rq.op)
	return rq.need(c)
}

func (rq *req) event(outcome string) audit.Event {
	actor := "anonymous"
	if rq.tok != nil {
		actor = rq.tok.actor()
		if rq.tok.accessor != "" {
			rq.details["token_accessor"] = rq.tok.accessor
		}
	}
	// An accessor looks up and revokes its token or secret ID (given the
	// policy), so the record carries its HMAC, as Vault's audit devices
	// do by default (hmac_accessor); sys/audit-hash finds a known one.
	for _, k := range accessorDetails {
		if v, ok := rq.details[k]; ok {
			rq.details[k] = rq.s.hmacAccessor(v)
		}
	}
	rq.details["op"] = rq.op
	if rq.r != nil { // nil for the service's own changes (auto-rotation)
		rq.details["remote"] = rq.r.RemoteAddr
	}
	rq.details["request_id"] = rq.id
	return audit.Event{Kind: KindRequest, Actor: actor, Subject: rq.path, Outcome: outcome, Details: rq.details}
}

// tx runs fn in a store transaction and appends the request's audit
// record (success) in the same transaction, so a change is never
// unaudited.
func (rq *req) tx(fn func(tx *sql.Tx) error) error {
	err := rq.s.db.Tx(rq.ctx, func(tx *sql.Tx) error {
		if err := fn(tx); err != nil {
			return err
		}
		return rq.s.cfg.Audit.AppendTx(rq.ctx, tx, rq.event(audit.Success))
	})
	if err == nil {
		rq.audited = true
	}
	return err
}

// finish maps the error, audits the request unless tx did, counts it,
// and writes the answer.
func (rq *req) finish(resp *envelope, err error) {
	if err == errHandled { // the handler wrote its own answer
		rq.s.metrics.observe(rq.engine, rq.op, http.StatusServiceUnavailable, time.Since(rq.start))
		return
	}
	status := http.StatusOK
	var msgs []string
	if err != nil {
		var ae *apiError
		switch {
		case errors.As(err, &ae):
			status, msgs = ae.status, []string{ae.msg}
			if ae.body != nil {
				resp = ae.body
			} else if ae != errNotFoundWithBody {
				resp = nil
			}
		case errors.Is(err, barrier.ErrSealed):
			status, msgs = http.StatusServiceUnavailable, []string{*rq.s.sealMsg.Load()}
		case errors.Is(err, store.ErrNotFound):
			status, msgs = http.StatusNotFound, []string{}
		case errors.Is(err, store.ErrConflict):
			status, msgs = http.StatusBadRequest, []string{strings.TrimPrefix(err.Error(), "store: ")}
		case errors.Is(err, barrier.ErrCorrupt):
			rq.s.log.Error("secrets: a stored value failed authentication", "path", rq.path, "err", err)
			status, msgs = http.StatusInternalServerError, []string{"a stored value failed authentication (store tampered with?); see the server log"}
		default:
			rq.s.log.Error("secrets request failed", "op", rq.op, "path", rq.path, "err", err)
			status, msgs = http.StatusInternalServerError, []string{"internal error; see the server log"}
		}
	}
	outcome := audit.Success
	switch {
	case status == http.StatusForbidden || status == http.StatusUnauthorized:
		outcome = audit.Denied
	case status >= 500:
		outcome = audit.Error
	case status >= 400:
		outcome = audit.Failure
	}
	// Refused requests without any credential are audited up to a rate
	// (over it: 429, counted in the metrics only), and those of a sealed
	// server not at all: nothing was served, and each record is an fsync.
	if !rq.audited && rq.tok == nil && status >= 400 && status != http.StatusServiceUnavailable && status != http.StatusTooManyRequests &&
		!rq.s.anonLim.AllowN(rq.s.now(), 1) {
		status, msgs, resp = http.StatusTooManyRequests, []string{"too many refused requests; retry later"}, nil
	}
	if !rq.audited && !(status == http.StatusServiceUnavailable && rq.tok == nil) && status != http.StatusTooManyRequests {
		rq.details["status"] = strconv.Itoa(status)
		if len(msgs) > 0 && msgs[0] != "" {
			// Bounded: an error may quote what the caller sent, and a
			// record is written (and fsynced) for refusals of anyone.
			rq.details["error"] = truncate(msgs[0], 1024)
		}
		if aerr := rq.s.cfg.Audit.Append(context.WithoutCancel(rq.ctx), rq.event(outcome)); aerr != nil {
			rq.s.log.Error("audit log unavailable: refusing the secrets request", "err", aerr)
			status, msgs, resp = http.StatusInternalServerError, []string{"audit log unavailable; the request was not served"}, nil
		}
	}
	rq.s.metrics.observe(rq.engine, rq.op, status, time.Since(rq.start))
	w := rq.w
	w.Header().Set("Cache-Control", "no-store")
	w.Header().Set("Content-Type", "application/json")
	if err != nil || status != http.StatusOK {
		if msgs == nil {
			msgs = []string{}
		}
		if resp != nil {
			resp.RequestID = rq.id
			writeJSON(w, status, resp)
			return
		}
		writeJSON(w, status, map[string][]string{"errors": msgs})
		return
	}
	if resp == nil {
		w.WriteHeader(http.StatusNoContent)
		return
	}
	resp.RequestID = rq.id
	writeJSON(w, http.StatusOK, resp)
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	b, err := json.Marshal(v)
	if err != nil {
		status, b = http.StatusInternalServerError, []byte(`{"errors":["encode response"]}`)
	}
	w.WriteHeader(status)
	w.Write(b)
	w.Write([]byte("\n"))
}

// data wraps a data map in an envelope.
func data(d any) *envelope { return &envelope{Data: d} }

// params are a request's JSON body fields. Handlers read each field they
// take with a typed getter; the first malformed field is remembered and
// done reports it, or else refuses the fields no getter took, so a
// misspelt option is an error, not silently ignored. Handlers must call
// done before acting on the values.
type params struct {
	m    map[string]json.RawMessage
	used map[string]bool
	err  error
}

// MaxParams bounds the members of a request body's top-level object. The
// largest request takes about 15; the bound is read member by member, so
// a body of 2 MiB of tiny members (about 200,000, which decoded into a map
// at once cost 40 MB, before authentication) is refused after 256.
const MaxParams = 256

// parseParams reads a body's top-level JSON object member by member: at
// most MaxParams members, each name once. A repeated name is refused: Go
// keeps the last, other readers the first, and a check in front that read
// the other one would be bypassed. The body is checked whole by
// json.Valid (which allocates nothing) and its members are slices of b,
// not copies: a 2 MiB body costs the server about its own size, where
// a json.Decoder's buffer and a copy of each member cost five times it.
func parseParams(b []byte) (*params, error) {
	p := &params{m: map[string]json.RawMessage{}, used: map[string]bool{}}
	b = trimJSONSpace(b)
	if len(b) == 0 {
		return p, nil
	}
	if !json.Valid(b) {
		// Only now does encoding/json say where: its syntax check runs
		// before anything is decoded.
		err := json.Unmarshal(b, new(json.RawMessage))
		if err == nil {
			err = errors.New("invalid JSON")
		}
		msg := strings.TrimPrefix(err.Error(), "json: ")
		if strings.Contains(msg, "after top-level value") {
			return nil, badRequest("body holds data after the JSON object")
		}
		return nil, badRequest("body: want a JSON object: %s", msg)
	}
	switch b[0] {
	case 'n': // null: Vault's clients send it for a write without data
		return p, nil
	case '{':
	default:
		return nil, badRequest("body: want a JSON object")
	}
	// b is one valid JSON object: '{' [key ':' value {',' key ':' value}] '}'.
	i := skipJSONSpace(b, 1)
	for b[i] != '}' {
		end := jsonValueEnd(b, i)
		var k string
		if err := json.Unmarshal(b[i:end], &k); err != nil {
			return nil, badRequest("body: want a JSON object: %v", err)
		}
		if _, dup := p.m[k]; dup {
			return nil, badRequest("body: member %q given more than once", truncate(k, 64))
		}
		if len(p.m) == MaxParams {
			return nil, badRequest("body: more than %d members", MaxParams)
		}
		i = skipJSONSpace(b, skipJSONSpace(b, end)+1) // past ':'
		end = jsonValueEnd(b, i)
		p.m[k] = json.RawMessage(b[i:end:end])
		if i = skipJSONSpace(b, end); b[i] == ',' {
			i = skipJSONSpace(b, i+1)
		}
	}
	return p, nil
}

func isJSONSpace(c byte) bool { return c == ' ' || c == '\t' || c == '\n' || c == '\r' }

func trimJSONSpace(b []byte) []byte {
	for len(b) > 0 && isJSONSpace(b[0]) {
		b = b[1:]
	}
	for len(b) > 0 && isJSONSpace(b[len(b)-1]) {
		b = b[:len(b)-1]
	}
	return b
}

func skipJSONSpace(b []byte, i int) int {
	for i < len(b) && isJSONSpace(b[i]) {
		i++
	}
	return i
}

// jsonValueEnd returns the index just past the value starting at b[i] of
// valid JSON b: a string, an object or array (strings inside skipped),
// or a number or literal.
func jsonValueEnd(b []byte, i int) int {
	depth := 0
	for inStr, esc := false, false; i < len(b); i++ {
		c := b[i]
		switch {
		case inStr:
			switch {
			case esc:
				esc = false
			case c == '\\':
				esc = true
			case c == '"':
				inStr = false
				if depth == 0 {
					return i + 1
				}
			}
		case c == '"':
			inStr = true
		case c == '{' || c == '[':
			depth++
		case c == '}' || c == ']':
			if depth--; depth == 0 {
				return i + 1
			}
			if depth < 0 { // the end of a number or literal before it
				return i
			}
		case depth == 0 && (c == ',' || c == ':' || isJSONSpace(c)):
			return i
		}
	}
	return i
}

// Bounds of a JSON document decoded whole into map[string]any (a KV
// version's data, a fieldcrypt document). Decoded, each value costs an
// interface, a slice slot or a map entry: a 2 MiB array of a million
// tiny values took over 100 MB to write. Vault stores the JSON as sent
// and has no such bound; 16,384 values nested 64 deep is far above any
// secret's shape and keeps a write near the size of its body.
const (
	MaxDataValues = 16384
	MaxDataDepth  = 64
)

// checkJSONShape refuses a JSON value nested deeper than MaxDataDepth or
// with more than MaxDataValues values (counted as 1 + containers +
// separators, so an empty container counts twice), in one pass over raw and without allocating, before anything
// decodes it. raw is valid JSON (parseParams decoded it).
func checkJSONShape(field string, raw []byte) error {
	depth, values := 0, 1
	inStr, esc := false, false
	for _, c := range raw {
		if inStr {
			switch {
			case esc:
				esc = false
			case c == '\\':
				esc = true
			case c == '"':
				inStr = false
			}
			continue
		}
		switch c {
		case '"':
			inStr = true
		case '{', '[':
			if depth++; depth > MaxDataDepth {
				return badRequest("%s: nested deeper than %d", field, MaxDataDepth)
			}
			values++
		case '}', ']':
			depth--
		case ',':
			values++
		}
		if values > MaxDataValues {
			return badRequest("%s: more than %d values", field, MaxDataValues)
		}
	}
	return nil
}

// truncate shortens s to at most n bytes (on a rune boundary) for an
// error message or an audit record.
func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	for n > 0 && !utf8.RuneStart(s[n]) {
		n--
	}
	return s[:n] + "..."
}

// has reports whether a field is present (and not null).
func (p *params) has(k string) bool {
	v, ok := p.m[k]
	return ok && string(v) != "null"
}

// raw takes a field as it is (nil when absent or null).
func (p *params) raw(k string) json.RawMessage {
	p.used[k] = true
	if !p.has(k) {
		return nil
	}
	return p.m[k]
}

// fail remembers the first malformed field.
func (p *params) fail(format string, args ...any) {
	if p.err == nil {
		p.err = badRequest(format, args...)
	}
}

func (p *params) str(k string) string {
	raw := p.raw(k)
	var s string
	if raw != nil && json.Unmarshal(raw, &s) != nil {
		p.fail("%s: want a string", k)
	}
	return s
}

// integer takes a JSON number or a string of digits.
func (p *params) integer(k string) int64 {
	raw := p.raw(k)
	if raw == nil {
		return 0
	}
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.UseNumber()
	var v any
	var n json.Number
	if dec.Decode(&v) == nil {
		switch x := v.(type) {
		case json.Number:
			n = x
		case string:
			n = json.Number(x)
		}
	}
	i, err := strconv.ParseInt(string(n), 10, 64)
	if err != nil {
		p.fail("%s: want an integer", k)
	}
	return i
}

// boolean takes true/false or a string strconv.ParseBool reads.
func (p *params) boolean(k string) bool {
	raw := p.raw(k)
	if raw == nil {
		return false
	}
	var b bool
	if json.Unmarshal(raw, &b) == nil {
		return b
	}
	var s string
	if json.Unmarshal(raw, &s) == nil {
		if v, err := strconv.ParseBool(s); err == nil {
			return v
		}
	}
	p.fail("%s: want true or false", k)
	return false
}

// duration reads Vault's duration fields: an integer of seconds, or a
// string of seconds or with units ("90s", "1h", "7d").
func (p *params) duration(k string) time.Duration {
	raw := p.raw(k)
	if raw == nil {
		return 0
	}
	d, err := parseDuration(raw)
	if err != nil {
		p.fail("%s: %v", k, err)
	}
	return d
}

// strList reads a list of strings, given as a JSON array or as one
// comma-separated string (both are Vault habits).
func (p *params) strList(k string) []string {
	raw := p.raw(k)
	if raw == nil {
		return nil
	}
	var l []string
	if json.Unmarshal(raw, &l) == nil {
		return l
	}
	var s string
	if err := json.Unmarshal(raw, &s); err != nil {
		p.fail("%s: want a list of strings", k)
		return nil
	}
	for _, x := range strings.Split(s, ",") {
		if x = strings.TrimSpace(x); x != "" {
			l = append(l, x)
		}
	}
	return l
}

// strMap reads an object of strings (AppRole metadata may arrive as a
// JSON string holding one).
func (p *params) strMap(k string) map[string]string {
	raw := p.raw(k)
	if raw == nil {
		return nil
	}
	var m map[string]string
	if err := json.Unmarshal(raw, &m); err != nil {
		var s string
		if json.Unmarshal(raw, &s) != nil || json.Unmarshal([]byte(s), &m) != nil {
			p.fail("%s: want an object of strings", k)
		}
	}
	return m
}

// b64 reads a base64 field (standard encoding); required refuses an
// absent one.
func (p *params) b64(k string, required bool) []byte {
	present := p.has(k)
	s := p.str(k)
	if s == "" {
		if required && !present {
			p.fail("missing %s in input", k)
		}
		return nil
	}
	b, err := base64.StdEncoding.DecodeString(s)
	if err != nil {
		p.fail("%s: not base64 (encode it with base64 first)", k)
	}
	return b
}

// The opt* getters change *dst only when the field is present: a write
// changes the fields it gives (Vault's habit for roles and configs).
func (p *params) optInt(dst *int64, k string) {
	if p.has(k) {
		*dst = p.integer(k)
	}
	p.used[k] = true
}

func (p *params) optBool(dst *bool, k string) {
	if p.has(k) {
		*dst = p.boolean(k)
	}
	p.used[k] = true
}

func (p *params) optDuration(dst *time.Duration, k string) {
	if p.has(k) {
		*dst = p.duration(k)
	}
	p.used[k] = true
}

func (p *params) optList(dst *[]string, k string) {
	if p.has(k) {
		*dst = p.strList(k)
	}
	p.used[k] = true
}

// ignore takes fields a handler accepts and has no use for.
func (p *params) ignore(ks ...string) {
	for _, k := range ks {
		p.used[k] = true
	}
}

// done reports the first malformed field, else the fields no getter took.
func (p *params) done() error {
	if p.err != nil {
		return p.err
	}
	var unknown []string
	for k := range p.m {
		if !p.used[k] {
			unknown = append(unknown, k)
		}
	}
	if len(unknown) > 0 {
		sort.Strings(unknown)
		more := ""
		if len(unknown) > 10 {
			unknown, more = unknown[:10], fmt.Sprintf(" and %d more", len(unknown)-10)
		}
		for i, k := range unknown {
			unknown[i] = truncate(k, 64)
		}
		return badRequest("unknown parameters: %s%s", strings.Join(unknown, ", "), more)
	}
	return nil
}

// query reads an allowed query parameter; the list parameter is always
// allowed.
func (rq *req) onlyQuery(allowed ...string) error {
	for k := range rq.q {
		if k == "list" {
			continue
		}
		ok := false
		for _, a := range allowed {
			ok = ok || a == k
		}
		if !ok {
			return badRequest("unknown query parameter %q", k)
		}
	}
	return nil
}

// MaxDuration bounds every duration parameter (10 years).
const MaxDuration = 10 * 365 * 24 * time.Hour

func parseDuration(raw json.RawMessage) (time.Duration, error) {
	var n int64
	if json.Unmarshal(raw, &n) == nil {
		if n < 0 || n > int64(MaxDuration/time.Second) {
			return 0, errors.New("out of range")
		}
		return time.Duration(n) * time.Second, nil
	}
	var s string
	if err := json.Unmarshal(raw, &s); err != nil {
		return 0, errors.New("want seconds or a duration like \"1h\"")
	}
	return parseDurationString(s)
}

func parseDurationString(s string) (time.Duration, error) {
	if s == "" {
		return 0, nil
	}
	if n, err := strconv.ParseInt(s, 10, 64); err == nil {
		if n < 0 || n > int64(MaxDuration/time.Second) {
			return 0, errors.New("out of range")
		}
		return time.Duration(n) * time.Second, nil
	}
	if strings.HasSuffix(s, "d") {
		n, err := strconv.ParseInt(strings.TrimSuffix(s, "d"), 10, 32)
		if err != nil || n < 0 || n > 3650 {
			return 0, errors.New("want seconds or a duration like \"1h\"")
		}
		return time.Duration(n) * 24 * time.Hour, nil
	}
	d, err := time.ParseDuration(s)
	if err != nil || d < 0 || d > MaxDuration {
		return 0, errors.New("want seconds or a duration like \"1h\"")
	}
	return d, nil
}
