package dataplane

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"runtime/debug"
	"runtime/pprof"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"go.opentelemetry.io/otel/trace"

	"github.com/moatless/moatless/internal/agent"
	"github.com/moatless/moatless/internal/config"
	"github.com/moatless/moatless/internal/policy"
	"github.com/moatless/moatless/internal/proxy"
	"github.com/moatless/moatless/internal/telemetry"
)

// RunSidecar runs "moatless sidecar -config FILE": one sidecar in front of
// one workload, its identity from a Workload API socket, PEM files or a
// join token (see docs/sidecar.md).
func RunSidecar(ctx context.Context, e *Env, args []string) int {
	rf, code, ok := ParseRoleFlags(e, "sidecar", "validate the config (and policy files) and exit", "Runs the mTLS sidecar in front of one workload.", "docs/sidecar.md", args)
	if !ok {
		return code
	}
	cfgPath, check, log := rf.CfgPath, rf.Check, rf.Log
	cfg, err := config.LoadSidecar(cfgPath)
	if err != nil {
		return e.Errorf(ExitUsage, "sidecar: %v", err)
	}
	// LoadSidecar validated the name; parsing again keeps a config built
	// any other way from silently falling back to BASE.
	pathNorm, err := policy.ParsePathNormalization(cfg.Policy.PathNormalization)
	if err != nil {
		return e.Errorf(ExitUsage, "sidecar: policy.path_normalization: %v", err)
	}
	sc := &sidecarRun{cfg: cfg, log: log, pathNorm: pathNorm, cfgPath: cfgPath}
	if _, err := telemetry.ParseTracingConfig(e.Env); err != nil {
		return e.Errorf(ExitUsage, "sidecar: %v", err)
	}
	if check {
		if err := sc.checkOnly(ctx); err != nil {
			return e.Errorf(ExitUsage, "sidecar: %v", err)
		}
		fmt.Fprintln(e.Stdout, "config OK")
		return ExitOK
	}
	sidecarGC(e.Env("GOGC"))
	// -check validates anywhere; serving needs Linux.
	if code, ok := e.LinuxOnly("moatless sidecar"); !ok {
		return code
	}
	tracer, stopTracing, err := e.Tracer(ctx, log, "moatless-sidecar")
	defer stopTracing()
	if err != nil {
		return e.Errorf(ExitUsage, "sidecar: %v", err)
	}
	sc.tracer = tracer
	stopped := LogLifecycle(ctx, log)
	if err := sc.run(ctx); stopped(err) {
		var ue UsageError
		if errors.As(err, &ue) {
			return ExitUsage
		}
		return ExitFailure
	}
	return ExitOK
}

// sidecarGCPercent is the sidecar's garbage collection target (Go's
// GOGC) unless the environment sets GOGC: the heap may grow 50% over what
// is live between collections instead of Go's 100%. In bench/run.sh that
// kept 1.0–1.5 MB less private memory per sidecar at about 1,000
// requests/s for about 1 µs more GC CPU per request through a pair (1–2%
// of its CPU); see docs/benchmarks.md. A sidecar's live heap is small and
// steady, so the memory, not the collector's CPU, is what it is short of.
const sidecarGCPercent = 50

// sidecarGC sets the sidecar's GC target unless gogc (the environment's
// GOGC, which the runtime already applied) says otherwise.
func sidecarGC(gogc string) {
	if gogc == "" {
		debug.SetGCPercent(sidecarGCPercent)
	}
}

// UsageError marks errors the user fixes in the config or its files: the
// command exits with ExitUsage.
type UsageError struct{ Err error }

func (u UsageError) Error() string { return u.Err.Error() }
func (u UsageError) Unwrap() error { return u.Err }

type sidecarRun struct {
	cfg     config.Sidecar
	cfgPath string
	log     *slog.Logger
	// pathNorm is cfg.Policy.PathNormalization parsed.
	pathNorm policy.PathNormalization
	// tracer traces requests; nil when tracing is off.
	tracer trace.Tracer
}

