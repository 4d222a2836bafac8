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
//     IPv4-mapped forms), with or without a port; only the dotted-decimal
//     form browsers send (not 127.1, 0x7f.1, 2130706433), no zone;
//   - localhost, which browsers resolve to loopback themselves;
//   - the host of listen: its name (an operator's explicit choice), or
//     its address; a listener on an unspecified address (0.0.0.0, ::,
//     or none: ":port") admits every IP literal, since no page is served
//     under a bare address the attacker controls;
//   - no Host at all (HTTP/1.0 clients; browsers always send one).
//
// An IP literal never carries an attacker's name, so clients that call
// by address:port — Prometheus, curl, kubelet probes — always pass. The
// port is not compared (the rebound page uses the listener's port
// anyway) but must be a number: a Host is parsed strictly, and one that
// does not parse ("127.0.0.1:80@evil.example", an IPv6 literal without
// brackets) is refused.
func HostAllowed(host, listen string) bool {
	if host == "" {
		return true
	}
	name, ok := splitHost(host)
	if !ok {
		return false
	}
	if strings.EqualFold(name, "localhost") {
		return true
	}
	lhost, _, lerr := net.SplitHostPort(listen)
	if lerr != nil {
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
		if lerr == nil && lhost == "" {
			return true // ":port" listens on every address, as 0.0.0.0 does
		}
		lip, err := netip.ParseAddr(lhost)
		return err == nil && (lip.Unmap() == ip || lip.IsUnspecified())
	}
	return lhost != "" && strings.EqualFold(name, lhost)
}

// splitHost returns the host of a Host header (RFC 9110 §7.2: uri-host
// [":" port]), without the brackets of an IPv6 literal. ok is false for
// an empty host, a port that is not a number, an IPv6 literal without
// brackets, or anything after them other than a port.
func splitHost(host string) (name string, ok bool) {
	port := ""
	if rest, found := strings.CutPrefix(host, "["); found {
		i := strings.IndexByte(rest, ']')
		if i < 0 {
			return "", false
		}
		name, port = rest[:i], rest[i+1:]
		if port != "" && port[0] != ':' {
			return "", false
		}
		port = strings.TrimPrefix(port, ":")
	} else if i := strings.IndexByte(host, ':'); i >= 0 {
		name, port = host[:i], host[i+1:]
	} else {
		name = host
	}
	if name == "" || strings.TrimLeft(port, "0123456789") != "" {
		return "", false
	}
	return name, true
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
