package dataplane

import (
	"context"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strings"

	"github.com/moatless/moatless/internal/agent"
	"github.com/moatless/moatless/internal/config"
	"github.com/moatless/moatless/internal/telemetry"
	"github.com/moatless/moatless/internal/workload"
)

// RunAgent runs "moatless agent": the node agent, until ctx ends.
func RunAgent(ctx context.Context, e *Env, args []string) int {
	fs := flag.NewFlagSet("agent", flag.ContinueOnError)
	file := fs.String("config", "", "agent config `file` (YAML or JSON); flags override it")
	vals := map[string]*string{}
	str := func(name, usage string) { vals[name] = fs.String(name, "", usage) }
	var servers StringList
	fs.Var(&servers, "server", "server `host:port` (repeatable: every replica of the control plane; default "+config.DefaultListen+")")
	str("server-name", "`name` the server's certificate must carry (default: the host of --server)")
	str("join-token", "single-use join `token` for the first start (env MOATLESS_JOIN_TOKEN; visible in ps: prefer --join-token-file)")
	str("join-token-file", "read the join token from this `file`")
	str("trust-bundle", "PEM `file` of CA certificates that authenticate the server (the server's bundle.pem)")
	str("socket", "Workload API unix socket `path` (default "+config.AgentSocketHelp+"); its directory must be owned by this user and writable by no one else")
	str("data-dir", "`directory` keeping the agent's own SVID and key across restarts (default DATA_DIR/agent)")
	str("health-listen", "loopback `host:port` for /healthz, /readyz and /metrics, or \"off\" (default "+config.DefaultAgentHealthListen+")")
	str("log-level", "debug, info, warn or error (default info)")
	maxConns := fs.Int("workload-max-conns-per-uid", 0, fmt.Sprintf("Workload API connections one local uid may hold open at once, 1 to %d (default %d)", config.MaxWorkloadPerUIDBound, workload.DefaultMaxConnsPerUID))
	maxStreams := fs.Int("workload-max-streams-per-uid", 0, fmt.Sprintf("Workload API watch streams one local uid may hold open at once, 1 to %d (default %d)", config.MaxWorkloadPerUIDBound, workload.DefaultMaxStreamsPerUID))
	fs.Usage = func() {
		fmt.Fprintln(fs.Output(), "Usage: moatless agent --server HOST:PORT [--server HOST:PORT ...] --join-token-file FILE --trust-bundle FILE --socket PATH [--data-dir DIR]")
		fmt.Fprintln(fs.Output(), "\nAttests this node to the server and serves the SPIFFE Workload API on a unix socket.")
		fs.PrintDefaults()
	}
	if code, ok := e.ParseFlags(fs, args); !ok {
		return code
	}
	if code, ok := e.LinuxOnly("moatless agent"); !ok {
		return code
	}

	cfg := config.DefaultAgent(e.Env)
	if *file != "" {
		var err error
		if cfg, err = config.LoadAgent(*file, e.Env); err != nil {
			return e.Errorf(ExitUsage, "agent: %v", err)
		}
	}
	if len(servers) > 0 {
		cfg.Server = config.ServerList(servers)
	}
	dst := map[string]*string{
		"server-name": &cfg.ServerName, "join-token": &cfg.JoinToken,
		"join-token-file": &cfg.JoinTokenFile, "trust-bundle": &cfg.TrustBundle, "socket": &cfg.Socket,
		"data-dir": &cfg.DataDir, "health-listen": &cfg.HealthListen, "log-level": &cfg.LogLevel,
	}
	given := map[string]bool{}
	fs.Visit(func(fl *flag.Flag) {
		given[fl.Name] = true
		if d, ok := dst[fl.Name]; ok {
			*d = *vals[fl.Name]
		}
		switch fl.Name {
		case "workload-max-conns-per-uid":
			cfg.WorkloadMaxConnsPerUID = *maxConns
		case "workload-max-streams-per-uid":
			cfg.WorkloadMaxStreamsPerUID = *maxStreams
		}
	})
	// A flag given is a bound: 0 there is a mistake, not "the default"
	// as an unset config key is.
	for _, b := range []struct {
		name string
		n    int
	}{{"workload-max-conns-per-uid", *maxConns}, {"workload-max-streams-per-uid", *maxStreams}} {
		if given[b.name] && (b.n < 1 || b.n > config.MaxWorkloadPerUIDBound) {
			return e.Errorf(ExitUsage, "agent: --%s %d: want 1 to %d", b.name, b.n, config.MaxWorkloadPerUIDBound)
		}
	}
	if cfg.JoinToken == "" && cfg.JoinTokenFile == "" {
		cfg.JoinToken = e.Env("MOATLESS_JOIN_TOKEN")
	}
	if err := cfg.Validate(); err != nil {
		return e.Errorf(ExitUsage, "agent: %v", err)
	}
	token := strings.TrimSpace(cfg.JoinToken)
	if cfg.JoinTokenFile != "" {
		t, err := ReadTokenFile(cfg.JoinTokenFile)
		if err != nil {
			return e.Errorf(ExitUsage, "agent: read join token: %v", err)
		}
		token = t
	}
	var trust []*x509.Certificate
	if cfg.TrustBundle != "" {
		var err error
		if trust, err = ReadPEMCerts(cfg.TrustBundle); err != nil {
			return e.Errorf(ExitUsage, "agent: --trust-bundle: %v", err)
		}
	}
	if len(trust) == 0 && token != "" {
		return e.Errorf(ExitUsage, "agent: --trust-bundle is required for the first start (the server's DATA_DIR/bundle.pem)")
	}
	health := cfg.HealthListen
	if health == "off" {
		health = ""
	}
	log, err := NewLogger(e.Stderr, "json", cfg.LogLevel)
	if err != nil {
		return e.Errorf(ExitUsage, "agent: log_level: %v", err)
	}
	log = log.With("component", "agent")
	tracer, stopTracing, err := e.Tracer(ctx, log, "moatless-agent")
	defer stopTracing()
	if err != nil {
		return e.Errorf(ExitUsage, "agent: %v", err)
	}
	a, err := agent.New(agent.Config{
		Node: agent.NodeConfig{
			ServerAddrs: cfg.Server.Addrs(), ServerName: cfg.ServerName, TrustBundle: trust,
			JoinToken: token, DataDir: cfg.DataDir,
		},
		SocketPath:       cfg.Socket,
		HealthListen:     health,
		Logger:           log,
		Tracer:           tracer,
		MaxConnsPerUID:   cfg.WorkloadMaxConnsPerUID,
		MaxStreamsPerUID: cfg.WorkloadMaxStreamsPerUID,
	})
	if err != nil {
		return e.Errorf(ExitUsage, "%v", err)
	}
	stopped := LogLifecycle(ctx, log)
	err = a.Serve(ctx)
	if !stopped(err) {
		return ExitOK
	}
	switch {
	case errors.Is(err, agent.ErrJoinTokenRejected):
		return ExitDenied
	case errors.Is(err, agent.ErrNoCredential), errors.Is(err, agent.ErrStaleState), errors.Is(err, agent.ErrDataDirInUse), errors.Is(err, agent.ErrDataDirUnsafe):
		return ExitUsage
	}
	return ExitFailure
}

