package telemetry

import (
	"net/http"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/trace"
)

// StatusWriter notes the final status written through it, for the span
// of the request. Unwrap lets http.ResponseController reach the
// connection (flush, hijack, deadlines, full duplex) as before.
type StatusWriter struct {
	http.ResponseWriter
	// Status is the first final (>= 200) status written; 0 if none (a
	// hijacked connection, or nothing written yet).
	Status int
}

func (w *StatusWriter) WriteHeader(code int) {
	if w.Status == 0 && code >= 200 {
		w.Status = code
	}
	w.ResponseWriter.WriteHeader(code)
}

func (w *StatusWriter) Write(b []byte) (int, error) {
	if w.Status == 0 {
		w.Status = http.StatusOK
	}
	return w.ResponseWriter.Write(b)
}

func (w *StatusWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

// EndHTTPSpan records status on an HTTP span and ends it. As the HTTP
// semantic conventions say, a server span is in error on a 5xx only (a
// 4xx is the caller's doing), a client span on any 4xx or 5xx.
func EndHTTPSpan(span trace.Span, status int, client bool) {
	if status != 0 {
		span.SetAttributes(attribute.Int("http.response.status_code", status))
		if status >= 500 || (client && status >= 400) {
			span.SetStatus(codes.Error, http.StatusText(status))
		}
	}
	span.End()
}
