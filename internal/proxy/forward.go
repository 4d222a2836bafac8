package proxy

import (
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"time"
)

// bufPool holds the copy buffers of every body and byte stream, so steady
// traffic allocates none.
var bufPool = sync.Pool{New: func() any { b := make([]byte, 32<<10); return &b }}

// hopHeaders are dropped between hops (RFC 9110 section 7.6.1), plus the
// names the Connection header lists. "Te: trailers" is kept: gRPC needs it.
var hopHeaders = []string{
	"Connection", "Proxy-Connection", "Keep-Alive", "Proxy-Authenticate",
	"Proxy-Authorization", "Te", "Trailer", "Transfer-Encoding", "Upgrade",
}

// removeHopHeaders strips hop-by-hop headers from h in place and returns
// the Upgrade protocol when the message asks for one (WebSocket), which the
// caller puts back on the next hop.
func removeHopHeaders(h http.Header) (upgrade string) {
	if c := h["Connection"]; len(c) > 0 {
		for _, v := range c {
			for f := range strings.SplitSeq(v, ",") {
				f = strings.TrimSpace(f)
				if strings.EqualFold(f, "upgrade") {
					upgrade = h.Get("Upgrade")
				}
				if f != "" {
					h.Del(f)
				}
			}
		}
	}
	te := h["Te"]
	for _, k := range hopHeaders {
		delete(h, k)
	}
	for _, v := range te {
		if strings.EqualFold(strings.TrimSpace(v), "trailers") {
			h["Te"] = []string{"trailers"}
			break
		}
	}
	return upgrade
}

// forwarder sends a request on to one fixed destination and streams the
// answer back. It is the lean part of httputil.ReverseProxy the sidecar
// needs: the incoming request is reused rather than cloned, bodies are
// copied through pooled buffers, trailers and upgrades are carried.
type forwarder struct {
	rt      http.RoundTripper
	scheme  string // "http" to the app, "https" to an upstream sidecar
	host    string // URL host; the dialer ignores it where the address is fixed
	name    string
	s       *Sidecar
	errBody func(err error) string
	// onError, when set, answers a request that could not be forwarded
	// instead of the default 503 (the gateway's 502 with its own body).
	onError func(w http.ResponseWriter, r *http.Request, err error)
}

// forward sends r to the destination. onHijack, when non-nil, is called
// with the client connection once a protocol upgrade has taken it over, and
// its return is called when the upgraded stream ends.
func (f *forwarder) forward(w http.ResponseWriter, r *http.Request, onHijack func(net.Conn) func()) {
	upgrade := removeHopHeaders(r.Header)
	if upgrade != "" {
		r.Header["Connection"] = []string{"Upgrade"}
		r.Header["Upgrade"] = []string{upgrade}
	}
	r.URL.Scheme = f.scheme
	r.URL.Host = f.host
	r.RequestURI = ""
	r.Close = false
	if r.ContentLength == 0 {
		r.Body = nil
	}
	if r.ProtoMajor == 1 && upgrade == "" && r.ContentLength != 0 {
		// Let a streaming HTTP/1.1 client (gRPC-web, chunked uploads) read
		// the answer while it is still sending.
		_ = http.NewResponseController(w).EnableFullDuplex()
	}
	resp, err := f.rt.RoundTrip(r)
	if err != nil {
		if errors.Is(r.Context().Err(), context.Canceled) {
			return // the client went away; nobody to answer
		}
		f.s.metrics.upstreamErrors.WithLabelValues(f.name).Inc()
		// url.Error would print the request URL, query included, and a
		// query can carry a token (RequestAuthentication fromParams).
		logErr := err
		var ue *url.Error
		if errors.As(err, &ue) {
			logErr = ue.Err
		}
		f.s.log.Warn("forward failed", "listener", f.name, "method", r.Method, "path", r.URL.Path, "err", logErr)
		if f.onError != nil {
			f.onError(w, r, err)
			return
		}
		body := "upstream connect error or disconnect/reset before headers"
		if f.errBody != nil {
			body = f.errBody(err)
		}
		w.Header().Set("Content-Type", "text/plain")
		w.WriteHeader(http.StatusServiceUnavailable)
		io.WriteString(w, body)
		return
	}
	if resp.StatusCode == http.StatusSwitchingProtocols {
		f.upgrade(w, r, resp, onHijack)
		return
	}
	defer resp.Body.Close()

	removeHopHeaders(resp.Header)
	dst := w.Header()
	for k, vv := range resp.Header {
		dst[k] = vv
	}
	if len(resp.Trailer) > 0 {
		names := make([]string, 0, len(resp.Trailer))
		for k := range resp.Trailer {
			names = append(names, k)
		}
		dst["Trailer"] = []string{strings.Join(names, ", ")}
	}
	announced := len(resp.Trailer)
	w.WriteHeader(resp.StatusCode)

	rc := http.NewResponseController(w)
	streaming := resp.ContentLength == -1
	if streaming {
		_ = rc.Flush() // gRPC and SSE clients wait for headers
	}
	bp := bufPool.Get().(*[]byte)
	buf := *bp
	for {
		n, rerr := resp.Body.Read(buf)
		if n > 0 {
			if _, werr := w.Write(buf[:n]); werr != nil {
				break
			}
			if streaming {
				_ = rc.Flush()
			}
		}
		if rerr != nil {
			if rerr != io.EOF {
				f.s.log.Debug("response body copy ended", "listener", f.name, "err", rerr)
				// Abort so the client sees a reset (HTTP/2 RST_STREAM, a
				// closed HTTP/1.1 connection) rather than a body that ends
				// cleanly but truncated — whether the upstream failed or
				// the request was cut off (its token revoked).
				bufPool.Put(bp)
				panic(http.ErrAbortHandler)
			}
			break
		}
	}
	bufPool.Put(bp)
	if len(resp.Trailer) > 0 {
		for k, vv := range resp.Trailer {
			if announced > 0 {
				dst[k] = vv
			} else {
				dst[http.TrailerPrefix+k] = vv
			}
		}
	}
}

