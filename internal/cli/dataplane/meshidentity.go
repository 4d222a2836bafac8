package dataplane

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"runtime/pprof"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"github.com/spiffe/go-spiffe/v2/workloadapi"

	"github.com/moatless/moatless/internal/agent"
	"github.com/moatless/moatless/internal/authn"
	"github.com/moatless/moatless/internal/config"
	"github.com/moatless/moatless/internal/loopback"
	"github.com/moatless/moatless/internal/opaapi"
	"github.com/moatless/moatless/internal/policy"
	"github.com/moatless/moatless/internal/proxy"
	"github.com/moatless/moatless/internal/telemetry"
	"github.com/moatless/moatless/internal/wire"
)

// PolicyTarget is what a data-plane process puts policies and
// revocations in force in: a sidecar or the gateway.
type PolicyTarget interface {
	proxy.PolicyTarget
	SetAuthorizer(version uint64, a proxy.Authorizer)
}

// MeshIdentity is a sidecar's or the gateway's identity, set up from the
// identity section they share: PEM files, a Workload API socket, or a
// join token that makes the process its own agent (then policies,
// revocations and the bundle come over the watch stream, and denies are
// reported to the server's audit log).
type MeshIdentity struct {
	Source proxy.Identity
	files  *proxy.FileSource   // files mode, reloaded by a FileWatcher
	Node   *agent.Node         // join mode
	nodeID *proxy.NodeIdentity // join mode
	audit  *proxy.ServerAudit  // join mode
	// joined is the node once it exists, for the JWKS client.
	joined atomic.Pointer[agent.Node]
	// risk is the risk scores the watch stream pushes (join mode; empty
	// otherwise), for the spans.
	Risk    telemetry.RiskScores
	closers []func()
}

// NewMeshIdentity opens the identity source. target returns the process's
// policy target once it exists (nil before), for the watch stream's
// callbacks. Call close when done.
func NewMeshIdentity(ctx context.Context, id config.SidecarIdentity, component string, log *slog.Logger, opts policy.Options, target func() PolicyTarget) (*MeshIdentity, error) {
	m := &MeshIdentity{}
	switch {
	case id.Files != nil:
		f, err := proxy.NewFileSource(id.Files.Cert, id.Files.Key, id.Files.Bundle)
		if err != nil {
			return nil, UsageError{err}
		}
		m.files, m.Source = f, f
	case id.WorkloadAPI != "":
		log.Info("waiting for an X509-SVID from the Workload API", "addr", id.WorkloadAPI)
		wctx, wcancel := context.WithTimeout(ctx, 60*time.Second)
		src, err := workloadapi.NewX509Source(wctx, workloadapi.WithClientOptions(workloadapi.WithAddr(id.WorkloadAPI)))
		wcancel()
		if err != nil {
			return nil, fmt.Errorf("no X509-SVID from the Workload API at %s: %w (is the agent running, and is there a registration entry for this process?)", id.WorkloadAPI, err)
		}
		m.closers = append(m.closers, func() { src.Close() })
		m.Source = src
	case id.Join != nil:
		n, ni, err := newNode(id.Join, component, log, opts, target, &m.Risk)
		if err != nil {
			return nil, err
		}
		m.Node, m.nodeID, m.Source = n, ni, ni
		m.joined.Store(n)
		m.closers = append(m.closers, func() { n.Close() })
		m.audit = &proxy.ServerAudit{
			ServerAddrs: id.Join.Server.Addrs(),
			Identity:    ni,
			ServerRoots: func() *x509.CertPool { return nodeRoots(n) },
			Logger:      log,
		}
	}
	return m, nil
}

// TargetOf returns the policy target p holds once it is set (nil
// before: never a typed nil inside the interface).
func TargetOf[T any, PT interface {
	*T
	PolicyTarget
}](p *atomic.Pointer[T]) func() PolicyTarget {
	return func() PolicyTarget {
		if t := p.Load(); t != nil {
			return PT(t)
		}
		return nil
	}
}

// CheckPolicyFiles loads a role's policy and revocation files once into
// target, as -check does: an error names what does not load.
func CheckPolicyFiles(ctx context.Context, target proxy.PolicyTarget, pol config.SidecarPolicy, opts policy.Options, log *slog.Logger) error {
	w := &proxy.FileWatcher{Sidecar: target, PolicyFiles: pol.Files, PolicyOptions: opts, RevocationsFile: pol.RevocationsFile, Logger: log}
	return w.Load(ctx)
}

func (m *MeshIdentity) Close() {
	for _, c := range m.closers {
		c()
	}
}

// jwksClient is the client for JWKS fetches: system roots and, in join
// mode, the mesh bundle for the moatless server's own issuer.
func (m *MeshIdentity) jwksClient() *http.Client {
	return jwksClient(func() ([]*x509.Certificate, string) {
		if n := m.joined.Load(); n != nil && !n.ID().IsZero() {
			return nodeCerts(n), "spiffe://" + n.ID().TrustDomain().Name() + "/moatless/server"
		}
		return nil, ""
	})
}

