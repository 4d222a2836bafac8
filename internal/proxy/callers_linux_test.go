package proxy

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"golang.org/x/sys/unix"

	"github.com/moatless/moatless/internal/policy"
	"github.com/moatless/moatless/internal/testpki"
)

// nobody is the uid and gid the tests run a second local user as: the one
// account every Linux host has, with no identity of its own.
const nobody = 65534

// callerHelperEnv makes this test binary, run again as another user, call
// outbound listeners instead of running tests (see
// TestCallerHelperProcess).
const callerHelperEnv = "MOATLESS_CALLER_HELPER"

// TestCallerHelperProcess is not a test: run as a child process with
// callerHelperEnv set to calls separated by ";", it makes each (see
// callOnce) and prints one result per line.
func TestCallerHelperProcess(t *testing.T) {
	specs := os.Getenv(callerHelperEnv)
	if specs == "" {
		return
	}
	for spec := range strings.SplitSeq(specs, ";") {
		fmt.Println(callOnce(spec))
	}
	os.Exit(0)
}

// callOnce makes one call described by "network addr [source-ip|hangup]":
// it sends an HTTP request to addr (from source-ip, if given) and returns
// "status=N" with the response's status, "closed=…" when the connection
// ends without a response, or "dial=…". With "hangup" it sends a POST,
// closes at once and returns "sent <its local address>". Network "mapped"
// dials an IPv4 address from a dual-stack IPv6 socket.
func callOnce(spec string) string {
	f := strings.Fields(spec)
	if len(f) < 2 {
		return "bad spec " + spec
	}
	hangup := len(f) == 3 && f[2] == "hangup"
	d := net.Dialer{Timeout: 10 * time.Second}
	if len(f) == 3 && !hangup {
		d.LocalAddr = &net.TCPAddr{IP: net.ParseIP(f[2])}
	}
	var c net.Conn
	var err error
	if f[0] == "mapped" {
		c, err = dialMapped(f[1])
	} else {
		c, err = d.Dial(f[0], f[1])
	}
	if err != nil {
		return fmt.Sprintf("dial=%v", err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	if hangup {
		io.WriteString(c, "POST /transfer HTTP/1.1\r\nHost: orders\r\nContent-Length: 0\r\n\r\n")
		c.Close()
		return fmt.Sprint("sent ", c.LocalAddr())
	}
	io.WriteString(c, "GET /who HTTP/1.1\r\nHost: orders\r\nConnection: close\r\n\r\n")
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		return fmt.Sprintf("closed=%v", err)
	}
	resp.Body.Close()
	return fmt.Sprintf("status=%d", resp.StatusCode)
}

// dialMapped connects to the IPv4 address addr from an IPv6 socket, as a
// dual-stack client does: the kernel lists that socket in /proc/net/tcp6
// with IPv4-mapped addresses. Go's net package would pick an IPv4 socket.
func dialMapped(addr string) (net.Conn, error) {
	ap, err := netip.ParseAddrPort(addr)
	if err != nil {
		return nil, err
	}
	fd, err := unix.Socket(unix.AF_INET6, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, err
	}
	f := os.NewFile(uintptr(fd), "mapped")
	defer f.Close()
	if err := unix.SetsockoptInt(fd, unix.IPPROTO_IPV6, unix.IPV6_V6ONLY, 0); err != nil {
		return nil, err
	}
	if err := unix.Connect(fd, &unix.SockaddrInet6{Port: int(ap.Port()), Addr: netip.AddrFrom4(ap.Addr().As4()).As16()}); err != nil {
		return nil, err
	}
	return net.FileConn(f)
}

// needRoot skips a test that must start processes as another uid, unless
// it runs in CI, which runs as root: there it fails instead.
func needRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() == 0 {
		return
	}
	if os.Getenv("CI") == "true" {
		t.Fatal("this test runs a client as another local user and needs root; CI runs as root")
	}
	t.Skip("needs root to run a client as another local user (uid 65534)")
}

