// Package agent is the node agent: it attests its node to the server with a
// join token, keeps its own X509-SVID renewed, follows the server's watch
// stream (bundle, entries, revocations, policies), keeps SVIDs for the
// node's workloads signed and rotated, and serves them over the SPIFFE
// Workload API.
//
// The server-facing half is Node, a reusable client that any data-plane
// process acting as its own agent (the sidecar, the gateway) embeds to
// attest, renew, sign and receive updates. A Node may know several
// replicas of the control plane: it spreads over them and fails over
// between them, resuming its watch stream where it left off.
package agent

import (
	"bufio"
	"bytes"
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	mrand "math/rand/v2"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"

	"github.com/moatless/moatless/internal/wire"
)

// Sentinel errors callers branch on.
var (
	// ErrJoinTokenRejected: the server refused the join token (unknown,
	// already used, expired, or bound to another identity). Get a new one
	// with "moatless jointoken create".
	ErrJoinTokenRejected = errors.New("agent: the server rejected the join token (unknown, already used or expired); create a new one with \"moatless jointoken create\"")
	// ErrNoCredential: there is no usable persisted SVID and no join token.
	ErrNoCredential = errors.New("agent: no join token and no valid node SVID in the data directory; pass --join-token")
	// ErrNodeRejected: the server refused the node's own SVID (revoked or
	// unknown node). The node must attest again with a new join token.
	ErrNodeRejected = errors.New("agent: the server refused this node's SVID (revoked?); attest again with a new join token")
	// ErrNotAttested: a call that needs the node SVID came before Attest.
	ErrNotAttested = errors.New("agent: node is not attested")
)

// Defaults of NodeConfig.
const (
	DefaultComponent   = "agent"
	DefaultBackoffBase = 500 * time.Millisecond
	DefaultBackoffMax  = 30 * time.Second
	// DefaultConnectTimeout bounds connecting to a server and getting the
	// watch stream's headers, so a server that accepts connections but
	// does not answer (frozen, overloaded) is left for another quickly.
	DefaultConnectTimeout = 3 * time.Second
	// DefaultRequestTimeout bounds each attempt of a call (attest, renew,
	// sign, ack) on one server before the next replica is tried.
	DefaultRequestTimeout = 10 * time.Second
	// MaxUpdateSize bounds one watch-stream line.
	MaxUpdateSize = 64 << 20
	// maxResponseSize bounds every other answer from the server.
	maxResponseSize = 16 << 20
	nodeFile        = "node-svid.pem"
	bundleFile      = "node-bundle.json"
	// serverIDPath is the path of the control plane's own SPIFFE ID,
	// spiffe://<trust domain>/moatless/server, the URI SAN of its TLS
	// certificate (internal/server). The server reserves /moatless/...:
	// no registration entry, hence no workload, can have such an ID.
	serverIDPath = "/moatless/server"
)

// NodeConfig configures a Node. Callbacks run on the watch goroutine, in the
// order bundle, revocations, entries, policies, risk, each only for a section the
// update carries, and all before the update is acknowledged: when they
// return, the update is in force. They must not block for long.
type NodeConfig struct {
	// ServerAddr is the server's agent API address, "host:port".
	ServerAddr string
	// ServerAddrs are more replicas of the same control plane (the same
	// store and CA), "host:port" each. At least one of ServerAddr and
	// ServerAddrs is required; ServerAddr, when set, counts as the first.
	// The node starts at a random one, so a fleet spreads over the
	// replicas, and moves to another when its watch stream breaks or goes
	// silent, resuming from the version it holds.
	ServerAddrs []string
	// ServerName is the name every server's certificate must carry; the
	// host of each address when empty. The certificate must also carry
	// the server's SPIFFE ID, spiffe://<trust domain>/moatless/server (see
	// verifyServer).
	ServerName string
	// TrustBundle authenticates the server before the node has the trust
	// domain's bundle from the server (and ever after, alongside it).
	// Required unless DataDir holds a bundle from an earlier run.
	TrustBundle []*x509.Certificate
	// JoinToken is the single-use credential for the first attestation.
	// Ignored when DataDir holds a valid node SVID.
	JoinToken string
	// DataDir, when set, is where the node SVID with its key (mode 0600),
	// the latest bundle and the authorities revoked from it (revokedFile)
	// are kept, so a restart needs no new token and refuses, as the run
	// before it did, a bundle older than the one kept (see refuseBundle)
	// and a revoked authority of TrustBundle for the server.
	DataDir string
	// Component names the process in acks ("agent", "sidecar",
	// "gateway"). Default "agent".
	Component string
	// Logger receives structured logs; slog.Default() when nil. Never
	// given a key or token.
	Logger *slog.Logger
	// Now is the clock; time.Now when nil.
	Now func() time.Time
	// WatchTimeout is how long the watch stream may stay silent before
	// the node reconnects. Default 3 × the heartbeat interval the server
	// announces (3 × wire.HeartbeatInterval from servers that announce
	// none).
	WatchTimeout time.Duration
	// ConnectTimeout bounds connecting and getting the watch stream's
	// answer from one server; default DefaultConnectTimeout.
	ConnectTimeout time.Duration
	// RequestTimeout bounds each attempt of a call on one server;
	// default DefaultRequestTimeout.
	RequestTimeout time.Duration
	// BackoffBase and BackoffMax bound the exponential backoff (with full
	// jitter) between reconnects and retries. Defaults 500ms and 30s.
	BackoffBase, BackoffMax time.Duration

	// OnBundle receives each bundle the node puts in force: one with a
	// higher sequence number than the bundle held, or the same one again.
	OnBundle func(wire.Bundle)
	// OnBundleRefused is called for a bundle the node refused and left
	// out of an update (see refuseBundle): older (a lower sequence
	// number) or forked (the same one, other trust material).
	OnBundleRefused func(wire.BundleOrder)
	OnRevocations   func(wire.Revocations)
	OnEntries       func([]wire.Entry)
	OnPolicies      func(wire.PolicySet)
	// OnRisk receives the risk section: the scores of the identities the
	// server's detectors hold at risk, checked (see validRisk), replacing
	// the previous ones. Servers that predate the section never call it.
	OnRisk func(wire.RiskScores)
	// OnUpdate is called after every section of an update was applied
	// (and before it is acknowledged), with the update's version.
	OnUpdate func(version uint64)
	// OnSVID is called after the node's own SVID changed (attestation,
	// load, renewal).
	OnSVID func(*x509svid.SVID)
	// OnAttestFailure and OnReconnect feed metrics.
	OnAttestFailure func()
	OnReconnect     func()
	// OnConnect is called each time a watch stream is established, with
	// the server's address and whether the stream resumed from the
	// node's version (a delta) rather than starting from a snapshot.
	OnConnect func(addr string, resumed bool)
}

