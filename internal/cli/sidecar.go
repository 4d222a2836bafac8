package cli

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"runtime/debug"
	"runtime/pprof"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"github.com/spiffe/go-spiffe/v2/workloadapi"

	"github.com/moatless/moatless/internal/agent"
	"github.com/moatless/moatless/internal/authn"
	"github.com/moatless/moatless/internal/config"
	"github.com/moatless/moatless/internal/opaapi"
	"github.com/moatless/moatless/internal/policy"
	"github.com/moatless/moatless/internal/proxy"
	"github.com/moatless/moatless/internal/wire"
)

// runSidecar runs "moatless sidecar -config FILE": one sidecar in front of
// one workload, its identity from a Workload API socket, PEM files or a
// join token (see docs/sidecar.md).
func runSidecar(ctx context.Context, e *Env, args []string) int {
	fs := flag.NewFlagSet("sidecar", flag.ContinueOnError)
	var (
		cfgPath   string
		logFormat string
		logLevel  string
		check     bool
	)
	fs.StringVar(&cfgPath, "config", "", "sidecar config `file` (YAML or JSON; required)")
	fs.StringVar(&logFormat, "log-format", "json", "log format: json or text")
	fs.StringVar(&logLevel, "log-level", "info", "log level: debug, info, warn or error")
	fs.BoolVar(&check, "check", false, "validate the config (and policy files) and exit")
	fs.Usage = func() {
		fmt.Fprintln(fs.Output(), "Usage: moatless sidecar -config FILE [flags]")
		fmt.Fprintln(fs.Output(), "\nRuns the mTLS sidecar in front of one workload. Flags:")
		fs.PrintDefaults()
	}
	if code, ok := e.parseFlags(fs, args); !ok {
		return code
	}
	if cfgPath == "" {
		return e.errorf(ExitUsage, "sidecar: -config is required (see docs/sidecar.md for an example)")
	}
	cfg, err := config.LoadSidecar(cfgPath)
	if err != nil {
		return e.errorf(ExitUsage, "sidecar: %v", err)
	}
	log, err := newLogger(e.Stderr, logFormat, logLevel)
	switch {
	case errors.Is(err, errLogFormat):
		return e.errorf(ExitUsage, "sidecar: -log-format must be json or text, not %q", logFormat)
	case err != nil:
		return e.errorf(ExitUsage, "sidecar: -log-level: %v", err)
	}
	// LoadSidecar validated the name; parsing again keeps a config built
	// any other way from silently falling back to BASE.
	pathNorm, err := policy.ParsePathNormalization(cfg.Policy.PathNormalization)
	if err != nil {
		return e.errorf(ExitUsage, "sidecar: policy.path_normalization: %v", err)
	}
	sc := &sidecarRun{cfg: cfg, log: log, pathNorm: pathNorm}
	if check {
		if err := sc.checkOnly(ctx); err != nil {
			return e.errorf(ExitUsage, "sidecar: %v", err)
		}
		fmt.Fprintln(e.Stdout, "config OK")
		return ExitOK
	}
	sidecarGC(e.getenv("GOGC"))
	if err := sc.run(ctx); err != nil {
		var ue usageError
		if errors.As(err, &ue) {
			return e.errorf(ExitUsage, "sidecar: %v", err)
		}
		return e.errorf(ExitFailure, "sidecar: %v", err)
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

// usageError marks errors the user fixes in the config or its files.
type usageError struct{ error }

func (u usageError) Unwrap() error { return u.error }

type sidecarRun struct {
	cfg config.Sidecar
	log *slog.Logger
	// pathNorm is cfg.Policy.PathNormalization parsed.
	pathNorm policy.PathNormalization
}

// policyOptions compile every policy set of this sidecar, from files or
// from the server: the set carries the path normalization, so the path
// policies match is also the path the app is served.
func (r *sidecarRun) policyOptions() policy.Options {
	return policy.Options{RootNamespace: r.cfg.Policy.RootNamespace, PathNormalization: r.pathNorm}
}

// checkOnly validates the policy files and the revocations file the way
// a start would: what fails here would stop the sidecar from starting.
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
	w := &proxy.FileWatcher{Sidecar: s, PolicyFiles: r.cfg.Policy.Files, PolicyOptions: r.policyOptions(),
		RevocationsFile: r.cfg.Policy.RevocationsFile, Logger: r.log}
	return w.Load(ctx)
}

func (r *sidecarRun) run(ctx context.Context) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	cfg := r.cfg
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))

	// jwksUri fetches trust the system roots and, in join mode, the
	// server's current bundle, so a RequestAuthentication naming our own
	// issuer works without extra configuration.
	var joined atomic.Pointer[agent.Node]
	verifier := authn.NewVerifier(authn.Options{Logger: r.log, HTTPClient: jwksClient(func() ([]*x509.Certificate, string) {
		if n := joined.Load(); n != nil && !n.ID().IsZero() {
			return nodeCerts(n), "spiffe://" + n.ID().TrustDomain().Name() + "/moatless/server"
		}
		return nil, ""
	})})
	defer verifier.Close()
	verifier.Start(ctx)
	reg.MustRegister(authn.NewCollector(verifier))

	pc := proxy.Config{
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
		OutboundCallers: proxy.LocalCallers{
			UIDs: cfg.OutboundAllowedUIDs, GIDs: cfg.OutboundAllowedGIDs, AnyLocalUser: cfg.OutboundAllowAnyLocalUser,
		},
	}
	for _, in := range cfg.Inbound {
		p, err := proxy.ParseProtocol(in.Protocol)
		if err != nil {
			return usageError{err}
		}
		pc.Inbound = append(pc.Inbound, proxy.Inbound{Name: in.Name, Listen: in.Listen, App: in.App, Protocol: p, Port: in.Port, Upgrades: in.Upgrades})
	}
	for _, out := range cfg.Outbound {
		p, err := proxy.ParseProtocol(out.Protocol)
		if err != nil {
			return usageError{err}
		}
		mode, err := config.ParseSocketMode(string(out.SocketMode))
		if err != nil {
			return usageError{err}
		}
		pc.Outbound = append(pc.Outbound, proxy.Outbound{Name: out.Name, Listen: out.Listen, Upstream: out.Upstream, ID: spiffeid.RequireFromString(out.SPIFFEID), ServerName: out.ServerName, Protocol: p, HTTP1: !out.UpstreamHTTP2,
			SocketMode: mode, SocketGID: out.SocketGID, Upgrades: out.Upgrades})
	}

	var (
		background []func(context.Context)
		files      *proxy.FileSource
		sidecar    *proxy.Sidecar
		node       *agent.Node
		nodeID     *proxy.NodeIdentity
	)
	switch id := cfg.Identity; {
	case id.Files != nil:
		f, err := proxy.NewFileSource(id.Files.Cert, id.Files.Key, id.Files.Bundle)
		if err != nil {
			return usageError{err}
		}
		files = f
		pc.Identity = f
	case id.WorkloadAPI != "":
		r.log.Info("waiting for an X509-SVID from the Workload API", "addr", id.WorkloadAPI)
		wctx, wcancel := context.WithTimeout(ctx, 60*time.Second)
		src, err := workloadapi.NewX509Source(wctx, workloadapi.WithClientOptions(workloadapi.WithAddr(id.WorkloadAPI)))
		wcancel()
		if err != nil {
			return fmt.Errorf("no X509-SVID from the Workload API at %s: %w (is the agent running, and is there a registration entry for this process?)", id.WorkloadAPI, err)
		}
		defer src.Close()
		pc.Identity = src
	case id.Join != nil:
		n, ni, err := r.newNode(id.Join, func() *proxy.Sidecar { return sidecar })
		if err != nil {
			return err
		}
		node, nodeID = n, ni
		joined.Store(n)
		defer node.Close()
		pc.Identity = nodeID
		audit := &proxy.ServerAudit{
			ServerAddr:  strings.TrimPrefix(id.Join.Server, "https://"),
			Identity:    nodeID,
			ServerRoots: func() *x509.CertPool { return nodeRoots(node) },
			Logger:      r.log,
		}
		pc.Audit = audit
		background = append(background, audit.Run)
	}

	s, err := proxy.New(pc)
	if err != nil {
		return usageError{err}
	}
	sidecar = s

	if node != nil {
		// Attest (or reuse the persisted SVID), then follow the watch
		// stream: bundle, revocations and policies arrive through the
		// callbacks and are acknowledged once in force.
		actx, acancel := context.WithTimeout(ctx, 60*time.Second)
		err := node.Attest(actx)
		acancel()
		if err != nil {
			return err
		}
		if b := node.Bundle(); b != nil {
			if err := nodeID.SetBundle(*b); err != nil {
				return err
			}
		}
		background = append(background, func(ctx context.Context) {
			if err := node.Run(ctx); err != nil && ctx.Err() == nil {
				r.log.Error("server connection ended", "err", err)
				cancel()
			}
		})
	} else {
		w := &proxy.FileWatcher{
			Sidecar: s, Identity: files, PolicyFiles: cfg.Policy.Files, PolicyOptions: r.policyOptions(),
			RevocationsFile: cfg.Policy.RevocationsFile, Interval: cfg.ReloadInterval.Std(), Logger: r.log,
		}
		if err := w.Load(ctx); err != nil {
			return usageError{err}
		}
		if len(cfg.Policy.Files) == 0 && len(cfg.Inbound) > 0 {
			r.log.Warn("no policy files: every request is denied until policies are configured (deny by default)")
		}
		background = append(background, w.Run)
	}

	if cfg.Admin != "off" {
		l, err := net.Listen("tcp", cfg.Admin)
		if err != nil {
			return fmt.Errorf("admin listener: %w", err)
		}
		mux := http.NewServeMux()
		mux.Handle("GET /metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
		live := func(w http.ResponseWriter, _ *http.Request) { fmt.Fprintln(w, "ok") }
		mux.HandleFunc("GET /livez", live)
		mux.HandleFunc("GET /healthz", live)
		mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, _ *http.Request) {
			if err := s.Ready(); err != nil {
				http.Error(w, err.Error(), http.StatusServiceUnavailable)
				return
			}
			fmt.Fprintf(w, "ok (policy version %d)\n", s.PolicyVersion())
		})
		// OPA's Data and Policy APIs, read-only, over the Rego modules and
		// data of the policy version in force.
		(&opaapi.Handler{Rego: s.Rego, Logger: r.log}).Register(mux, opaapi.LoopbackOnly)
		if cfg.AdminPprof {
			// runtime/pprof directly: net/http/pprof would also register
			// itself on http.DefaultServeMux for the whole binary.
			mux.HandleFunc("GET /debug/pprof/profile", cpuProfile)
			mux.HandleFunc("GET /debug/pprof/{name}", func(w http.ResponseWriter, r *http.Request) {
				p := pprof.Lookup(r.PathValue("name"))
				if p == nil {
					http.Error(w, "unknown profile", http.StatusNotFound)
					return
				}
				w.Header().Set("Content-Type", "application/octet-stream")
				p.WriteTo(w, 0)
			})
		}
		srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
		go srv.Serve(l)
		defer srv.Close()
		r.log.Info("admin listening", "addr", l.Addr().String())
	}

	var wg sync.WaitGroup
	for _, f := range background {
		wg.Add(1)
		go func() { defer wg.Done(); f(ctx) }()
	}
	err = s.Serve(ctx)
	cancel()
	wg.Wait()
	if errors.Is(err, context.Canceled) || errors.Is(err, proxy.ErrClosed) {
		r.log.Info("sidecar stopped")
		return nil
	}
	return err
}

