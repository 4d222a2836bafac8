package token

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"mime"
	"net/http"
	"net/url"
	"strings"
)

// OAuth error codes (RFC 6749 §5.2, §4.1.2.1; RFC 8693 §2.2.2; RFC 7009).
// They are also the bounded "reason" label of the failure metrics.
const (
	errInvalidRequest       = "invalid_request"
	errInvalidClient        = "invalid_client"
	errInvalidGrant         = "invalid_grant"
	errUnauthorizedClient   = "unauthorized_client"
	errUnsupportedGrantType = "unsupported_grant_type"
	errInvalidScope         = "invalid_scope"
	errInvalidTarget        = "invalid_target"
	errAccessDenied         = "access_denied"
	errUnsupportedResponse  = "unsupported_response_type"
	errUnsupportedTokenType = "unsupported_token_type"
	errServerError          = "server_error"
	errInvalidToken         = "invalid_token"
)

// oauthError is an error answer. Description is for the client developer
// and never contains a credential.
type oauthError struct {
	Code        string `json:"error"`
	Description string `json:"error_description,omitempty"`
	status      int
	basic       bool  // answer with WWW-Authenticate: Basic (RFC 6749 §5.2)
	cause       error // logged, never sent
}

func (e *oauthError) Error() string {
	if e.cause != nil {
		return e.Code + ": " + e.Description + ": " + e.cause.Error()
	}
	return e.Code + ": " + e.Description
}

func oerr(code, format string, args ...any) *oauthError {
	return &oauthError{Code: code, Description: fmt.Sprintf(format, args...)}
}

func serverError(err error) *oauthError {
	return &oauthError{Code: errServerError, Description: "the server could not complete the request", status: http.StatusInternalServerError, cause: err}
}

func (e *oauthError) httpStatus() int {
	switch {
	case e.status != 0:
		return e.status
	case e.Code == errInvalidClient:
		return http.StatusUnauthorized
	case e.Code == errServerError:
		return http.StatusInternalServerError
	}
	return http.StatusBadRequest
}

// writeJSON writes v with the no-store headers every token endpoint
// answer needs (RFC 6749 §5.1).
func writeJSON(w http.ResponseWriter, status int, v any) {
	h := w.Header()
	h.Set("Content-Type", "application/json")
	h.Set("Cache-Control", "no-store")
	h.Set("Pragma", "no-cache")
	w.WriteHeader(status)
	json.NewEncoder(w).Encode(v)
}

func writeOAuthError(w http.ResponseWriter, e *oauthError) {
	if e.basic || (e.Code == errInvalidClient && e.httpStatus() == http.StatusUnauthorized) {
		w.Header().Set("WWW-Authenticate", `Basic realm="moatless", charset="UTF-8"`)
	}
	writeJSON(w, e.httpStatus(), e)
}

// maxParams bounds the number of parameters in one request.
const maxParams = 64

// maxParamLen bounds one parameter value (assertions and subject tokens
// are the longest legitimate values).
const maxParamLen = 16 << 10

// repeatable are the parameters a request may carry more than once:
// RFC 8693 §2.1 and RFC 8707 §2 allow several audience and resource
// values. Every other parameter appears at most once (RFC 6749 §3.1).
var repeatable = map[string]bool{"audience": true, "resource": true}

// params is a strictly parsed OAuth request.
type params map[string][]string

// get returns the value of k, "" when absent. Parameters sent without a
// value are treated as omitted (RFC 6749 §3.1).
func (p params) get(k string) string {
	if v := p[k]; len(v) > 0 {
		return v[0]
	}
	return ""
}

// all returns every value of a repeatable parameter.
func (p params) all(k string) []string { return p[k] }

// parseParams parses a query string or form body strictly: no parameter
// may appear twice (RFC 6749 §3.1, §3.2), at most maxParams parameters,
// each value at most maxParamLen bytes, valid UTF-8 percent-encoding.
func parseParams(raw string) (params, error) {
	if raw == "" {
		return params{}, nil
	}
	out := params{}
	n := 0
	for raw != "" {
		var kv string
		kv, raw, _ = strings.Cut(raw, "&")
		if kv == "" {
			continue
		}
		if n++; n > maxParams {
			return nil, fmt.Errorf("more than %d parameters", maxParams)
		}
		if strings.Contains(kv, ";") {
			return nil, errors.New("semicolons are not parameter separators")
		}
		k, v, _ := strings.Cut(kv, "=")
		key, err := url.QueryUnescape(k)
		if err != nil {
			return nil, fmt.Errorf("bad parameter name encoding")
		}
		val, err := url.QueryUnescape(v)
		if err != nil {
			return nil, fmt.Errorf("parameter %q: bad encoding", key)
		}
		if len(val) > maxParamLen {
			return nil, fmt.Errorf("parameter %q longer than %d bytes", key, maxParamLen)
		}
		if _, dup := out[key]; dup && !repeatable[key] {
			return nil, fmt.Errorf("parameter %q given more than once", key)
		}
		if val != "" {
			out[key] = append(out[key], val)
		} else if _, ok := out[key]; !ok {
			out[key] = nil
		}
	}
	for k, v := range out {
		if len(v) == 0 {
			delete(out, k)
		}
	}
	return out, nil
}

// readForm reads a POST body of type application/x-www-form-urlencoded,
// at most MaxFormSize bytes, strictly. Parameters in the URL query are
// refused: credentials must not travel in URLs.
func readForm(w http.ResponseWriter, r *http.Request) (params, *oauthError) {
	if r.Method != http.MethodPost {
		return nil, &oauthError{Code: errInvalidRequest, Description: "use POST", status: http.StatusMethodNotAllowed}
	}
	if r.URL.RawQuery != "" {
		return nil, oerr(errInvalidRequest, "parameters must be in the form body, not the URL")
	}
	mt, _, err := mime.ParseMediaType(r.Header.Get("Content-Type"))
	if err != nil || mt != "application/x-www-form-urlencoded" {
		return nil, oerr(errInvalidRequest, "Content-Type must be application/x-www-form-urlencoded")
	}
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, MaxFormSize))
	if err != nil {
		return nil, oerr(errInvalidRequest, "request body too large or unreadable (limit %d bytes)", MaxFormSize)
	}
	p, err := parseParams(string(body))
	if err != nil {
		return nil, oerr(errInvalidRequest, "%v", err)
	}
	return p, nil
}

// scopes splits a scope parameter (RFC 6749 §3.3): space-separated
// tokens of printable ASCII except '"' and '\'; duplicates collapse.
func parseScope(s string) ([]string, error) {
	if s == "" {
		return nil, nil
	}
	var out []string
	for _, tok := range strings.Split(s, " ") {
		if tok == "" {
			return nil, errors.New("scope has empty entries (one space between scope tokens)")
		}
		for i := 0; i < len(tok); i++ {
			c := tok[i]
			if c < 0x21 || c > 0x7e || c == '"' || c == '\\' {
				return nil, fmt.Errorf("scope token %q has a character RFC 6749 §3.3 does not allow", tok)
			}
		}
		if !contains(out, tok) {
			out = append(out, tok)
		}
	}
	return out, nil
}

// writeJSONCached writes v as a 200 answer, keeping the caller's caching
// headers (discovery and JWKS are public and cacheable).
func writeJSONCached(w http.ResponseWriter, v any) {
	w.WriteHeader(http.StatusOK)
	json.NewEncoder(w).Encode(v)
}