// Node is the server-facing client of a data-plane process. Lifecycle:
// NewNode → Attest → Run (until its context ends) → Close. Its methods are
// safe for concurrent use once Attest returned.
type Node struct {
	cfg     NodeConfig
	log     *slog.Logger
	now     func() time.Time
	servers []string // "host:port" of each replica
	// cur indexes servers: the one the watch stream uses (or last used),
	// and the first every call tries.
	cur atomic.Int64

	svid   atomic.Pointer[x509svid.SVID]
	svidAt atomic.Int64 // when svid was received, unix ns (0: loaded from disk)
	client atomic.Pointer[http.Client]
	// refused is the server's last refusal of the node's credential on
	// the watch stream (revoked, unknown); nil once a stream is accepted.
	refused atomic.Pointer[ServerError]
	// unlock releases the data directory's lock (lockDir).
	unlock func()
	// renewNow wakes the renewal loop before half life: the node SVID's
	// authority was tainted or revoked. renewedFor holds the tainted
	// authorities it was woken for in this run (once each: a server
	// still signing with one must not make it loop).
	renewNow   chan struct{}
	renewedFor sync.Map

	mu     sync.Mutex
	bundle *wire.Bundle
	// held is every X.509 authority (subject key ID, hex) a bundle from
	// the server held, in this run or (revokedFile) an earlier one: one of
	// TrustBundle the server's bundle held and no longer does was revoked,
	// and is not trusted any more.
	held map[string]bool
	// revokedKey is the content of revokedFile as last read or written.
	revokedKey string
	poolKey    string
	version    uint64
	epoch      string // of the stream that brought version
	heartbeat  time.Duration
	policyVer  uint64
	connected  bool
	closed     bool
	transports []*http.Transport
}

// NewNode checks cfg; it does no I/O.
func NewNode(cfg NodeConfig) (*Node, error) {
	var servers []string
	if cfg.ServerAddr != "" {
		servers = append(servers, cfg.ServerAddr)
	}
	servers = append(servers, cfg.ServerAddrs...)
	if len(servers) == 0 {
		return nil, errors.New("agent: no server address")
	}
	seen := map[string]bool{}
	for _, a := range servers {
		if _, _, err := net.SplitHostPort(a); err != nil {
			return nil, fmt.Errorf("agent: server address %q must be host:port: %w", a, err)
		}
		if seen[a] {
			return nil, fmt.Errorf("agent: server address %q given twice", a)
		}
		seen[a] = true
	}
	n := &Node{cfg: cfg, log: cfg.Logger, now: cfg.Now, servers: servers, renewNow: make(chan struct{}, 1)}
	if n.log == nil {
		n.log = slog.Default()
	}
	if n.now == nil {
		n.now = time.Now
	}
	if n.cfg.Component == "" {
		n.cfg.Component = DefaultComponent
	}
	if n.cfg.BackoffBase <= 0 {
		n.cfg.BackoffBase = DefaultBackoffBase
	}
	if n.cfg.BackoffMax <= 0 {
		n.cfg.BackoffMax = DefaultBackoffMax
	}
	if n.cfg.ConnectTimeout <= 0 {
		n.cfg.ConnectTimeout = DefaultConnectTimeout
	}
	if n.cfg.RequestTimeout <= 0 {
		n.cfg.RequestTimeout = DefaultRequestTimeout
	}
	// Spread a fleet over the replicas.
	n.cur.Store(int64(mrand.N(len(servers))))
	return n, nil
}

// Server returns the address of the server the node uses now.
func (n *Node) Server() string { return n.servers[n.cur.Load()] }

// Servers returns every server address the node knows, in configured
// order.
func (n *Node) Servers() []string { return slices.Clone(n.servers) }

// moveOn makes another server current after the one at index from
// failed: a random one not in failed (the servers that failed since the
// last good stream), so the clients of a replica that died split over the
// survivors instead of all landing on the same one, and none tries a dead
// one twice before every other was tried. It reports false when every
// server failed: a round is over.
func (n *Node) moveOn(from int64, failed map[int64]bool) bool {
	var candidates []int64
	for i := range int64(len(n.servers)) {
		if i != from && !failed[i] {
			candidates = append(candidates, i)
		}
	}
	if len(candidates) == 0 {
		if len(n.servers) > 1 {
			n.cur.CompareAndSwap(from, (from+1)%int64(len(n.servers)))
		}
		return false
	}
	n.cur.CompareAndSwap(from, candidates[mrand.N(len(candidates))])
	return true
}

// SVID returns the node's current SVID, or nil before Attest.
func (n *Node) SVID() *x509svid.SVID { return n.svid.Load() }

// ID returns the node's SPIFFE ID (zero before Attest).
func (n *Node) ID() spiffeid.ID {
	if s := n.svid.Load(); s != nil {
		return s.ID
	}
	return spiffeid.ID{}
}

// Bundle returns the latest trust bundle from the server, or nil.
func (n *Node) Bundle() *wire.Bundle {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.bundle
}

// Connected reports whether the watch stream is up.
func (n *Node) Connected() bool {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.connected
}

// Version returns the last update version applied and acknowledged.
func (n *Node) Version() uint64 {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.version
}

// Close releases idle connections. It is idempotent; Run must have
// returned (or never been called).
func (n *Node) Close() error {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.closed {
		return nil
	}
	n.closed = true
	if n.unlock != nil {
		n.unlock()
	}
	for _, t := range n.transports {
		t.CloseIdleConnections()
	}
	return nil
}