// policyOptions compile every policy set of this sidecar, from files or
// from the server: the set carries the path normalization, so the path
// policies match is also the path the app is served.
func (r *sidecarRun) policyOptions() policy.Options {
	return policy.Options{RootNamespace: r.cfg.Policy.RootNamespace, PathNormalization: r.pathNorm}
}

// checkOnly validates the policy files and the revocations file the way
// a start would: what fails here would stop the sidecar from starting.
// In an executable without OPA (moatless-sidecar) it also refuses policy
// files that hold Rego, which a start would accept and then deny.
func (r *sidecarRun) checkOnly(ctx context.Context) error {
	if len(r.cfg.Policy.Files) == 0 && r.cfg.Policy.RevocationsFile == "" {
		return nil
	}
	// A sidecar that only loads files and never serves: any local user
	// may "use" its listener, which is never bound.
	s, err := proxy.New(proxy.Config{Identity: &proxy.NodeIdentity{}, Outbound: []proxy.Outbound{{Listen: "127.0.0.1:0", Upstream: "127.0.0.1:1", ID: spiffeid.RequireFromString("spiffe://check/x")}},
		OutboundCallers: proxy.LocalCallers{AnyLocalUser: true}, Logger: r.log})
	if err != nil {
		return err
	}
	if err := CheckPolicyFiles(ctx, s, r.cfg.Policy, r.policyOptions(), r.log); err != nil {
		return err
	}
	// Started, this executable would serve such a policy and deny what
	// its Rego decides (proxy.Sidecar.RegoUnavailable); checked, it is a
	// config that cannot work here.
	if err := s.RegoUnavailable(); err != nil {
		return fmt.Errorf("policy.files: %w", err)
	}
	return nil
}

