package cli

import (
	"context"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	securityv1beta1 "istio.io/api/security/v1beta1"

	"github.com/moatless/moatless/internal/authn"
	"github.com/moatless/moatless/internal/cli/dataplane"
	"github.com/moatless/moatless/internal/extauthz"
	"github.com/moatless/moatless/internal/loopback"
	"github.com/moatless/moatless/internal/opaapi"
	"github.com/moatless/moatless/internal/policy"
	"github.com/moatless/moatless/internal/proxy"
	"github.com/moatless/moatless/internal/server"
	"github.com/moatless/moatless/internal/telemetry"
	"github.com/moatless/moatless/internal/wire"
)

const authzUsage = `Usage: moatless authz -f FILE_OR_DIR [-f ...] --listen ADDR [flags]

Serves Envoy's external authorization API (gRPC envoy.service.auth.v3) with
Moatless's decision function over policy files: Istio AuthorizationPolicy,
PeerAuthentication-free RequestAuthentication, RegoProviders, *.rego modules
and data.json. Files are re-read every --reload-interval; a change applies
once two reads agree, and one that does not compile keeps the policy in force.

Revocations: with --revocations FILE (a JSON revocation list, the format of
a sidecar's revocations_file, re-read every --reload-interval) a revoked
source SPIFFE ID is denied and a revoked token, or one issued to or for a
revoked workload, is refused. Without it nothing revoked on a server is
refused here: a revoked token lasts until its exp, a revoked workload
until its SVID expires. "moatless server --ext-authz" follows the
server's revocations itself.

--listen unix:/path serves a unix socket (mode 0660) to the UIDs of
--allow-uid (default: this process's); --listen host:port needs mutual TLS
(--tls-cert, --tls-key, --client-ca). Envoy's context_extensions "namespace"
and "labels" (app=web,tier=front) name the destination per route; --namespace
and --label are the default.

Flags:
`