// upgrade completes a protocol switch (WebSocket): the 101 goes to the
// client, then bytes are piped both ways until either side closes.
func (f *forwarder) upgrade(w http.ResponseWriter, r *http.Request, resp *http.Response, onHijack func(net.Conn) func()) {
	back, ok := resp.Body.(io.ReadWriteCloser)
	if !ok {
		resp.Body.Close()
		http.Error(w, "upgrade failed", http.StatusBadGateway)
		return
	}
	defer back.Close()
	conn, brw, err := http.NewResponseController(w).Hijack()
	if err != nil {
		// HTTP/2 from the client: no connection to take over.
		http.Error(w, "protocol upgrade needs HTTP/1.1", http.StatusBadGateway)
		return
	}
	done := func() {}
	if onHijack != nil {
		done = onHijack(conn)
	}
	defer done()
	defer conn.Close()
	resp.Header.Del("Keep-Alive")
	// Status line and headers only: the body is the upgraded stream.
	brw.WriteString("HTTP/1.1 101 Switching Protocols\r\n")
	if err := resp.Header.Write(brw); err != nil {
		return
	}
	brw.WriteString("\r\n")
	if err := brw.Flush(); err != nil {
		return
	}
	_ = conn.SetDeadline(time.Time{})
	var client io.Reader = conn
	if n := brw.Reader.Buffered(); n > 0 {
		client = io.MultiReader(io.LimitReader(brw.Reader, int64(n)), conn)
	}
	pipe(conn, client, back, back)
}

// pipe copies a→b and b→a until both directions end, half-closing each
// side's write direction when its source ends so protocols with a final
// message after EOF work. ar/br are the read sides (which may replay
// buffered bytes), aw/bw the conns themselves.
func pipe(aw io.Writer, ar io.Reader, bw io.Writer, br io.Reader) {
	done := make(chan struct{}, 1)
	go func() {
		copyBuf(bw, ar)
		closeWrite(bw)
		done <- struct{}{}
	}()
	copyBuf(aw, br)
	closeWrite(aw)
	<-done
}

// copyBuf copies through a pooled buffer, hiding ReaderFrom/WriterTo so the
// pool's buffer is the one used.
func copyBuf(dst io.Writer, src io.Reader) {
	bp := bufPool.Get().(*[]byte)
	io.CopyBuffer(struct{ io.Writer }{dst}, struct{ io.Reader }{src}, *bp)
	bufPool.Put(bp)
}

func closeWrite(w io.Writer) {
	switch c := w.(type) {
	case interface{ CloseWrite() error }:
		_ = c.CloseWrite()
	case io.Closer:
		_ = c.Close()
	}
}
