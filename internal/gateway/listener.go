package gateway

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/moatless/moatless/internal/proxy"
	"github.com/moatless/moatless/internal/tlsconf"
)

// acceptLoop accepts connections, refuses those over the connection caps
// before any TLS work (a flood costs an accept, not a handshake), and
// hands each to a goroutine that handshakes within the timeout and gives
// the connection to the HTTP server.
func (g *Gateway) acceptLoop(ln net.Listener) error {
	var backoff proxy.AcceptBackoff
	for {
		c, err := ln.Accept()
		if err != nil {
			if g.isClosed() || errors.Is(err, net.ErrClosed) {
				return nil
			}
			if backoff.Retry(err) {
				continue
			}
			return fmt.Errorf("gateway: accept: %w", err)
		}
		backoff.Reset()
		c = proxy.WithRawSyscalls(c) // as the sidecar's: no P handoff per loopback-speed write
		if reason := g.conns.acquire(c); reason != "" {
			g.metrics.connsRefused.WithLabelValues(reason).Inc()
			c.Close()
			continue
		}
		g.metrics.connections.Inc()
		g.wg.Add(1)
		go func() {
			defer g.wg.Done()
			g.handshake(c)
		}()
	}
}

func (g *Gateway) isClosed() bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.closed
}

// handshake runs the TLS handshake under the handshake timeout (a client
// that stalls it holds a slot for that long at most) and serves the
// connection.
func (g *Gateway) handshake(c net.Conn) {
	to := g.opts.Config.Limits.HandshakeTimeout.Std()
	_ = c.SetDeadline(time.Now().Add(to))
	tc := tls.Server(c, g.tlsConf)
	ctx, cancel := context.WithTimeout(context.Background(), to)
	err := tc.HandshakeContext(ctx)
	cancel()
	if err != nil {
		g.metrics.handshakeFailures.Inc()
		g.log.Debug("TLS handshake failed", "remote", c.RemoteAddr().String(), "err", err)
		tc.Close()
		g.conns.release(c)
		return
	}
	_ = c.SetDeadline(time.Time{})
	// net/http's server alone would serve a request with both
	// Content-Length and Transfer-Encoding (and other heads hops frame
	// differently) and keep the connection: an HTTP/1.x connection is
	// guarded, as the sidecar's are, so that the handler refuses them.
	var sc net.Conn = tc
	if tc.ConnectionState().NegotiatedProtocol != "h2" {
		if !g.opts.Config.DisableHTTP1FastPath {
			g.serveFast(tc, c)
			return
		}
		sc = proxy.GuardFraming(tc, g.srv.MaxHeaderBytes+4096, g.srv.ReadHeaderTimeout)
	}
	if !g.hl.Push(sc) {
		sc.Close()
		g.conns.release(c)
	}
}

// connCounter enforces the total and per-IP connection caps. A connection
// is released once, whichever path closes it (the handshake goroutine or
// the HTTP server's ConnState).
type connCounter struct {
	max, perIP int
	mu         sync.Mutex
	total      int
	byIP       map[netip.Addr]int
	live       map[string]netip.Addr // by remote address string
}

func newConnCounter(max, perIP int) *connCounter {
	return &connCounter{max: max, perIP: perIP, byIP: map[netip.Addr]int{}, live: map[string]netip.Addr{}}
}

// acquire counts c, or returns why it is refused. The per-IP cap counts
// an IPv6 peer by its /64, as the rate limits do (clientBlock).
func (cc *connCounter) acquire(c net.Conn) string {
	ip := clientBlock(addrIP(c.RemoteAddr()))
	cc.mu.Lock()
	defer cc.mu.Unlock()
	switch {
	case cc.total >= cc.max:
		return "max_conns"
	case cc.byIP[ip] >= cc.perIP:
		return "max_conns_per_ip"
	}
	cc.total++
	cc.byIP[ip]++
	cc.live[c.RemoteAddr().String()] = ip
	return ""
}

