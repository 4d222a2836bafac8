package proxy

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestLoopbackClientUID: the uid behind an accepted loopback connection
// is its client's — this process's for its own connection, 65534's for
// one a process of that user holds — and a question about a client that
// closed, or is not loopback, is an error, never uid 0.
func TestLoopbackClientUID(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	server := ln.Addr().(*net.TCPAddr).AddrPort()
	accept := func() (net.Conn, netip.AddrPort) {
		t.Helper()
		c, err := ln.Accept()
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		return c, c.RemoteAddr().(*net.TCPAddr).AddrPort()
	}

	own, err := net.Dial("tcp", server.String())
	if err != nil {
		t.Fatal(err)
	}
	conn, client := accept()
	if uid, err := LoopbackClientUID(client, server); err != nil || uid != uint32(os.Geteuid()) {
		t.Fatalf("own connection: uid %d, %v; want %d", uid, err, os.Geteuid())
	}
	// The client closes; once its FIN has arrived here, its socket
	// belongs to no process (FIN_WAIT2, inode 0, which the kernel
	// reports as uid 0): an error, never root.
	own.Close()
	conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, err := conn.Read(make([]byte, 1)); err != io.EOF {
		t.Fatalf("reading the closed client: %v, want EOF", err)
	}
	if uid, err := LoopbackClientUID(client, server); err == nil {
		t.Fatalf("a closed client's socket was reported as uid %d", uid)
	}

	if _, err := LoopbackClientUID(netip.MustParseAddrPort("192.0.2.1:4000"), server); err == nil || !strings.Contains(err.Error(), "not a loopback") {
		t.Fatalf("non-loopback client: %v", err)
	}

	if os.Geteuid() != 0 {
		t.Skip("needs root to hold a connection as uid 65534")
	}
	// A bash of uid 65534 holds a connection open until its stdin ends.
	cmd := exec.Command("bash", "-c", "exec 3<>/dev/tcp/127.0.0.1/"+strings.TrimPrefix(server.String(), "127.0.0.1:")+" && read -r _")
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534, NoSetGroups: true}}
	cmd.Dir = "/"
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { stdin.Close(); cmd.Wait() }()
	_, other := accept()
	if uid, err := LoopbackClientUID(other, server); err != nil || uid != 65534 {
		t.Fatalf("connection of uid 65534: uid %d, %v", uid, err)
	}
}

// TestLoopbackClientUIDFamilies: the owner is found whatever the
// listener's family — IPv4, IPv6 ::1, and a dual-stack listener on [::]
// whose IPv4 clients appear with IPv4-mapped addresses (as the admin
// listener's OPA API sees them when admin is ":port" or "[::]:port") —
// through sock_diag and through /proc/net/tcp{,6} alike.
func TestLoopbackClientUIDFamilies(t *testing.T) {
	for _, tc := range []struct{ name, network, listen, dial string }{
		{"ipv4", "tcp4", "127.0.0.1:0", "127.0.0.1"},
		{"ipv6", "tcp6", "[::1]:0", "::1"},
		{"dual_stack_ipv4_client", "tcp", "[::]:0", "127.0.0.1"},
		{"dual_stack_ipv6_client", "tcp", "[::]:0", "::1"},
		{"ipv4_mapped_client", "tcp", "[::]:0", "::ffff:127.0.0.1"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ln, err := net.Listen(tc.network, tc.listen)
			if err != nil {
				t.Skipf("listen %s: %v", tc.listen, err)
			}
			defer ln.Close()
			_, port, _ := net.SplitHostPort(ln.Addr().String())
			c, err := net.Dial("tcp", net.JoinHostPort(tc.dial, port))
			if err != nil {
				t.Skipf("dial %s: %v", tc.dial, err)
			}
			defer c.Close()
			a, err := ln.Accept()
			if err != nil {
				t.Fatal(err)
			}
			defer a.Close()
			client := a.RemoteAddr().(*net.TCPAddr).AddrPort()
			server := a.LocalAddr().(*net.TCPAddr).AddrPort()
			if uid, err := LoopbackClientUID(client, server); err != nil || uid != uint32(os.Geteuid()) {
				t.Fatalf("%s → %s: uid %d, %v; want %d", client, server, uid, err, os.Geteuid())
			}
			for _, l := range []*tcpOwnerLookup{diagLookup, procLookup} {
				if p, _, err := tcpClientOwner(l, client, server); err != nil || p.uid != uint32(os.Geteuid()) {
					t.Fatalf("%s: %s → %s: uid %d, %v; want %d", l.name, client, server, p.uid, err, os.Geteuid())
				}
			}
		})
	}
}

