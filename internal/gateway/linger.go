package gateway

import (
	"net/http"

	"github.com/moatless/moatless/internal/proxy"
)

// settle runs before the gateway writes its own answer to rc's request
// (a denial, a 401, a 429, a WAF block, a CORS preflight; the answers
// the upstream writes are the forwarder's to settle): on HTTP/1.x, a body
// nothing has read is read now if the client has sent it whole and the
// connection kept; otherwise the answer goes out at once with
// Connection: close and the connection closes lingering after it (see
// proxy.DrainUnread), the fast path's in place (fastConn.close),
// net/http's taken over (lingerHijacked). Lingering connections still
// count towards the connection caps, and are bounded by the limits
// (lingerBounds).
func (w *respWriter) settle() {
	rc := w.rc
	r := rc.req
	if r == nil || r.ProtoMajor != 1 || rc.forwarded || rc.bodyDone || r.Body == nil || r.Body == http.NoBody || r.ContentLength == 0 {
		return
	}
	h := w.Header()
	if !hasToken(h.Get("Connection"), "close") {
		body := r.Body
		if rc.reqBody.ReadCloser != nil {
			body = &rc.reqBody // the route's size limit
		}
		whole, n := proxy.DrainUnread(w.ResponseWriter, body, len(r.Header["Expect"]) > 0)
		rc.bodyBytes += n
		if whole {
			rc.bodyDone = true
			return
		}
	}
	h.Set("Connection", "close")
	rc.linger = true
}

// lingerHijacked takes over a net/http connection whose answer said
// close before the request body was read (settle's, or the forwarder's
// after an upstream's early answer), once the answer is written, and
// closes it lingering on its own goroutine, so that the request's handler
// ends (and its access log line is written) at once.
func (g *Gateway) lingerHijacked(w *respWriter) {
	// net/http reported the connection gone when it was taken over: it
	// is counted again for as long as it lingers.
	proxy.LingerHijack(w.ResponseWriter, &g.lingering, lingerBounds(w.rc.st), g.conns.track)
}

// lingerBounds is the bounds of a lingering close under st's config:
// limits.linger_timeout, linger_time and linger_bytes (the config's
// defaults and validation keep linger_bytes at least max_body_bytes: a
// client answered 413 still sends a body larger than that, and reaching
// the cap closes the connection with the client's bytes unread, which
// makes the kernel send an RST that can destroy the answer before the
// client reads it; moatless demo's 200 KiB body against a 64 KiB limit
// got "broken pipe" instead of its 413 about one run in three). A config
// whose defaults were not filled gets the sidecar's bounds.
func lingerBounds(st *state) proxy.LingerBounds {
	b := proxy.SidecarLinger
	l := &st.cfg.Limits
	if l.LingerTimeout > 0 {
		b.Idle = l.LingerTimeout.Std()
	}
	if l.LingerTime > 0 {
		b.Total = l.LingerTime.Std()
	}
	if l.LingerBytes > 0 {
		b.MaxBytes = l.LingerBytes
	}
	b.MaxBytes = max(b.MaxBytes, l.MaxBodyBytes)
	return b
}
