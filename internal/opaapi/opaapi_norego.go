//go:build norego

package opaapi

import (
	"net/http"

	"github.com/moatless/moatless/internal/policy"
)

// CodeNotImplemented answers every request of an executable built
// without OPA (tag norego, moatless-sidecar): it cannot evaluate Rego,
// so it serves neither the Data API nor the Policy API.
const CodeNotImplemented = "not_implemented"

// errorCauses: without OPA a RegoError holds no OPA errors.
func errorCauses(*policy.RegoError) []ErrorCause { return nil }

func (h *Handler) serveData(w http.ResponseWriter, _ *http.Request)     { h.unavailable(w) }
func (h *Handler) servePolicies(w http.ResponseWriter, _ *http.Request) { h.unavailable(w) }

// unavailable answers 501 in OPA's error shape, saying which executable
// serves the API.
func (h *Handler) unavailable(w http.ResponseWriter) {
	writeJSON(w, http.StatusNotImplemented, Errorf(http.StatusNotImplemented, CodeNotImplemented, "%v", policy.ErrRegoUnavailable), false)
}