// userBinary returns a copy of this test binary that uid 65534 can run:
// go test builds it in a directory only its owner can enter.
func userBinary(t *testing.T) string {
	t.Helper()
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	dir := userDir(t)
	bin := filepath.Join(dir, "proxy.test")
	if err := os.Link(self, bin); err != nil {
		src, err := os.Open(self)
		if err != nil {
			t.Fatal(err)
		}
		defer src.Close()
		dst, err := os.OpenFile(bin, os.O_CREATE|os.O_WRONLY|os.O_EXCL, 0o755)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := io.Copy(dst, src); err != nil {
			t.Fatal(err)
		}
		if err := dst.Close(); err != nil {
			t.Fatal(err)
		}
	}
	return bin
}

// callsAs makes the calls (see callOnce) from a process running as uid
// (and the same gid) and returns their results: in this process when it
// runs as uid, else in one child process of bin.
func callsAs(t *testing.T, bin string, uid uint32, specs ...string) []string {
	t.Helper()
	if uid == uint32(os.Geteuid()) {
		out := make([]string, len(specs))
		for i, s := range specs {
			out[i] = callOnce(s)
		}
		return out
	}
	cmd := exec.Command(bin, "-test.run=^TestCallerHelperProcess$")
	// A -race binary sleeps a second before it exits unless told not to.
	cmd.Env = []string{callerHelperEnv + "=" + strings.Join(specs, ";"), "GORACE=atexit_sleep_ms=0"}
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: uid, Gid: uid, NoSetGroups: true}}
	cmd.Dir = "/"
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("helper as uid %d: %v\n%s", uid, err, out)
	}
	lines := strings.Split(strings.TrimSpace(string(out)), "\n")
	if len(lines) != len(specs) {
		t.Fatalf("helper as uid %d: %d results for %d calls:\n%s", uid, len(lines), len(specs), out)
	}
	return lines
}

// TestOutboundRefusesOtherLocalUser is the attack of issue 7 item 2: on a
// shared host, a process of a user with no identity of its own calls the
// frontend sidecar's plaintext outbound port and reaches orders as
// frontend. With the default settings only the sidecar's own uid may use
// the outbound listeners: nobody's connection is closed before a byte is
// forwarded, logged and counted, while the sidecar's uid still gets through.
func TestOutboundRefusesOtherLocalUser(t *testing.T) {
	needRoot(t)
	bin := userBinary(t)
	ca, upstream := upstreamOrders(t)
	outL := listen(t)
	_, reg, logs := frontendSidecar(t, ca, upstream, Outbound{Listener: outL}, LocalCallers{}, nil)
	addr := outL.Addr().String()

	if got := callsAs(t, bin, 0, "tcp "+addr)[0]; got != "status=200" {
		t.Fatalf("the sidecar's own uid (0): %s, want status=200", got)
	}
	// Also from another loopback source address, and through an IPv6
	// socket with the IPv4-mapped address: the same kernel connection, so
	// the same answer.
	calls := []string{"tcp " + addr, "tcp4 " + addr + " 127.0.0.2", "mapped " + addr}
	for i, got := range callsAs(t, bin, nobody, calls...) {
		if !strings.HasPrefix(got, "closed=") {
			t.Errorf("uid %d reached orders as frontend (%s): %s", nobody, calls[i], got)
		}
	}
	if n := counterValue(t, reg, "moatless_sidecar_outbound_refused_total", map[string]string{"listener": "orders", "reason": "not_allowed"}); n != 3 {
		t.Errorf("moatless_sidecar_outbound_refused_total{reason=not_allowed} = %v, want 3", n)
	}
	if out := logs.String(); !strings.Contains(out, `"msg":"outbound connection refused"`) || !strings.Contains(out, `"uid":65534`) || !strings.Contains(out, `"listener":"orders"`) {
		t.Errorf("no refusal log line naming uid 65534 and the listener:\n%s", out)
	}
}

// upstreamOrders starts orders' sidecar in front of an echo app, allowing
// frontend, and returns its CA and inbound address.
func upstreamOrders(t testing.TB) (*testpki.CA, string) {
	t.Helper()
	ca := testpki.NewCA(t, "example.org")
	inL := listen(t)
	startSidecar(t, Config{
		Identity:   newStaticIdentity(ca, ca.SVID(t, ordersID, 0)),
		Namespace:  "prod",
		Inbound:    []Inbound{{Name: "in", Listener: inL, App: echoApp(t)}},
		Authorizer: allowPrincipals(policy.ModeStrict, "example.org/ns/prod/sa/frontend"),
	})
	return ca, inL.Addr().String()
}