// clientUIDHelperEnv makes the test binary the helper of
// TestLoopbackClientUIDUnmappedUser (TestClientUIDHelper).
const clientUIDHelperEnv = "MOATLESS_PROXY_CLIENTUID_HELPER"

// TestLoopbackClientUIDUnmappedUser: a sidecar run in a user namespace
// that shares the host's network namespace (a rootless container with host
// networking) is reached on 127.0.0.1 by every user of the host. The
// kernel reports the owner of a socket as the sidecar's namespace sees
// it, and a user not mapped there as the overflow uid, 65534, which is
// also "nobody", the app user many images run as. Such a caller must be
// unknown, never uid 65534: else admitting nobody — or running the
// sidecar as nobody, which admits its own uid — admits every host user.
// Runs itself as the sidecar in a new user namespace that maps root and
// nobody to themselves, and calls it as host uid 4200000, unmapped there.
func TestLoopbackClientUIDUnmappedUser(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to make a user namespace that maps root, and to call as another user")
	}
	c := exec.Command(os.Args[0], "-test.run=^TestClientUIDHelper$")
	c.Env = append(os.Environ(), clientUIDHelperEnv+"=1")
	ids := []syscall.SysProcIDMap{{ContainerID: 0, HostID: 0, Size: 1}, {ContainerID: 65534, HostID: 65534, Size: 1}}
	c.SysProcAttr = &syscall.SysProcAttr{Cloneflags: syscall.CLONE_NEWUSER, UidMappings: ids, GidMappings: ids}
	stdin, err := c.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	// The helper answers on descriptor 3: its stdout carries the test
	// framework's lines.
	answers, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer answers.Close()
	c.ExtraFiles = []*os.File{w}
	var out strings.Builder
	c.Stdout, c.Stderr = &out, &out
	if err := c.Start(); err != nil {
		t.Skipf("cannot make a user namespace here: %v", err)
	}
	w.Close()
	defer func() { stdin.Close(); c.Wait() }()
	r := bufio.NewReader(answers)
	addr, err := r.ReadString('\n')
	if err != nil {
		t.Fatalf("helper: %v %s", err, out.String())
	}
	host, port, _ := net.SplitHostPort(strings.TrimSpace(addr))
	// A bash of host uid 4200000 holds a connection open until its stdin
	// ends.
	caller := exec.Command("bash", "-c", "exec 3<>/dev/tcp/"+host+"/"+port+" && read -r _")
	caller.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 4200000, Gid: 4200000, NoSetGroups: true}}
	caller.Dir = "/"
	callerIn, err := caller.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := caller.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { callerIn.Close(); caller.Wait() }()
	for _, want := range []string{"error:", "uid 0"} {
		got, err := r.ReadString('\n')
		if err != nil {
			t.Fatalf("helper: %v %s", err, out.String())
		}
		if got = strings.TrimSpace(got); !strings.HasPrefix(got, want) {
			t.Fatalf("got %q, want %q…: a host user unmapped in the sidecar's user namespace must be unknown; the sidecar's own connection, uid 0", got, want)
		}
	}
}

