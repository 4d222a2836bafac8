package opaapi

import (
	"context"
	"errors"
	"io"
	"net/http"
	"net/url"
	"strings"

	"github.com/moatless/moatless/internal/policy"
	"github.com/moatless/moatless/internal/policy/regoengine"
)

// This file serves OPA's Data and Policy APIs from the policy in force,
// through the executable's Rego evaluator. An executable without one
// (moatless-sidecar: it does not link OPA) answers every call with 501.

// CodeNotImplemented answers every request of an executable without a
// Rego evaluator (moatless-sidecar): it cannot evaluate Rego, so it
// serves neither the Data API nor the Policy API.
const CodeNotImplemented = "not_implemented"

// unavailable answers 501 in OPA's error shape, saying which executable
// serves the API.
func (h *Handler) unavailable(w http.ResponseWriter) {
	writeJSON(w, http.StatusNotImplemented, Errorf(http.StatusNotImplemented, CodeNotImplemented, "%v", policy.ErrRegoUnavailable), false)
}

func (h *Handler) rego() *policy.Rego {
	if h.Rego != nil {
		if r := h.Rego(); r != nil {
			return r
		}
	}
	return policy.EmptyRego()
}

func (h *Handler) serveData(w http.ResponseWriter, r *http.Request) {
	if !policy.RegoAvailable() {
		h.unavailable(w)
		return
	}
	limit := int64(MaxInputSize)
	if r.Method == http.MethodPut {
		limit = h.maxWrite()
	}
	dr, err := ParseDataRequest(r.Method, r.URL.EscapedPath(), r.URL.Query(), r.Header, r.Body, limit)
	if err != nil {
		h.fail(w, err)
		return
	}
	switch dr.Method {
	case http.MethodGet, http.MethodPost:
		h.query(w, r.Context(), dr)
	case http.MethodPut:
		if h.Writer == nil {
			h.fail(w, Errorf(http.StatusMethodNotAllowed, CodeInvalidParameter, "this API is read-only: write data through the server"))
			return
		}
		if err := h.Writer.PutData(r, dr.Path, dr.Value, dr.IfNoneMatch); err != nil {
			if errors.Is(err, ErrExists) {
				w.WriteHeader(http.StatusNotModified)
				return
			}
			h.fail(w, err)
			return
		}
		w.WriteHeader(http.StatusNoContent)
	case http.MethodDelete:
		if h.Writer == nil {
			h.fail(w, Errorf(http.StatusMethodNotAllowed, CodeInvalidParameter, "this API is read-only: write data through the server"))
			return
		}
		if err := h.Writer.DeleteData(r, dr.Path); err != nil {
			h.fail(w, err)
			return
		}
		w.WriteHeader(http.StatusNoContent)
	}
}

func (h *Handler) query(w http.ResponseWriter, ctx context.Context, dr *DataRequest) {
	bound := h.evalTimeout()
	ctx, cancel := context.WithTimeout(ctx, bound)
	defer cancel()
	slots := h.evalSlots()
	select {
	case slots <- struct{}{}:
		defer func() { <-slots }()
	case <-ctx.Done():
		w.Header().Set("Retry-After", "1")
		h.fail(w, Errorf(http.StatusServiceUnavailable, CodeInternal, "no evaluation slot came free within %s (the Data API's bound: %d at once); retry later", bound, cap(slots)))
		return
	}
	res, defined, err := h.rego().Query(ctx, dr.Path, dr.Input, dr.HasInput)
	if err != nil && errors.Is(ctx.Err(), context.DeadlineExceeded) {
		h.log().Warn("OPA API query exceeded its bound", "path", strings.Join(dr.Path, "/"), "bound", bound)
		h.fail(w, Errorf(http.StatusInternalServerError, CodeInternal, "eval_cancel_error: evaluation exceeded %s (the Data API's bound)", bound))
		return
	}
	if errors.Is(err, regoengine.ErrInput) {
		h.fail(w, Errorf(http.StatusBadRequest, CodeInvalidParameter, "%v", err))
		return
	}
	if err != nil {
		var re *policy.RegoError
		if errors.As(err, &re) {
			h.fail(w, CompileError(err))
			return
		}
		h.fail(w, Errorf(http.StatusInternalServerError, CodeInternal, "%v", err))
		return
	}
	out := map[string]any{}
	if defined {
		out["result"] = res
	}
	writeJSON(w, http.StatusOK, out, dr.Pretty)
}

