package proxy

import (
	"context"
	"net"
	"net/http"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// upstreamClient builds the client of one upstream sidecar at addr that
// must present want: a pool of HTTP/2 connections (ALPN h2), many
// requests sharing one handshake, or with http1 plain requests over a
// pool of HTTP/1.1 TLS connections on the lean client while streaming
// bodies, gRPC and upgrades keep the transport. WebSocket upgrades need
// HTTP/1.1; the transport dials those on separate connections by itself.
// tr is the transport underneath, for closing its idle connections.
func (t *tlsIdentity) upstreamClient(want spiffeid.ID, serverName, addr string, http1 bool, handshakeTimeout time.Duration) (rt http.RoundTripper, tr *http.Transport) {
	tr = &http.Transport{
		TLSClientConfig:        t.clientConfig(want, serverName, []string{"h2", "http/1.1"}),
		DialContext:            (&net.Dialer{Timeout: 5 * time.Second, KeepAlive: 30 * time.Second}).DialContext,
		TLSHandshakeTimeout:    handshakeTimeout,
		ForceAttemptHTTP2:      true,
		MaxIdleConns:           256,
		MaxIdleConnsPerHost:    256,
		IdleConnTimeout:        90 * time.Second,
		MaxResponseHeaderBytes: maxResponseHeadBytes,
		DisableCompression:     true,
		Protocols:              new(http.Protocols),
		HTTP2:                  &http.HTTP2Config{SendPingTimeout: 30 * time.Second, PingTimeout: 15 * time.Second},
	}
	tr.Protocols.SetHTTP1(true)
	tr.Protocols.SetHTTP2(true)
	if !http1 {
		return tr, tr
	}
	h1 := t.clientConfig(want, serverName, []string{"http/1.1"})
	d := &net.Dialer{Timeout: 5 * time.Second, KeepAlive: 30 * time.Second}
	return &appClient{
		dial: func(ctx context.Context) (net.Conn, error) {
			ctx, cancel := context.WithTimeout(ctx, handshakeTimeout)
			defer cancel()
			return dialTLS(ctx, d, addr, h1) // raw system calls: see rawConn
		},
		fallback: tr, maxIdle: 256, idleTimeout: 60 * time.Second, now: time.Now,
	}, tr
}