// runAuthz runs "moatless authz": a standalone ext_authz server.
func runAuthz(ctx context.Context, e *Env, args []string) int {
	fs := flag.NewFlagSet("authz", flag.ContinueOnError)
	var (
		files, labels, uids           stringList
		listen, admin, ns, root, norm string
		cert, key, clientCA           string
		logLevel, revFile             string
		reload                        time.Duration
	)
	fs.Var(&files, "f", "policy `file or directory` (repeatable)")
	fs.StringVar(&listen, "listen", "", "`address`: unix:/path or host:port (required)")
	fs.StringVar(&cert, "tls-cert", "", "server certificate `file` (PEM) for a TCP listener")
	fs.StringVar(&key, "tls-key", "", "server key `file` (PEM) for a TCP listener")
	fs.StringVar(&clientCA, "client-ca", "", "`file` of CA certificates (PEM) client certificates must chain to")
	fs.Var(&uids, "allow-uid", "`uid` allowed on a unix socket (repeatable; default this process's)")
	fs.StringVar(&ns, "namespace", policy.DefaultNamespace, "destination `namespace` when the context extensions name none")
	fs.Var(&labels, "label", "destination label `key=value` (repeatable) when the context extensions name none")
	fs.StringVar(&root, "root-namespace", policy.DefaultRootNamespace, "root `namespace`: its policies apply mesh-wide")
	fs.StringVar(&norm, "path-normalization", "BASE", "path normalization: NONE, BASE, MERGE_SLASHES or DECODE_AND_MERGE_SLASHES")
	fs.StringVar(&admin, "admin", "127.0.0.1:15010", "loopback `address` of /metrics, /livez, /readyz and the read-only OPA API; off to disable")
	fs.StringVar(&revFile, "revocations", "", "JSON revocation list `file` (a sidecar's revocations_file: spiffe_ids, serials, token_ids), re-read every --reload-interval; without it nothing revoked on a server is refused")
	fs.DurationVar(&reload, "reload-interval", 2*time.Second, "how often policy (and revocation) files are checked for changes")
	fs.StringVar(&logLevel, "log-level", "info", "debug, info, warn or error")
	fs.Usage = func() {
		fmt.Fprint(fs.Output(), authzUsage)
		fs.PrintDefaults()
	}
	if code, ok := e.parseFlags(fs, args); !ok {
		return code
	}
	if code, ok := e.linuxOnly("moatless authz"); !ok {
		return code
	}
	switch {
	case len(files) == 0:
		return e.errorf(ExitUsage, "authz: give the policies with -f FILE_OR_DIR")
	case listen == "":
		return e.errorf(ExitUsage, "authz: --listen unix:/path or host:port is required")
	case reload <= 0:
		return e.errorf(ExitUsage, "authz: --reload-interval must be positive")
	case slices.Contains(files, "-"):
		// Standard input is read once: every reload would read it empty
		// and, two reads agreeing, put an empty policy set in force,
		// which allows every request.
		return e.errorf(ExitUsage, "authz: -f -: standard input cannot be re-read on reload; give a file or directory")
	}
	mode, err := policy.ParsePathNormalization(norm)
	if err != nil {
		return e.errorf(ExitUsage, "authz: --path-normalization: %v", err)
	}
	dst := policy.Destination{Namespace: ns, Labels: map[string]string{}}
	for _, l := range labels {
		k, v, ok := strings.Cut(l, "=")
		if !ok || k == "" {
			return e.errorf(ExitUsage, "authz: --label %q: want key=value", l)
		}
		dst.Labels[k] = v
	}
	var allow []uint32
	for _, u := range uids {
		n, err := strconv.ParseUint(u, 10, 32)
		if err != nil {
			return e.errorf(ExitUsage, "authz: --allow-uid %q is not a uid", u)
		}
		allow = append(allow, uint32(n))
	}
	var tlsConf *tls.Config
	if !strings.HasPrefix(listen, "unix:") {
		if tlsConf, err = mutualTLS(cert, key, clientCA); err != nil {
			return e.errorf(ExitUsage, "authz: %v", err)
		}
	}
	log, err := dataplane.NewLogger(e.Stderr, "json", logLevel)
	if err != nil {
		return e.errorf(ExitUsage, "authz: --log-level: %v", err)
	}

	reg := prometheus.NewRegistry()
	failures := prometheus.NewCounterVec(prometheus.CounterOpts{Name: "moatless_authz_reload_failures_total",
		Help: "Failed reloads of policy or revocation files (what: policy, revocations); what was in force stays."}, []string{"what"})
	reg.MustRegister(failures)
	revs := &proxy.Revocations{}
	verifier := authn.NewVerifier(authn.Options{Logger: log, Revoked: revs.Token})
	defer verifier.Close()
	verifier.Start(ctx)
	pol := &filePolicy{e: e, files: files, opts: policy.Options{RootNamespace: root, PathNormalization: mode}, log: log, verifier: verifier, dst: dst, failed: failures}
	if err := pol.load(ctx, true); err != nil {
		return e.errorf(ExitUsage, "authz: %v", err)
	}
	var revWatch *proxy.FileWatcher
	if revFile != "" {
		// A missing file is refused rather than read as an empty list: a
		// mistyped path would otherwise leave everything revoked allowed.
		if _, err := os.Stat(revFile); err != nil {
			return e.errorf(ExitUsage, "authz: --revocations: %v (for an empty list write {} to the file)", err)
		}
		revWatch = &proxy.FileWatcher{Sidecar: &authzRevocations{revs: revs, failed: failures}, RevocationsFile: revFile, Interval: reload, Logger: log}
		if err := revWatch.Load(ctx); err != nil {
			return e.errorf(ExitUsage, "authz: --revocations: %v", err)
		}
	} else {
		log.Warn("no --revocations file: tokens and workloads revoked on a server are not refused here")
	}
	srv, err := extauthz.New(extauthz.Config{Policy: pol.current, Verifier: verifier, Destination: dst, Logger: log, Registerer: reg, Revocations: revs})
	if err != nil {
		return e.errorf(ExitFailure, "authz: %v", err)
	}
	l, creds, err := extauthz.Listen(listen, tlsConf, allow)
	if err != nil {
		return e.errorf(ExitFailure, "authz: %v", err)
	}
	if admin != "off" {
		if err := serveAuthzAdmin(ctx, admin, reg, pol, log); err != nil {
			l.Close()
			return e.errorf(ExitUsage, "authz: --admin: %v", err)
		}
	}
	go func() {
		t := time.NewTicker(reload)
		defer t.Stop()
		pol.watch(ctx, t.C)
	}()
	if revWatch != nil {
		go revWatch.Run(ctx)
	}
	log.Info("ext_authz serving", "listen", l.Addr().String(), "policy_version", pol.version.Load())
	stopped := dataplane.LogLifecycle(ctx, log)
	if err := srv.Serve(ctx, l, creds); errors.Is(err, net.ErrClosed) {
		stopped(nil)
	} else if stopped(err) {
		return ExitFailure
	}
	return ExitOK
}