// Attest gives the node its identity: the SVID persisted in DataDir if it
// is still valid, else a new one for the join token. It returns
// ErrJoinTokenRejected, ErrNoCredential, or a transport error (the server
// may be down: retry).
func (n *Node) Attest(ctx context.Context) error {
	if err := n.lockDir(); err != nil {
		return err
	}
	// floor is the bundle saved by an earlier run whose node SVID is no
	// longer usable (expired, damaged) or was removed (to attest again
	// after the node was revoked): the attestation below must not take an
	// older one from a lagging replica (see refuseBundle). State from
	// another server or trust domain sets none.
	var floor *wire.Bundle
	if n.cfg.DataDir != "" {
		// Before any pool is built: a revoked authority of TrustBundle
		// must not authenticate the server on the first connection.
		if err := n.loadRevoked(); err != nil {
			return err
		}
		if err := n.loadPersisted(); err == nil {
			if n.cfg.JoinToken != "" {
				n.log.Info("using the node SVID from the data directory; the join token was not used", "spiffe_id", n.ID().String())
			}
			return nil
		} else if errors.Is(err, ErrStaleState) {
			if n.cfg.JoinToken == "" {
				return err
			}
			n.log.Warn("the node SVID in the data directory is from another server or trust domain; attesting with the join token and replacing it", "error", err)
		} else if !errors.Is(err, os.ErrNotExist) {
			n.log.Warn("persisted node SVID unusable; attesting with the join token", "error", err)
			floor = n.savedBundle()
		} else if saved := n.savedBundle(); saved != nil && n.vouchedFor(saved) {
			floor = saved
		}
	}
	n.mu.Lock()
	n.setPoolLocked()
	n.mu.Unlock()
	if n.cfg.JoinToken == "" {
		return ErrNoCredential
	}
	key, csr, err := newKeyAndCSR(spiffeid.ID{})
	if err != nil {
		return err
	}
	var resp wire.AttestResponse
	err = n.post(ctx, wire.PathAttest, wire.AttestRequest{JoinToken: n.cfg.JoinToken, CSR: csr}, &resp)
	if err != nil {
		if n.cfg.OnAttestFailure != nil {
			n.cfg.OnAttestFailure()
		}
		var se *ServerError
		if errors.As(err, &se) && (se.Status == http.StatusUnauthorized || se.Status == http.StatusForbidden) {
			return fmt.Errorf("%w (server said: %s)", ErrJoinTokenRejected, se)
		}
		return fmt.Errorf("agent: attest: %w", err)
	}
	if err := validBundle(&resp.Bundle); err != nil {
		return fmt.Errorf("agent: attest: %w", err)
	}
	bundle := resp.Bundle
	if floor != nil && floor.TrustDomain == bundle.TrustDomain {
		if o := wire.CompareBundle(floor, &bundle); o == wire.BundleOlder || o == wire.BundleForked {
			n.refuseBundle(floor, &bundle, o, 0)
			bundle = *floor
		}
	}
	svid, err := checkSVID(resp.SVID, key, spiffeid.ID{}, bundle, n.now())
	if err != nil {
		if n.cfg.OnAttestFailure != nil {
			n.cfg.OnAttestFailure()
		}
		return fmt.Errorf("agent: attest: %w", err)
	}
	n.mu.Lock()
	n.bundle = &bundle
	n.setPoolLocked()
	n.mu.Unlock()
	n.setSVID(svid, true)
	n.persist()
	n.log.Info("node attested", "spiffe_id", svid.ID.String(), "expires_at", svid.Certificates[0].NotAfter)
	return nil
}

func (n *Node) setSVID(s *x509svid.SVID, fresh bool) {
	var at int64
	if fresh {
		at = n.now().UnixNano()
	}
	n.svidAt.Store(at)
	n.svid.Store(s)
	if n.cfg.OnSVID != nil {
		n.cfg.OnSVID(s)
	}
}

// Run keeps the node SVID renewed and follows the watch stream until ctx
// ends; it returns nil then. Attest must have succeeded.
func (n *Node) Run(ctx context.Context) error {
	if n.svid.Load() == nil {
		return ErrNotAttested
	}
	var wg sync.WaitGroup
	wg.Add(2)
	go func() { defer wg.Done(); n.renewLoop(ctx) }()
	go func() { defer wg.Done(); n.watchLoop(ctx) }()
	wg.Wait()
	return nil
}

// backoff is the wait before retry number attempt (0-based): full jitter
// over an exponentially growing window.
func (n *Node) backoff(attempt int) time.Duration {
	return backoff(n.cfg.BackoffBase, n.cfg.BackoffMax, attempt)
}

func randN(d time.Duration) time.Duration { return mrand.N(d) }

func sleepCtx(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}

// halfLife is when a certificate should be replaced: halfway through the
// part of its life the node actually holds it. Servers backdate NotBefore
// to absorb clock skew; measured from NotBefore alone, a short-lived SVID
// would be past half life on arrival and rotate only when it expires.
// received is when the node got it (zero: unknown, use NotBefore).
func halfLife(c *x509.Certificate, received time.Time) time.Time {
	start := c.NotBefore
	if received.After(start) {
		start = received
	}
	return start.Add(c.NotAfter.Sub(start) / 2)
}

func (n *Node) renewLoop(ctx context.Context) {
	attempt := 0
	var lastErr error // of the last failed renewal: its Retry-After
	for {
		svid := n.svid.Load()
		var received time.Time
		if at := n.svidAt.Load(); at != 0 {
			received = time.Unix(0, at)
		}
		wait := halfLife(svid.Certificates[0], received).Sub(n.now())
		if attempt > 0 {
			// Retry sooner than half life, but never past expiry.
			wait = min(afterRetryAfter(lastErr, n.backoff(attempt-1)), max(svid.Certificates[0].NotAfter.Sub(n.now()), 0))
		}
		t := time.NewTimer(max(wait, 0))
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-t.C:
		case <-n.renewNow:
			t.Stop()
		}
		if err := n.Renew(ctx); err != nil {
			if ctx.Err() != nil {
				return
			}
			attempt++
			lastErr = err
			n.log.Warn("node SVID renewal failed; retrying", "error", err, "expires_at", svid.Certificates[0].NotAfter)
			continue
		}
		attempt, lastErr = 0, nil
	}
}

// Renew replaces the node SVID with a fresh one for a new key.
func (n *Node) Renew(ctx context.Context) error {
	cur := n.svid.Load()
	if cur == nil {
		return ErrNotAttested
	}
	key, csr, err := newKeyAndCSR(cur.ID)
	if err != nil {
		return err
	}
	var resp wire.X509SVIDResponse
	if err := n.post(ctx, wire.PathRenew, wire.RenewRequest{CSR: csr}, &resp); err != nil {
		var se *ServerError
		if errors.As(err, &se) && (se.Status == http.StatusUnauthorized || se.Status == http.StatusForbidden) {
			return fmt.Errorf("%w (server said: %s)", ErrNodeRejected, se)
		}
		return fmt.Errorf("agent: renew: %w", err)
	}
	b := n.Bundle()
	if b == nil {
		return errors.New("agent: renew: no trust bundle")
	}
	svid, err := checkSVID(resp.SVID, key, cur.ID, *b, n.now())
	if err != nil {
		return fmt.Errorf("agent: renew: %w", err)
	}
	n.setSVID(svid, true)
	n.persist()
	n.log.Info("node SVID renewed", "expires_at", svid.Certificates[0].NotAfter)
	return nil
}

