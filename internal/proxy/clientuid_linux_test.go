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
