package config

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"math"
	"net"
	"os"
	"path"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/moatless/moatless/internal/policy"
	"github.com/moatless/moatless/internal/wire"
)

// Defaults of the sidecar config.
const (
	// DefaultSidecarAdmin serves /metrics, /livez and /readyz.
	DefaultSidecarAdmin = "127.0.0.1:15000"
	// DefaultSidecarReload is how often files are checked for changes.
	DefaultSidecarReload = 2 * time.Second
	// DefaultRootNamespace is Istio's root namespace: policies in it apply
	// mesh-wide.
	DefaultRootNamespace = "istio-system"
	// DefaultPathNormalization is Istio's meshConfig.pathNormalization
	// default.
	DefaultPathNormalization = "BASE"
)

// Sidecar is the "moatless sidecar" config file. Exactly one identity
// source is set. Example:
//
//	identity:
//	  files: {cert: svid.pem, key: svid-key.pem, bundle: bundle.pem}
//	namespace: prod
//	labels: {app: orders}
//	inbound:
//	  - {listen: "0.0.0.0:15006", app: "127.0.0.1:8080", protocol: http}
//	outbound:
//	  - {listen: "127.0.0.1:15001", upstream: "10.0.0.7:15006",
//	     spiffe_id: "spiffe://moatless.local/ns/prod/sa/payments"}
//	policy:
//	  files: [policies/]
type Sidecar struct {
	Identity SidecarIdentity `json:"identity"`
	// Namespace and Labels describe this workload to policies.
	Namespace string            `json:"namespace"`
	Labels    map[string]string `json:"labels,omitempty"`

	Inbound  []SidecarInbound  `json:"inbound,omitempty"`
	Outbound []SidecarOutbound `json:"outbound,omitempty"`

	// OutboundAllowedUIDs are the local users whose processes may use the
	// outbound listeners: whoever connects to one acts as this workload.
	// Every outbound connection is attributed by the kernel (SO_PEERCRED
	// on a unix socket; the owner of the client's socket, through
	// sock_diag or /proc/net/tcp, on loopback TCP) and closed at once if
	// its uid is not admitted. Default, when neither this nor
	// OutboundAllowedGIDs is set: only the uid the sidecar runs as.
	// Linux only; see OutboundAllowAnyLocalUser.
	OutboundAllowedUIDs []uint32 `json:"outbound_allowed_uids,omitempty"`
	// OutboundAllowedGIDs admits callers by their effective group at
	// connect(2), as the agent's unix:gid selector does. Only a unix
	// socket tells the caller's group, so it needs every outbound to
	// listen on one.
	OutboundAllowedGIDs []uint32 `json:"outbound_allowed_gids,omitempty"`
	// OutboundAllowAnyLocalUser turns the check off: every local user can
	// then act as this workload through the outbound listeners. Required
	// for outbound listeners outside Linux, where the check cannot be
	// made. Excludes the two lists above.
	OutboundAllowAnyLocalUser bool `json:"outbound_allow_any_local_user,omitempty"`

	Policy SidecarPolicy `json:"policy"`

	// Admin is the address of /metrics, /livez and /readyz; default
	// DefaultSidecarAdmin. "off" disables it. Must be loopback.
	Admin string `json:"admin,omitempty"`
	// AdminPprof serves Go's /debug/pprof/ on the admin address, for
	// profiling. Off by default.
	AdminPprof bool `json:"admin_pprof,omitempty"`

	// KeepStartupPages keeps the executable's startup-only pages mapped.
	// By default, once serving, the sidecar releases its clean read-only
	// pages of the moatless binary (they stay in the page cache, shared
	// with the agent and other sidecars, and fault back in when used),
	// which takes its RSS from about 24 MB to under 20 MB. Set it when
	// minor faults on a cold path matter more than RSS.
	KeepStartupPages bool `json:"keep_startup_pages,omitempty"`

	// DisableHTTP1FastPath serves HTTP/1.1 with Go's net/http server
	// and client only. By default the common shape of HTTP/1.1 request
	// is served by the sidecar's own strict parser on one goroutine per
	// connection, at about half the CPU per request, and everything else
	// by net/http.
	DisableHTTP1FastPath bool `json:"disable_http1_fast_path,omitempty"`

	DecisionLog SidecarDecisionLog `json:"decision_log"`
	// Traffic configures the traffic record sent to the server in join
	// mode (see SidecarTraffic); on by default there.
	Traffic SidecarTraffic `json:"traffic"`

	// ReloadInterval is how often identity, policy and revocation files
	// are checked for changes; default 2s.
	ReloadInterval wire.Duration `json:"reload_interval,omitempty"`
	// HandshakeTimeout bounds an inbound handshake; default 10s.
	HandshakeTimeout wire.Duration `json:"handshake_timeout,omitempty"`
	// IdleTimeout closes idle keep-alive connections; default 5m.
	IdleTimeout wire.Duration `json:"idle_timeout,omitempty"`
	// MaxConnections bounds the open connections of each inbound listener;
	// default 10,000.
	MaxConnections int `json:"max_connections,omitempty"`
	// DrainTimeout is how long requests and streams in flight may finish
	// after SIGTERM while no new connection is accepted; default 5s.
	DrainTimeout wire.Duration `json:"drain_timeout,omitempty"`
}