// auditSink is the server audit reporter in join mode, nil otherwise.
func (m *MeshIdentity) AuditSink() proxy.AuditSink {
	if m.audit == nil {
		return nil
	}
	return m.audit
}

// start runs what the identity needs in the background. In join mode it
// attests (or reuses the persisted SVID) first and then follows the watch
// stream, calling fail when the connection to the server ends for good.
// In files mode it loads the policy and revocation files (an error here
// stops the start) and keeps them and the identity files reloaded.
func (m *MeshIdentity) Start(ctx context.Context, target proxy.PolicyTarget, pol config.SidecarPolicy, opts policy.Options, interval time.Duration, log *slog.Logger, fail func()) ([]func(context.Context), error) {
	var bg []func(context.Context)
	if m.Node != nil {
		actx, acancel := context.WithTimeout(ctx, 60*time.Second)
		err := m.Node.Attest(actx)
		acancel()
		if errors.Is(err, agent.ErrStaleState) || errors.Is(err, agent.ErrNoCredential) || errors.Is(err, agent.ErrDataDirInUse) || errors.Is(err, agent.ErrDataDirUnsafe) {
			return nil, UsageError{fmt.Errorf("identity.join.state_dir: %w", err)}
		}
		if err != nil {
			return nil, err
		}
		if b := m.Node.Bundle(); b != nil {
			if err := m.nodeID.SetBundle(*b); err != nil {
				return nil, err
			}
		}
		bg = append(bg, m.audit.Run, func(ctx context.Context) {
			if err := m.Node.Run(ctx); err != nil && ctx.Err() == nil {
				log.Error("server connection ended", "err", err)
				fail()
			}
		})
		return bg, nil
	}
	w := &proxy.FileWatcher{
		Sidecar: target, Identity: m.files, PolicyFiles: pol.Files, PolicyOptions: opts,
		RevocationsFile: pol.RevocationsFile, Interval: interval, Logger: log,
	}
	if err := w.Load(ctx); err != nil {
		return nil, UsageError{err}
	}
	return append(bg, w.Run), nil
}

// ready is the process's readiness: inner's, and in join mode not
// revoked (a revoked node reports the revocation, with its time and
// reason, instead of looking healthy).
func (m *MeshIdentity) Ready(inner func() error) func() error {
	return func() error {
		if err := inner(); err != nil {
			return err
		}
		if m.Node != nil {
			return m.Node.Refused()
		}
		return nil
	}
}

// ServeAdmin serves /metrics, /livez, /healthz, /readyz (ready says what
// is missing, status what is in force), optionally pprof, and OPA's
// read-only Data and Policy APIs over the Rego modules and data in force
// when rego is set, on a loopback address until the returned stop is
// called. An address in use (another instance on this host) is a usage
// error ending in inUse, which names the setting to change.
//
// The OPA API and pprof answer root, this process's uid and opaUIDs only
// (OPAUsers). Every route answers only requests whose Host is a loopback
// address, localhost or addr's host (loopback.GuardHost): a page in a
// browser on this host cannot read them by rebinding its name to
// 127.0.0.1.
func ServeAdmin(addr string, reg *prometheus.Registry, ready func() error, status func() string, rego func() *policy.Rego, opaUIDs []uint32, withPprof bool, log *slog.Logger, inUse string) (stop func(), err error) {
	var refused *prometheus.CounterVec
	if rego != nil || withPprof {
		refused = opaapi.NewRefusedCounter()
		if err := reg.Register(refused); err != nil {
			return nil, fmt.Errorf("admin listener: %w", err)
		}
	}
	l, err := net.Listen("tcp", addr)
	if errors.Is(err, syscall.EADDRINUSE) {
		return nil, UsageError{fmt.Errorf("admin listener: %w: %s", err, inUse)}
	}
	if err != nil {
		return nil, fmt.Errorf("admin listener: %w", err)
	}
	mux := HealthMux(reg)
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, _ *http.Request) {
		if err := ready(); err != nil {
			http.Error(w, err.Error(), http.StatusServiceUnavailable)
			return
		}
		fmt.Fprintf(w, "ok (%s)\n", status())
	})
	if rego != nil {
		(&opaapi.Handler{Rego: rego, Logger: log}).Register(mux, OPAUsers(opaUIDs, log, refused, "opa"))
	}
	if withPprof {
		// runtime/pprof directly: net/http/pprof would also register
		// itself on http.DefaultServeMux for the whole binary. The same
		// users as the OPA API: a profile shows the process's code paths
		// and memory, and a CPU profile costs CPU for as long as the
		// caller asks.
		users := OPAUsers(opaUIDs, log, refused, "pprof")
		mux.Handle("GET /debug/pprof/profile", users(http.HandlerFunc(cpuProfile)))
		mux.Handle("GET /debug/pprof/{name}", users(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			p := pprof.Lookup(r.PathValue("name"))
			if p == nil {
				http.Error(w, "unknown profile", http.StatusNotFound)
				return
			}
			w.Header().Set("Content-Type", "application/octet-stream")
			p.WriteTo(w, 0)
		})))
	}
	srv := &http.Server{Handler: loopback.GuardHost(addr, mux), ReadHeaderTimeout: 10 * time.Second}
	go srv.Serve(l)
	log.Info("admin listening", "addr", l.Addr().String())
	return func() { srv.Close() }, nil
}