// mutualTLS is the TLS config of a TCP ext_authz listener: a server
// certificate, client certificates required and verified against clientCA.
func mutualTLS(cert, key, clientCA string) (*tls.Config, error) {
	if cert == "" || key == "" || clientCA == "" {
		return nil, errors.New("a TCP --listen needs --tls-cert, --tls-key and --client-ca (mutual TLS); or listen on unix:/path")
	}
	kp, err := tls.LoadX509KeyPair(cert, key)
	if err != nil {
		return nil, fmt.Errorf("--tls-cert/--tls-key: %w", err)
	}
	pem, err := os.ReadFile(clientCA)
	if err != nil {
		return nil, fmt.Errorf("--client-ca: %w", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pem) {
		return nil, fmt.Errorf("--client-ca: %s holds no PEM certificate", clientCA)
	}
	return &tls.Config{Certificates: []tls.Certificate{kp}, ClientCAs: pool, ClientAuth: tls.RequireAndVerifyClientCert, MinVersion: tls.VersionTLS12}, nil
}

// filePolicy is the policy of "moatless authz", from files.
type filePolicy struct {
	e        *Env
	files    []string
	opts     policy.Options
	log      *slog.Logger
	verifier *authn.Verifier
	dst      policy.Destination

	set      atomic.Pointer[policy.Set]
	version  atomic.Uint64
	sum      [32]byte
	pending  [32]byte
	failures telemetry.FailureLog   // which reload outcomes are logged
	failed   *prometheus.CounterVec // moatless_authz_reload_failures_total; nil for none
}

func (p *filePolicy) current() (*policy.Set, uint64) { return p.set.Load(), p.version.Load() }

// watch reloads the files on every tick until ctx ends or ticks closes. A
// failed reload keeps the policy in force and is logged once per change
// of the error, not on every tick a broken file stays broken.
func (p *filePolicy) watch(ctx context.Context, ticks <-chan time.Time) {
	for {
		select {
		case <-ctx.Done():
			return
		case _, ok := <-ticks:
			if !ok {
				return
			}
			err := p.load(ctx, false)
			switch {
			case err == nil:
				// Not logged as a recovery: nil is also a changed file
				// waiting for its second read (load).
				p.failures.Worked("policy")
			default:
				if p.failed != nil {
					p.failed.WithLabelValues("policy").Inc()
				}
				if p.failures.Failed("policy", err) {
					p.log.Error("policy reload failed; keeping the policy in force", "err", err)
				}
			}
		}
	}
}

// load reads the files and puts them in force when they changed and (but
// at start) two consecutive reads agree, so a half-written file is never
// in force.
func (p *filePolicy) load(ctx context.Context, first bool) error {
	pf, err := p.e.readPolicyFiles("authz", p.files)
	if err != nil {
		return err
	}
	h := sha256.New()
	for _, f := range pf {
		fmt.Fprintf(h, "%s\x00%d\x00%s", f.Name, len(f.Content), f.Content)
	}
	var sum [32]byte
	copy(sum[:], h.Sum(nil))
	if !first && sum == p.sum {
		return nil
	}
	if !first && sum != p.pending {
		p.pending = sum
		return nil
	}
	var b policy.Bundle
	for _, f := range pf {
		if err := b.Add(f.Name, []byte(f.Content)); err != nil {
			return err
		}
	}
	set, err := b.Compile(p.opts)
	if err != nil {
		return err
	}
	pctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	if err := p.verifier.Prepare(pctx, allJWTRules(set)); err != nil {
		p.log.Warn("prepare JWT verifier", "err", err)
	}
	cancel()
	p.sum = sum
	p.set.Store(set)
	v := p.version.Add(1)
	p.log.Info("policies loaded", "version", v, "files", len(pf), "documents", len(b.Docs), "rego_modules", len(b.Modules), "data_documents", len(b.Data))
	return nil
}

// authzRevocations is where "moatless authz --revocations" puts the
// revocation list a proxy.FileWatcher reads (with the sidecar's rules: a
// change applies once two reads agree, a malformed or vanished file keeps
// the list in force). It takes no policy: the files are filePolicy's.
type authzRevocations struct {
	revs   *proxy.Revocations
	failed *prometheus.CounterVec
}

func (a *authzRevocations) SetRevocations(r *wire.Revocations) int { return a.revs.Set(r) }
func (a *authzRevocations) ReloadFailed(what string)               { a.failed.WithLabelValues(what).Inc() }
func (a *authzRevocations) PolicyVersion() uint64                  { return 0 }

// SetAuthorizerContext is never called: the watcher is given no policy
// files.
func (a *authzRevocations) SetAuthorizerContext(context.Context, uint64, proxy.Authorizer) {}

// allJWTRules returns every JWT rule of every RequestAuthentication in set.
// Envoy names the destination per route (context_extensions), so any
// rule may be asked for: preparing only the default destination's left
// the others' key sets unfetched at start, and Prepare dropped them at
// every reload, so their tokens were refused (keys_unavailable, 401)
// until the refresher fetched them again.
func allJWTRules(set *policy.Set) []*securityv1beta1.JWTRule {
	var rules []*securityv1beta1.JWTRule
	for _, d := range set.Documents() {
		if ra, ok := d.Spec.(*securityv1beta1.RequestAuthentication); ok {
			rules = append(rules, ra.GetJwtRules()...)
		}
	}
	return rules
}

// serveAuthzAdmin serves /metrics, the health endpoints and the
// read-only OPA API on a loopback address.
func serveAuthzAdmin(ctx context.Context, addr string, reg *prometheus.Registry, p *filePolicy, log *slog.Logger) error {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return err
	}
	if ip := net.ParseIP(host); host != "localhost" && (ip == nil || !ip.IsLoopback()) {
		return fmt.Errorf("%q is not a loopback address", addr)
	}
	refused := opaapi.NewRefusedCounter()
	if err := reg.Register(refused); err != nil {
		return err
	}
	l, err := net.Listen("tcp", addr)
	if errors.Is(err, syscall.EADDRINUSE) {
		return fmt.Errorf("%w: another moatless authz (or program) on this host uses it; set --admin to a free loopback address, or --admin off", err)
	}
	if err != nil {
		return err
	}
	mux := dataplane.HealthMux(reg)
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, _ *http.Request) {
		fmt.Fprintf(w, "ok (policy version %d)\n", p.version.Load())
	})
	(&opaapi.Handler{Rego: func() *policy.Rego { return p.set.Load().Rego() }, Logger: log}).Register(mux, dataplane.OPAUsers(nil, log, refused, "opa"))
	srv := &http.Server{Handler: loopback.GuardHost(addr, mux), ReadHeaderTimeout: 10 * time.Second}
	go srv.Serve(l)
	go func() { <-ctx.Done(); srv.Close() }()
	log.Info("admin listening", "addr", l.Addr().String())
	return nil
}