// SidecarIdentity says where the SVID comes from: a SPIFFE Workload API
// socket (ours or SPIRE's), PEM files, or a join token to the server.
type SidecarIdentity struct {
	// WorkloadAPI is the socket address, "unix:///run/spire/agent.sock".
	// "default" means AgentSocketForClients.
	WorkloadAPI string        `json:"workload_api,omitempty"`
	Files       *SidecarFiles `json:"files,omitempty"`
	Join        *SidecarJoin  `json:"join,omitempty"`
}

// SidecarFiles is a standalone identity: reloaded when the files change;
// a reload that fails keeps the previous identity.
type SidecarFiles struct {
	Cert   string `json:"cert"`
	Key    string `json:"key"`
	Bundle string `json:"bundle"`
}

// SidecarJoin makes the sidecar its own agent: it attests to the server
// with a single-use join token and receives its SVID, bundle, policies and
// revocations over the watch stream.
type SidecarJoin struct {
	// Server is the server's address, "host:port" or an https URL, or a
	// list of the replicas of one control plane (ServerList).
	Server ServerList `json:"server"`
	// TokenFile holds the join token (never put the token itself in a
	// config file).
	TokenFile string `json:"token_file"`
	// ServerBundle is the PEM trust bundle that verifies the server.
	ServerBundle string `json:"server_bundle"`
	// StateDir keeps the SVID and key between restarts (a join token is
	// single use); default: none, re-attest needs a new token.
	StateDir string `json:"state_dir,omitempty"`
}

// SidecarInbound is one mTLS listener in front of the app.
type SidecarInbound struct {
	Name   string `json:"name,omitempty"`
	Listen string `json:"listen"`
	// App is "host:port" or "unix:/path".
	App string `json:"app"`
	// Protocol: http (default), http2 / grpc (h2c to the app) or tcp.
	Protocol string `json:"protocol,omitempty"`
	// Port is the workload port policies see; default the app's port.
	Port int `json:"port,omitempty"`
	// Upgrades lists the protocols an HTTP request may switch to; only
	// websocket is accepted. Default [websocket]; [] forwards none.
	Upgrades []string `json:"upgrades,omitempty"`
}

// SidecarOutbound is one loopback listener for the app's calls to an
// upstream sidecar.
type SidecarOutbound struct {
	Name string `json:"name,omitempty"`
	// Listen is a loopback "host:port", or "unix:/absolute/path" for a
	// unix socket (Linux), whose file mode keeps other users out before
	// the caller check runs.
	Listen string `json:"listen"`
	// SocketMode is the octal permission bits of a unix socket listener,
	// "0660". Default: "0600" when only the sidecar's own uid is admitted
	// (no outbound_allowed_uids/gids), "0660" with socket_gid, else
	// "0666" (the caller check still refuses users not admitted).
	SocketMode SocketMode `json:"socket_mode,omitempty"`
	// SocketGID is the group of a unix socket listener's file; default
	// the sidecar's group. The sidecar must be a member (or root).
	SocketGID *uint32 `json:"socket_gid,omitempty"`
	// Upstream is the upstream sidecar's inbound "host:port".
	Upstream string `json:"upstream"`
	// SPIFFEID the upstream must present.
	SPIFFEID string `json:"spiffe_id"`
	// ServerName is sent as SNI; default none.
	ServerName string `json:"server_name,omitempty"`
	// Protocol: http (default; HTTP/1.1 and h2c from the app) or tcp.
	Protocol string `json:"protocol,omitempty"`
	// UpstreamHTTP2 carries the app's plain HTTP/1.1 requests to the
	// upstream sidecar over shared HTTP/2 connections instead of a pool of
	// keep-alive HTTP/1.1 connections: fewer connections and handshakes,
	// but 30–70% more CPU per request and more added latency in our
	// measurements (docs/benchmarks.md). Default false: requests keep the
	// app's protocol (HTTP/1.1 stays HTTP/1.1; h2c, gRPC and streaming
	// bodies use HTTP/2), as Istio's default h2UpgradePolicy
	// DO_NOT_UPGRADE does.
	UpstreamHTTP2 bool `json:"upstream_http2,omitempty"`
	// Upgrades lists the protocols the app's HTTP requests may switch to;
	// only websocket is accepted. Default [websocket]; [] forwards none.
	Upgrades []string `json:"upgrades,omitempty"`
	// Hosts are more names the app sends as Host ("billing.internal",
	// "*.example.internal"), besides IP literals, localhost, the
	// upstream's host, server_name, name and the upstream's service
	// names; a request under any other name is refused as a DNS
	// rebinding (docs/sidecar.md, "Requests from web browsers").
	Hosts []string `json:"hosts,omitempty"`
}