// OPAUsers is the access check of a loopback OPA API (or of pprof, named
// by api): loopback callers under a loopback Host, in requests no proxy
// relayed, of uid 0, this process's effective uid or one of uids, as the
// kernel reports the owner of the caller's socket. Others get 403, a log
// line and, when refused is set, a count (opaapi.NewRefusedCounter);
// outside Linux every caller does.
func OPAUsers(uids []uint32, log *slog.Logger, refused *prometheus.CounterVec, api string) func(http.Handler) http.Handler {
	return (&opaapi.LocalUsers{UIDs: uids, ClientUID: proxy.LoopbackClientUID, Logger: log, Refused: refused, API: api}).Wrap
}

// newNode builds the agent client of join-token mode. Its callbacks feed
// the policy target, which exists by the time the first update arrives.
func newNode(j *config.SidecarJoin, component string, log *slog.Logger, opts policy.Options, target func() PolicyTarget, risk *telemetry.RiskScores) (*agent.Node, *proxy.NodeIdentity, error) {
	roots, err := ReadPEMCerts(j.ServerBundle)
	if err != nil {
		return nil, nil, UsageError{fmt.Errorf("identity.join.server_bundle: %w", err)}
	}
	token := ""
	if t, err := ReadTokenFile(j.TokenFile); err == nil {
		token = t
	} else if j.StateDir == "" {
		return nil, nil, UsageError{fmt.Errorf("identity.join.token_file: %w", err)}
	}
	ni := &proxy.NodeIdentity{}
	var node *agent.Node
	node, err = agent.NewNode(agent.NodeConfig{
		ServerAddrs: j.Server.Addrs(),
		TrustBundle: roots,
		JoinToken:   token,
		DataDir:     j.StateDir,
		Component:   component,
		Logger:      log,
		OnBundle: func(b wire.Bundle) {
			if err := ni.SetBundle(b); err != nil {
				log.Error("bundle from server refused; keeping the previous one", "err", err)
			}
		},
		OnRevocations: func(rv wire.Revocations) {
			if s := target(); s != nil {
				s.SetRevocations(&rv)
			}
		},
		OnPolicies: func(ps wire.PolicySet) {
			s := target()
			if s == nil {
				return
			}
			if ps.Version == 0 {
				// No policy was ever applied on the server: deny by
				// default, as in files mode without policy files. Once an
				// admin applies policies, Istio's semantics hold in full
				// (an empty set at a later version allows).
				s.SetAuthorizer(0, nil)
				log.Warn("the server has no policies yet: every request is denied until one is applied (moatless policy apply)")
				return
			}
			set, err := policy.FromWire(&ps, opts)
			if err == nil {
				s.SetAuthorizer(ps.Version, set)
				log.Info("policy version in force", "version", ps.Version, "documents", len(ps.Documents),
					"rego_modules", len(ps.Modules), "data_documents", len(ps.Data), "path_normalization", set.PathNormalization().String())
				return
			}
			s.ReloadFailed("policy")
			log.Error("policy set from server refused; keeping the version in force", "version", ps.Version, "in_force", s.PolicyVersion(), "err", err)
		},
		OnRisk: func(r wire.RiskScores) {
			risk.Set(r)
			log.Debug("risk scores in force", "identities", len(r.Scores))
		},
		OnSVID: func(s *x509svid.SVID) {
			log.Info("own SVID", "spiffe_id", s.ID.String(), "expires", s.Certificates[0].NotAfter)
		},
	})
	if err != nil {
		return nil, nil, UsageError{err}
	}
	ni.SVID = node.SVID
	return node, ni, nil
}

// NewJWTVerifier is the verifier of request tokens, with the JWKS client
// of the identity, the shared-secret issuers given, and its metrics
// registered.
func NewJWTVerifier(ctx context.Context, m *MeshIdentity, reg *prometheus.Registry, log *slog.Logger, shared ...authn.SharedSecret) *authn.Verifier {
	v := authn.NewVerifier(authn.Options{Logger: log, HTTPClient: m.jwksClient(), SharedSecrets: shared})
	v.Start(ctx)
	reg.MustRegister(authn.NewCollector(v))
	return v
}

// HealthMux is the start of an admin listener's mux: /metrics from reg
// and the liveness endpoints (/livez, /healthz alias). The caller adds
// /readyz, which differs per command.
func HealthMux(reg prometheus.Gatherer) *http.ServeMux {
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	live := func(w http.ResponseWriter, _ *http.Request) { fmt.Fprintln(w, "ok") }
	mux.HandleFunc("GET /livez", live)
	mux.HandleFunc("GET /healthz", live)
	return mux
}
