package server

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"reflect"
	"strings"
)

// writeJSON writes v with status.
func writeJSON(w http.ResponseWriter, status int, v any) {
	b, err := json.Marshal(v)
	if err != nil {
		status, b = http.StatusInternalServerError, []byte(`{"errors":["encode response"]}`)
	}
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(status)
	w.Write(b)
	w.Write([]byte("\n"))
}

// writeErrors writes {"errors": msgs} with status, Vault style.
func writeErrors(w http.ResponseWriter, status int, msgs ...string) {
	if len(msgs) == 0 {
		msgs = []string{http.StatusText(status)}
	}
	writeJSON(w, status, map[string][]string{"errors": msgs})
}

// badRequest is a client error whose message is safe to return.
type badRequest struct{ msg string }

func (e *badRequest) Error() string { return e.msg }

func badf(format string, args ...any) error { return &badRequest{fmt.Sprintf(format, args...)} }

// decodeJSON reads at most limit bytes of one JSON object into v strictly:
// unknown fields, wrong types, trailing data and oversize bodies are
// *badRequest errors whose message names the field.
func decodeJSON(r *http.Request, limit int64, v any) error {
	// Content-Type is not checked (as in Vault): the body must parse as
	// strict JSON whatever it says, and credentials travel in headers, not
	// cookies, so a cross-site form post gains nothing.
	body, err := io.ReadAll(io.LimitReader(r.Body, limit+1))
	var tooLarge *http.MaxBytesError
	if errors.As(err, &tooLarge) {
		return badf("body larger than %d bytes", tooLarge.Limit)
	}
	if err != nil {
		return badf("read body: %v", err)
	}
	if int64(len(body)) > limit {
		return badf("body larger than %d bytes", limit)
	}
	if len(bytes.TrimSpace(body)) == 0 {
		return badf("empty body: a JSON object is required")
	}
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return badf("%s", jsonErrorMessage(err, body, v))
	}
	if dec.More() {
		return badf("body holds more than one JSON value")
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		return badf("body holds data after the JSON object")
	}
	return nil
}

// jsonErrorMessage turns a decoding error into a message naming the field.
// Errors from a field's own UnmarshalJSON (durations) carry no field name;
// for those it finds the field by decoding the top-level fields one by one.
func jsonErrorMessage(err error, body []byte, v any) string {
	var te *json.UnmarshalTypeError
	var se *json.SyntaxError
	switch {
	case errors.As(err, &te):
		if te.Field != "" {
			return fmt.Sprintf("field %q: expected %s, got JSON %s", te.Field, te.Type, te.Value)
		}
		return fmt.Sprintf("expected a JSON object, got JSON %s", te.Value)
	case errors.As(err, &se):
		return fmt.Sprintf("malformed JSON at byte %d: %v", se.Offset, se)
	case strings.HasPrefix(err.Error(), "json: unknown field "):
		return "unknown field " + strings.TrimPrefix(err.Error(), "json: unknown field ")
	case errors.Is(err, io.ErrUnexpectedEOF):
		return "malformed JSON: unexpected end of body"
	}
	msg := strings.TrimPrefix(err.Error(), "json: ")
	var fields map[string]json.RawMessage
	if json.Unmarshal(body, &fields) == nil {
		for k, raw := range fields {
			one, _ := json.Marshal(map[string]json.RawMessage{k: raw})
			fresh := reflect.New(reflect.TypeOf(v).Elem()).Interface()
			if ferr := json.Unmarshal(one, fresh); ferr != nil {
				return fmt.Sprintf("field %q: %s", k, strings.TrimPrefix(ferr.Error(), "wire: "))
			}
		}
	}
	return "malformed JSON: " + msg
}
