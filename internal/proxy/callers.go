package proxy

import (
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// LocalCallers says which local processes may use the outbound listeners.
//
// An outbound listener turns plaintext from a local process into requests
// made with this workload's identity: whoever can connect to it acts as
// the workload. On a host shared by several users a port on 127.0.0.1 is
// open to all of them, so without a check a uid with no identity of its
// own reaches the upstream as this workload, undoing the uid-based
// attestation that gave the sidecar its SVID.
//
// Every accepted outbound connection is therefore attributed by the
// kernel to a local user before a byte of it is read: a unix socket by
// SO_PEERCRED (uid, gid and pid at connect(2)); a loopback TCP connection
// by the owner of the client's socket, found by the connection's exact
// 4-tuple through netlink sock_diag, or in /proc/net/tcp and tcp6 where
// sock_diag is unavailable (the uid only: the kernel records no group
// for a TCP socket). A connection whose caller is not admitted, or cannot
// be attributed — the client's socket is already closed, or the lookup
// failed — is closed at once, logged and counted in
// moatless_sidecar_outbound_refused_total. The check needs Linux; see
// AnyLocalUser.
//
// The zero value admits the uid the sidecar runs as (its effective uid)
// and nobody else: processes of that uid can read the sidecar's key, or
// fetch the same SVID from the Workload API, anyway.
type LocalCallers struct {
	// UIDs are the users admitted. Setting UIDs or GIDs replaces the
	// default: the sidecar's own uid is then admitted only if listed.
	UIDs []uint32
	// GIDs are the groups admitted, matched against the caller's
	// effective group at connect(2) as the agent's unix:gid selector is
	// (supplementary groups are not consulted). Only a unix socket
	// carries a group, so GIDs may be set only when every outbound
	// listener is a unix socket.
	GIDs []uint32
	// AnyLocalUser admits every local process: no check, every local
	// user can act as this workload. It is the only way to run outbound
	// listeners where the check is not implemented (outside Linux), and
	// excludes UIDs and GIDs.
	AnyLocalUser bool
}

// Reasons a connection is refused, the reason label of
// moatless_sidecar_outbound_refused_total.
const (
	// refusedNotAllowed: the caller's uid (and gid) is not admitted.
	refusedNotAllowed = "not_allowed"
	// refusedUnknown: no process owns the caller's socket any more (it was
	// closed, or is in TIME_WAIT), so the connection has no user to
	// admit.
	refusedUnknown = "unknown_caller"
	// refusedLookupFailed: the kernel could not be asked.
	refusedLookupFailed = "lookup_failed"
	// refusedNotLocal: neither a loopback TCP nor a unix socket connection.
	refusedNotLocal = "not_local"
)

// tcpOwnerLookup finds the socket whose own address is local and whose
// peer is remote: the client's end of an accepted loopback connection.
// It returns errNoSocket when the kernel has none.
type tcpOwnerLookup struct {
	name string // "sock_diag" or "/proc/net/tcp", for the logs
	find func(local, remote netip.AddrPort) (tcpSocket, error)
	// slots, when set, bounds how many finds run at once: a read of
	// /proc/net/tcp costs time in the host's sockets, and any local user
	// can make the sidecar do one per connection it opens.
	slots chan struct{}
}

// localCaller is what the kernel says about the process at the other end
// of an outbound connection. Fields not known for the transport are zero
// with their has flag false.
type localCaller struct {
	uid    uint32
	gid    uint32
	hasGID bool
	pid    int32 // 0: unknown (TCP)
	inode  uint64
}

// callerCheck admits or refuses the connections of every outbound
// listener of one sidecar. It is safe for concurrent use once Serve has
// prepared it.
type callerCheck struct {
	any  bool
	uids []uint32
	gids []uint32
	// ownUIDOnly: the default, only the sidecar's effective uid.
	ownUIDOnly bool
	// tcp is set by prepare (tests set it first to pick a backend).
	tcp     *tcpOwnerLookup
	refused *prometheus.CounterVec
	log     *slog.Logger
	// logPace paces the log lines of refusals: any local user can open
	// refused connections in a loop. Each one is counted.
	logPace refusalLog
}

// newCallerCheck checks c against the outbound listeners it will guard
// and registers the refusal counter on reg.
func newCallerCheck(c LocalCallers, outbound []Outbound, reg prometheus.Registerer, log *slog.Logger) (*callerCheck, error) {
	cc := &callerCheck{any: c.AnyLocalUser, uids: slices.Clone(c.UIDs), gids: slices.Clone(c.GIDs), log: log}
	if cc.any && (len(cc.uids) > 0 || len(cc.gids) > 0) {
		return nil, errors.New("proxy: config: outbound callers: AnyLocalUser excludes UIDs and GIDs")
	}
	if !cc.any && len(cc.uids) == 0 && len(cc.gids) == 0 {
		cc.uids = []uint32{uint32(os.Geteuid())}
		cc.ownUIDOnly = true
	}
	for _, o := range outbound {
		unixSock := isUnixListen(o)
		if len(cc.gids) > 0 && !unixSock {
			return nil, fmt.Errorf("proxy: config: outbound %s: a TCP listener cannot check the caller's group (the kernel records only the uid of a TCP socket): admit uids, or listen on a unix socket", outboundLabel(o))
		}
		if !cc.any && !callerCheckSupported {
			return nil, fmt.Errorf("proxy: config: outbound %s: the local caller cannot be checked on %s, so every local user could act as this workload through it; set AnyLocalUser (outbound_allow_any_local_user) to accept that", outboundLabel(o), runtime.GOOS)
		}
		if unixSock && !callerCheckSupported {
			return nil, fmt.Errorf("proxy: config: outbound %s: unix socket listeners need Linux", outboundLabel(o))
		}
		if o.SocketMode&^fs.ModePerm != 0 {
			return nil, fmt.Errorf("proxy: config: outbound %s: socket mode %v has bits beyond the permissions", outboundLabel(o), o.SocketMode)
		}
		if (o.SocketMode != 0 || o.SocketGID != nil) && !unixSock {
			return nil, fmt.Errorf("proxy: config: outbound %s: a socket mode or group needs a unix socket listener", outboundLabel(o))
		}
	}
	cc.refused = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "moatless_sidecar_outbound_refused_total",
		Help: "Outbound connections closed on accept because the local process that opened them is not admitted (outbound_allowed_uids/gids) or cannot be identified, and requests refused because a web browser sent them (reasons browser, foreign_host), by listener and reason.",
	}, []string{"listener", "reason"})
	if err := reg.Register(cc.refused); err != nil {
		return nil, err
	}
	return cc, nil
}