// frontendSidecar starts frontend's sidecar with one outbound listener to
// upstream and the given callers, its TCP callers looked up with lookup
// (nil: the probed default), and waits until the listener is bound. It
// returns the sidecar, its metrics and its log.
func frontendSidecar(t *testing.T, ca *testpki.CA, upstream string, ob Outbound, callers LocalCallers, lookup *tcpOwnerLookup) (*Sidecar, *prometheus.Registry, *syncBuf) {
	t.Helper()
	ob.Name, ob.Upstream, ob.ID = "orders", upstream, spiffeid.RequireFromString(ordersID)
	reg := prometheus.NewRegistry()
	logs := &syncBuf{}
	s, err := New(Config{
		Identity:        newStaticIdentity(ca, ca.SVID(t, frontendID, 0)),
		Outbound:        []Outbound{ob},
		OutboundCallers: callers,
		Registerer:      reg,
		Logger:          slog.New(slog.NewJSONHandler(logs, nil)),
	})
	if err != nil {
		t.Fatal(err)
	}
	s.callers.tcp = lookup
	serveSidecar(t, s)
	deadline := time.Now().Add(10 * time.Second)
	for s.Addrs()["orders"] == nil {
		if time.Now().After(deadline) {
			t.Fatalf("outbound listener not bound after 10s; log:\n%s", logs)
		}
		time.Sleep(5 * time.Millisecond)
	}
	return s, reg, logs
}

// TestOutboundCallersByUID runs clients as root and as nobody against
// outbound listeners with each way of admitting callers, over both ways
// of looking up a TCP caller.
func TestOutboundCallersByUID(t *testing.T) {
	needRoot(t)
	bin := userBinary(t)
	ca, upstream := upstreamOrders(t)
	tests := []struct {
		name      string
		callers   LocalCallers
		root, nob string // what a client as root and as nobody gets
	}{
		{"default_admits_the_sidecars_uid_only", LocalCallers{}, "status=200", "closed="},
		{"listed_uid_replaces_the_default", LocalCallers{UIDs: []uint32{nobody}}, "closed=", "status=200"},
		{"two_listed_uids", LocalCallers{UIDs: []uint32{nobody, 0}}, "status=200", "status=200"},
		{"any_local_user", LocalCallers{AnyLocalUser: true}, "status=200", "status=200"},
	}
	for _, lookup := range []*tcpOwnerLookup{diagLookup, procLookup} {
		for _, tc := range tests {
			t.Run(strings.Trim(strings.ReplaceAll(lookup.name, "/", "_"), "_")+"/"+tc.name, func(t *testing.T) {
				l := listen(t)
				_, reg, logs := frontendSidecar(t, ca, upstream, Outbound{Listener: l}, tc.callers, lookup)
				addr := l.Addr().String()
				for _, uid := range []uint32{0, nobody} {
					want := map[uint32]string{0: tc.root, nobody: tc.nob}[uid]
					for i, got := range callsAs(t, bin, uid, "tcp "+addr, "mapped "+addr) {
						if !strings.HasPrefix(got, want) {
							t.Errorf("uid %d, call %d: %s, want %s…", uid, i, got, want)
						}
					}
				}
				refused := 0.0
				for _, w := range []string{tc.root, tc.nob} {
					if w == "closed=" {
						refused += 2
					}
				}
				if n := counterValue(t, reg, "moatless_sidecar_outbound_refused_total", map[string]string{"reason": "not_allowed"}); n != refused {
					t.Errorf("refused{not_allowed} = %v, want %v; log:\n%s", n, refused, logs)
				}
			})
		}
	}
}

