package proxy

import (
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