// ReadPEMCerts reads every CERTIFICATE block of a PEM file.
func ReadPEMCerts(path string) ([]*x509.Certificate, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	return ParsePEMCerts(b, path)
}

// ParsePEMCerts parses every CERTIFICATE block of b, the PEM content of
// name; other blocks are skipped. A certificate that does not parse, or
// none at all, is an error naming name.
func ParsePEMCerts(b []byte, name string) ([]*x509.Certificate, error) {
	var out []*x509.Certificate
	for {
		var blk *pem.Block
		blk, b = pem.Decode(b)
		if blk == nil {
			break
		}
		if blk.Type != "CERTIFICATE" {
			continue
		}
		c, err := x509.ParseCertificate(blk.Bytes)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", name, err)
		}
		out = append(out, c)
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("%s holds no PEM certificate", name)
	}
	return out, nil
}

// logAttr keeps every log line readable by tools: a duration is written
// as a Go duration string ("1.5s"), never as slog's integer nanoseconds.
// Lists are JSON arrays already (slog encodes slices as JSON).
func logAttr(_ []string, a slog.Attr) slog.Attr {
	if a.Value.Kind() == slog.KindDuration {
		a.Value = slog.StringValue(a.Value.Duration().String())
	}
	return a
}

// errLogFormat is NewLogger's answer to a format other than json or text.
var errLogFormat = errors.New("log format must be json or text")

