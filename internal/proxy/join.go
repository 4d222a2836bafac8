package proxy

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"

	"github.com/moatless/moatless/internal/wire"
)

// ErrBundleNotNewer: SetBundle was given a bundle older than the one in
// force, or of the same sequence number with other authorities.
var ErrBundleNotNewer = errors.New("proxy: the trust bundle is not newer than the one in force")

// NodeIdentity is the Identity of a sidecar that is its own agent: the
// SVID comes from SVID (the agent client's current, auto-renewed one) and
// the bundle from the watch stream's Bundle sections, applied with
// SetBundle.
type NodeIdentity struct {
	// SVID returns the current SVID, nil before attestation.
	SVID func() *x509svid.SVID

	bundle  atomic.Pointer[x509bundle.Bundle]
	updated updateSignal
	// mu orders SetBundle calls; held is the wire bundle in force, whose
	// sequence number the next one must not go below.
	mu   sync.Mutex
	held *wire.Bundle
	// refused counts SetBundle's refusals by BundleRefusal.
	refused [bundleRefusals]atomic.Uint64
}

// BundleRefusal is why SetBundle refused a bundle, a label of the
// bundle refusal counter (BundleRefusalCollector).
type BundleRefusal uint8

const (
	// BundleRefusedOlder: a lower sequence number than the bundle in
	// force (wire.BundleOlder).
	BundleRefusedOlder BundleRefusal = iota
	// BundleRefusedForked: the same sequence number with other trust
	// material (wire.BundleForked).
	BundleRefusedForked
	// BundleRefusedInvalid: a bad trust domain, authority or none.
	BundleRefusedInvalid
	bundleRefusals
)

func (r BundleRefusal) String() string {
	switch r {
	case BundleRefusedOlder:
		return "older"
	case BundleRefusedForked:
		return "forked"
	case BundleRefusedInvalid:
		return "invalid"
	}
	return "unknown"
}

// BundleRefused is how many bundles SetBundle refused for r.
func (n *NodeIdentity) BundleRefused(r BundleRefusal) uint64 {
	if r >= bundleRefusals {
		return 0
	}
	return n.refused[r].Load()
}

// Updated is sent on after each bundle put in force by SetBundle (one
// pending send at most; one reader: the sidecar or gateway using it).
func (n *NodeIdentity) Updated() <-chan struct{} { return n.updated.c() }