// SignX509 asks the server to sign SVIDs for entries parented by this
// node. The caller checks the answers (see checkSVID).
func (n *Node) SignX509(ctx context.Context, reqs []wire.X509SVIDRequest) ([]wire.X509SVID, error) {
	if n.svid.Load() == nil {
		return nil, ErrNotAttested
	}
	var resp wire.SignX509Response
	if err := n.post(ctx, wire.PathSignX509, wire.SignX509Request{Requests: reqs}, &resp); err != nil {
		return nil, fmt.Errorf("agent: sign X509-SVIDs: %w", err)
	}
	if len(resp.SVIDs) != len(reqs) {
		return nil, fmt.Errorf("agent: sign X509-SVIDs: asked for %d, got %d", len(reqs), len(resp.SVIDs))
	}
	return resp.SVIDs, nil
}

// SignJWT asks the server for a JWT-SVID for an entry parented by this
// node.
func (n *Node) SignJWT(ctx context.Context, entryID string, audience []string) (*wire.SignJWTResponse, error) {
	if n.svid.Load() == nil {
		return nil, ErrNotAttested
	}
	var resp wire.SignJWTResponse
	if err := n.post(ctx, wire.PathSignJWT, wire.SignJWTRequest{EntryID: entryID, Audience: audience}, &resp); err != nil {
		return nil, fmt.Errorf("agent: sign JWT-SVID: %w", err)
	}
	return &resp, nil
}

// ServerError is a non-2xx answer from the server.
type ServerError struct {
	Status int
	Msgs   []string
	// RetryAfter is the answer's Retry-After in seconds (a spent signing
	// budget says when it has room again), at most maxRetryAfter; zero
	// when it has none, or one that is not a positive number of seconds.
	RetryAfter time.Duration
}

// maxRetryAfter bounds the wait a server's Retry-After imposes: a broken
// or hostile server must not stall renewals for longer.
const maxRetryAfter = time.Minute

// retryAfter is the Retry-After of err's server answer, 0 for none.
func retryAfter(err error) time.Duration {
	var se *ServerError
	if errors.As(err, &se) {
		return se.RetryAfter
	}
	return 0
}

// afterRetryAfter is the wait before the next attempt after err, whose
// backoff is wait: at least the server's Retry-After, with a jitter of up
// to a quarter of it on top, so that the agents a taint sent to sign at
// once (and the server told to come back at the same second) do not all
// come back together.
func afterRetryAfter(err error, wait time.Duration) time.Duration {
	if ra := retryAfter(err); ra > 0 {
		return max(wait, ra+randN(ra/4+1))
	}
	return wait
}

// HTTPStatus is the server's status code (the Workload API tells a
// spent signing budget, 429, from an unreachable server).
func (e *ServerError) HTTPStatus() int { return e.Status }

func (e *ServerError) Error() string {
	if len(e.Msgs) == 0 {
		return fmt.Sprintf("server answered %d %s", e.Status, http.StatusText(e.Status))
	}
	return fmt.Sprintf("server answered %d: %s", e.Status, strings.Join(e.Msgs, "; "))
}

func readServerError(resp *http.Response) error {
	se := &ServerError{Status: resp.StatusCode}
	// delta-seconds only (RFC 9110 section 10.2.3), which the server
	// sends; an HTTP-date would need this host's clock to agree.
	if v := resp.Header.Get("Retry-After"); v != "" && len(v) <= 9 {
		if secs, err := strconv.Atoi(v); err == nil && secs > 0 {
			se.RetryAfter = min(time.Duration(secs)*time.Second, maxRetryAfter)
		}
	}
	raw, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	var eb struct {
		Errors []string `json:"errors"`
	}
	if json.Unmarshal(raw, &eb) == nil {
		se.Msgs = eb.Errors
	}
	return se
}

// post calls path on the current server and, when that server cannot be
// reached or answers that it is unavailable, on each other replica in
// turn. A server's answer on its merits (4xx, 500) is final: every
// replica shares one store and would say the same.
func (n *Node) post(ctx context.Context, path string, in, out any) error {
	body, err := json.Marshal(in)
	if err != nil {
		return err
	}
	if len(body) > wire.MaxBodySize {
		return fmt.Errorf("request of %d bytes is larger than the server accepts (%d)", len(body), wire.MaxBodySize)
	}
	first := n.cur.Load()
	var errs []error
	for i := range int64(len(n.servers)) {
		addr := n.servers[(first+i)%int64(len(n.servers))]
		err := n.postOnce(ctx, addr, path, body, out)
		if err == nil || ctx.Err() != nil || !failoverable(err, path) {
			return err
		}
		if len(n.servers) == 1 {
			return err
		}
		errs = append(errs, fmt.Errorf("%s: %w", addr, err))
	}
	return errors.Join(errs...)
}

// failoverable reports whether a failed call may be tried on another
// replica. A join token is single use: attestation moves on only when the
// request cannot have reached the server (nothing to dial, or a TLS
// handshake that failed), never after it may have been consumed.
func failoverable(err error, path string) bool {
	var se *ServerError
	if errors.As(err, &se) {
		return se.Status == http.StatusBadGateway || se.Status == http.StatusServiceUnavailable || se.Status == http.StatusGatewayTimeout
	}
	if path != wire.PathAttest {
		return true
	}
	var op *net.OpError
	if errors.As(err, &op) && op.Op == "dial" {
		return true
	}
	var cv *tls.CertificateVerificationError
	return errors.As(err, &cv) || errors.Is(err, errServerIdentity)
}