// serveExtAuthz serves ext_authz from "moatless server" on a unix socket:
// decisions with the policy set in force, denials audited.
//
// revs are the mesh's revocations, which the server keeps current: a
// revoked source principal, a revoked token ID and a token issued to or
// for a revoked workload are refused, as a sidecar refuses them.
func serveExtAuthz(ctx context.Context, srv *server.Server, revs *proxy.Revocations, addr string, uidArgs []string, log *slog.Logger) (func(), error) {
	if !strings.HasPrefix(addr, "unix:") {
		return nil, fmt.Errorf("%q: the server serves ext_authz on a unix socket (unix:/path); for TCP with mutual TLS run \"moatless authz\"", addr)
	}
	var allow []uint32
	for _, u := range uidArgs {
		n, err := strconv.ParseUint(u, 10, 32)
		if err != nil {
			return nil, fmt.Errorf("--ext-authz-uid %q is not a uid", u)
		}
		allow = append(allow, uint32(n))
	}
	verifier := authn.NewVerifier(authn.Options{Logger: log, Revoked: revs.Token})
	verifier.Start(ctx)
	x, err := extauthz.New(extauthz.Config{Policy: srv.AuthzPolicy, Verifier: verifier, Logger: log, OnDecision: srv.AuditAuthzDecision,
		Destination: policy.Destination{Namespace: policy.DefaultNamespace}, Revocations: revs})
	if err != nil {
		verifier.Close()
		return nil, err
	}
	l, creds, err := extauthz.Listen(addr, nil, allow)
	if err != nil {
		verifier.Close()
		return nil, err
	}
	sctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() {
		defer close(done)
		if err := x.Serve(sctx, l, creds); err != nil {
			log.Error("ext_authz stopped", "err", err)
		}
	}()
	log.Info("ext_authz serving", "listen", addr)
	return func() { cancel(); <-done; verifier.Close() }, nil
}