// SetBundle puts a trust bundle from the server in force. A bundle without
// X.509 authorities or with an invalid one is refused and the previous one
// stays. So is, with ErrBundleNotNewer, one older than the bundle in force
// (a lower sequence number: a replica that has not caught up, which after
// "moatless ca revoke" would bring the revoked authority back into trust)
// or of the same sequence number with other trust material (a forked
// history); see wire.CompareBundle. Nothing but a new NodeIdentity (a
// restart, whose agent.Node keeps the same rule from its state directory)
// takes a lower sequence number.
// Every refusal is counted (BundleRefused, BundleRefusalCollector): a
// replica serving an old bundle is otherwise one log line per push.
func (n *NodeIdentity) SetBundle(b wire.Bundle) error {
	td, err := spiffeid.TrustDomainFromString(b.TrustDomain)
	if err != nil {
		n.refused[BundleRefusedInvalid].Add(1)
		return fmt.Errorf("proxy: bundle: %w", err)
	}
	var certs []*x509.Certificate
	for _, der := range b.X509Authorities {
		c, err := x509.ParseCertificate(der)
		if err != nil {
			n.refused[BundleRefusedInvalid].Add(1)
			return fmt.Errorf("proxy: bundle for %s: %w", td, err)
		}
		certs = append(certs, c)
	}
	if len(certs) == 0 {
		n.refused[BundleRefusedInvalid].Add(1)
		return fmt.Errorf("proxy: bundle for %s has no X.509 authority", td)
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	if o := wire.CompareBundle(n.held, &b); o == wire.BundleOlder || o == wire.BundleForked {
		if o == wire.BundleOlder {
			n.refused[BundleRefusedOlder].Add(1)
		} else {
			n.refused[BundleRefusedForked].Add(1)
		}
		return fmt.Errorf("%w: %s (sequence %d, in force %d); keeping the one in force", ErrBundleNotNewer, o, b.SequenceNumber, n.held.SequenceNumber)
	}
	n.held = &b
	n.bundle.Store(x509bundle.FromX509Authorities(td, certs))
	n.updated.notify()
	return nil
}

// BundleRefusalCollector exports the bundles id refused as
// prefix+"_bundle_refusals_total" by reason (older, forked, invalid; each
// present from the start), read at scrape time: a replica that has not
// caught up with a CA change, or a restored store, pushing a bundle the
// process keeps refusing shows as a rising counter to alert on. Nil when
// id refuses no bundles (it is not a NodeIdentity: files, a Workload API).
func BundleRefusalCollector(prefix string, id Identity) prometheus.Collector {
	n, ok := id.(*NodeIdentity)
	if !ok || n == nil {
		return nil
	}
	return &bundleRefusalCollector{n: n, desc: prometheus.NewDesc(prefix+"_bundle_refusals_total",
		"Trust bundles from the server refused, the one in force kept, by reason: older (a lower sequence number), forked (the same sequence number, other authorities), invalid.",
		[]string{"reason"}, nil)}
}

type bundleRefusalCollector struct {
	n    *NodeIdentity
	desc *prometheus.Desc
}

func (c *bundleRefusalCollector) Describe(ch chan<- *prometheus.Desc) { ch <- c.desc }

func (c *bundleRefusalCollector) Collect(ch chan<- prometheus.Metric) {
	for r := range bundleRefusals {
		ch <- prometheus.MustNewConstMetric(c.desc, prometheus.CounterValue, float64(c.n.BundleRefused(r)), r.String())
	}
}

// GetX509SVID returns the agent client's current SVID.
func (n *NodeIdentity) GetX509SVID() (*x509svid.SVID, error) {
	if n.SVID == nil {
		return nil, ErrNoIdentity
	}
	s := n.SVID()
	if s == nil {
		return nil, ErrNoIdentity
	}
	return s, nil
}

// GetX509BundleForTrustDomain returns the server's bundle for its trust
// domain.
func (n *NodeIdentity) GetX509BundleForTrustDomain(td spiffeid.TrustDomain) (*x509bundle.Bundle, error) {
	b := n.bundle.Load()
	if b == nil {
		return nil, ErrNoIdentity
	}
	if b.TrustDomain() != td {
		return nil, fmt.Errorf("proxy: no trust bundle for trust domain %q", td)
	}
	return b, nil
}

// ServerAudit is an AuditSink that reports events to the server's audit
// log (wire.PathAudit) over mutual TLS with the sidecar's own SVID. Events
// queue in memory (QueueSize, default 1,000) and are sent in batches; when
// the queue is full new events are dropped and counted, so a slow or absent
// server never slows the request path. Lifecycle: Run(ctx) sends until ctx
// ends, then makes one last attempt to flush.
type ServerAudit struct {
	// ServerAddr is the server's "host:port"; ServerAddrs more replicas
	// of the same control plane. A report goes to the first that takes
	// it, starting with the one that took the last. ServerName is the
	// name every server's certificate carries (the host of each address
	// when empty).
	ServerAddr  string
	ServerAddrs []string
	ServerName  string
	// Identity provides the client certificate.
	Identity Identity
	// ServerRoots verify the server's certificate (its TLS certificate is
	// a web-PKI-style certificate from the trust domain's CA).
	ServerRoots func() *x509.CertPool
	QueueSize   int
	Logger      *slog.Logger

	once    sync.Once
	addrs   []string     // ServerAddr, then ServerAddrs
	cur     atomic.Int64 // index of addrs to try first
	queue   chan wire.AuditEvent
	dropped atomic.Uint64
	sent    atomic.Uint64
	client  *http.Client
}

func (a *ServerAudit) init() {
	a.once.Do(func() {
		if a.QueueSize <= 0 {
			a.QueueSize = 1000
		}
		if a.Logger == nil {
			a.Logger = slog.Default()
		}
		a.queue = make(chan wire.AuditEvent, a.QueueSize)
		if a.ServerAddr != "" {
			a.addrs = append(a.addrs, a.ServerAddr)
		}
		a.addrs = append(a.addrs, a.ServerAddrs...)
		conf := &tls.Config{
			MinVersion: tls.VersionTLS12,
			// Empty: net/http sets each connection's to its address's host.
			ServerName: a.ServerName,
			GetClientCertificate: func(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
				s, err := a.Identity.GetX509SVID()
				if err != nil {
					return nil, err
				}
				c := &tls.Certificate{PrivateKey: s.PrivateKey, Leaf: s.Certificates[0]}
				for _, x := range s.Certificates {
					c.Certificate = append(c.Certificate, x.Raw)
				}
				return c, nil
			},
			// Roots are read per handshake: the server's CA may rotate.
			InsecureSkipVerify: true, //nolint:gosec // verified below against the current roots, with the server name
			VerifyConnection: func(cs tls.ConnectionState) error {
				if len(cs.PeerCertificates) == 0 {
					return errors.New("proxy: audit: server presented no certificate")
				}
				inter := x509.NewCertPool()
				for _, c := range cs.PeerCertificates[1:] {
					inter.AddCert(c)
				}
				_, err := cs.PeerCertificates[0].Verify(x509.VerifyOptions{DNSName: cs.ServerName, Roots: a.ServerRoots(), Intermediates: inter})
				return err
			},
		}
		a.client = &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{TLSClientConfig: conf, ForceAttemptHTTP2: true, MaxIdleConnsPerHost: 2}}
	})
}

