package cli

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"sync/atomic"
	"time"

	jose "github.com/go-jose/go-jose/v4"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"go.opentelemetry.io/otel/trace"

	"github.com/moatless/moatless/internal/authn"
	"github.com/moatless/moatless/internal/cli/dataplane"
	"github.com/moatless/moatless/internal/config"
	"github.com/moatless/moatless/internal/gateway"
	"github.com/moatless/moatless/internal/policy"
	"github.com/moatless/moatless/internal/proxy"
	"github.com/moatless/moatless/internal/telemetry"
)

// runGateway runs "moatless gateway -config FILE": the edge in front of
// the mesh (see docs/gateway.md).
func runGateway(ctx context.Context, e *Env, args []string) int {
	rf, code, ok := dataplane.ParseRoleFlags(e.dp(), "gateway", "validate the config and every file it names, then exit", "Runs the edge gateway: TLS, WAF, rate limits, IP rules, JWT, policy, then mTLS into the mesh.", "docs/gateway.md", args)
	if !ok {
		return code
	}
	cfgPath, check, log := rf.CfgPath, rf.Check, rf.Log
	cfg, err := config.LoadGateway(cfgPath)
	if err != nil {
		return e.errorf(ExitUsage, "gateway: %v", err)
	}
	gr := &gatewayRun{path: cfgPath, cfg: cfg, log: log, stderr: e}
	if _, err := telemetry.ParseTracingConfig(e.getenv); err != nil {
		return e.errorf(ExitUsage, "gateway: %v", err)
	}
	if check {
		if err := gr.checkOnly(ctx); err != nil {
			return e.errorf(ExitUsage, "gateway: %v", err)
		}
		fmt.Fprintln(e.Stdout, "config OK")
		// The bounds in force once defaults are filled, which a user
		// cannot see in the file: the body limit and the lingering
		// close's (linger_bytes defaults from max_body_bytes).
		l := cfg.Limits
		fmt.Fprintf(e.Stdout, "limits: max_body_bytes=%d linger_timeout=%s linger_time=%s linger_bytes=%d\n",
			l.MaxBodyBytes, l.LingerTimeout.Std(), l.LingerTime.Std(), l.LingerBytes)
		return ExitOK
	}
	tracer, stopTracing, err := e.dp().Tracer(ctx, log, "moatless-gateway")
	defer stopTracing()
	if err != nil {
		return e.errorf(ExitUsage, "gateway: %v", err)
	}
	gr.tracer = tracer
	stopped := dataplane.LogLifecycle(ctx, log)
	if err := gr.run(ctx); stopped(err) {
		var ue dataplane.UsageError
		if errors.As(err, &ue) {
			return ExitUsage
		}
		return ExitFailure
	}
	return ExitOK
}

type gatewayRun struct {
	path   string
	cfg    config.Gateway
	log    *slog.Logger
	stderr *Env
	// tracer traces requests; nil when tracing is off.
	tracer trace.Tracer
}

func (r *gatewayRun) policyOptions() policy.Options {
	pn, _ := policy.ParsePathNormalization(r.cfg.Policy.PathNormalization)
	return policy.Options{RootNamespace: r.cfg.Policy.RootNamespace, PathNormalization: pn}
}

// checkOnly builds the gateway as a start would (certificate, routes,
// WAF rules, schemas, secrets) and loads the policy files, without
// binding anything: what fails here would stop the gateway from
// starting.
func (r *gatewayRun) checkOnly(ctx context.Context) error {
	if _, err := sharedSecrets(r.cfg.JWT.HMACIssuers); err != nil {
		return err
	}
	g, err := gateway.New(gateway.Options{Config: r.cfg, Identity: &proxy.NodeIdentity{}, Logger: r.log, AccessLog: io.Discard})
	if err != nil {
		return err
	}
	defer g.Close()
	if len(r.cfg.Policy.Files) == 0 && r.cfg.Policy.RevocationsFile == "" {
		return nil
	}
	return dataplane.CheckPolicyFiles(ctx, g, r.cfg.Policy, r.policyOptions(), r.log)
}

