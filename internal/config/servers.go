package config

import (
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/url"
	"reflect"
	"strings"
)

// MaxServers bounds a ServerList: far more replicas than anyone runs, few
// enough that trying each in turn stays quick.
const MaxServers = 32

// ServerList is the address of one Moatless server or of several replicas
// of one control plane, in every client config (agent "server", sidecar
// and gateway "join.server"). In YAML it is one string or a list:
//
//	server: moatless.example.org:8443
//	server: [moatless-0.moatless:8443, moatless-1.moatless:8443, moatless-2.moatless:8443]
//
// Each address is "host:port"; an "https://host:port" URL (no path) is
// accepted and means the same. Clients start at a random one, so a fleet
// spreads over the replicas, and move to another within seconds when
// theirs goes away (see docs/operations.md). Every replica must present a
// certificate for its address's host, or for the client's configured
// server name.
type ServerList []string

// UnmarshalJSON accepts a string or a list of strings.
func (l *ServerList) UnmarshalJSON(b []byte) error {
	var one string
	if err := json.Unmarshal(b, &one); err == nil {
		*l = ServerList{one}
		return nil
	}
	var many []string
	if err := json.Unmarshal(b, &many); err != nil {
		// A type error, so the decoder names the field it was for.
		return &json.UnmarshalTypeError{Value: "a \"host:port\" string or a list of them", Type: reflect.TypeFor[ServerList]()}
	}
	*l = many
	return nil
}

// MarshalJSON writes a single address as a string, several as a list.
func (l ServerList) MarshalJSON() ([]byte, error) {
	if len(l) == 1 {
		return json.Marshal(l[0])
	}
	return json.Marshal([]string(l))
}

// String is the addresses separated by commas.
func (l ServerList) String() string { return strings.Join(l, ",") }

// Addrs returns the "host:port" of each address (an https:// prefix
// removed), in order. Call Validate first.
func (l ServerList) Addrs() []string {
	out := make([]string, len(l))
	for i, s := range l {
		out[i] = serverAddr(s)
	}
	return out
}

// serverAddr is the host:port of an address that may be an https URL.
func serverAddr(s string) string {
	if strings.Contains(s, "://") {
		if u, err := url.Parse(s); err == nil {
			return u.Host
		}
	}
	return s
}

// Validate checks every address; errors name field and index, e.g.
// `config: join.server[1] "x": want host:port`.
func (l ServerList) Validate(field string) error {
	if len(l) == 0 {
		return fmt.Errorf("config: %s: at least one server address is required", field)
	}
	if len(l) > MaxServers {
		return fmt.Errorf("config: %s: %d addresses; at most %d", field, len(l), MaxServers)
	}
	seen := map[string]bool{}
	for i, s := range l {
		name := field
		if len(l) > 1 {
			name = fmt.Sprintf("%s[%d]", field, i)
		}
		if err := validServerAddr(s); err != nil {
			return fmt.Errorf("config: %s %q: %v", name, s, err)
		}
		a := strings.ToLower(serverAddr(s))
		if seen[a] {
			return fmt.Errorf("config: %s %q: listed twice", name, s)
		}
		seen[a] = true
	}
	return nil
}

func validServerAddr(s string) error {
	if strings.Contains(s, "://") {
		u, err := url.Parse(s)
		if err != nil || u.Scheme != "https" || u.Host == "" || (u.Path != "" && u.Path != "/") ||
			u.User != nil || u.RawQuery != "" || u.Fragment != "" {
			return errors.New("want host:port or https://host:port (no path, query or credentials)")
		}
		s = u.Host
	}
	host, port, err := net.SplitHostPort(s)
	if err != nil || host == "" || port == "" {
		return errors.New("want host:port")
	}
	if _, err := net.LookupPort("tcp", port); err != nil {
		return errors.New("bad port")
	}
	if strings.ContainsAny(host, "/ @?#") {
		return errors.New("bad host")
	}
	return nil
}