// SidecarPolicy is where policies come from in the modes without a server.
type SidecarPolicy struct {
	// Files and directories of Istio security YAML and RegoProviders,
	// Rego modules (*.rego) and data (data.json, data.yaml), reloaded on
	// change. A reload that fails keeps the policies in force.
	Files []string `json:"files,omitempty"`
	// RootNamespace: policies there apply mesh-wide; default
	// DefaultRootNamespace.
	RootNamespace string `json:"root_namespace,omitempty"`
	// RevocationsFile is a JSON wire.Revocations document, reloaded on
	// change: revoked SPIFFE IDs, serials and token IDs.
	RevocationsFile string `json:"revocations_file,omitempty"`
	// PathNormalization is how request paths are normalized before
	// paths and notPaths match, and the path the app is then served,
	// Istio's meshConfig.pathNormalization: NONE, BASE, MERGE_SLASHES or
	// DECODE_AND_MERGE_SLASHES (case-insensitive; DEFAULT is BASE);
	// default DefaultPathNormalization. It applies in every mode, to
	// policy files and to policies from the server alike. MERGE_SLASHES
	// or stricter keeps "//admin" from slipping past a rule on "/admin";
	// NONE lets "/a/../admin" past it too. Parse it with
	// policy.ParsePathNormalization.
	PathNormalization string `json:"path_normalization,omitempty"`
}

// SidecarDecisionLog configures decision records.
type SidecarDecisionLog struct {
	// AllowSampleRate is the share of allows logged, 0 (default) to 1.
	// Every deny is logged.
	AllowSampleRate float64 `json:"allow_sample_rate,omitempty"`
	// DenyNamesPolicy names the deciding policy in 403 bodies. Off by
	// default: it tells a caller how the mesh is configured.
	DenyNamesPolicy bool `json:"deny_names_policy,omitempty"`
}

// DefaultSidecar returns a config with every default filled in and no
// listener.
func DefaultSidecar() Sidecar {
	return Sidecar{
		Admin:            DefaultSidecarAdmin,
		ReloadInterval:   wire.Duration(DefaultSidecarReload),
		HandshakeTimeout: wire.Duration(10 * time.Second),
		IdleTimeout:      wire.Duration(5 * time.Minute),
		DrainTimeout:     wire.Duration(5 * time.Second),
		Policy:           SidecarPolicy{RootNamespace: DefaultRootNamespace, PathNormalization: DefaultPathNormalization},
	}
}

// ParseSidecar reads a sidecar config strictly (unknown keys are errors
// naming the key) over the defaults, then validates it.
func ParseSidecar(r io.Reader) (Sidecar, error) {
	return loadRole(DefaultSidecar(), "", r)
}

// LoadSidecar is ParseSidecar for a file; errors name the file.
func LoadSidecar(path string) (Sidecar, error) {
	return loadRole(DefaultSidecar(), path, nil)
}

// roleConfig is a data-plane role's config (sidecar, gateway): it
// restores the defaults a file zeroed and validates itself.
type roleConfig[T any] interface {
	*T
	fillDefaults()
	Validate() error
}

// loadRole decodes a role's config strictly over its defaults def, from
// the file path when set (errors then name it) or else from r, restores
// zeroed defaults and validates it.
func loadRole[T any, P roleConfig[T]](def T, path string, r io.Reader) (T, error) {
	c := def
	var err error
	if path != "" {
		err = DecodeFile(path, &c)
	} else {
		err = Decode(r, &c)
	}
	if err != nil {
		var zero T
		return zero, err
	}
	P(&c).fillDefaults()
	if err := P(&c).Validate(); err != nil {
		var zero T
		if path != "" {
			err = fileError(path, err)
		}
		return zero, err
	}
	return c, nil
}

