package agent

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"go.opentelemetry.io/otel/trace"
	"golang.org/x/net/netutil"

	"github.com/moatless/moatless/internal/attest"
	"github.com/moatless/moatless/internal/loopback"
	"github.com/moatless/moatless/internal/telemetry"
	"github.com/moatless/moatless/internal/wire"
	"github.com/moatless/moatless/internal/workload"
)

// DefaultHealthListen is where /healthz, /readyz and /metrics are served.
const DefaultHealthListen = "127.0.0.1:8089"

// maxHealthConns bounds the health listener's open connections; more wait
// in the kernel's accept queue. Any local user may connect to it, and each
// connection is one of the agent's file descriptors for up to ReadTimeout:
// without a bound, a user opening connections faster than they time out
// would leave the agent none (Prometheus bounds its own listener the same
// way, --web.max-connections).
const maxHealthConns = 64

// Config configures an Agent.
type Config struct {
	// Node is how the agent reaches the server. Its callbacks are set by
	// the agent; any given here are called after the agent's own.
	Node NodeConfig
	// SocketPath is the Workload API socket. Required.
	SocketPath string
	// HealthListen is the loopback address of the plaintext HTTP listener
	// for /healthz, /livez, /readyz and /metrics; "" disables it. It serves
	// nothing secret.
	HealthListen string
	// Attestor attests workloads; the unix attestor when nil.
	Attestor attest.Attestor
	// Logger receives structured logs; slog.Default() when nil.
	Logger *slog.Logger
	// Now is the clock; time.Now when nil.
	Now func() time.Time
	// FirstSyncWait bounds how long a Workload API call made before the
	// first complete sync with the server (entries received, their SVIDs
	// signed) waits for it, so a workload started with the agent is not
	// told it has no identity. Default workload.DefaultFirstSyncWait.
	FirstSyncWait time.Duration
	// Tracer, when set, traces the Workload API: a span per call and per
	// stream answer (workload.Config.Tracer), with the risk score the
	// server pushed for the identities served. Nil: no tracing.
	Tracer trace.Tracer
	// Registry receives the agent's metrics; a new registry when nil (so
	// several agents in one test process do not collide).
	Registry *prometheus.Registry
	// MaxConnsPerUID and MaxStreamsPerUID are the Workload API's bounds
	// per local uid (workload.Config); 0 for their defaults.
	MaxConnsPerUID   int
	MaxStreamsPerUID int
}

// Agent is the node agent. Lifecycle: New → Serve → Close.
type Agent struct {
	cfg     Config
	log     *slog.Logger
	now     func() time.Time
	node    *Node
	cache   *Cache
	wl      *workload.Server
	reg     *prometheus.Registry
	metrics *metrics
	// risk is the risk scores the watch stream pushes, for the Workload
	// API's spans.
	risk telemetry.RiskScores

	mu         sync.Mutex
	healthLis  net.Listener
	healthSrv  *http.Server
	closed     bool
	cancel     context.CancelFunc
	attested   chan struct{}
	attestOnce sync.Once
}