func (n *Node) postOnce(ctx context.Context, addr, path string, body []byte, out any) error {
	ctx, cancel := context.WithTimeout(ctx, n.cfg.RequestTimeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, "https://"+addr+path, bytes.NewReader(body))
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := n.client.Load().Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode/100 != 2 {
		return readServerError(resp)
	}
	if out == nil {
		io.Copy(io.Discard, io.LimitReader(resp.Body, maxResponseSize))
		return nil
	}
	raw, err := io.ReadAll(io.LimitReader(resp.Body, maxResponseSize+1))
	if err != nil {
		return fmt.Errorf("read answer: %w", err)
	}
	if len(raw) > maxResponseSize {
		return fmt.Errorf("answer larger than %d bytes", maxResponseSize)
	}
	if err := json.Unmarshal(raw, out); err != nil {
		return fmt.Errorf("decode answer: %w", err)
	}
	return nil
}

// setPoolLocked (re)builds the HTTP client when the set of authorities
// trusted for the server changed: the configured trust bundle plus the
// trust domain's bundle, so a CA rotation announced on the watch stream is
// trusted before the server presents a certificate from the new CA. An
// authority of the configured trust bundle that the server's bundle held
// and then dropped (moatless ca revoke) is left out: whoever holds a
// revoked CA key must not be able to pose as the server on the node's
// next connection, and after a restart (revokedFile). Connections open
// already (the watch stream) were verified when they opened and stay.
func (n *Node) setPoolLocked() {
	var certs []*x509.Certificate
	now := map[string]bool{}
	if n.bundle != nil {
		if n.held == nil {
			n.held = map[string]bool{}
		}
		for _, der := range n.bundle.X509Authorities {
			if c, err := x509.ParseCertificate(der); err == nil {
				certs = append(certs, c)
				ski := hex.EncodeToString(c.SubjectKeyId)
				now[ski], n.held[ski] = true, true
			}
		}
	}
	for _, c := range n.cfg.TrustBundle {
		if ski := hex.EncodeToString(c.SubjectKeyId); len(c.SubjectKeyId) > 0 && n.held[ski] && !now[ski] {
			continue
		}
		certs = append(certs, c)
	}
	var revoked []string
	for ski := range n.held {
		if !now[ski] {
			revoked = append(revoked, ski)
		}
	}
	slices.Sort(revoked)
	n.persistRevokedLocked(revoked)
	var key strings.Builder
	pool := x509.NewCertPool()
	for _, c := range certs {
		pool.AddCert(c)
		key.Write(c.Raw)
	}
	if key.String() == n.poolKey && n.client.Load() != nil {
		return
	}
	n.poolKey = key.String()
	tr := &http.Transport{
		TLSClientConfig: &tls.Config{
			RootCAs: pool,
			// Empty: each connection verifies the host of its own address
			// (net/http fills it in), so replicas may have their own names.
			ServerName:       n.cfg.ServerName,
			MinVersion:       tls.VersionTLS12,
			VerifyConnection: n.verifyServer,
			// The current node SVID, read at every handshake, so renewal
			// needs no new client.
			GetClientCertificate: func(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
				s := n.svid.Load()
				if s == nil {
					return &tls.Certificate{}, nil
				}
				c := &tls.Certificate{PrivateKey: s.PrivateKey, Leaf: s.Certificates[0]}
				for _, x := range s.Certificates {
					c.Certificate = append(c.Certificate, x.Raw)
				}
				return c, nil
			},
		},
		ForceAttemptHTTP2:   true,
		TLSHandshakeTimeout: n.cfg.ConnectTimeout,
		IdleConnTimeout:     90 * time.Second,
		DialContext:         (&net.Dialer{Timeout: n.cfg.ConnectTimeout, KeepAlive: 30 * time.Second}).DialContext,
	}
	// Old transports keep serving requests in flight (the watch stream);
	// their idle connections are dropped.
	for _, t := range n.transports {
		t.CloseIdleConnections()
	}
	n.transports = append(n.transports[:0], tr)
	n.client.Store(&http.Client{Transport: tr, Timeout: 0})
}

// verifyServer runs after crypto/tls has verified the server's chain
// against the trusted authorities and its DNS name or IP against
// ServerName, and also requires the control plane's SPIFFE ID as the
// certificate's URI SAN. The CA that issued the server's certificate also
// issues every workload's SVID; CA and host name alone would let any SVID
// that carried a matching DNS or IP SAN pose as the server, take join
// tokens and CSRs, and push bundles, entries and policies the node would
// trust. Once the node has its SVID the whole ID must match,
// spiffe://<its trust domain>/moatless/server; before the first
// attestation the trust domain is not known yet, so only the path is
// checked (under the configured trust bundle, which signs one trust
// domain).
func (n *Node) verifyServer(cs tls.ConnectionState) error {
	if len(cs.PeerCertificates) == 0 {
		return fmt.Errorf("%w: it presented no certificate", errServerIdentity)
	}
	want := "spiffe://<trust domain>" + serverIDPath
	td := n.ID().TrustDomain()
	if !td.IsZero() {
		want = td.IDString() + serverIDPath
	}
	id, err := x509svid.IDFromCert(cs.PeerCertificates[0])
	if err != nil {
		return fmt.Errorf("%w: its certificate for %s has no SPIFFE ID (want %s): is it the Moatless server? %w", errServerIdentity, cs.ServerName, want, err)
	}
	if id.Path() != serverIDPath || (!td.IsZero() && id.TrustDomain() != td) {
		return fmt.Errorf("%w: the certificate for %s is for %s, not the Moatless server (%s)", errServerIdentity, cs.ServerName, id, want)
	}
	return nil
}

// errServerIdentity: the server's certificate verified but is not the
// control plane's.
var errServerIdentity = errors.New("agent: not the Moatless server")

// watchLoop follows the watch stream until ctx ends. When a stream
// breaks or goes silent it moves to another replica at once, and keeps
// trying each in turn; only when a whole round failed does it back off.
func (n *Node) watchLoop(ctx context.Context) {
	rounds := 0                // consecutive rounds in which every server failed
	failed := map[int64]bool{} // servers that failed since the last good stream
	for {
		from := n.cur.Load()
		connected, err := n.watchOnce(ctx, n.servers[from])
		n.mu.Lock()
		n.connected = false
		n.mu.Unlock()
		n.noteRefusal(err)
		if ctx.Err() != nil {
			return
		}
		if connected {
			rounds = 0
			clear(failed)
		}
		failed[from] = true
		var wait time.Duration
		if !n.moveOn(from, failed) {
			// Every server failed since the last good stream: back off
			// before the next round.
			wait = n.backoff(rounds)
			rounds++
			clear(failed)
		}
		n.log.Warn("watch stream ended; reconnecting", "server", n.servers[from], "next", n.Server(), "error", err, "in", wait.Round(time.Millisecond))
		if wait > 0 && !sleepCtx(ctx, wait) {
			return
		}
		if n.cfg.OnReconnect != nil {
			n.cfg.OnReconnect()
		}
	}
}

