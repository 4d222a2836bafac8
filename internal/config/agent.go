package config

import (
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"path/filepath"
)

// DefaultAgentHealthListen is where the agent serves /healthz, /readyz and
// /metrics: loopback, plaintext, nothing secret.
const DefaultAgentHealthListen = "127.0.0.1:8089"

// maxUnixSocketPath is the longest unix socket path Linux accepts.
const maxUnixSocketPath = 107

// Agent is the "moatless agent" config. Example:
//
//	server: moatless.example.org:8443   # or a list of replicas (ServerList)
//	trust_bundle: /etc/moatless/bundle.pem
//	join_token_file: /etc/moatless/join-token
//	socket: /run/moatless/agent.sock
//	data_dir: /var/lib/moatless-agent
//	health_listen: 127.0.0.1:8089
type Agent struct {
	// Server is the server's host:port, or a list of the replicas of one
	// control plane (ServerList); default DefaultListen.
	Server ServerList `json:"server,omitempty"`
	// ServerName is the name every server's certificate must carry; the
	// host of each address when empty.
	ServerName string `json:"server_name,omitempty"`
	// TrustBundle is a PEM file of CA certificates that authenticate the
	// server on first contact (the server's DATA_DIR/bundle.pem). Required
	// unless DataDir already holds a bundle from an earlier run.
	TrustBundle string `json:"trust_bundle,omitempty"`
	// JoinToken is the single-use token for the first attestation. Prefer
	// JoinTokenFile or the MOATLESS_JOIN_TOKEN environment variable: a
	// token on the command line is visible in ps.
	JoinToken string `json:"join_token,omitempty"`
	// JoinTokenFile is a file holding the join token.
	JoinTokenFile string `json:"join_token_file,omitempty"`
	// Socket is the Workload API unix socket; default DefaultAgentSocket
	// (/run/moatless/agent.sock as root, $XDG_RUNTIME_DIR/moatless/
	// agent.sock for another user). Its directory must be owned by the
	// agent's user and writable by no one else.
	Socket string `json:"socket,omitempty"`
	// DataDir keeps the agent's own SVID and key (0600) across restarts;
	// default DefaultDataDir + "/agent".
	DataDir string `json:"data_dir,omitempty"`
	// HealthListen is the loopback host:port for /healthz, /livez, /readyz
	// and /metrics; default DefaultAgentHealthListen; "off" disables it.
	HealthListen string `json:"health_listen,omitempty"`
	// LogLevel is debug, info, warn or error; default info.
	LogLevel string `json:"log_level,omitempty"`
	// WorkloadMaxConnsPerUID bounds the Workload API connections one
	// local uid holds open at once (workload.Config.MaxConnsPerUID); 0
	// is the default, 512. At most MaxWorkloadPerUIDBound.
	WorkloadMaxConnsPerUID int `json:"workload_max_conns_per_uid,omitempty"`
	// WorkloadMaxStreamsPerUID bounds the Workload API watch streams one
	// local uid holds open at once (workload.Config.MaxStreamsPerUID); 0
	// is the default, 1024. At most MaxWorkloadPerUIDBound.
	WorkloadMaxStreamsPerUID int `json:"workload_max_streams_per_uid,omitempty"`
}

// MaxWorkloadPerUIDBound is the largest per-uid bound of the Workload API
// the agent accepts: past it a bound no longer protects anything (every
// connection costs the agent two file descriptors; the agent's own
// descriptor limit is the real cap), and a typo of a few extra digits
// should not silently disable the protection.
const MaxWorkloadPerUIDBound = 65536

// DefaultAgent returns the agent config with every default filled in
// (getenv nil: os.Getenv).
func DefaultAgent(getenv func(string) string) Agent {
	return Agent{
		Server:       ServerList{DefaultListen},
		Socket:       DefaultAgentSocket(getenv, os.Geteuid()),
		DataDir:      filepath.Join(DefaultDataDir(getenv), "agent"),
		HealthListen: DefaultAgentHealthListen,
		LogLevel:     "info",
	}
}

// ParseAgent reads an agent config strictly (unknown keys are errors that
// name the key) over DefaultAgent and validates it.
func ParseAgent(r io.Reader, getenv func(string) string) (Agent, error) {
	c := DefaultAgent(getenv)
	if err := Decode(r, &c); err != nil {
		return Agent{}, err
	}
	if err := c.Validate(); err != nil {
		return Agent{}, err
	}
	return c, nil
}

// LoadAgent is ParseAgent for a file; errors name the file.
func LoadAgent(path string, getenv func(string) string) (Agent, error) {
	c := DefaultAgent(getenv)
	if err := DecodeFile(path, &c); err != nil {
		return Agent{}, err
	}
	if err := c.Validate(); err != nil {
		return Agent{}, fileError(path, err)
	}
	return c, nil
}

// Validate checks every field; the error names the first bad one.
func (c *Agent) Validate() error {
	if err := c.Server.Validate("server"); err != nil {
		return err
	}
	if c.JoinToken != "" && c.JoinTokenFile != "" {
		return errors.New("config: join_token and join_token_file: set one, not both")
	}
	if c.Socket == "" {
		return errors.New("config: socket: must be set (there is no default for a user other than root without XDG_RUNTIME_DIR: choose a path in a directory only this user can write)")
	}
	if !filepath.IsAbs(c.Socket) {
		return fmt.Errorf("config: socket %q: must be an absolute path", c.Socket)
	}
	if len(c.Socket) > maxUnixSocketPath {
		return fmt.Errorf("config: socket %q: longer than the %d bytes a unix socket path may have", c.Socket, maxUnixSocketPath)
	}
	if c.DataDir == "" {
		return errors.New("config: data_dir: must be set")
	}
	if c.HealthListen != "" && c.HealthListen != "off" {
		h, p, err := net.SplitHostPort(c.HealthListen)
		if err != nil || p == "" {
			return fmt.Errorf("config: health_listen %q: want host:port", c.HealthListen)
		}
		// The health listener is plaintext: it must never face the network.
		if a, err := netip.ParseAddr(h); h != "localhost" && (err != nil || !a.IsLoopback()) {
			return fmt.Errorf("config: health_listen %q: must be a loopback address (127.0.0.1, ::1 or localhost)", c.HealthListen)
		}
	}
	switch c.LogLevel {
	case "debug", "info", "warn", "error":
	default:
		return fmt.Errorf("config: log_level %q: want debug, info, warn or error", c.LogLevel)
	}
	for _, b := range []struct {
		key string
		n   int
	}{{"workload_max_conns_per_uid", c.WorkloadMaxConnsPerUID}, {"workload_max_streams_per_uid", c.WorkloadMaxStreamsPerUID}} {
		if b.n < 0 || b.n > MaxWorkloadPerUIDBound {
			return fmt.Errorf("config: %s %d: want 1 to %d (0 or unset: the default)", b.key, b.n, MaxWorkloadPerUIDBound)
		}
	}
	return nil
}