// fillMeshDefaults restores what the sidecar and the gateway default
// alike: the policy section's root namespace and path normalization (from
// def), and "default" as the Workload API address, the agent's socket
// for this user.
func fillMeshDefaults(pol *SidecarPolicy, id *SidecarIdentity, def SidecarPolicy) {
	if pol.RootNamespace == "" {
		pol.RootNamespace = def.RootNamespace
	}
	if pol.PathNormalization == "" {
		pol.PathNormalization = def.PathNormalization
	}
	if id.WorkloadAPI == "default" {
		id.WorkloadAPI = "unix://" + AgentSocketForClients(nil, os.Geteuid())
	}
}

// fillDefaults restores defaults a file set to their zero value.
func (c *Sidecar) fillDefaults() {
	d := DefaultSidecar()
	if c.Admin == "" {
		c.Admin = d.Admin
	}
	if c.ReloadInterval <= 0 {
		c.ReloadInterval = d.ReloadInterval
	}
	if c.HandshakeTimeout <= 0 {
		c.HandshakeTimeout = d.HandshakeTimeout
	}
	if c.IdleTimeout <= 0 {
		c.IdleTimeout = d.IdleTimeout
	}
	if c.DrainTimeout <= 0 {
		c.DrainTimeout = d.DrainTimeout
	}
	fillMeshDefaults(&c.Policy, &c.Identity, d.Policy)
}

// Validate checks the config; each error names the field.
func (c *Sidecar) Validate() error {
	var errs []error
	add := func(format string, args ...any) { errs = append(errs, fmt.Errorf("config: "+format, args...)) }

	errs = append(errs, c.Identity.validate()...)
	if len(c.Inbound) == 0 && len(c.Outbound) == 0 {
		add("inbound, outbound: at least one listener is required")
	}
	if c.Namespace == "" && len(c.Inbound) > 0 {
		add("namespace: required when there is an inbound listener (policies select on it)")
	}
	names := map[string]string{}
	seen := func(field, name string) {
		if name == "" {
			return
		}
		if prev, ok := names[name]; ok {
			add("%s.name: %q already used by %s", field, name, prev)
		}
		names[name] = field
	}
	for i, in := range c.Inbound {
		f := fmt.Sprintf("inbound[%d]", i)
		seen(f, in.Name)
		if err := checkHostPort(in.Listen); err != nil {
			add("%s.listen: %v", f, err)
		}
		if p, ok := strings.CutPrefix(in.App, "unix:"); ok {
			if p == "" {
				add("%s.app: empty unix socket path", f)
			}
		} else if err := checkHostPort(in.App); err != nil {
			add("%s.app: %v", f, err)
		}
		if !oneOf(in.Protocol, "", "http", "http2", "h2c", "grpc", "tcp") {
			add("%s.protocol: %q is not http, http2, grpc or tcp", f, in.Protocol)
		}
		if in.Port < 0 || in.Port > 65535 {
			add("%s.port: %d out of range", f, in.Port)
		}
		checkUpgrades(f, in.Protocol, in.Upgrades, add)
	}
	tcpOutbound := false
	for i, out := range c.Outbound {
		f := fmt.Sprintf("outbound[%d]", i)
		seen(f, out.Name)
		if p, ok := strings.CutPrefix(out.Listen, "unix:"); ok {
			if !strings.HasPrefix(p, "/") || path.Clean(p) != p || len(p) > 107 {
				add("%s.listen: %q is not a clean absolute unix socket path of at most 107 bytes", f, out.Listen)
			}
			if _, err := ParseSocketMode(string(out.SocketMode)); err != nil {
				add("%s.socket_mode: %v", f, err)
			}
		} else {
			tcpOutbound = true
			if err := checkHostPort(out.Listen); err != nil {
				add("%s.listen: %v", f, err)
			} else if !isLoopback(out.Listen) {
				add("%s.listen: %q is not a loopback address: the app's plaintext must not leave the host", f, out.Listen)
			}
			if out.SocketMode != "" || out.SocketGID != nil {
				add("%s.socket_mode, socket_gid: only for a unix socket listener (listen: \"unix:/path\")", f)
			}
		}
		if err := checkHostPort(out.Upstream); err != nil {
			add("%s.upstream: %v", f, err)
		}
		if _, err := spiffeid.FromString(out.SPIFFEID); err != nil {
			add("%s.spiffe_id: %q: %v", f, out.SPIFFEID, err)
		}
		if !oneOf(out.Protocol, "", "http", "http2", "h2c", "grpc", "tcp") {
			add("%s.protocol: %q is not http or tcp", f, out.Protocol)
		}
		checkUpgrades(f, out.Protocol, out.Upgrades, add)
	}
	switch {
	case c.OutboundAllowAnyLocalUser && (len(c.OutboundAllowedUIDs) > 0 || len(c.OutboundAllowedGIDs) > 0):
		add("outbound_allow_any_local_user: set it or outbound_allowed_uids/gids, not both")
	case len(c.OutboundAllowedGIDs) > 0 && tcpOutbound:
		add("outbound_allowed_gids: a TCP outbound listener cannot learn the caller's group (the kernel records only the uid of a TCP socket): admit uids in outbound_allowed_uids, or make every outbound listen on a unix socket")
	}
	c.validateTraffic(add)
	if slices.Contains(c.OutboundAllowedUIDs, math.MaxUint32) {
		add("outbound_allowed_uids: 4294967295 is (uid_t)-1, not a user")
	}
	if slices.Contains(c.OutboundAllowedGIDs, math.MaxUint32) {
		add("outbound_allowed_gids: 4294967295 is (gid_t)-1, not a group")
	}
	if c.Admin != "off" {
		if err := checkHostPort(c.Admin); err != nil {
			add("admin: %v", err)
		} else if !isLoopback(c.Admin) {
			add("admin: %q is not a loopback address", c.Admin)
		}
	}
	if c.MaxConnections < 0 {
		add("max_connections: %d is negative", c.MaxConnections)
	}
	if r := c.DecisionLog.AllowSampleRate; r < 0 || r > 1 {
		add("decision_log.allow_sample_rate: %v is not between 0 and 1", r)
	}
	if _, err := policy.ParsePathNormalization(c.Policy.PathNormalization); err != nil {
		add("policy.path_normalization: %q is not NONE, BASE, MERGE_SLASHES or DECODE_AND_MERGE_SLASHES", c.Policy.PathNormalization)
	}
	if c.Identity.Join != nil && len(c.Policy.Files) > 0 {
		add("policy.files: policies come from the server in join mode")
	}
	return errors.Join(errs...)
}