// progressReader calls onRead after every read that returned data.
type progressReader struct {
	r      io.Reader
	onRead func()
}

func (p progressReader) Read(b []byte) (int, error) {
	k, err := p.r.Read(b)
	if k > 0 {
		p.onRead()
	}
	return k, err
}

// watchOnce follows one watch stream on addr until it breaks. connected
// reports whether the stream was established (its first update arrived).
func (n *Node) watchOnce(ctx context.Context, addr string) (connected bool, err error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	n.mu.Lock()
	since, epoch := n.version, n.epoch
	n.mu.Unlock()
	q := url.Values{"since": {strconv.FormatUint(since, 10)}}
	if epoch != "" {
		q.Set("epoch", epoch)
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "https://"+addr+wire.PathWatch+"?"+q.Encode(), nil)
	if err != nil {
		return false, err
	}
	// A server that accepts the connection but does not answer is as
	// good as dead: give up on it after ConnectTimeout. Once the stream
	// flows, silence longer than the watch timeout ends it; any data
	// read (a heartbeat, part of a large update) counts as life.
	var (
		silenceFor atomic.Int64
		silent     atomic.Bool
	)
	silenceFor.Store(int64(n.cfg.ConnectTimeout))
	silence := time.AfterFunc(n.cfg.ConnectTimeout, func() { silent.Store(true); cancel() })
	defer silence.Stop()
	alive := func() { silence.Reset(time.Duration(silenceFor.Load())) }
	resp, err := n.client.Load().Do(req)
	if err != nil {
		if silent.Load() {
			return false, fmt.Errorf("agent: no answer from %s within %s", addr, n.cfg.ConnectTimeout)
		}
		return false, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return false, readServerError(resp)
	}
	n.refused.Store(nil)
	silenceFor.Store(int64(n.watchTimeout()))
	alive()
	sc := bufio.NewScanner(progressReader{resp.Body, alive})
	sc.Buffer(make([]byte, 0, 64<<10), MaxUpdateSize)
	first := true
	var startEpoch string
	for sc.Scan() {
		line := bytes.TrimSpace(sc.Bytes())
		if len(line) == 0 {
			continue
		}
		var u wire.Update
		if err := json.Unmarshal(line, &u); err != nil {
			return connected, fmt.Errorf("agent: malformed update: %w", err)
		}
		cur := n.Version()
		if !first && u.Version < cur {
			return connected, fmt.Errorf("agent: update version went backwards (%d after %d)", u.Version, cur)
		}
		isFirst := first
		if first {
			first = false
			startEpoch = u.Epoch
			n.mu.Lock()
			n.connected = true
			n.heartbeat = u.HeartbeatInterval.Std()
			n.mu.Unlock()
			connected = true
			silenceFor.Store(int64(n.watchTimeout()))
			alive()
			if n.cfg.OnConnect != nil {
				n.cfg.OnConnect(addr, u.Resumed)
			}
			n.log.Info("watch stream established", "server", addr, "version", u.Version, "resumed", u.Resumed)
		}
		if u.Heartbeat && u.Bundle == nil && u.Entries == nil && u.Revocations == nil && u.Policies == nil && u.Risk == nil {
			continue
		}
		if err := n.apply(&u); err != nil {
			return connected, err
		}
		if isFirst {
			// The version now held belongs to this stream's history; a
			// later stream may resume from it.
			n.mu.Lock()
			n.epoch = startEpoch
			n.mu.Unlock()
		}
		if err := n.ack(ctx, u.Version); err != nil && ctx.Err() == nil {
			// The next ack covers this one; the stream is still good.
			n.log.Warn("ack failed", "version", u.Version, "error", err)
		}
	}
	if err := sc.Err(); err != nil {
		if silent.Load() {
			return connected, fmt.Errorf("agent: watch stream from %s silent for %s", addr, time.Duration(silenceFor.Load()))
		}
		return connected, fmt.Errorf("agent: watch stream: %w", err)
	}
	return connected, errors.New("agent: watch stream closed by the server")
}

// watchTimeout is how long the stream may stay silent: WatchTimeout when
// configured, else three of the server's announced heartbeat intervals.
func (n *Node) watchTimeout() time.Duration {
	if n.cfg.WatchTimeout > 0 {
		return n.cfg.WatchTimeout
	}
	n.mu.Lock()
	hb := n.heartbeat
	n.mu.Unlock()
	if hb <= 0 {
		hb = wire.HeartbeatInterval
	}
	return 3 * hb
}

// apply validates and applies one update: nothing of an invalid update is
// applied.
func (n *Node) apply(u *wire.Update) error {
	if u.Bundle != nil {
		if err := validBundle(u.Bundle); err != nil {
			return fmt.Errorf("agent: update %d: %w", u.Version, err)
		}
		if id := n.ID(); id.TrustDomain().Name() != u.Bundle.TrustDomain {
			return fmt.Errorf("agent: update %d: bundle for trust domain %q, node is in %q", u.Version, u.Bundle.TrustDomain, id.TrustDomain().Name())
		}
	}
	if u.Risk != nil {
		if err := validRisk(u.Risk); err != nil {
			return fmt.Errorf("agent: update %d: %w", u.Version, err)
		}
	}
	if u.Bundle != nil {
		b := *u.Bundle
		n.mu.Lock()
		held := n.bundle
		order := wire.CompareBundle(held, &b)
		if order == wire.BundleNewer || order == wire.BundleSame {
			n.bundle = &b
			n.setPoolLocked()
		}
		n.mu.Unlock()
		if order == wire.BundleNewer || order == wire.BundleSame {
			n.persistBundle()
			n.checkOwnAuthority(&b)
			if n.cfg.OnBundle != nil {
				n.cfg.OnBundle(b)
			}
		} else {
			n.refuseBundle(held, &b, order, u.Version)
		}
	}
	if u.Revocations != nil && n.cfg.OnRevocations != nil {
		n.cfg.OnRevocations(*u.Revocations)
	}
	if u.Entries != nil && n.cfg.OnEntries != nil {
		n.cfg.OnEntries(*u.Entries)
	}
	if u.Policies != nil {
		n.mu.Lock()
		n.policyVer = u.Policies.Version
		n.mu.Unlock()
		if n.cfg.OnPolicies != nil {
			n.cfg.OnPolicies(*u.Policies)
		}
	}
	if u.Risk != nil && n.cfg.OnRisk != nil {
		n.cfg.OnRisk(*u.Risk)
	}
	n.mu.Lock()
	n.version = u.Version
	n.mu.Unlock()
	if n.cfg.OnUpdate != nil {
		n.cfg.OnUpdate(u.Version)
	}
	return nil
}

