package proxy

import (
	"context"
	"crypto/tls"
	"net"
	"net/http"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"golang.org/x/net/http/httpguts"
)

// upstreamClient builds the client of one upstream sidecar at addr that
// must present want: a pool of HTTP/2 connections (ALPN h2), many
// requests sharing one handshake, or with http1 plain requests over a
// pool of HTTP/1.1 TLS connections on the lean client while streaming
// bodies, gRPC and upgrades keep the transport. WebSocket upgrades need
// HTTP/1.1; the transport dials those on separate connections by itself.
// A request that expects 100 Continue goes over HTTP/1.1 whatever the
// mode (continueSplit). tr closes the idle connections of the transports
// underneath.
func (t *tlsIdentity) upstreamClient(want spiffeid.ID, serverName, addr string, http1 bool, handshakeTimeout time.Duration) (rt http.RoundTripper, tr idleCloser) {
	h2 := &http.Transport{
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
		ExpectContinueTimeout:  expectContinueTimeout,
	}
	h2.Protocols.SetHTTP1(true)
	h2.Protocols.SetHTTP2(true)
	h1 := t.clientConfig(want, serverName, []string{"http/1.1"})
	only1 := h2.Clone()
	only1.TLSClientConfig = h1
	only1.ForceAttemptHTTP2 = false
	only1.HTTP2 = nil
	only1.Protocols = new(http.Protocols)
	only1.Protocols.SetHTTP1(true)
	d := &net.Dialer{Timeout: 5 * time.Second, KeepAlive: 30 * time.Second}
	// Dialed here rather than by net/http so that every connection is
	// tracked under its peer's authority (a revoked CA authority closes
	// it); net/http ignores TLSHandshakeTimeout then, so it is applied
	// here.
	dialWith := func(conf *tls.Config) func(ctx context.Context, _, _ string) (net.Conn, error) {
		return func(ctx context.Context, _, a string) (net.Conn, error) {
			ctx, cancel := context.WithTimeout(ctx, handshakeTimeout)
			defer cancel()
			return t.dialTracked(ctx, d, a, conf)
		}
	}
	h2.DialTLSContext = dialWith(h2.TLSClientConfig)
	only1.DialTLSContext = dialWith(h1)
	split := &continueSplit{rt: h2, h1: only1}
	if !http1 {
		return split, split
	}
	return &appClient{
		dial: func(ctx context.Context) (net.Conn, error) {
			ctx, cancel := context.WithTimeout(ctx, handshakeTimeout)
			defer cancel()
			return t.dialTracked(ctx, d, addr, h1) // raw system calls: see rawConn
		},
		fallback: split, maxIdle: 256, idleTimeout: 60 * time.Second, now: time.Now,
	}, split
}

// expectContinueTimeout is how long a hop that forwards a request
// expecting 100 Continue waits for the next hop's 100 (or its final
// answer) before it sends the body anyway (RFC 9110 section 10.1.1: a
// client need not wait indefinitely; curl and Go's default transport wait
// 1 s too). Until then the client's body is not read, so that the client
// is asked for it only once the app asked, and an app that refuses the
// upload from its head is never sent it.
const expectContinueTimeout = time.Second

// expectsContinue reports whether a request's Expect field asks for 100
// Continue: after settleExpect, whether it says "100-continue".
func expectsContinue(h http.Header) bool {
	return httpguts.HeaderValuesContainsToken(h["Expect"], "100-continue")
}

// awaitsContinue reports whether net/http's server holds r's body back
// until it sends 100 Continue: an HTTP/1.1 (or later) request with a
// body whose first Expect field holds 100-continue, bounded by spaces,
// tabs or commas (net/http's hasToken; the parser refuses a second
// Expect field). An HTTP/1.0 client's expectation is ignored, as RFC
// 9110 section 10.1.1 requires of a server; over HTTP/2 net/http removes
// the field and answers it itself.
func awaitsContinue(r *http.Request) bool {
	v := r.Header["Expect"]
	return len(v) > 0 && r.ProtoAtLeast(1, 1) && r.ContentLength != 0 && boundedToken([]byte(v[0]), "100-continue")
}

// settleExpect makes the expectation r carries on the one this hop's
// server read (awaitsContinue): "Expect: 100-continue" when the client
// waits for 100 Continue, no Expect otherwise, so that the next hop, which
// the request reaches as HTTP/1.1, neither reads the field another way
// (a value net/http's hasToken reads as 100-continue and another server
// refuses, "x 100-continue") nor honours an expectation this hop
// ignored: an HTTP/1.0 client's, which the app would otherwise answer
// with a 100 it must not send such a client (RFC 9110 section 15.2), or
// one on a request without a body.
func settleExpect(r *http.Request) {
	if _, ok := r.Header["Expect"]; !ok {
		return
	}
	if awaitsContinue(r) {
		r.Header["Expect"] = []string{"100-continue"}
		return
	}
	delete(r.Header, "Expect")
}

// continueSplit sends a request that expects 100 Continue on h1 (HTTP/1.1
// only) and every other on rt. Over HTTP/2 the expectation does not
// survive the hop: Go's HTTP/2 server removes the Expect field and sends
// 100 Continue itself when the body is first read, so the next sidecar
// would read the body at once and never pass the expectation on to its
// app; over HTTP/1.1 the field reaches the next sidecar's handler.
type continueSplit struct {
	rt, h1 *http.Transport
}

func (c *continueSplit) RoundTrip(r *http.Request) (*http.Response, error) {
	// An upgrade (WebSocket) needs HTTP/1.1 too. net/http would dial it
	// a connection without h2 in ALPN by itself, but not through the
	// DialTLSContext upstreamClient sets: that always offers h2.
	if r.Header.Get("Upgrade") != "" {
		return c.h1.RoundTrip(r)
	}
	if r.ContentLength != 0 && r.Body != nil && expectsContinue(r.Header) {
		return c.h1.RoundTrip(r)
	}
	return c.rt.RoundTrip(r)
}

// CloseIdleConnections closes both transports' idle connections.
func (c *continueSplit) CloseIdleConnections() {
	c.rt.CloseIdleConnections()
	c.h1.CloseIdleConnections()
}

// idleCloser is a client whose idle connections can be closed.
type idleCloser interface{ CloseIdleConnections() }
