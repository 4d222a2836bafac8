package proxy

import (
	"fmt"
	"net"
	"net/http"
	"strings"
	"sync/atomic"
	"time"

	"github.com/moatless/moatless/internal/loopback"
)

// Reasons an outbound request is refused because a web browser sent it,
// the reason label of moatless_sidecar_outbound_refused_total.
const (
	// refusedBrowser: the request carries Origin or a Sec-Fetch-Site
	// other than "none": a page made it (fetch, a form, an <img>).
	refusedBrowser = "browser"
	// refusedHost: the Host is a name the app does not call the upstream
	// by: a page whose own name was rebound to 127.0.0.1.
	refusedHost = "foreign_host"
)

// browserRefusal says why the request with Host host and header h must
// not reach the upstream ("" when it may): a web page in a browser of an
// admitted user must not call the upstream as this workload.
//
// A service client sends neither Origin nor Sec-Fetch-Site; every current
// browser sends Sec-Fetch-Site to a loopback address (a potentially
// trustworthy URL) and Origin with every cross-origin request but a GET:
// a cross-site fetch(), form POST or <img> is refused by them. Only a
// request the user made from the address bar or a bookmark carries
// Sec-Fetch-Site: none, and no Origin.
//
// A page whose name was rebound to 127.0.0.1 calls the listener same-
// origin, under its own name, which is not potentially trustworthy: the
// browser sends no Sec-Fetch-* and, for a GET, no Origin. What gives it
// away is that name in Host, so Host must be empty (HTTP/1.0), an IP
// literal (no page owns one it could rebind), localhost, or a name the
// app calls the upstream by (hosts: the upstream's host, its server
// name, and Outbound.Hosts).
func browserRefusal(host string, h http.Header, hosts []string) string {
	for _, o := range h["Origin"] {
		if !loopbackOrigin(o) {
			return refusedBrowser
		}
	}
	if v, ok := h["Sec-Fetch-Site"]; ok && (len(v) != 1 || v[0] != "none") {
		return refusedBrowser
	}
	// ":0" is a listener on every address: loopback.HostAllowed then
	// admits every IP literal and localhost, parsed strictly, and no name.
	if loopback.HostAllowed(host, ":0") {
		return ""
	}
	if name, ok := hostName(host); ok && matchHost(name, hosts) {
		return ""
	}
	return refusedHost
}

// loopbackOrigin reports whether o, an Origin field, is a loopback
// origin: http or https, and a host loopback.HostAllowed admits as a
// loopback address or localhost. Some service clients send one
// (golang.org/x/net/websocket must); a page served from loopback is
// refused by its Sec-Fetch-Site anyway, and "null" is not loopback.
func loopbackOrigin(o string) bool {
	rest, ok := strings.CutPrefix(o, "http://")
	if !ok {
		if rest, ok = strings.CutPrefix(o, "https://"); !ok {
			return false
		}
	}
	rest = strings.TrimSuffix(rest, "/")
	return rest != "" && loopback.HostAllowed(rest, "127.0.0.1:0")
}

// hostName is the name of a Host field "name[:port]" (the port a number),
// lower-cased; ok is false for anything else.
func hostName(host string) (string, bool) {
	name, port, _ := strings.Cut(host, ":")
	if name == "" || strings.TrimLeft(port, "0123456789") != "" {
		return "", false
	}
	return strings.ToLower(name), true
}

// matchHost reports whether name (lower case) is one of hosts: an exact
// name, or "*.suffix" for any name with at least one label before suffix.
func matchHost(name string, hosts []string) bool {
	for _, h := range hosts {
		if suffix, ok := strings.CutPrefix(h, "*"); ok {
			if len(name) > len(suffix) && strings.HasSuffix(name, suffix) {
				return true
			}
			continue
		}
		if name == h {
			return true
		}
	}
	return false
}

// outboundHosts is the list of names apps may send as Host to an
// outbound listener for c, lower-cased: Hosts, the upstream's host, the
// server name, the outbound's name, and, for an upstream SPIFFE ID of
// the form .../ns/NS/sa/SA, its service names SA, SA.NS.svc and
// SA.NS.svc.cluster.local. Never SA.NS: that may be a public name
// ("orders.shop") an attacker can register and rebind.
func outboundHosts(c Outbound) []string {
	var hosts []string
	add := func(h string) {
		h = strings.ToLower(strings.TrimSuffix(h, "."))
		if h != "" {
			hosts = append(hosts, h)
		}
	}
	for _, h := range c.Hosts {
		add(h)
	}
	if h, _, err := net.SplitHostPort(c.Upstream); err == nil {
		add(h)
	}
	add(c.ServerName)
	if checkHostPattern(c.Name) == nil && !strings.HasPrefix(c.Name, "*") {
		add(c.Name)
	}
	if seg := strings.Split(strings.TrimPrefix(c.ID.Path(), "/"), "/"); len(seg) == 4 && seg[0] == "ns" && seg[2] == "sa" &&
		checkHostPattern(seg[1]) == nil && checkHostPattern(seg[3]) == nil && !strings.Contains(seg[1]+seg[3], ".") {
		add(seg[3])
		add(seg[3] + "." + seg[1] + ".svc")
		add(seg[3] + "." + seg[1] + ".svc.cluster.local")
	}
	return hosts
}

// refusalLog paces the log lines of refused requests (a browser's at an
// outbound listener, a caller's the uid check refused): a page or a local
// user can send them in a loop. Every refusal is counted; one line per second is
// logged, with how many were not.
type refusalLog struct {
	next       atomic.Int64 // unix nanoseconds before which nothing is logged
	suppressed atomic.Int64
}

// take reports whether a line may be logged at now, and how many
// refusals were left unlogged since the last one.
func (l *refusalLog) take(now time.Time) (bool, int64) {
	n := l.next.Load()
	if now.UnixNano() < n || !l.next.CompareAndSwap(n, now.Add(time.Second).UnixNano()) {
		l.suppressed.Add(1)
		return false, 0
	}
	return true, l.suppressed.Swap(0)
}

// checkHostPattern checks one entry of Outbound.Hosts: a DNS name, or
// "*." and a name.
func checkHostPattern(h string) error {
	name := strings.TrimPrefix(h, "*.")
	if name == "" || len(h) > 253 {
		return fmt.Errorf("%q is not a host name", h)
	}
	for _, label := range strings.Split(strings.TrimSuffix(name, "."), ".") {
		if label == "" || len(label) > 63 || strings.Trim(strings.ToLower(label), "abcdefghijklmnopqrstuvwxyz0123456789-_") != "" {
			return fmt.Errorf("%q is not a host name", h)
		}
	}
	return nil
}

// truncate cuts s, a value from a request, to at most n bytes for a log
// line.
func truncate(s string, n int) string {
	if len(s) > n {
		return s[:n] + "..."
	}
	return s
}