// refuseBundle logs and counts a bundle that is older than the one held,
// or of the same sequence number with other trust material, and that apply
// therefore left out. The server's bundle sequence number grows with every
// change of its trust material and never goes back; a lower one comes from
// a replica that has not yet adopted the latest CA state, or from an older
// server version during an upgrade, and after "moatless ca revoke" it
// would bring the revoked authority back into trust (for the node's
// connections to the server, the workloads' bundles and the SVIDs checked
// against it) until the next bundle change. The rest of the update is
// applied: the store behind every replica is the same, only the CA state
// a replica holds in memory can lag. The held bundle, persisted in
// DataDir, stays until one with a higher sequence number comes; attesting
// afresh with a join token is the way to take a lower one (a server whose
// data directory was rebuilt).
func (n *Node) refuseBundle(held, got *wire.Bundle, order wire.BundleOrder, version uint64) {
	n.log.Warn("refused a trust bundle that is not newer than the one held; keeping the held one",
		"reason", order.String(), "sequence", got.SequenceNumber, "held_sequence", held.SequenceNumber,
		"server", n.Server(), "update", version)
	if n.cfg.OnBundleRefused != nil {
		n.cfg.OnBundleRefused(order)
	}
}

// checkOwnAuthority wakes the renewal loop at once when the node SVID
// chains to an authority that bundle b marks tainted (once per authority
// in this run, also when the taint came before a restart), or no longer
// verifies against b (its authority was revoked), instead of waiting for
// half life. A renewal that fails is retried with backoff as usual; one
// refused because the server no longer trusts the SVID at all needs the
// node to attest again (ErrNodeRejected).
func (n *Node) checkOwnAuthority(b *wire.Bundle) {
	s := n.svid.Load()
	if s == nil {
		return
	}
	view := authoritiesOf(b)
	why := ""
	if view.untrusted(s.Certificates, n.now()) {
		why = "revoked (no longer in the trust bundle)"
	} else if ski := view.taintedIn(chainAuthorities(s.Certificates)); ski != "" {
		if _, done := n.renewedFor.LoadOrStore(ski, true); !done {
			why = "tainted"
		}
	}
	if why == "" {
		return
	}
	n.log.Warn("the node SVID's CA authority was "+why+"; renewing it now", "spiffe_id", s.ID.String())
	select {
	case n.renewNow <- struct{}{}:
	default:
	}
}

func (n *Node) ack(ctx context.Context, version uint64) error {
	n.mu.Lock()
	pv := n.policyVer
	n.mu.Unlock()
	return n.post(ctx, wire.PathAck, wire.Ack{Version: version, Component: n.cfg.Component, PolicyVersion: pv}, nil)
}

// validBundle checks that a bundle is usable: a trust domain name and at
// least one parseable CA certificate.
func validBundle(b *wire.Bundle) error {
	if _, err := spiffeid.TrustDomainFromString(b.TrustDomain); err != nil {
		return fmt.Errorf("bundle: bad trust domain: %w", err)
	}
	if len(b.X509Authorities) == 0 {
		return errors.New("bundle: no X.509 authorities")
	}
	skis := make(map[string]bool, len(b.X509Authorities))
	for i, der := range b.X509Authorities {
		c, err := x509.ParseCertificate(der)
		if err != nil {
			return fmt.Errorf("bundle: X.509 authority %d: %w", i, err)
		}
		if !c.IsCA {
			return fmt.Errorf("bundle: X.509 authority %d is not a CA certificate", i)
		}
		skis[hex.EncodeToString(c.SubjectKeyId)] = true
	}
	// A tainted authority names one of the bundle's by its subject key
	// ID (the wire contract): one that names none is a server bug that
	// would leave an SVID of the authority meant unreplaced, not something
	// to apply in part.
	for i, ski := range b.TaintedX509Authorities {
		if !skis[strings.ToLower(ski)] {
			return fmt.Errorf("bundle: tainted X.509 authority %d (%.64q) is not the subject key ID of one of its X.509 authorities", i, ski)
		}
	}
	for i, a := range b.JWTAuthorities {
		if a.KeyID == "" {
			return fmt.Errorf("bundle: JWT authority %d has no key ID", i)
		}
		if _, err := x509.ParsePKIXPublicKey(a.PublicKey); err != nil {
			return fmt.Errorf("bundle: JWT authority %q: %w", a.KeyID, err)
		}
	}
	return nil
}

// validRisk checks the risk section as the wire promises it: at most
// wire.MaxRiskScores entries, each a SPIFFE ID listed once with a score in
// (0, 1]. A server breaking any of these is refused like any malformed
// update: nothing of the update is applied.
func validRisk(r *wire.RiskScores) error {
	if len(r.Scores) > wire.MaxRiskScores {
		return fmt.Errorf("risk: %d scores, at most %d", len(r.Scores), wire.MaxRiskScores)
	}
	seen := make(map[string]struct{}, len(r.Scores))
	for i, s := range r.Scores {
		if _, err := spiffeid.FromString(s.SPIFFEID); err != nil {
			return fmt.Errorf("risk: scores[%d]: %w", i, err)
		}
		if !(s.Score > 0 && s.Score <= 1) { // NaN fails too
			return fmt.Errorf("risk: scores[%d]: score %v for %s: want more than 0, at most 1", i, s.Score, s.SPIFFEID)
		}
		if _, dup := seen[s.SPIFFEID]; dup {
			return fmt.Errorf("risk: scores[%d]: %s listed twice", i, s.SPIFFEID)
		}
		seen[s.SPIFFEID] = struct{}{}
	}
	return nil
}

func newKeyAndCSR(id spiffeid.ID) (*ecdsa.PrivateKey, []byte, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, fmt.Errorf("agent: generate key: %w", err)
	}
	tmpl := &x509.CertificateRequest{}
	if !id.IsZero() {
		tmpl.URIs = []*url.URL{id.URL()}
	}
	csr, err := x509.CreateCertificateRequest(rand.Reader, tmpl, key)
	if err != nil {
		return nil, nil, fmt.Errorf("agent: create CSR: %w", err)
	}
	return key, csr, nil
}