// newNode builds the agent client of join-token mode. Its callbacks feed
// the sidecar, which exists by the time the first update arrives.
func (r *sidecarRun) newNode(j *config.SidecarJoin, sidecar func() *proxy.Sidecar) (*agent.Node, *proxy.NodeIdentity, error) {
	roots, err := readPEMCerts(j.ServerBundle)
	if err != nil {
		return nil, nil, usageError{fmt.Errorf("identity.join.server_bundle: %w", err)}
	}
	token := ""
	if t, err := readTokenFile(j.TokenFile); err == nil {
		token = t
	} else if j.StateDir == "" {
		return nil, nil, usageError{fmt.Errorf("identity.join.token_file: %w", err)}
	}
	ni := &proxy.NodeIdentity{}
	var node *agent.Node
	node, err = agent.NewNode(agent.NodeConfig{
		ServerAddr:  strings.TrimPrefix(j.Server, "https://"),
		TrustBundle: roots,
		JoinToken:   token,
		DataDir:     j.StateDir,
		Component:   "sidecar",
		Logger:      r.log,
		OnBundle: func(b wire.Bundle) {
			if err := ni.SetBundle(b); err != nil {
				r.log.Error("bundle from server refused; keeping the previous one", "err", err)
			}
		},
		OnRevocations: func(rv wire.Revocations) {
			if s := sidecar(); s != nil {
				s.SetRevocations(&rv)
			}
		},
		OnPolicies: func(ps wire.PolicySet) {
			s := sidecar()
			if s == nil {
				return
			}
			if ps.Version == 0 {
				// No policy was ever applied on the server: deny by
				// default, as in files mode without policy files. Once an
				// admin applies policies, Istio's semantics hold in full
				// (an empty set at a later version allows).
				s.SetAuthorizer(0, nil)
				r.log.Warn("the server has no policies yet: every request is denied until one is applied (moatless policy apply)")
				return
			}
			set, err := policy.FromWire(&ps, r.policyOptions())
			if err == nil {
				s.SetAuthorizer(ps.Version, set)
				r.log.Info("policy version in force", "version", ps.Version, "documents", len(ps.Documents),
					"rego_modules", len(ps.Modules), "data_documents", len(ps.Data), "path_normalization", set.PathNormalization().String())
				return
			}
			s.ReloadFailed("policy")
			r.log.Error("policy set from server refused; keeping the version in force", "version", ps.Version, "in_force", s.PolicyVersion(), "err", err)
		},
		OnSVID: func(s *x509svid.SVID) {
			r.log.Info("own SVID", "spiffe_id", s.ID.String(), "expires", s.Certificates[0].NotAfter)
		},
	})
	if err != nil {
		return nil, nil, usageError{err}
	}
	ni.SVID = node.SVID
	return node, ni, nil
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
func jwksClient(mesh func() (roots []*x509.Certificate, serverID string)) *http.Client {
	system, err := x509.SystemCertPool()
	if err != nil || system == nil {
		system = x509.NewCertPool()
	}
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
				return verifyKeyServer(cs, host, system, mesh)
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