// PolicyModule is one module as the Policy API shows it.
type PolicyModule struct {
	ID  string `json:"id"`
	Raw string `json:"raw"`
	AST any    `json:"ast"` // OPA's AST of the module
}

func (h *Handler) servePolicies(w http.ResponseWriter, r *http.Request) {
	if !policy.RegoAvailable() {
		h.unavailable(w)
		return
	}
	rest, _ := strings.CutPrefix(r.URL.EscapedPath(), "/v1/policies")
	pretty := r.URL.Query().Get("pretty") == "true"
	id := ""
	if rest != "" && rest != "/" {
		u, err := url.PathUnescape(strings.TrimPrefix(rest, "/"))
		if err != nil {
			h.fail(w, Errorf(http.StatusBadRequest, CodeInvalidParameter, "policy id: %v", err))
			return
		}
		if err := policy.ValidRegoID(u); err != nil {
			h.fail(w, Errorf(http.StatusBadRequest, CodeInvalidParameter, "%v", err))
			return
		}
		id = u
	}
	switch {
	case r.Method == http.MethodGet && id == "":
		list := []PolicyModule{}
		reg := h.rego()
		for _, m := range reg.Modules() {
			_, parsed, _ := reg.Module(m.ID)
			list = append(list, PolicyModule{ID: m.ID, Raw: m.Source, AST: parsed})
		}
		writeJSON(w, http.StatusOK, map[string]any{"result": list}, pretty)
	case r.Method == http.MethodGet:
		m, parsed, ok := h.rego().Module(id)
		if !ok {
			h.fail(w, Errorf(http.StatusNotFound, CodeNotFound, "storage_not_found_error: policy id %q", id))
			return
		}
		writeJSON(w, http.StatusOK, map[string]any{"result": PolicyModule{ID: m.ID, Raw: m.Source, AST: parsed}}, pretty)
	case (r.Method == http.MethodPut || r.Method == http.MethodDelete) && h.Writer == nil:
		h.fail(w, Errorf(http.StatusMethodNotAllowed, CodeInvalidParameter, "this API is read-only: write policies through the server"))
	case id == "":
		h.fail(w, Errorf(http.StatusMethodNotAllowed, CodeInvalidParameter, "method %s needs a policy id: /v1/policies/{id}", r.Method))
	case r.Method == http.MethodPut:
		b, err := io.ReadAll(io.LimitReader(r.Body, policy.MaxRegoModuleSize+1))
		if err != nil {
			h.fail(w, Errorf(http.StatusBadRequest, CodeInvalidParameter, "read body: %v", err))
			return
		}
		if len(b) > policy.MaxRegoModuleSize {
			h.fail(w, Errorf(http.StatusRequestEntityTooLarge, CodeInvalidParameter, "module is larger than %d KiB", policy.MaxRegoModuleSize>>10))
			return
		}
		if err := policy.CheckRegoModule(id, string(b)); err != nil {
			h.fail(w, CompileError(err))
			return
		}
		if err := h.Writer.PutPolicy(r, id, string(b)); err != nil {
			h.fail(w, err)
			return
		}
		writeJSON(w, http.StatusOK, map[string]any{}, pretty)
	case r.Method == http.MethodDelete:
		if err := h.Writer.DeletePolicy(r, id); err != nil {
			h.fail(w, err)
			return
		}
		writeJSON(w, http.StatusOK, map[string]any{}, pretty)
	default:
		h.fail(w, Errorf(http.StatusMethodNotAllowed, CodeInvalidParameter, "method %s is not allowed on /v1/policies", r.Method))
	}
}

// errorCauses are OPA's errors of a module that did not compile.
func errorCauses(re *policy.RegoError) []ErrorCause {
	var out []ErrorCause
	for _, x := range re.Errors {
		c := ErrorCause{Code: x.Code, Message: x.Message}
		if x.Located {
			c.Location = &Location{File: x.File, Row: x.Row, Col: x.Col}
		}
		out = append(out, c)
	}
	return out
}
