//go:build linux

package workload

import (
	"bufio"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/moatless/moatless/internal/wire"
)

// runNamespaced plays a local user without privilege who borrows an
// allowed binary's path. As "unshare" (unshare -Urm) it starts itself as
// "ns-bind-exec" in a user and mount namespace of its own; that
// bind-mounts the test binary (argument 1) over the allowed binary's
// path (argument 2) and executes that path as "ns-fetch", which calls
// FetchX509SVID on the socket helperSock names and prints the result.
func runNamespaced(mode string) {
	switch mode {
	case "unshare":
		c := exec.Command(os.Args[0], os.Args[1:]...)
		c.Env = []string{helperEnv + "=ns-bind-exec", helperSock + "=" + os.Getenv(helperSock)}
		c.Stdout, c.Stderr = os.Stdout, os.Stderr
		c.SysProcAttr = &syscall.SysProcAttr{
			Cloneflags:  syscall.CLONE_NEWUSER | syscall.CLONE_NEWNS,
			UidMappings: []syscall.SysProcIDMap{{ContainerID: 0, HostID: os.Geteuid(), Size: 1}},
			GidMappings: []syscall.SysProcIDMap{{ContainerID: 0, HostID: os.Getegid(), Size: 1}},
		}
		if err := c.Run(); err != nil {
			fmt.Printf("helper-error user namespace: %v\n", err)
		}
		os.Exit(0)
	case "ns-bind-exec":
		self, allowed := os.Args[1], os.Args[2]
		if err := unix.Mount(self, allowed, "", unix.MS_BIND, ""); err != nil {
			fmt.Printf("helper-error bind mount: %v\n", err)
			os.Exit(2)
		}
		err := syscall.Exec(allowed, []string{allowed}, []string{helperEnv + "=ns-fetch", helperSock + "=" + os.Getenv(helperSock)})
		fmt.Printf("helper-error exec: %v\n", err)
		os.Exit(2)
	case "ns-fetch":
		conn, err := net.Dial("unix", os.Getenv(helperSock))
		if err != nil {
			fmt.Printf("helper-error dial: %v\n", err)
			os.Exit(2)
		}
		fmt.Println(grpcCall(conn))
		os.Exit(0)
	}
}

// TestBorrowedPathIsRefused: a local user makes a user and mount
// namespace, bind-mounts a program of their own over an allowed binary's
// path there, executes it and asks the Workload API for an identity whose
// entry names that path and the user's uid (as docs/agent.md advises:
// path selectors always with unix:uid). /proc/PID/exe reads the allowed
// path; the agent must not hand out the identity (spiffe/spire#1433).
func TestBorrowedPathIsRefused(t *testing.T) {
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	f := newFixture(t)
	// Files and the socket every user may reach: the test's own
	// temporary directories are private to it.
	os.Chmod(filepath.Dir(filepath.Dir(f.sock)), 0o755)
	dir, err := os.MkdirTemp("", "moatless-wl-ns-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	os.Chmod(dir, 0o755)
	copyExe := func(from, to string) {
		b, err := os.ReadFile(from)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(to, b, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	allowed, helper := filepath.Join(dir, "allowed"), filepath.Join(dir, "helper")
	copyExe("/bin/true", allowed)
	copyExe(self, helper)

	uid := os.Geteuid()
	cmd := exec.Command(helper, helper, allowed)
	cmd.Env = []string{helperEnv + "=unshare", helperSock + "=" + f.sock}
	cmd.Stderr = os.Stderr
	if uid == 0 {
		// Play an unprivileged user.
		uid = 65534
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534, NoSetGroups: true}}
	}
	f.publish(1, nil, f.identity("spiffe://example.org/allowed", time.Hour,
		wire.Selector{Type: "unix", Value: fmt.Sprintf("uid:%d", uid)},
		wire.Selector{Type: "unix", Value: "path:" + allowed}))
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	line, err := bufio.NewReader(out).ReadString('\n')
	if err != nil {
		t.Fatalf("no result from the helper: %v", err)
	}
	switch {
	case strings.HasPrefix(line, "helper-error user namespace"):
		t.Skipf("cannot make a user namespace here: %s", line)
	case strings.HasPrefix(line, "code=0"):
		t.Fatalf("the allowed binary's identity was handed to the user's own program: %s", line)
	case !strings.HasPrefix(line, "code=7 ") || !strings.Contains(line, "no identity issued"):
		t.Fatalf("got %q, want PermissionDenied (7): no identity issued", line)
	}
}