// prepare picks how loopback TCP callers are looked up, once, before the
// listeners serve, and says in the log who the outbound listeners admit.
// Unix socket listeners need no lookup.
func (cc *callerCheck) prepare(outbound, tcpListeners bool) error {
	if !outbound {
		return nil
	}
	if cc.any {
		cc.log.Warn("outbound listeners admit any local user: every local user can act as this workload through them (outbound_allow_any_local_user)")
		return nil
	}
	if tcpListeners && cc.tcp == nil {
		l, err := tcpOwnerBackend()
		if err != nil {
			return fmt.Errorf("proxy: outbound: cannot identify the local process behind a loopback connection (%w); without that any local user could act as this workload. Listen on a unix socket, or set outbound_allow_any_local_user: true to accept that", err)
		}
		cc.tcp = l
	}
	for _, uid := range cc.uids {
		if unmappedCaller(uid) {
			cc.log.Warn("outbound callers: uid is the overflow uid of a user namespace that does not own this network namespace, or does not map it: the kernel reports every user it does not map as that uid, so callers reported as it are refused as unknown; run the app and the sidecar as another uid", "uid", uid)
		}
	}
	attrs := []any{"uids", cc.uids, "gids", cc.gids}
	if cc.tcp != nil {
		attrs = append(attrs, "tcp_lookup", cc.tcp.name)
	}
	cc.log.Info("outbound callers checked", attrs...)
	return nil
}

