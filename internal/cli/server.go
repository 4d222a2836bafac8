package cli

import (
	"context"
	"flag"
	"fmt"
	"strings"

	"github.com/moatless/moatless/internal/cli/dataplane"
	"github.com/moatless/moatless/internal/config"
	"github.com/moatless/moatless/internal/proxy"
	"github.com/moatless/moatless/internal/server"
	"github.com/moatless/moatless/internal/wire"
)

// runServer runs the control plane until interrupted.
func runServer(ctx context.Context, e *Env, args []string) int {
	fs := flag.NewFlagSet("server", flag.ContinueOnError)
	file := fs.String("config", "", "server config `file` (YAML or JSON); flags override it")
	dataDir := fs.String("data-dir", "", "data `directory` (default $MOATLESS_DATA_DIR, else ~/.local/share/moatless)")
	td := fs.String("trust-domain", "", "SPIFFE trust `domain` (default "+config.DefaultTrustDomain+")")
	listen := fs.String("listen", "", "TLS listen `host:port` for the agent API, admin API, health and metrics (default "+config.DefaultListen+")")
	dsn := fs.String("store", "", "store `DSN`: postgres://... or a SQLite path (default DATA_DIR/moatless.db)")
	kek := fs.String("kek-file", "", "key-encryption key `file` sealing the CA keys (default DATA_DIR/kek, created on first start)")
	var adminIDs, names stringList
	fs.Var(&adminIDs, "admin-id", "SPIFFE `ID` whose client certificate may use the admin API (repeatable; default spiffe://TD/moatless/admin)")
	fs.Var(&names, "server-name", "extra DNS `name` or IP for the server certificate (repeatable)")
	issuer := fs.String("issuer", "", "OAuth/OIDC issuer `URL` of the token service (default https://LISTEN)")
	upCert := fs.String("upstream-cert", "", "upstream CA certificate `file` (PEM) that signs our CA")
	upKey := fs.String("upstream-key", "", "upstream CA key `file` (PEM)")
	upBundle := fs.String("upstream-bundle", "", "upstream root certificates `file` (PEM)")
	x509TTL := fs.Duration("x509-svid-ttl", 0, "default X509-SVID lifetime (default 1h)")
	jwtTTL := fs.Duration("jwt-svid-ttl", 0, "default JWT-SVID lifetime (default 5m)")
	logLevel := fs.String("log-level", "", "debug, info, warn or error (default info)")
	secretsKey := fs.String("secrets-key-file", "", "secrets service root key `file` (default DATA_DIR/secrets-key, created on first start; env MOATLESS_SECRETS_ROOT_KEY gives the key itself)")
	secretsPass := fs.String("secrets-passphrase-file", "", "unseal the secrets service with the passphrase in this `file` (- for stdin; env MOATLESS_SECRETS_PASSPHRASE)")
	reset := fs.Bool("reset-admin-token", false, "replace the admin token with a new one in DATA_DIR/admin-token (the old one stops working)")
	extAuthz := fs.String("ext-authz", "", "serve Envoy's ext_authz (gRPC) on this unix socket, `unix:/path`, deciding with the policy set in force")
	var extAuthzUIDs stringList
	fs.Var(&extAuthzUIDs, "ext-authz-uid", "`uid` allowed on the --ext-authz socket (repeatable; default the server's)")
	fs.Usage = func() {
		fmt.Fprintln(fs.Output(), "Usage: moatless server [--data-dir DIR] [--trust-domain TD] [--listen HOST:PORT] [flags]")
		fmt.Fprintln(fs.Output(), "\nRuns the control plane: CA, registry, admin API and the agent API on one TLS port.")
		fmt.Fprintln(fs.Output(), "On first start it writes DATA_DIR/admin-token (0600), DATA_DIR/kek (0600) and DATA_DIR/bundle.pem.")
		fs.PrintDefaults()
	}
	if code, ok := e.parseFlags(fs, args); !ok {
		return code
	}
	if code, ok := e.linuxOnly("moatless server"); !ok {
		return code
	}
	// The file is decoded over the defaults without deriving anything, so
	// that --data-dir also moves the store and KEK the file did not name.
	cfg := config.DefaultServer(e.getenv)
	if *file != "" {
		if err := config.DecodeFile(*file, &cfg); err != nil {
			return e.errorf(ExitUsage, "server: %v", err)
		}
	}
	set := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { set[f.Name] = true })
	if set["data-dir"] {
		cfg.DataDir = *dataDir
	}
	if set["trust-domain"] {
		cfg.TrustDomain = *td
	}
	if set["listen"] {
		cfg.Listen = *listen
	}
	if set["store"] {
		cfg.Store = *dsn
	}
	if set["issuer"] {
		cfg.Issuer = *issuer
	}
	if set["kek-file"] {
		cfg.KEKFile = *kek
	}
	if len(adminIDs) > 0 {
		cfg.AdminIDs = adminIDs
	}
	if len(names) > 0 {
		cfg.ServerNames = append(cfg.ServerNames, names...)
	}
	if *upCert != "" || *upKey != "" || *upBundle != "" {
		cfg.UpstreamCA = &config.UpstreamCA{Cert: *upCert, Key: *upKey, Bundle: *upBundle}
	}
	if set["x509-svid-ttl"] {
		cfg.X509SVIDTTL = wire.Duration(*x509TTL)
	}
	if set["jwt-svid-ttl"] {
		cfg.JWTSVIDTTL = wire.Duration(*jwtTTL)
	}
	if set["log-level"] {
		cfg.LogLevel = *logLevel
	}
	if set["secrets-key-file"] {
		cfg.SecretsKeyFile = *secretsKey
	}
	cfg.Complete()
	if err := cfg.Validate(); err != nil {
		return e.errorf(ExitUsage, "server: %v", err)
	}
	logger, err := dataplane.NewLogger(e.Stderr, "json", cfg.LogLevel)
	if err != nil {
		return e.errorf(ExitUsage, "server: log_level: %v", err)
	}

	tracer, stopTracing, err := e.dp().Tracer(ctx, logger, "moatless-server")
	defer stopTracing()
	if err != nil {
		return e.errorf(ExitUsage, "server: %v", err)
	}
	sc := server.Config{Settings: cfg, Logger: logger, ResetAdminToken: *reset, Tracer: tracer}
	// The root key or passphrase comes from the environment or a file,
	// never from a flag's value (which "ps" shows to every local user).
	if k := e.getenv("MOATLESS_SECRETS_ROOT_KEY"); k != "" {
		sc.SecretsRootKey = []byte(k)
	}
	switch {
	case *secretsPass != "":
		b, err := e.readInput(*secretsPass, 4096)
		if err != nil {
			return e.errorf(ExitUsage, "server: --secrets-passphrase-file: %v", err)
		}
		sc.SecretsPassphrase = []byte(strings.TrimRight(string(b), "\r\n"))
	case e.getenv("MOATLESS_SECRETS_PASSPHRASE") != "":
		sc.SecretsPassphrase = []byte(e.getenv("MOATLESS_SECRETS_PASSPHRASE"))
	}
	// ext_authz refuses what the mesh revoked, as a sidecar does: the
	// server hands it every new revocation list it reads.
	var revs proxy.Revocations
	if *extAuthz != "" {
		sc.OnRevocations = func(w *wire.Revocations) { revs.Set(w) }
	}
	srv, err := server.New(ctx, sc)
	if err != nil {
		return e.errorf(ExitFailure, "%v", err)
	}
	defer srv.Close()
	if *extAuthz != "" {
		stop, err := serveExtAuthz(ctx, srv, &revs, *extAuthz, extAuthzUIDs, logger)
		if err != nil {
			return e.errorf(ExitUsage, "server: --ext-authz: %v", err)
		}
		defer stop()
	}
	if stopped := dataplane.LogLifecycle(ctx, logger); stopped(srv.Serve(ctx)) {
		return ExitFailure
	}
	return ExitOK
}
