package loopback

import (
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"strings"
)

// HostAllowed reports whether host, a request's Host header, may reach a
// plaintext listener configured to listen on listen (host:port). It is
// the guard against DNS rebinding: a web page a browser on this host
// opens can have its own name re-resolved to 127.0.0.1 and then read
// what a loopback listener answers, as its own origin's — but the
// browser still sends the page's name as Host. Admitted are:
//
//   - an IP address literal that is loopback (127.0.0.0/8, ::1, and their
//     IPv4-mapped forms), with or without a port;
//   - localhost, which browsers resolve to loopback themselves;
//   - the host of listen: its name (an operator's explicit choice), or
//     its address; a listener on an unspecified address (0.0.0.0, ::)
//     admits every IP literal, since no page is served under a bare
//     address the attacker controls;
//   - no Host at all (HTTP/1.0 clients; browsers always send one).
//
// An IP literal never carries an attacker's name, so clients that call
// by address:port — Prometheus, curl, kubelet probes — always pass. The
// port is not compared: the rebound page uses the listener's port anyway.
func HostAllowed(host, listen string) bool {
	if host == "" {
		return true
	}
	name := host
	if h, _, err := net.SplitHostPort(host); err == nil {
		name = h
	} else if strings.HasPrefix(host, "[") && strings.HasSuffix(host, "]") {
		name = host[1 : len(host)-1]
	}
	if name == "" {
		return false
	}
	if strings.EqualFold(name, "localhost") {
		return true
	}
	lhost, _, err := net.SplitHostPort(listen)
	if err != nil {
		lhost = ""
	}
	if ip, err := netip.ParseAddr(name); err == nil {
		if ip.Zone() != "" {
			return false
		}
		ip = ip.Unmap()
		if ip.IsLoopback() {
			return true
		}
		lip, err := netip.ParseAddr(lhost)
		return err == nil && (lip.Unmap() == ip || lip.IsUnspecified())
	}
	return lhost != "" && strings.EqualFold(name, lhost)
}

// GuardHost serves next only the requests whose Host passes HostAllowed
// for a listener configured on listen; the others get 421 Misdirected
// Request, with what to call instead. Wrap every plaintext loopback
// listener's handler with it (the admin listeners of the sidecar, the
// gateway, the agent and "moatless authz").
func GuardHost(listen string, next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !HostAllowed(r.Host, listen) {
			w.Header().Set("Content-Type", "text/plain; charset=utf-8")
			w.Header().Set("X-Content-Type-Options", "nosniff")
			w.Header().Set("Connection", "close")
			w.WriteHeader(http.StatusMisdirectedRequest)
			fmt.Fprintf(w, "Host %q does not name this listener: call it as %s, by a loopback address or as localhost (a guard against DNS rebinding)\n", r.Host, listen)
			return
		}
		next.ServeHTTP(w, r)
	})
}