func (r *sidecarRun) run(ctx context.Context) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	cfg := r.cfg
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))

	var sidecar atomic.Pointer[proxy.Sidecar]
	mi, err := NewMeshIdentity(ctx, cfg.Identity, "sidecar", r.log, r.policyOptions(), TargetOf(&sidecar))
	if err != nil {
		return err
	}
	defer mi.Close()
	// jwksUri fetches trust the system roots and, in join mode, the
	// server's current bundle, so a RequestAuthentication naming our own
	// issuer works without extra configuration.
	verifier := NewJWTVerifier(ctx, mi, reg, r.log)
	defer verifier.Close()

	pc := proxy.Config{
		Identity:             mi.Source,
		Audit:                mi.AuditSink(),
		Namespace:            cfg.Namespace,
		Labels:               cfg.Labels,
		Verifier:             verifier,
		Logger:               r.log,
		AllowSampleRate:      cfg.DecisionLog.AllowSampleRate,
		DenyNamesPolicy:      cfg.DecisionLog.DenyNamesPolicy,
		Registerer:           reg,
		HandshakeTimeout:     cfg.HandshakeTimeout.Std(),
		IdleTimeout:          cfg.IdleTimeout.Std(),
		DrainTimeout:         cfg.DrainTimeout.Std(),
		MaxConnections:       cfg.MaxConnections,
		KeepStartupPages:     cfg.KeepStartupPages,
		DisableHTTP1FastPath: cfg.DisableHTTP1FastPath,
		Tracer:               r.tracer,
		Risk:                 &mi.Risk,
		OutboundCallers: proxy.LocalCallers{
			UIDs: cfg.OutboundAllowedUIDs, GIDs: cfg.OutboundAllowedGIDs, AnyLocalUser: cfg.OutboundAllowAnyLocalUser,
		},
	}
	for _, in := range cfg.Inbound {
		p, err := proxy.ParseProtocol(in.Protocol)
		if err != nil {
			return UsageError{err}
		}
		pc.Inbound = append(pc.Inbound, proxy.Inbound{Name: in.Name, Listen: in.Listen, App: in.App, Protocol: p, Port: in.Port, Upgrades: in.Upgrades})
	}
	for _, out := range cfg.Outbound {
		p, err := proxy.ParseProtocol(out.Protocol)
		if err != nil {
			return UsageError{err}
		}
		mode, err := config.ParseSocketMode(string(out.SocketMode))
		if err != nil {
			return UsageError{err}
		}
		pc.Outbound = append(pc.Outbound, proxy.Outbound{Name: out.Name, Listen: out.Listen, Upstream: out.Upstream, ID: spiffeid.RequireFromString(out.SPIFFEID), ServerName: out.ServerName, Protocol: p, HTTP1: !out.UpstreamHTTP2,
			SocketMode: mode, SocketGID: out.SocketGID, Upgrades: out.Upgrades, Hosts: out.Hosts})
	}

	// Join mode: traffic records go to the server over the node's
	// connection (detection, incidents, policy recommend).
	var rec *proxy.Recorder
	if mi.Node != nil && !cfg.Traffic.Disabled {
		var err error
		if rec, err = newRecorder(cfg, mi.Node, reg, r.log); err != nil {
			return err
		}
		pc.Recorder = rec
	}

	s, err := proxy.New(pc)
	if err != nil {
		return UsageError{err}
	}
	sidecar.Store(s)

	// Join mode: attest (or reuse the persisted SVID), then follow the
	// watch stream: bundle, revocations and policies arrive through the
	// callbacks and are acknowledged once in force. Files mode: load the
	// policy files and keep every file reloaded.
	background, err := mi.Start(ctx, s, cfg.Policy, r.policyOptions(), cfg.ReloadInterval.Std(), r.log, cancel)
	if err != nil {
		return err
	}
	if rec != nil {
		background = append(background, rec.Run)
	}
	if mi.Node == nil && len(cfg.Policy.Files) == 0 && len(cfg.Inbound) > 0 {
		r.log.Warn("no policy files: every request is denied until policies are configured (deny by default)")
	}

	if cfg.Admin != "off" {
		// The OPA API answers the users that may act as the workload
		// anyway: root, this uid and outbound_allowed_uids. Admitting
		// any local user to outbound does not open it to everyone.
		stop, err := ServeAdmin(cfg.Admin, reg, mi.Ready(s.Ready), func() string { return fmt.Sprintf("policy version %d", s.PolicyVersion()) }, s.Rego, cfg.OutboundAllowedUIDs, cfg.AdminPprof, r.log,
			fmt.Sprintf("another sidecar (or program) on this host uses it; every sidecar needs its own: set admin: to a free loopback address in %s, or admin: \"off\"", r.cfgPath))
		if err != nil {
			return err
		}
		defer stop()
	}

	return ServeBeside(ctx, cancel, background, s.Serve, proxy.ErrClosed)
}

// nodeRoots is the pool that verifies the server: the trust domain's
// current bundle.
// jwksClient is the HTTP client for JWKS and OIDC discovery fetches. A
// key server is trusted when its certificate verifies for the host name
// against the system roots, or — in join mode, where mesh returns the
// trust bundle in force at that moment (it rotates) — against the mesh's
// roots AND carries the moatless server's SPIFFE ID: every workload SVID
// chains to those roots too, so the name alone must not be enough to serve
// keys from them.
//
// The system roots are read at the first fetch, not when the client is
// made: most sidecars fetch no key set from outside the mesh, and the
// pool parsed from the system's bundle is about 400 KB of heap kept for
// the life of the process.
func jwksClient(mesh func() (roots []*x509.Certificate, serverID string)) *http.Client {
	system := sync.OnceValue(func() *x509.CertPool {
		pool, err := x509.SystemCertPool()
		if err != nil || pool == nil {
			return x509.NewCertPool()
		}
		return pool
	})
	dial := func(ctx context.Context, network, addr string) (net.Conn, error) {
		host, _, err := net.SplitHostPort(addr)
		if err != nil {
			return nil, err
		}
		conf := &tls.Config{
			ServerName: host,
			MinVersion: tls.VersionTLS12,
			// Verification happens in VerifyConnection, which checks the
			// chain and host name exactly as the default would and adds
			// the SPIFFE ID rule for mesh-issued certificates.
			InsecureSkipVerify: true,
			VerifyConnection: func(cs tls.ConnectionState) error {
				return verifyKeyServer(cs, host, system(), mesh)
			},
		}
		d := tls.Dialer{NetDialer: &net.Dialer{Timeout: 5 * time.Second}, Config: conf}
		return d.DialContext(ctx, network, addr)
	}
	return &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{
		Proxy: http.ProxyFromEnvironment, DialTLSContext: dial, TLSHandshakeTimeout: 5 * time.Second,
		MaxIdleConnsPerHost: 2, IdleConnTimeout: 90 * time.Second,
	}}
}

