package gateway

import (
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"net/http"
	"strconv"
)

// bannerHeaders reveal what runs behind the gateway; they are removed
// from every response.
var bannerHeaders = []string{"Server", "X-Powered-By", "X-Aspnet-Version", "X-Aspnetmvc-Version", "X-Runtime", "X-Envoy-Upstream-Service-Time"}

// respWriter puts the security headers, the request ID and the CORS
// headers on every response whoever writes it (the upstream's answer or
// the gateway's own error), removes banners, and records status and size
// for the access log. It unwraps for http.ResponseController, so
// flushing, full duplex and upgrades reach the server's writer.
type respWriter struct {
	http.ResponseWriter
	rc      *reqCtx
	status  int
	bytes   int64
	written bool
}

func (w *respWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

func (w *respWriter) WriteHeader(code int) {
	if w.written {
		return
	}
	if code >= 200 || code == http.StatusSwitchingProtocols {
		if code >= 200 {
			w.settle()
		}
		w.written = true
		w.status = code
	}
	w.prepare()
	w.ResponseWriter.WriteHeader(code)
}

func (w *respWriter) Write(b []byte) (int, error) {
	if !w.written {
		w.WriteHeader(http.StatusOK)
	}
	n, err := w.ResponseWriter.Write(b)
	w.bytes += int64(n)
	return n, err
}

func (w *respWriter) prepare() {
	h := w.Header()
	for _, k := range bannerHeaders {
		delete(h, k)
	}
	rc := w.rc
	for _, sh := range rc.st.headers {
		h[sh.name] = sh.value
	}
	h["X-Request-Id"] = rc.hdrs[1:2:2]
	if rc.route != nil && rc.route.cors != nil {
		rc.route.cors.decorate(h, rc.origin, rc.preflight)
	}
}

// errorBody is the JSON body of every answer the gateway makes itself. It
// names the request ID so a user can quote it; it never echoes input.
type errorBody struct {
	Status    int    `json:"status"`
	Error     string `json:"error"`
	RequestID string `json:"request_id"`
	// Pointer is the JSON pointer of the first validation error.
	Pointer string `json:"pointer,omitempty"`
}

// reject answers the request with status and msg and records reason (a
// bounded metric label) for the access log.
func (g *Gateway) reject(w *respWriter, status int, reason, msg string) {
	g.rejectWith(w, status, reason, errorBody{Error: msg})
}

func (g *Gateway) rejectWith(w *respWriter, status int, reason string, body errorBody) {
	w.rc.reason = reason
	body.Status = status
	body.RequestID = w.rc.id
	b, _ := json.Marshal(body)
	h := w.Header()
	h.Set("Content-Type", "application/json")
	h.Set("Cache-Control", "no-store")
	h.Set("Content-Length", strconv.Itoa(len(b)+1))
	if (status == http.StatusRequestEntityTooLarge || status == http.StatusRequestHeaderFieldsTooLarge || status == http.StatusBadRequest || status == http.StatusRequestURITooLong) &&
		(w.rc.req == nil || w.rc.req.ProtoMajor < 2) {
		// The rest of what the client sends is not read: it must not be
		// taken for the next request on the connection. HTTP/2 frames
		// every stream apart: the stream ends, and the connection and the
		// client's other streams go on (net/http's HTTP/2 server would
		// answer Connection: close with a GOAWAY).
		h.Set("Connection", "close")
	}
	w.WriteHeader(status)
	w.Write(append(b, '\n'))
}

// newRequestID is 16 random bytes in hex. A caller's X-Request-Id is
// never used: it could collide with or impersonate another request in the
// logs.
func newRequestID() string {
	var b [16]byte
	rand.Read(b[:])
	return hex.EncodeToString(b[:])
}