// userDir is a new directory other users may enter but not write: t.TempDir
// and the per-test directory above it are made 0755 (go test makes them
// 0700). os.TempDir itself must be open to them, as /tmp is.
func userDir(t *testing.T) string {
	t.Helper()
	d := t.TempDir()
	for _, p := range []string{d, filepath.Dir(d)} {
		if err := os.Chmod(p, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	return d
}

// TestOutboundUnixSocket: a unix socket outbound listener keeps other
// users out by its file mode and, where the mode lets them in, by the
// peer credentials of every connection.
func TestOutboundUnixSocket(t *testing.T) {
	needRoot(t)
	bin := userBinary(t)
	ca, upstream := upstreamOrders(t)
	gid := uint32(nobody)
	tests := []struct {
		name      string
		callers   LocalCallers
		mode      fs.FileMode
		gid       *uint32
		wantMode  fs.FileMode
		wantGID   uint32
		root, nob string
	}{
		{"default_mode_0600_keeps_others_out", LocalCallers{}, 0, nil, 0o600, 0, "status=200", "dial="},
		{"open_mode_still_checks_peer_credentials", LocalCallers{}, 0o666, nil, 0o666, 0, "status=200", "closed="},
		{"listed_uid_gets_mode_0666", LocalCallers{UIDs: []uint32{nobody}}, 0, nil, 0o666, 0, "closed=", "status=200"},
		{"listed_gid_with_socket_group_gets_0660", LocalCallers{GIDs: []uint32{nobody}}, 0, &gid, 0o660, nobody, "closed=", "status=200"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			path := filepath.Join(userDir(t), "orders.sock")
			_, reg, logs := frontendSidecar(t, ca, upstream, Outbound{Listen: "unix:" + path, SocketMode: tc.mode, SocketGID: tc.gid}, tc.callers, nil)
			fi, err := os.Lstat(path)
			if err != nil {
				t.Fatal(err)
			}
			if fi.Mode().Type() != fs.ModeSocket || fi.Mode().Perm() != tc.wantMode || fi.Sys().(*syscall.Stat_t).Gid != tc.wantGID {
				t.Fatalf("socket file %v gid %d, want a socket with mode %v gid %d", fi.Mode(), fi.Sys().(*syscall.Stat_t).Gid, tc.wantMode, tc.wantGID)
			}
			if got := callsAs(t, bin, 0, "unix "+path)[0]; !strings.HasPrefix(got, tc.root) {
				t.Errorf("root: %s, want %s…", got, tc.root)
			}
			got := callsAs(t, bin, nobody, "unix "+path)[0]
			if !strings.HasPrefix(got, tc.nob) {
				t.Errorf("nobody: %s, want %s…", got, tc.nob)
			}
			if tc.nob == "dial=" && !strings.Contains(got, "permission denied") {
				t.Errorf("nobody: %s, want permission denied", got)
			}
			if tc.nob == "closed=" {
				// SO_PEERCRED names the process: the log line has its pid.
				if out := logs.String(); !strings.Contains(out, `"uid":65534,"gid":65534,"pid":`) {
					t.Errorf("no refusal log naming uid, gid and pid:\n%s", out)
				}
			}
			var refused float64
			for _, w := range []string{tc.root, tc.nob} {
				if w == "closed=" {
					refused++
				}
			}
			if n := counterValue(t, reg, "moatless_sidecar_outbound_refused_total", map[string]string{"reason": "not_allowed"}); n != refused {
				t.Errorf("refused{not_allowed} = %v, want %v", n, refused)
			}
		})
	}
}

// socketInode is the inode of c's socket, as /proc/PID/fd shows it.
func socketInode(t *testing.T, c net.Conn) uint64 {
	t.Helper()
	raw, err := c.(syscall.Conn).SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var st unix.Stat_t
	var serr error
	if err := raw.Control(func(fd uintptr) { serr = unix.Fstat(int(fd), &st) }); err != nil {
		t.Fatal(err)
	}
	if serr != nil {
		t.Fatal(serr)
	}
	return st.Ino
}

// connect makes a loopback connection: the client dialled from source (""
// for the kernel's choice) or over a dual-stack IPv6 socket (mapped), and
// the accepted end.
func connect(t *testing.T, network, listenAddr, source string, mapped bool) (client, accepted net.Conn) {
	t.Helper()
	l, err := net.Listen(network, listenAddr)
	if err != nil {
		t.Skipf("cannot listen on %s: %v", listenAddr, err)
	}
	defer l.Close()
	if mapped {
		client, err = dialMapped(l.Addr().String())
	} else {
		d := net.Dialer{}
		if source != "" {
			d.LocalAddr = &net.TCPAddr{IP: net.ParseIP(source)}
		}
		client, err = d.Dial(network, l.Addr().String())
	}
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { client.Close() })
	if accepted, err = l.Accept(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { accepted.Close() })
	return client, accepted
}