// Record queues ev; it never blocks.
func (a *ServerAudit) Record(_ context.Context, ev DecisionEvent) {
	a.init()
	we := wireEvent(&ev)
	select {
	case a.queue <- we:
	default:
		a.dropped.Add(1)
	}
}

// Dropped is how many events were dropped because the queue was full or
// the server refused them for good.
func (a *ServerAudit) Dropped() uint64 { return a.dropped.Load() }

// Sent is how many events the server accepted.
func (a *ServerAudit) Sent() uint64 { return a.sent.Load() }

// Run sends queued events in batches until ctx ends.
func (a *ServerAudit) Run(ctx context.Context) {
	a.init()
	backoff := time.Second
	var batch []wire.AuditEvent
	for {
		if len(batch) == 0 {
			select {
			case <-ctx.Done():
				return
			case ev := <-a.queue:
				batch = append(batch, ev)
			}
		}
	fill:
		for len(batch) < wire.MaxAuditEvents {
			select {
			case ev := <-a.queue:
				batch = append(batch, ev)
			default:
				break fill
			}
		}
		err := a.send(ctx, batch)
		switch {
		case err == nil:
			a.sent.Add(uint64(len(batch)))
			batch = batch[:0]
			backoff = time.Second
		case errors.Is(err, errPermanent):
			a.Logger.Warn("audit report refused; events dropped", "events", len(batch), "err", err)
			a.dropped.Add(uint64(len(batch)))
			batch = batch[:0]
		default:
			a.Logger.Warn("audit report failed; retrying", "events", len(batch), "err", err, "retry_in", backoff)
			select {
			case <-ctx.Done():
				return
			case <-time.After(backoff):
			}
			backoff = min(2*backoff, 30*time.Second)
		}
	}
}

var (
	errPermanent   = errors.New("proxy: audit: refused")
	errUnavailable = errors.New("proxy: audit: server unavailable")
)

// send delivers one report to the replica that took the last one or, when
// it cannot be reached or is unavailable, to the next that takes it.
func (a *ServerAudit) send(ctx context.Context, events []wire.AuditEvent) error {
	body, err := json.Marshal(wire.AuditReport{Events: events})
	if err != nil {
		return fmt.Errorf("%w: %w", errPermanent, err)
	}
	if len(a.addrs) == 0 {
		return fmt.Errorf("%w: no server address", errPermanent)
	}
	first := a.cur.Load()
	var err1 error
	for i := range int64(len(a.addrs)) {
		k := (first + i) % int64(len(a.addrs))
		err := a.sendTo(ctx, a.addrs[k], body)
		// Only an unreachable or unavailable server sends the report on
		// to the next: a refusal on its merits (429: over this node's
		// budget) is retried later, never multiplied across replicas.
		if err == nil || !errors.Is(err, errUnavailable) || ctx.Err() != nil {
			if err == nil {
				a.cur.Store(k)
			}
			return err
		}
		if err1 == nil {
			err1 = err
		}
	}
	return err1
}

func (a *ServerAudit) sendTo(ctx context.Context, addr string, body []byte) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, "https://"+addr+wire.PathAudit, bytes.NewReader(body))
	if err != nil {
		return fmt.Errorf("%w: %w", errPermanent, err)
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := a.client.Do(req)
	if err != nil {
		return fmt.Errorf("%w: %w", errUnavailable, err)
	}
	defer resp.Body.Close()
	io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
	switch {
	case resp.StatusCode/100 == 2:
		return nil
	case resp.StatusCode == http.StatusNotFound, resp.StatusCode == http.StatusBadRequest, resp.StatusCode == http.StatusRequestEntityTooLarge:
		return fmt.Errorf("%w: server answered %d", errPermanent, resp.StatusCode)
	case resp.StatusCode == http.StatusBadGateway, resp.StatusCode == http.StatusServiceUnavailable, resp.StatusCode == http.StatusGatewayTimeout:
		return fmt.Errorf("%w: server %s answered %d", errUnavailable, addr, resp.StatusCode)
	}
	return fmt.Errorf("proxy: audit: server %s answered %d", addr, resp.StatusCode)
}