// release forgets c; releasing twice is harmless.
func (cc *connCounter) release(c net.Conn) {
	k := c.RemoteAddr().String()
	cc.mu.Lock()
	defer cc.mu.Unlock()
	ip, ok := cc.live[k]
	if !ok {
		return
	}
	delete(cc.live, k)
	cc.total--
	if cc.byIP[ip]--; cc.byIP[ip] <= 0 {
		delete(cc.byIP, ip)
	}
}

// track counts an upgraded (hijacked) connection again for as long as its
// stream lives: the HTTP server reported it gone when it was taken over.
func (cc *connCounter) track(c net.Conn) func() {
	ip := clientBlock(addrIP(c.RemoteAddr()))
	cc.mu.Lock()
	cc.total++
	cc.byIP[ip]++
	cc.live[c.RemoteAddr().String()] = ip
	cc.mu.Unlock()
	return func() { cc.release(c) }
}

func (cc *connCounter) open() int {
	cc.mu.Lock()
	defer cc.mu.Unlock()
	return cc.total
}

func addrIP(a net.Addr) netip.Addr {
	if ta, ok := a.(*net.TCPAddr); ok {
		ip, _ := netip.AddrFromSlice(ta.IP)
		return ip.Unmap()
	}
	ap, err := netip.ParseAddrPort(a.String())
	if err != nil {
		return netip.Addr{}
	}
	return ap.Addr().Unmap()
}

// serverTLSConfig is the public TLS configuration: TLS 1.2 (or 1.3) and
// up, AEAD suites only, HTTP/2 and HTTP/1.1 by ALPN, the certificate read
// per handshake so a reload applies to the next connection.
func serverTLSConfig(minVersion string, get func() (*tls.Certificate, error)) *tls.Config {
	min := uint16(tls.VersionTLS12)
	if minVersion == "1.3" {
		min = tls.VersionTLS13
	}
	// tlsconf: under TLS 1.2 ECDHE with an AEAD cipher only, like every
	// Moatless listener.
	return tlsconf.Server(&tls.Config{
		MinVersion:     min,
		NextProtos:     []string{"h2", "http/1.1"},
		GetCertificate: func(*tls.ClientHelloInfo) (*tls.Certificate, error) { return get() },
	})
}

// certReloader holds the public certificate. A reload that fails (a file
// missing or half written, a key that does not match) keeps the old one.
type certReloader struct {
	read func(string) ([]byte, error)
	now  func() time.Time

	mu   sync.Mutex
	raw  [2][]byte
	cert atomic.Pointer[tls.Certificate]
}

func (r *certReloader) get() (*tls.Certificate, error) {
	c := r.cert.Load()
	if c == nil {
		return nil, errors.New("gateway: no TLS certificate")
	}
	return c, nil
}

// notAfter is the expiry of the certificate in force; the zero time
// before the first load.
func (r *certReloader) notAfter() time.Time {
	if c := r.cert.Load(); c != nil {
		return c.Leaf.NotAfter
	}
	return time.Time{}
}

// load is reload for the initial load and config reloads: an error is
// returned to the caller, who refuses to start or to apply the config.
func (r *certReloader) load(certFile, keyFile string) error {
	_, err := r.reload(certFile, keyFile)
	return err
}

func (r *certReloader) reload(certFile, keyFile string) (bool, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	cb, err := r.read(certFile)
	if err != nil {
		return false, fmt.Errorf("gateway: tls.cert: %w", err)
	}
	kb, err := r.read(keyFile)
	if err != nil {
		return false, fmt.Errorf("gateway: tls.key: %w", err)
	}
	if r.cert.Load() != nil && bytes.Equal(cb, r.raw[0]) && bytes.Equal(kb, r.raw[1]) {
		return false, nil
	}
	c, err := tls.X509KeyPair(cb, kb)
	if err != nil {
		return false, fmt.Errorf("gateway: tls: %s and %s: %w", certFile, keyFile, err)
	}
	if !r.now().Before(c.Leaf.NotAfter) {
		return false, fmt.Errorf("gateway: tls: %s expired at %s", certFile, c.Leaf.NotAfter.UTC().Format(time.RFC3339))
	}
	r.raw = [2][]byte{cb, kb}
	r.cert.Store(&c)
	return true, nil
}