// TestTCPOwnerLookup: both lookups find the client's end of an accepted
// loopback connection — its owner and its very inode — from any
// 127.0.0.0/8 address, over IPv6 and from a dual-stack socket; and a
// client that closed its socket before the check is never admitted, not
// even as the uid 0 a TIME_WAIT socket reads as.
func TestTCPOwnerLookup(t *testing.T) {
	conns := []struct {
		name, network, listen, source string
		mapped                        bool
	}{
		{"ipv4", "tcp4", "127.0.0.1:0", "", false},
		{"other_127_addresses", "tcp4", "127.0.0.5:0", "127.0.0.2", false},
		{"ipv6", "tcp6", "[::1]:0", "", false},
		{"ipv4_mapped_client", "tcp4", "127.0.0.1:0", "", true},
	}
	for _, lookup := range []*tcpOwnerLookup{diagLookup, procLookup} {
		for _, tc := range conns {
			t.Run(strings.Trim(strings.ReplaceAll(lookup.name, "/", "_"), "_")+"/"+tc.name, func(t *testing.T) {
				client, accepted := connect(t, tc.network, tc.listen, tc.source, tc.mapped)
				c := &callerCheck{tcp: lookup}
				p, reason, err := c.identify(accepted)
				if err != nil {
					t.Fatalf("identify: %s: %v", reason, err)
				}
				if p.uid != uint32(os.Geteuid()) || p.inode != socketInode(t, client) {
					t.Fatalf("got uid %d inode %d, want uid %d inode %d", p.uid, p.inode, os.Geteuid(), socketInode(t, client))
				}
				// The lookup is by 4-tuple: the accepted end, asked the
				// other way round, is this process's own socket.
				s, err := lookup.find(accepted.LocalAddr().(*net.TCPAddr).AddrPort(), accepted.RemoteAddr().(*net.TCPAddr).AddrPort())
				if err != nil || s.inode != socketInode(t, accepted) {
					t.Fatalf("server end: %+v, %v", s, err)
				}
			})
			t.Run(strings.Trim(strings.ReplaceAll(lookup.name, "/", "_"), "_")+"/"+tc.name+"_client_closed", func(t *testing.T) {
				client, accepted := connect(t, tc.network, tc.listen, tc.source, tc.mapped)
				io.WriteString(client, "GET /transfer HTTP/1.1\r\n\r\n")
				client.Close()
				c := &callerCheck{tcp: lookup, uids: []uint32{0, uint32(os.Geteuid())}}
				p, reason, err := c.identify(accepted)
				if err == nil || reason != refusedUnknown {
					t.Fatalf("a closed client was identified as uid %d (reason %q, err %v)", p.uid, reason, err)
				}
			})
		}
	}
	t.Run("half_closed_client_is_still_its_owners", func(t *testing.T) {
		client, accepted := connect(t, "tcp4", "127.0.0.1:0", "", false)
		client.(*net.TCPConn).CloseWrite()
		p, _, err := (&callerCheck{tcp: diagLookup}).identify(accepted)
		if err != nil || p.uid != uint32(os.Geteuid()) {
			t.Fatalf("half-closed client: uid %d, %v", p.uid, err)
		}
	})
	t.Run("no_such_socket", func(t *testing.T) {
		for _, l := range []*tcpOwnerLookup{diagLookup, procLookup} {
			// Port 1 on 127.0.0.9 talks to nobody.
			_, err := l.find(netip.MustParseAddrPort("127.0.0.9:1"), netip.MustParseAddrPort("127.0.0.9:2"))
			if !errors.Is(err, errNoSocket) {
				t.Errorf("%s: %v, want errNoSocket", l.name, err)
			}
		}
	})
}