// New checks cfg and builds the agent; nothing starts until Serve.
func New(cfg Config) (*Agent, error) {
	a := &Agent{cfg: cfg, log: cfg.Logger, now: cfg.Now, reg: cfg.Registry, attested: make(chan struct{})}
	if a.log == nil {
		a.log = slog.Default()
	}
	if a.now == nil {
		a.now = time.Now
	}
	if a.reg == nil {
		a.reg = prometheus.NewRegistry()
	}
	if cfg.Attestor == nil {
		cfg.Attestor = attest.NewUnix(attest.UnixConfig{})
	}
	a.metrics = newMetrics(a.reg, a)

	nc := cfg.Node
	nc.Logger = a.log.With("part", "node")
	nc.Now = a.now
	user := cfg.Node
	nc.OnBundle = func(b wire.Bundle) {
		a.cache.SetBundle(b)
		if user.OnBundle != nil {
			user.OnBundle(b)
		}
	}
	nc.OnBundleRefused = func(o wire.BundleOrder) {
		a.metrics.bundleRefused.WithLabelValues(o.String()).Inc()
		if user.OnBundleRefused != nil {
			user.OnBundleRefused(o)
		}
	}
	nc.OnRevocations = func(r wire.Revocations) {
		a.cache.SetRevocations(r)
		if user.OnRevocations != nil {
			user.OnRevocations(r)
		}
	}
	nc.OnRisk = func(r wire.RiskScores) {
		a.risk.Set(r)
		if user.OnRisk != nil {
			user.OnRisk(r)
		}
	}
	nc.OnEntries = func(e []wire.Entry) {
		a.cache.SetEntries(e)
		if user.OnEntries != nil {
			user.OnEntries(e)
		}
	}
	nc.OnUpdate = func(v uint64) {
		a.cache.updateApplied()
		if user.OnUpdate != nil {
			user.OnUpdate(v)
		}
	}
	nc.OnSVID = func(s *x509svid.SVID) {
		a.cache.SetNode(s.ID, strings.ToLower(s.Certificates[0].SerialNumber.Text(16)))
		if user.OnSVID != nil {
			user.OnSVID(s)
		}
	}
	nc.OnAttestFailure = func() {
		a.metrics.attestFailures.WithLabelValues("node").Inc()
		if user.OnAttestFailure != nil {
			user.OnAttestFailure()
		}
	}
	nc.OnReconnect = func() {
		a.metrics.reconnects.Inc()
		if user.OnReconnect != nil {
			user.OnReconnect()
		}
	}
	node, err := NewNode(nc)
	if err != nil {
		return nil, err
	}
	a.node = node
	a.cache = newCache(node, CacheConfig{Logger: a.log.With("part", "cache"), Now: a.now, BackoffBase: nc.BackoffBase, BackoffMax: nc.BackoffMax})
	a.wl, err = workload.New(workload.Config{
		SocketPath:       cfg.SocketPath,
		Source:           a.cache,
		FirstSyncWait:    cfg.FirstSyncWait,
		MaxConnsPerUID:   cfg.MaxConnsPerUID,
		MaxStreamsPerUID: cfg.MaxStreamsPerUID,
		Tracer:           cfg.Tracer,
		Risk:             &a.risk,
		Attestor:         cfg.Attestor,
		Logger:           a.log.With("part", "workload"),
		Now:              a.now,
		OnServe:          func(kind string) { a.metrics.served.WithLabelValues(kind).Inc() },
		OnAttestFailure: func() {
			a.metrics.attestFailures.WithLabelValues("workload").Inc()
		},
	})
	if err != nil {
		return nil, err
	}
	return a, nil
}

// Node returns the agent's server client.
func (a *Agent) Node() *Node { return a.node }

// Cache returns the agent's SVID cache.
func (a *Agent) Cache() *Cache { return a.cache }

// Ready is closed once the Workload API socket is listening.
func (a *Agent) Ready() <-chan struct{} { return a.wl.Ready() }

// HealthAddr returns the address of the health listener once Serve opened
// it (nil before, or when disabled).
func (a *Agent) HealthAddr() net.Addr {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.healthLis == nil {
		return nil
	}
	return a.healthLis.Addr()
}

// Serve opens the health listener, attests the node (retrying while the
// server is unreachable; a rejected join token is fatal), then serves the
// Workload API and follows the server until ctx ends or Close is called.
func (a *Agent) Serve(ctx context.Context) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	a.mu.Lock()
	if a.closed {
		a.mu.Unlock()
		return nil
	}
	a.cancel = cancel
	a.mu.Unlock()

	if a.cfg.HealthListen != "" {
		if err := a.startHealth(); err != nil {
			return err
		}
	}
	if err := a.attest(ctx); err != nil {
		return err
	}
	a.attestOnce.Do(func() { close(a.attested) })

	var wg sync.WaitGroup
	errc := make(chan error, 3)
	wg.Add(3)
	go func() { defer wg.Done(); errc <- a.node.Run(ctx) }()
	go func() { defer wg.Done(); a.cache.Run(ctx); errc <- nil }()
	go func() {
		defer wg.Done()
		err := a.wl.Serve(ctx)
		if err != nil {
			cancel()
		}
		errc <- err
	}()
	wg.Wait()
	close(errc)
	var errs []error
	for err := range errc {
		if err != nil {
			errs = append(errs, err)
		}
	}
	a.Close()
	return errors.Join(errs...)
}