// verifyKeyServer is jwksClient's certificate check.
func verifyKeyServer(cs tls.ConnectionState, host string, system *x509.CertPool, mesh func() ([]*x509.Certificate, string)) error {
	if len(cs.PeerCertificates) == 0 {
		return errors.New("key server sent no certificate")
	}
	leaf := cs.PeerCertificates[0]
	inter := x509.NewCertPool()
	for _, c := range cs.PeerCertificates[1:] {
		inter.AddCert(c)
	}
	opts := x509.VerifyOptions{DNSName: host, Intermediates: inter, Roots: system}
	_, sysErr := leaf.Verify(opts)
	if sysErr == nil {
		return nil
	}
	roots, serverID := mesh()
	if len(roots) == 0 || serverID == "" {
		return sysErr
	}
	pool := x509.NewCertPool()
	for _, c := range roots {
		pool.AddCert(c)
	}
	opts.Roots = pool
	if _, err := leaf.Verify(opts); err != nil {
		return sysErr
	}
	for _, u := range leaf.URIs {
		if u.String() == serverID {
			return nil
		}
	}
	return fmt.Errorf("key server %s has a mesh certificate that is not the moatless server's (%s)", host, serverID)
}

func nodeRoots(n *agent.Node) *x509.CertPool {
	p := x509.NewCertPool()
	for _, c := range nodeCerts(n) {
		p.AddCert(c)
	}
	return p
}

// nodeCerts are the X.509 authorities of the bundle the node holds now.
func nodeCerts(n *agent.Node) []*x509.Certificate {
	var certs []*x509.Certificate
	if b := n.Bundle(); b != nil {
		for _, der := range b.X509Authorities {
			if c, err := x509.ParseCertificate(der); err == nil {
				certs = append(certs, c)
			}
		}
	}
	return certs
}

// cpuProfile writes a CPU profile of ?seconds=N (default 10, at most 60).
func cpuProfile(w http.ResponseWriter, r *http.Request) {
	secs := 10
	if v := r.URL.Query().Get("seconds"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 || n > 60 {
			http.Error(w, "seconds must be 1 to 60", http.StatusBadRequest)
			return
		}
		secs = n
	}
	w.Header().Set("Content-Type", "application/octet-stream")
	if err := pprof.StartCPUProfile(w); err != nil {
		http.Error(w, err.Error(), http.StatusConflict)
		return
	}
	select {
	case <-time.After(time.Duration(secs) * time.Second):
	case <-r.Context().Done():
	}
	pprof.StopCPUProfile()
}

// ServeBeside runs every background task beside serve and, once serve
// returns, cancels the role's context (cancel is the one its caller made
// for everything it started) and waits for the tasks, so a role never
// exits with one of them still writing. A cancelled context or the role's
// own "closed" error is a clean exit.
func ServeBeside(ctx context.Context, cancel context.CancelFunc, background []func(context.Context), serve func(context.Context) error, closed error) error {
	var wg sync.WaitGroup
	for _, f := range background {
		wg.Add(1)
		go func() { defer wg.Done(); f(ctx) }()
	}
	err := serve(ctx)
	cancel()
	wg.Wait()
	if errors.Is(err, context.Canceled) || errors.Is(err, closed) {
		return nil
	}
	return err
}