// TestProbeTCPOwner: the probe picks the first lookup that works and
// reports every failure when none does.
func TestProbeTCPOwner(t *testing.T) {
	broken := &tcpOwnerLookup{name: "broken", find: func(netip.AddrPort, netip.AddrPort) (tcpSocket, error) {
		return tcpSocket{}, errors.New("netlink filtered")
	}}
	liar := &tcpOwnerLookup{name: "liar", find: func(netip.AddrPort, netip.AddrPort) (tcpSocket, error) {
		return tcpSocket{uid: uint32(os.Geteuid()) + 1, inode: 7}, nil
	}}
	if l, err := probeTCPOwner([]*tcpOwnerLookup{broken, liar, procLookup}); err != nil || l != procLookup {
		t.Fatalf("got %v, %v; want the /proc lookup", l, err)
	}
	_, err := probeTCPOwner([]*tcpOwnerLookup{broken, liar})
	if err == nil || !strings.Contains(err.Error(), "netlink filtered") || !strings.Contains(err.Error(), "liar") {
		t.Fatalf("got %v, want both failures", err)
	}
	if l, err := tcpOwnerBackend(); err != nil || l != diagLookup {
		t.Fatalf("this host: %v, %v; want sock_diag", l, err)
	}
}

// TestOutboundRefusesCallerThatHangsUp: a client that sends its request
// and closes its socket at once leaves a socket no process holds; within
// a few hundred milliseconds the kernel turns it into a TIME_WAIT socket
// that reads as uid 0. A sidecar that accepts it only then (under load,
// from its backlog) must not take it for root, whom a sidecar running as
// root admits: the request never reaches the app.
func TestOutboundRefusesCallerThatHangsUp(t *testing.T) {
	needRoot(t)
	bin := userBinary(t)
	var mu sync.Mutex
	var seen []string
	appL := listen(t)
	app := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		seen = append(seen, r.Method+" "+r.URL.Path)
		mu.Unlock()
	})}
	go app.Serve(appL)
	t.Cleanup(func() { app.Close() })
	ca := testpki.NewCA(t, "example.org")
	inL := listen(t)
	startSidecar(t, Config{
		Identity:   newStaticIdentity(ca, ca.SVID(t, ordersID, 0)),
		Namespace:  "prod",
		Inbound:    []Inbound{{Name: "in", Listener: inL, App: appL.Addr().String()}},
		Authorizer: &fakeAuthz{mode: policy.ModeStrict, evaluate: func(*policy.Request) policy.Decision { return policy.Decision{Outcome: policy.Allow} }},
	})
	for _, lookup := range []*tcpOwnerLookup{diagLookup, procLookup} {
		for _, proto := range []Protocol{HTTP, TCP} {
			l := listen(t)
			got := callsAs(t, bin, nobody, "tcp "+l.Addr().String()+" hangup")[0]
			client, err := netip.ParseAddrPort(strings.TrimPrefix(got, "sent "))
			if err != nil {
				t.Fatalf("helper: %s", got)
			}
			server := l.Addr().(*net.TCPAddr).AddrPort()
			deadline := time.Now().Add(10 * time.Second)
			for {
				s, err := lookup.find(client, server)
				if err == nil && s.uid == 0 && s.inode == 0 {
					break // the hung-up socket now reads as root's
				}
				if time.Now().After(deadline) {
					t.Fatalf("client socket still %+v (%v) after 10s", s, err)
				}
				time.Sleep(10 * time.Millisecond)
			}
			_, reg, logs := frontendSidecar(t, ca, inL.Addr().String(), Outbound{Listener: l, Protocol: proto}, LocalCallers{UIDs: []uint32{0}}, lookup)
			for counterValue(t, reg, "moatless_sidecar_outbound_refused_total", map[string]string{"reason": refusedUnknown}) != 1 {
				mu.Lock()
				served := slices.Clone(seen)
				mu.Unlock()
				if len(served) > 0 {
					t.Fatalf("%s, %v: the app served %v from a caller that hung up, taken for root", lookup.name, proto, served)
				}
				if time.Now().After(deadline) {
					t.Fatalf("%s, %v: not refused as an unknown caller; log:\n%s", lookup.name, proto, logs)
				}
				time.Sleep(5 * time.Millisecond)
			}
		}
	}
	mu.Lock()
	defer mu.Unlock()
	if len(seen) != 0 {
		t.Fatalf("the app served %v from callers that hung up", seen)
	}
}