// identify asks the kernel who is at the other end of c. On failure it
// returns the refusal reason.
func (cc *callerCheck) identify(c net.Conn) (localCaller, string, error) {
	switch c := c.(type) {
	case *net.TCPConn:
		client, ok1 := c.RemoteAddr().(*net.TCPAddr)
		server, ok2 := c.LocalAddr().(*net.TCPAddr)
		if !ok1 || !ok2 {
			return localCaller{}, refusedNotLocal, errors.New("no TCP addresses")
		}
		ca, sa := client.AddrPort(), server.AddrPort()
		if !ca.Addr().Unmap().IsLoopback() || !sa.Addr().Unmap().IsLoopback() {
			return localCaller{}, refusedNotLocal, fmt.Errorf("%s is not a loopback address", ca)
		}
		if cc.tcp == nil {
			return localCaller{}, refusedLookupFailed, errors.New("no TCP owner lookup prepared")
		}
		return tcpClientOwner(cc.tcp, ca, sa)
	case *net.UnixConn:
		p, err := unixPeerCred(c)
		if err != nil {
			return localCaller{}, refusedLookupFailed, err
		}
		if unmappedCaller(p.uid) || unmappedUnixPeer(p) {
			return localCaller{}, refusedUnknown, fmt.Errorf("the caller is reported as uid %d, which here also stands for every user this user namespace does not map", p.uid)
		}
		return p, "", nil
	}
	return localCaller{}, refusedNotLocal, fmt.Errorf("%T is neither TCP nor a unix socket", c)
}

// tcpClientOwner finds, with l, the owner of the client end (client) of an
// accepted loopback connection whose server end is server. On failure it
// returns the refusal reason.
func tcpClientOwner(l *tcpOwnerLookup, client, server netip.AddrPort) (localCaller, string, error) {
	if l.slots != nil {
		l.slots <- struct{}{}
		defer func() { <-l.slots }()
	}
	s, err := l.find(client, server)
	if errors.Is(err, errNoSocket) {
		return localCaller{}, refusedUnknown, errors.New("the client's socket is gone")
	}
	if err != nil {
		return localCaller{}, refusedLookupFailed, err
	}
	// A socket no process holds (closed, TIME_WAIT) reads as uid 0:
	// it must never pass for root.
	if s.inode == 0 || s.state == tcpListen || s.state == tcpTimeWait {
		return localCaller{}, refusedUnknown, fmt.Errorf("the client's socket belongs to no process (state %#02x)", s.state)
	}
	// A user this user namespace does not map reads as the overflow uid
	// (nobody): it must never pass for nobody.
	if unmappedCaller(s.uid) {
		return localCaller{}, refusedUnknown, fmt.Errorf("the client's socket is reported as uid %d, which here also stands for every user this user namespace does not map", s.uid)
	}
	return localCaller{uid: s.uid, inode: s.inode}, "", nil
}

// LoopbackClientUID is the uid of the local process that holds the client
// end of an accepted loopback TCP connection: client is the connection's
// remote address as the server sees it, server its local address. It
// asks the kernel as the outbound listeners' caller check does (netlink
// sock_diag, else /proc/net/tcp; the lookup is picked once per process)
// and fails — never guessing — when the client's socket is gone or held
// by no process, when an address is not loopback, and outside Linux.
// Other loopback listeners of the data plane (the admin listener's OPA
// API) use it to tell local users apart.
func LoopbackClientUID(client, server netip.AddrPort) (uint32, error) {
	if !client.Addr().Unmap().IsLoopback() || !server.Addr().Unmap().IsLoopback() {
		return 0, fmt.Errorf("proxy: %s → %s is not a loopback connection", client, server)
	}
	l, err := tcpOwnerBackend()
	if err != nil {
		return 0, err
	}
	p, _, err := tcpClientOwner(l, client, server)
	if err != nil {
		return 0, fmt.Errorf("proxy: owner of %s: %w", client, err)
	}
	return p.uid, nil
}