// RoleFlags are what "moatless sidecar" and "moatless gateway" take on
// the command line: the config file, -check, and the logger.
type RoleFlags struct {
	CfgPath string
	Check   bool
	Log     *slog.Logger
}

// ParseRoleFlags parses "-config FILE [-check] [-log-format F]
// [-log-level L]" for role and builds its logger. When ok is false the
// command ends with code (help, a bad flag or a missing -config).
func ParseRoleFlags(e *Env, role, checkHelp, summary, docs string, args []string) (rf RoleFlags, code int, ok bool) {
	fs := flag.NewFlagSet(role, flag.ContinueOnError)
	var logFormat, logLevel string
	fs.StringVar(&rf.CfgPath, "config", "", role+" config `file` (YAML or JSON; required)")
	fs.StringVar(&logFormat, "log-format", "json", "log format: json or text")
	fs.StringVar(&logLevel, "log-level", "info", "log level: debug, info, warn or error")
	fs.BoolVar(&rf.Check, "check", false, checkHelp)
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), "Usage: moatless %s -config FILE [flags]\n", role)
		fmt.Fprintf(fs.Output(), "\n%s Flags:\n", summary)
		fs.PrintDefaults()
	}
	if code, ok := e.ParseFlags(fs, args); !ok {
		return rf, code, false
	}
	if rf.CfgPath == "" {
		return rf, e.Errorf(ExitUsage, "%s: -config is required (see %s for an example)", role, docs), false
	}
	log, err := NewLogger(e.Stderr, logFormat, logLevel)
	switch {
	case errors.Is(err, errLogFormat):
		return rf, e.Errorf(ExitUsage, "%s: -log-format must be json or text, not %q", role, logFormat), false
	case err != nil:
		return rf, e.Errorf(ExitUsage, "%s: -log-level: %v", role, err), false
	}
	rf.Log = log
	return rf, 0, true
}

// NewLogger logs to w in format "json" or "text" at level, one of slog's
// level names (debug, info, warn, error). The server's and the agent's
// configs were validated to those names; the sidecar's flags come here
// unchecked: a bad level is an error, checked first, then a bad format is
// errLogFormat. gRPC's own log goes to the new logger too
// (telemetry.RouteGRPCLogs), process-wide.
func NewLogger(w io.Writer, format, level string) (*slog.Logger, error) {
	var l slog.Level
	if err := l.UnmarshalText([]byte(level)); err != nil {
		return nil, err
	}
	opts := &slog.HandlerOptions{Level: l, ReplaceAttr: logAttr}
	var log *slog.Logger
	switch format {
	case "json":
		log = slog.New(slog.NewJSONHandler(w, opts))
	case "text":
		log = slog.New(slog.NewTextHandler(w, opts))
	default:
		return nil, errLogFormat
	}
	// Every role speaks gRPC somewhere (the Workload API, ext_authz,
	// OTLP export): gRPC's own lines go to the same log.
	telemetry.RouteGRPCLogs(log)
	return log, nil
}