// TestOutboundUnixSocketSetup: what an outbound unix socket listener
// accepts to start on, and what it refuses.
func TestOutboundUnixSocketSetup(t *testing.T) {
	ca := testpki.NewCA(t, "example.org")
	tests := []struct {
		name    string
		prepare func(t *testing.T, dir, path string)
		wantErr string // "" to start
	}{
		{"fresh", func(*testing.T, string, string) {}, ""},
		{"stale_socket_of_an_earlier_run_replaced", func(t *testing.T, _, path string) {
			l, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
			if err != nil {
				t.Fatal(err)
			}
			l.SetUnlinkOnClose(false)
			l.Close()
		}, ""},
		{"socket_in_use", func(t *testing.T, _, path string) {
			l, err := net.Listen("unix", path)
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { l.Close() })
			go func() {
				for {
					c, err := l.Accept()
					if err != nil {
						return
					}
					c.Close()
				}
			}()
		}, "in use by another process"},
		{"regular_file", func(t *testing.T, _, path string) {
			if err := os.WriteFile(path, nil, 0o600); err != nil {
				t.Fatal(err)
			}
		}, "exists and is not a socket"},
		{"symlink", func(t *testing.T, dir, path string) {
			if err := os.Symlink(filepath.Join(dir, "elsewhere"), path); err != nil {
				t.Fatal(err)
			}
		}, "exists and is not a socket"},
		{"directory_writable_by_others", func(t *testing.T, dir, _ string) {
			if err := os.Chmod(dir, 0o777); err != nil {
				t.Fatal(err)
			}
		}, "writable by other users"},
		{"sticky_directory_writable_by_others", func(t *testing.T, dir, _ string) {
			if err := os.Chmod(dir, 0o777|fs.ModeSticky); err != nil {
				t.Fatal(err)
			}
		}, ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			path := filepath.Join(dir, "orders.sock")
			tc.prepare(t, dir, path)
			s, err := New(Config{
				Identity: newStaticIdentity(ca, ca.SVID(t, frontendID, 0)),
				Outbound: []Outbound{{Listen: "unix:" + path, Upstream: "127.0.0.1:1", ID: spiffeid.RequireFromString(ordersID)}},
				Logger:   discardLogger(),
			})
			if err != nil {
				t.Fatal(err)
			}
			ctx, cancel := context.WithCancel(context.Background())
			errc := make(chan error, 1)
			go func() { errc <- s.Serve(ctx) }()
			if tc.wantErr != "" {
				err := <-errc
				cancel()
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("Serve: %v, want an error containing %q", err, tc.wantErr)
				}
				return
			}
			deadline := time.Now().Add(10 * time.Second)
			for s.Addrs()["outbound-orders.sock"] == nil {
				if time.Now().After(deadline) {
					t.Fatal("not listening after 10s")
				}
				time.Sleep(5 * time.Millisecond)
			}
			if fi, err := os.Lstat(path); err != nil || fi.Mode().Type() != fs.ModeSocket || fi.Mode().Perm() != 0o600 {
				t.Fatalf("socket file: %v, %v; want a socket with mode 0600", fi, err)
			}
			cancel()
			<-errc
			if _, err := os.Lstat(path); !errors.Is(err, fs.ErrNotExist) {
				t.Fatalf("socket file left after Serve ended: %v", err)
			}
		})
	}
}

// openConnections opens n loopback connections (2n sockets) for the length
// of the benchmark: the host's socket count is what a /proc/net/tcp
// lookup pays for.
func openConnections(b *testing.B, n int) {
	b.Helper()
	l, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	defer l.Close()
	for range n {
		c, err := net.Dial("tcp4", l.Addr().String())
		if err != nil {
			b.Fatal(err)
		}
		a, err := l.Accept()
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { c.Close(); a.Close() })
	}
}