// TestClientUIDHelper is the sidecar of TestLoopbackClientUIDUnmappedUser:
// it listens on loopback, writes its address, says who its first
// caller is, then who its own second connection is, and waits for stdin
// to end.
func TestClientUIDHelper(t *testing.T) {
	if os.Getenv(clientUIDHelperEnv) == "" {
		t.Skip("helper of TestLoopbackClientUIDUnmappedUser")
	}
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	out := os.NewFile(3, "answers")
	fmt.Fprintln(out, ln.Addr())
	who := func() {
		a, err := ln.Accept()
		if err != nil {
			t.Fatal(err)
		}
		defer a.Close()
		uid, err := LoopbackClientUID(a.RemoteAddr().(*net.TCPAddr).AddrPort(), a.LocalAddr().(*net.TCPAddr).AddrPort())
		if err != nil {
			fmt.Fprintln(out, "error:", err)
			return
		}
		fmt.Fprintln(out, "uid", uid)
	}
	who()
	own, err := net.Dial("tcp4", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer own.Close()
	who()
	io.Copy(io.Discard, os.Stdin)
}

// unixPeerHelperEnv makes the test binary the helper of
// TestOutboundUnixUnmappedCaller (TestUnixPeerHelper).
const unixPeerHelperEnv = "MOATLESS_PROXY_UNIXPEER_HELPER"

// TestOutboundUnixUnmappedCaller: a sidecar in a user namespace with a
// network namespace of its own (a rootless container) takes a unix socket
// peer reported as 65534 for nobody over TCP — only a privileged process
// could enter that network namespace — but a unix socket is reached
// through the file system: a host user the namespace does not map, in a
// directory shared with the host, reads as 65534 too. Such a peer (in
// another user namespace, or one this PID namespace does not show) is
// unknown, never nobody. Runs itself as the sidecar in new user and
// network namespaces mapping root and nobody; host uid 4200000 calls.
func TestOutboundUnixUnmappedCaller(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to make a user namespace that maps root, and to call as another user")
	}
	if _, err := os.Stat("/usr/bin/python3"); err != nil {
		t.Skip("needs /usr/bin/python3 to call a unix socket as another user")
	}
	dir, err := os.MkdirTemp("", "unixpeer")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(dir)
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	sock := dir + "/out.sock"
	c := exec.Command(os.Args[0], "-test.run=^TestUnixPeerHelper$")
	c.Env = append(os.Environ(), unixPeerHelperEnv+"="+sock)
	ids := []syscall.SysProcIDMap{{ContainerID: 0, HostID: 0, Size: 1}, {ContainerID: 65534, HostID: 65534, Size: 1}}
	c.SysProcAttr = &syscall.SysProcAttr{Cloneflags: syscall.CLONE_NEWUSER | syscall.CLONE_NEWNET, UidMappings: ids, GidMappings: ids}
	answers, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer answers.Close()
	c.ExtraFiles = []*os.File{w}
	var out strings.Builder
	c.Stdout, c.Stderr = &out, &out
	if err := c.Start(); err != nil {
		t.Skipf("cannot make user and network namespaces here: %v", err)
	}
	w.Close()
	defer c.Wait()
	r := bufio.NewReader(answers)
	if line, err := r.ReadString('\n'); line != "ready\n" {
		t.Fatalf("helper: %q %v %s", line, err, out.String())
	}
	caller := exec.Command("/usr/bin/python3", "-c", "import socket,sys; s=socket.socket(socket.AF_UNIX); s.connect(sys.argv[1]); sys.stdin.read()", sock)
	caller.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 4200000, Gid: 4200000, NoSetGroups: true}}
	caller.Dir = "/"
	callerIn, err := caller.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := caller.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { callerIn.Close(); caller.Wait() }()
	got, err := r.ReadString('\n')
	if err != nil {
		t.Fatalf("helper: %v %s", err, out.String())
	}
	if got = strings.TrimSpace(got); !strings.HasPrefix(got, "refused "+refusedUnknown) {
		t.Fatalf("a host user unmapped in the sidecar's user namespace, on a unix socket: %q, want refused as %s", got, refusedUnknown)
	}
}

// TestUnixPeerHelper is the sidecar of TestOutboundUnixUnmappedCaller: it
// listens on the unix socket named by its environment, writes "ready" and
// then what the caller check says of its first caller to descriptor 3.
func TestUnixPeerHelper(t *testing.T) {
	path := os.Getenv(unixPeerHelperEnv)
	if path == "" {
		t.Skip("helper of TestOutboundUnixUnmappedCaller")
	}
	out := os.NewFile(3, "answers")
	ln, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	os.Chmod(path, 0o777)
	fmt.Fprintln(out, "ready")
	c, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	p, reason, err := (&callerCheck{}).identify(c)
	if err != nil {
		fmt.Fprintln(out, "refused", reason, err)
		return
	}
	fmt.Fprintln(out, "uid", p.uid, "pid", p.pid)
}