func (r *gatewayRun) run(ctx context.Context) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	cfg := r.cfg
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))

	var gw atomic.Pointer[gateway.Gateway]
	mi, err := dataplane.NewMeshIdentity(ctx, cfg.Identity, "gateway", r.log, r.policyOptions(), dataplane.TargetOf(&gw))
	if err != nil {
		return err
	}
	defer mi.Close()
	shared, err := sharedSecrets(cfg.JWT.HMACIssuers)
	if err != nil {
		return dataplane.UsageError{Err: err}
	}
	verifier := dataplane.NewJWTVerifier(ctx, mi, reg, r.log, shared...)
	defer verifier.Close()

	// Join mode: traffic records go to the server over the node's
	// connection, as the sidecars' do.
	var rec *proxy.Recorder
	if mi.Node != nil {
		if rec, err = dataplane.NewGatewayRecorder(cfg, mi.Node, reg, r.log); err != nil {
			return err
		}
	}
	g, err := gateway.New(gateway.Options{
		Config:     cfg,
		Identity:   mi.Source,
		Verifier:   verifier,
		Logger:     r.log,
		AccessLog:  r.stderr.Stderr,
		Audit:      mi.AuditSink(),
		Recorder:   rec,
		Registerer: reg,
		Tracer:     r.tracer,
		Risk:       &mi.Risk,
	})
	if err != nil {
		return dataplane.UsageError{Err: err}
	}
	gw.Store(g)
	background, err := mi.Start(ctx, g, cfg.Policy, r.policyOptions(), cfg.ReloadInterval.Std(), r.log, cancel)
	if err != nil {
		return err
	}
	if mi.Node == nil && len(cfg.Policy.Files) == 0 {
		r.log.Warn("no policy files: every request is denied until policies are configured (deny by default)")
	}
	if rec != nil {
		background = append(background, rec.Run)
	}
	background = append(background, func(ctx context.Context) { r.watchConfig(ctx, g) })

	if cfg.Admin != "off" {
		stop, err := dataplane.ServeAdmin(cfg.Admin, reg, mi.Ready(g.Ready), func() string { return fmt.Sprintf("policy version %d", g.PolicyVersion()) }, g.Rego, nil, cfg.AdminPprof, r.log,
			fmt.Sprintf("another gateway (or program) on this host uses it; every gateway needs its own: set admin: to a free loopback address in %s, or admin: \"off\"", r.path))
		if err != nil {
			return err
		}
		defer stop()
	}

	return dataplane.ServeBeside(ctx, cancel, background, g.Serve, gateway.ErrClosed)
}

// watchConfig re-reads the config file and the TLS certificate every
// reload interval (reloadTick) until ctx is done.
func (r *gatewayRun) watchConfig(ctx context.Context, g *gateway.Gateway) {
	w := r.newConfigWatch()
	t := time.NewTicker(r.cfg.ReloadInterval.Std())
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		r.reloadTick(ctx, g, w)
	}
}

// configWatch is what reloadTick remembers from one tick to the next.
type configWatch struct {
	// applied is the hash of the config file in force, pending that of
	// a changed file read once (applied when the next read agrees).
	applied, pending [32]byte
	// failures decides which read failures are logged.
	failures telemetry.FailureLog
}

func (r *gatewayRun) newConfigWatch() *configWatch {
	cur, _ := readSmallFile(r.path, config.MaxFileSize)
	return &configWatch{applied: sha256.Sum256(cur)}
}

// reloadTick is one tick of watchConfig: it re-reads the TLS certificate
// (ReloadCertificate), then the config file. A changed config is applied
// once two consecutive reads agree (never a half-written file); one that
// does not load or validate, or changes a setting that needs a restart,
// is refused with a log line and a metric, and the one in force keeps
// serving. A file that cannot be read is logged when that starts or the
// error changes, and once when it reads again, not on every tick: with
// the default interval a lasting failure would otherwise log every 2 s.
func (r *gatewayRun) reloadTick(ctx context.Context, g *gateway.Gateway, w *configWatch) {
	g.ReloadCertificate() // logs and counts its own failures the same way
	b, err := readSmallFile(r.path, config.MaxFileSize)
	if err != nil {
		g.ReloadFailed("config")
		if w.failures.Failed("config", err) {
			r.log.Error("config reload failed; keeping the one in force until the file reads", "file", r.path, "err", err)
		}
		return
	}
	if w.failures.Worked("config") {
		r.log.Info("config file reads again", "file", r.path)
	}
	sum := sha256.Sum256(b)
	if sum == w.applied {
		return
	}
	if sum != w.pending {
		w.pending = sum
		return
	}
	w.applied = sum
	cfg, err := config.ParseGateway(bytes.NewReader(b))
	if err == nil {
		err = g.Reload(ctx, cfg)
	}
	if err != nil {
		g.ReloadFailed("config")
		r.log.Error("config reload refused; keeping the one in force", "file", r.path, "err", err)
		return
	}
	r.log.Info("config reloaded", "file", r.path, "routes", len(cfg.Routes))
}

// sharedSecrets reads the HMAC issuers' secret files: the bytes as they
// are, one trailing newline aside (echo adds one). A secret that is too
// short for its algorithm stops the start, naming the file, never the
// secret.
func sharedSecrets(issuers []config.GatewayHMACIssuer) ([]authn.SharedSecret, error) {
	var out []authn.SharedSecret
	for i, h := range issuers {
		b, err := readSmallFile(h.SecretFile, 4096)
		if err != nil {
			return nil, fmt.Errorf("jwt.hmac_issuers[%d].secret_file: %w", i, err)
		}
		b = bytes.TrimSuffix(bytes.TrimSuffix(b, []byte("\n")), []byte("\r"))
		s := authn.SharedSecret{Issuer: h.Issuer, Algorithm: jose.SignatureAlgorithm(h.Algorithm), Secret: b}
		if err := s.Check(); err != nil {
			return nil, fmt.Errorf("jwt.hmac_issuers[%d] (%s): %w", i, h.SecretFile, err)
		}
		out = append(out, s)
	}
	return out, nil
}