// BenchmarkTCPOwnerLookup is the caller check's cost per accepted loopback
// connection: one sock_diag round trip, or one read of /proc/net/tcp up to
// the client's socket (where it sits in the table is the kernel's hash
// order: any), with the host's own sockets plus the given number of extra
// loopback connections (two sockets each). proc_full_table is the
// /proc/net/tcp read to the end, the bound of the fallback's cost.
func BenchmarkTCPOwnerLookup(b *testing.B) {
	for _, extra := range []int{0, 1000, 5000} {
		b.Run(fmt.Sprintf("extra_connections=%d", extra), func(b *testing.B) {
			openConnections(b, extra)
			_, accepted := connectB(b)
			for _, l := range []*tcpOwnerLookup{diagLookup, procLookup} {
				b.Run(strings.Trim(strings.ReplaceAll(l.name, "/", "_"), "_"), func(b *testing.B) {
					cc := &callerCheck{tcp: l, uids: []uint32{uint32(os.Geteuid())}}
					b.ReportAllocs()
					for b.Loop() {
						p, _, err := cc.identify(accepted)
						if err != nil || !cc.allowed(p) {
							b.Fatal(err)
						}
					}
				})
			}
			b.Run("proc_full_table", func(b *testing.B) {
				none := netip.MustParseAddrPort("127.0.0.9:1")
				b.ReportAllocs()
				for b.Loop() {
					if _, err := procFindIn("/proc/net/tcp", false, none, none); !errors.Is(err, errNoSocket) {
						b.Fatal(err)
					}
				}
			})
		})
	}
}

// connectB is one loopback connection for a benchmark.
func connectB(b *testing.B) (client, accepted net.Conn) {
	l, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	defer l.Close()
	if client, err = net.Dial("tcp4", l.Addr().String()); err != nil {
		b.Fatal(err)
	}
	if accepted, err = l.Accept(); err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { client.Close(); accepted.Close() })
	return client, accepted
}

// BenchmarkOutboundNewConnection is what the check adds to a new app
// connection through a TCP outbound listener, end to end: connect, one
// request over the pooled mTLS to the upstream, close. any_local_user is
// the same path without the check.
func BenchmarkOutboundNewConnection(b *testing.B) {
	ca, upstream := upstreamOrders(b)
	for _, tc := range []struct {
		name    string
		callers LocalCallers
		lookup  *tcpOwnerLookup
	}{
		{"any_local_user", LocalCallers{AnyLocalUser: true}, nil},
		{"checked_sock_diag", LocalCallers{}, diagLookup},
		{"checked_proc_net_tcp", LocalCallers{}, procLookup},
	} {
		b.Run(tc.name, func(b *testing.B) {
			outL := listen(b)
			s, err := New(Config{
				Identity:        newStaticIdentity(ca, ca.SVID(b, frontendID, 0)),
				Outbound:        []Outbound{{Name: "orders", Listener: outL, Upstream: upstream, ID: spiffeid.RequireFromString(ordersID), HTTP1: true}},
				OutboundCallers: tc.callers,
				Logger:          discardLogger(),
			})
			if err != nil {
				b.Fatal(err)
			}
			s.callers.tcp = tc.lookup
			serveSidecar(b, s)
			addr := outL.Addr().String()
			for b.Loop() {
				if got := callOnce("tcp " + addr); got != "status=200" {
					b.Fatal(got)
				}
			}
		})
	}
}

// TestProcLookupOneAtATime: the /proc/net/tcp fallback reads the tables
// for one connection at a time, however many connections local users
// open at once: while one lookup runs, another waits.
func TestProcLookupOneAtATime(t *testing.T) {
	l := *procLookup
	entered := make(chan struct{}, 2)
	release := make(chan struct{})
	l.find = func(local, remote netip.AddrPort) (tcpSocket, error) {
		entered <- struct{}{}
		<-release
		return tcpSocket{}, errNoSocket
	}
	a := netip.MustParseAddrPort("127.0.0.1:40000")
	b := netip.MustParseAddrPort("127.0.0.1:15001")
	done := make(chan struct{}, 2)
	for range 2 {
		go func() {
			tcpClientOwner(&l, a, b)
			done <- struct{}{}
		}()
	}
	<-entered
	select {
	case <-entered:
		close(release)
		t.Fatal("two /proc/net/tcp lookups ran at once")
	case <-time.After(200 * time.Millisecond):
		// The other is waiting for the slot: it cannot be told from one
		// that has not been scheduled yet, but on the parent commit it
		// entered within microseconds.
	}
	close(release)
	<-entered
	<-done
	<-done
}