// checkUpgrades accepts only websocket upgrades, and only on HTTP
// listeners: an upgraded connection carries bytes per-request policy never
// sees, so h2c (HTTP/2 requests in a tunnel) and unknown protocols are
// refused here rather than dropped at run time without a word.
func checkUpgrades(field, protocol string, upgrades []string, add func(string, ...any)) {
	if len(upgrades) > 0 && protocol == "tcp" {
		add("%s.upgrades: only for http listeners", field)
	}
	for i, u := range upgrades {
		if !strings.EqualFold(u, "websocket") {
			add("%s.upgrades[%d]: %q is not websocket, the only upgrade forwarded (an upgraded connection carries requests policy never sees)", field, i, u)
		}
	}
}

// SocketMode is socket_mode: permission bits written as a quoted octal
// string, "0660" (see ParseSocketMode). A number is refused: YAML reads an
// unquoted 0660 as octal, the number 432, which would otherwise arrive
// here as the string "432" and mean mode 0432.
type SocketMode string

// UnmarshalJSON accepts a JSON string only.
func (m *SocketMode) UnmarshalJSON(b []byte) error {
	var s string
	if err := json.Unmarshal(b, &s); err != nil {
		return fmt.Errorf("socket_mode: write it as a quoted octal string such as \"0660\" (unquoted, 0660 is YAML's number 432), not %s", b)
	}
	*m = SocketMode(s)
	return nil
}

// ParseSocketMode reads socket_mode: three or four octal digits of
// permission bits ("0660"); "" is 0, the listener's default.
func ParseSocketMode(s string) (fs.FileMode, error) {
	if s == "" {
		return 0, nil
	}
	if len(s) < 3 || len(s) > 4 {
		return 0, fmt.Errorf("%q is not an octal mode such as \"0660\"", s)
	}
	m, err := strconv.ParseUint(s, 8, 32)
	if err != nil || m > 0o777 {
		return 0, fmt.Errorf("%q is not an octal mode such as \"0660\" (permission bits only)", s)
	}
	if m == 0 {
		return 0, fmt.Errorf("%q lets nobody but root connect", s)
	}
	return fs.FileMode(m), nil
}

func checkHostPort(s string) error {
	if s == "" {
		return errors.New("required")
	}
	_, port, err := net.SplitHostPort(s)
	if err != nil {
		return fmt.Errorf("%q is not host:port: %w", s, err)
	}
	if port == "" {
		return fmt.Errorf("%q has no port", s)
	}
	return nil
}

func isLoopback(hostport string) bool {
	host, _, _ := net.SplitHostPort(hostport)
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

func oneOf(s string, vals ...string) bool {
	for _, v := range vals {
		if strings.EqualFold(s, v) {
			return true
		}
	}
	return false
}
