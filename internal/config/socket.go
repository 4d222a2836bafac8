package config

import (
	"os"
	"path/filepath"
)

// SystemAgentSocket is the Workload API socket of an agent run as root:
// in /run, which only root can write, so no other local user can create
// the directory first and serve identities of its own there (as anyone
// could in a world-writable /tmp).
const SystemAgentSocket = "/run/moatless/agent.sock"

// DefaultAgentSocket is the agent's socket when none is configured:
// SystemAgentSocket when euid is 0, else $XDG_RUNTIME_DIR/moatless/
// agent.sock (the user's own runtime directory, mode 0700). It is "" for
// a non-root user without XDG_RUNTIME_DIR: there is no directory only that
// user controls, so the socket must be chosen (--socket). getenv nil:
// os.Getenv.
func DefaultAgentSocket(getenv func(string) string, euid int) string {
	if getenv == nil {
		getenv = os.Getenv
	}
	if euid == 0 {
		return SystemAgentSocket
	}
	if d := getenv("XDG_RUNTIME_DIR"); d != "" && filepath.IsAbs(d) {
		return filepath.Join(d, "moatless", "agent.sock")
	}
	return ""
}

// AgentSocketForClients is where a workload looks for the agent without
// SPIFFE_ENDPOINT_SOCKET or a flag: the system agent's socket when it
// exists (agents normally run as root; the workload may be any user),
// else the socket an agent run by this user would have, else
// SystemAgentSocket (so the error names it).
func AgentSocketForClients(getenv func(string) string, euid int) string {
	if _, err := os.Stat(SystemAgentSocket); err == nil {
		return SystemAgentSocket
	}
	if p := DefaultAgentSocket(getenv, euid); p != "" {
		if _, err := os.Stat(p); err == nil {
			return p
		}
	}
	return SystemAgentSocket
}

// AgentSocketHelp describes the socket defaults for flag help texts.
const AgentSocketHelp = SystemAgentSocket + " as root, else $XDG_RUNTIME_DIR/moatless/agent.sock"