// checkSVID verifies a signed SVID before it is used: the leaf holds our
// public key, carries exactly one SPIFFE ID (want, when not zero) in the
// bundle's trust domain, chains to the bundle and is valid now. A server
// answer that fails any of these is refused, whatever the server said.
func checkSVID(w wire.X509SVID, key crypto.Signer, want spiffeid.ID, b wire.Bundle, now time.Time) (*x509svid.SVID, error) {
	if len(w.CertChain) == 0 {
		return nil, errors.New("SVID has no certificate")
	}
	chain := make([]*x509.Certificate, 0, len(w.CertChain))
	for i, der := range w.CertChain {
		c, err := x509.ParseCertificate(der)
		if err != nil {
			return nil, fmt.Errorf("SVID certificate %d: %w", i, err)
		}
		chain = append(chain, c)
	}
	leaf := chain[0]
	pub, ok := leaf.PublicKey.(interface{ Equal(crypto.PublicKey) bool })
	if !ok || !pub.Equal(key.Public()) {
		return nil, errors.New("SVID is not for the key this node generated")
	}
	id, err := x509svid.IDFromCert(leaf)
	if err != nil {
		return nil, fmt.Errorf("SVID: %w", err)
	}
	if !want.IsZero() && id != want {
		return nil, fmt.Errorf("SVID is for %s, expected %s", id, want)
	}
	if id.TrustDomain().Name() != b.TrustDomain {
		return nil, fmt.Errorf("SVID is for trust domain %q, bundle is for %q", id.TrustDomain().Name(), b.TrustDomain)
	}
	roots := x509.NewCertPool()
	for _, der := range b.X509Authorities {
		if c, err := x509.ParseCertificate(der); err == nil {
			roots.AddCert(c)
		}
	}
	inter := x509.NewCertPool()
	for _, c := range chain[1:] {
		inter.AddCert(c)
	}
	if _, err := leaf.Verify(x509.VerifyOptions{Roots: roots, Intermediates: inter, CurrentTime: now, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}}); err != nil {
		return nil, fmt.Errorf("SVID does not verify against the trust bundle: %w", err)
	}
	return &x509svid.SVID{ID: id, Certificates: chain, PrivateKey: key}, nil
}

// persist writes the node SVID and key to DataDir atomically (one file,
// mode 0600, renamed into place) so a crash never leaves a key without
// its certificate.
func (n *Node) persist() {
	if n.cfg.DataDir == "" {
		return
	}
	s := n.svid.Load()
	certs, key, err := s.Marshal()
	if err != nil {
		n.log.Error("cannot encode node SVID for the data directory", "error", err)
		return
	}
	if err := writeFileAtomic(filepath.Join(n.cfg.DataDir, nodeFile), append(key, certs...)); err != nil {
		n.log.Error("cannot persist node SVID; a restart will need a new join token", "error", err)
	}
	n.persistBundle()
}

func (n *Node) persistBundle() {
	b := n.Bundle()
	if n.cfg.DataDir == "" || b == nil {
		return
	}
	raw, err := json.Marshal(b)
	if err == nil {
		err = writeFileAtomic(filepath.Join(n.cfg.DataDir, bundleFile), raw)
	}
	if err != nil {
		n.log.Error("cannot persist trust bundle", "error", err)
	}
}

func writeFileAtomic(path string, data []byte) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return err
	}
	f, err := os.CreateTemp(filepath.Dir(path), ".tmp-*")
	if err != nil {
		return err
	}
	defer os.Remove(f.Name())
	if err := f.Chmod(0o600); err != nil {
		f.Close()
		return err
	}
	if _, err := f.Write(data); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	if err := os.Rename(f.Name(), path); err != nil {
		return err
	}
	if d, err := os.Open(filepath.Dir(path)); err == nil {
		d.Sync()
		d.Close()
	}
	return nil
}

// savedBundle is the valid bundle DataDir holds, or nil.
func (n *Node) savedBundle() *wire.Bundle {
	raw, err := os.ReadFile(filepath.Join(n.cfg.DataDir, bundleFile))
	if err != nil {
		return nil
	}
	var b wire.Bundle
	if json.Unmarshal(raw, &b) != nil || validBundle(&b) != nil {
		return nil
	}
	return &b
}

// loadPersisted loads a node SVID and bundle from DataDir. It fails (and
// the node attests afresh) unless both parse, belong together and the SVID
// is still valid; os.ErrNotExist when there is none.
func (n *Node) loadPersisted() error {
	raw, err := os.ReadFile(filepath.Join(n.cfg.DataDir, nodeFile))
	if err != nil {
		return err
	}
	fi, err := os.Stat(filepath.Join(n.cfg.DataDir, nodeFile))
	if err == nil && fi.Mode().Perm()&0o077 != 0 {
		return fmt.Errorf("%s is readable by others (mode %v); remove it", nodeFile, fi.Mode().Perm())
	}
	braw, err := os.ReadFile(filepath.Join(n.cfg.DataDir, bundleFile))
	if err != nil {
		return fmt.Errorf("node SVID without a bundle: %w", err)
	}
	var b wire.Bundle
	if err := json.Unmarshal(braw, &b); err != nil {
		return fmt.Errorf("%s: %w", bundleFile, err)
	}
	if err := validBundle(&b); err != nil {
		return err
	}
	svid, err := x509svid.Parse(raw, raw)
	if err != nil {
		return fmt.Errorf("%s: %w", nodeFile, err)
	}
	signer, ok := svid.PrivateKey.(crypto.Signer)
	if !ok {
		return fmt.Errorf("%s: unusable key", nodeFile)
	}
	w := wire.X509SVID{SPIFFEID: svid.ID.String()}
	for _, c := range svid.Certificates {
		w.CertChain = append(w.CertChain, c.Raw)
	}
	checked, err := checkSVID(w, signer, svid.ID, b, n.now())
	if err != nil {
		return fmt.Errorf("%s: %w", nodeFile, err)
	}
	if err := n.checkSavedState(checked, &b); err != nil {
		return err
	}
	n.mu.Lock()
	n.bundle = &b
	n.setPoolLocked()
	n.mu.Unlock()
	n.setSVID(checked, false)
	n.log.Info("loaded node SVID from the data directory", "spiffe_id", checked.ID.String(), "expires_at", checked.Certificates[0].NotAfter)
	return nil
}