// allowed reports whether the caller is admitted.
func (cc *callerCheck) allowed(p localCaller) bool {
	return slices.Contains(cc.uids, p.uid) || (p.hasGID && slices.Contains(cc.gids, p.gid))
}

// admit decides on one accepted connection of listener. A refused
// connection is logged and counted; the caller closes it.
func (cc *callerCheck) admit(c net.Conn, listener string) bool {
	if cc.any {
		return true
	}
	p, reason, err := cc.identify(c)
	if err == nil {
		if cc.allowed(p) {
			return true
		}
		reason = refusedNotAllowed
	}
	cc.refused.WithLabelValues(listener, reason).Inc()
	logIt, unlogged := cc.logPace.take(time.Now())
	if !logIt {
		return false
	}
	attrs := []any{"listener", listener, "reason", reason}
	if unlogged > 0 {
		attrs = append(attrs, "unlogged_before", unlogged)
	}
	if err == nil {
		attrs = append(attrs, "uid", p.uid)
		if p.hasGID {
			attrs = append(attrs, "gid", p.gid)
		}
		if p.pid > 0 {
			attrs = append(attrs, "pid", p.pid)
		}
		if p.inode != 0 {
			attrs = append(attrs, "socket_inode", p.inode)
		}
	} else {
		attrs = append(attrs, "err", err.Error())
	}
	if _, ok := c.(*net.TCPConn); ok {
		attrs = append(attrs, "source", c.RemoteAddr().String())
	}
	cc.log.Warn("outbound connection refused", attrs...)
	return false
}

// socketMode is the file mode of an outbound unix socket: o.SocketMode
// when set; otherwise 0600 when only the sidecar's own uid is admitted,
// 0660 when the socket is given a group, and 0666 else — a file mode
// cannot list uids; the peer credential check does that on every accept.
func (cc *callerCheck) socketMode(o Outbound) fs.FileMode {
	switch {
	case o.SocketMode != 0:
		return o.SocketMode
	case cc.ownUIDOnly:
		return 0o600
	case o.SocketGID != nil:
		return 0o660
	}
	return 0o666
}

// callerListener closes, before anyone reads from them, the connections
// whose local caller check refuses; it hands on the others.
type callerListener struct {
	net.Listener
	check *callerCheck
	name  string
}

// Accept returns the next admitted connection. The check runs in the
// accept loop, before the connection is served: it costs one netlink round
// trip (or one read of /proc/net/tcp) per connection, not per request.
func (l *callerListener) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		if l.check.admit(c, l.name) {
			return c, nil
		}
		c.Close()
	}
}

// unixListenPrefix marks an outbound listen address that is a unix socket
// path: "unix:/run/moatless/orders.sock".
const unixListenPrefix = "unix:"

// isUnixListen reports whether o listens on a unix socket.
func isUnixListen(o Outbound) bool {
	if o.Listener != nil {
		return o.Listener.Addr().Network() == "unix"
	}
	return strings.HasPrefix(o.Listen, unixListenPrefix)
}

// outboundLabel names o in configuration errors, before it has a name.
func outboundLabel(o Outbound) string {
	switch {
	case o.Name != "":
		return o.Name
	case o.Listener != nil:
		return o.Listener.Addr().String()
	}
	return o.Listen
}

// unixSocketPath checks the path of a "unix:" listen address: absolute,
// clean and short enough for sockaddr_un.
func unixSocketPath(listen string) (string, error) {
	p := strings.TrimPrefix(listen, unixListenPrefix)
	switch {
	case p == "" || !filepath.IsAbs(p):
		return "", fmt.Errorf("unix socket path %q is not absolute", p)
	case filepath.Clean(p) != p:
		return "", fmt.Errorf("unix socket path %q is not clean", p)
	case len(p) > 107:
		return "", fmt.Errorf("unix socket path %q is longer than 107 bytes", p)
	case strings.ContainsRune(p, 0):
		return "", fmt.Errorf("unix socket path %q contains NUL", p)
	}
	return p, nil
}