func (a *Agent) attest(ctx context.Context) error {
	for attempt := 0; ; attempt++ {
		err := a.node.Attest(ctx)
		if err == nil {
			if b := a.node.Bundle(); b != nil {
				a.cache.SetBundle(*b)
			}
			return nil
		}
		if errors.Is(err, ErrJoinTokenRejected) || errors.Is(err, ErrNoCredential) || errors.Is(err, ErrStaleState) || errors.Is(err, ErrDataDirInUse) || errors.Is(err, ErrDataDirUnsafe) || ctx.Err() != nil {
			return err
		}
		wait := a.node.backoff(attempt)
		a.log.Warn("cannot attest yet; retrying", "error", err, "in", wait.Round(time.Millisecond))
		if !sleepCtx(ctx, wait) {
			return ctx.Err()
		}
	}
}

// Close stops everything; it is idempotent.
func (a *Agent) Close() error {
	a.mu.Lock()
	if a.closed {
		a.mu.Unlock()
		return nil
	}
	a.closed = true
	cancel, srv := a.cancel, a.healthSrv
	a.mu.Unlock()
	if cancel != nil {
		cancel()
	}
	a.wl.Close()
	if srv != nil {
		ctx, c := context.WithTimeout(context.Background(), 2*time.Second)
		srv.Shutdown(ctx)
		c()
	}
	return a.node.Close()
}

// check is one readiness condition.
type check struct {
	name string
	err  error
}

func (a *Agent) checks() []check {
	var out []check
	s := a.node.SVID()
	switch {
	case s == nil:
		out = append(out, check{"node_svid", errors.New("not attested yet")})
	case !a.now().Before(s.Certificates[0].NotAfter):
		out = append(out, check{"node_svid", errors.New("expired")})
	default:
		out = append(out, check{"node_svid", nil})
	}
	out = append(out, check{"node_identity", a.node.Refused()})
	if a.node.Bundle() == nil {
		out = append(out, check{"bundle", errors.New("no trust bundle yet")})
	} else {
		out = append(out, check{"bundle", nil})
	}
	select {
	case <-a.wl.Ready():
		out = append(out, check{"workload_api", nil})
	default:
		out = append(out, check{"workload_api", errors.New("socket not listening")})
	}
	return out
}

func (a *Agent) startHealth() error {
	lis, err := net.Listen("tcp", a.cfg.HealthListen)
	if errors.Is(err, syscall.EADDRINUSE) {
		return fmt.Errorf("agent: health listener: %w: another agent (or program) on this host uses it; set --health-listen (health_listen) to a free loopback address, or off", err)
	}
	if err != nil {
		return fmt.Errorf("agent: health listener: %w", err)
	}
	lis = netutil.LimitListener(lis, maxHealthConns)
	mux := http.NewServeMux()
	alive := func(w http.ResponseWriter, _ *http.Request) { w.Write([]byte("ok\n")) }
	mux.HandleFunc("GET /healthz", alive)
	mux.HandleFunc("GET /livez", alive)
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, r *http.Request) {
		var b strings.Builder
		ok := true
		for _, c := range a.checks() {
			if c.err != nil {
				ok = false
				fmt.Fprintf(&b, "[-]%s failed: %v\n", c.name, c.err)
			} else {
				fmt.Fprintf(&b, "[+]%s ok\n", c.name)
			}
		}
		// The server being unreachable does not make the agent unready: it
		// keeps serving cached SVIDs. It is reported for operators.
		if a.node.Connected() {
			b.WriteString("[+]server_stream connected\n")
		} else {
			b.WriteString("[ ]server_stream disconnected (serving cached SVIDs)\n")
		}
		if !ok {
			w.WriteHeader(http.StatusServiceUnavailable)
		}
		if _, verbose := r.URL.Query()["verbose"]; verbose || !ok {
			w.Write([]byte(b.String()))
			return
		}
		w.Write([]byte("ok\n"))
	})
	mux.Handle("GET /metrics", promhttp.HandlerFor(a.reg, promhttp.HandlerOpts{}))
	// Only a loopback Host, localhost or the configured host: a page in a
	// browser on this host must not read /metrics by rebinding its name.
	srv := &http.Server{Handler: loopback.GuardHost(a.cfg.HealthListen, mux), ReadHeaderTimeout: 5 * time.Second, ReadTimeout: 10 * time.Second, WriteTimeout: 10 * time.Second}
	a.mu.Lock()
	a.healthLis, a.healthSrv = lis, srv
	a.mu.Unlock()
	go srv.Serve(lis)
	a.log.Info("health and metrics listening (plaintext, nothing secret)", "addr", lis.Addr().String())
	return nil
}
