//go:build linux

package attest

import (
	"bufio"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/moatless/moatless/internal/wire"
)

func selfPeer(t *testing.T) Peer {
	t.Helper()
	pidfd, err := unix.PidfdOpen(os.Getpid(), 0)
	if err != nil {
		pidfd = -1
	} else {
		t.Cleanup(func() { unix.Close(pidfd) })
	}
	return Peer{PID: int32(os.Getpid()), UID: uint32(os.Geteuid()), GID: uint32(os.Getegid()), PIDFD: pidfd}
}

func fileSHA256(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:])
}

func TestUnixAttestSelf(t *testing.T) {
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	exe, _ = filepath.EvalSymlinks(exe)
	u := NewUnix(UnixConfig{})
	got, err := u.Attest(context.Background(), selfPeer(t))
	if err != nil {
		t.Fatal(err)
	}
	want := []wire.Selector{
		{Type: "unix", Value: "uid:" + strconv.Itoa(os.Geteuid())},
		{Type: "unix", Value: "gid:" + strconv.Itoa(os.Getegid())},
		{Type: "unix", Value: "path:" + exe},
		{Type: "unix", Value: "sha256:" + fileSHA256(t, exe)},
	}
	for _, w := range want {
		if !slices.Contains(got, w) {
			t.Errorf("selector %s missing from %v", w, got)
		}
	}
	if os.Geteuid() == 0 && !slices.Contains(got, wire.Selector{Type: "unix", Value: "user:root"}) {
		t.Errorf("unix:user:root missing from %v", got)
	}
	// A second call hits the hash cache and must agree.
	again, err := u.Attest(context.Background(), selfPeer(t))
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(got, again) {
		t.Errorf("second attestation differs:\n%v\n%v", got, again)
	}
}

func TestUnixAttestChildBinary(t *testing.T) {
	sleep, err := exec.LookPath("sleep")
	if err != nil {
		t.Skip("no sleep binary")
	}
	sleep, _ = filepath.EvalSymlinks(sleep)
	cmd := exec.Command(sleep, "30")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	pidfd, err := unix.PidfdOpen(cmd.Process.Pid, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(pidfd)
	u := NewUnix(UnixConfig{SkipNames: true})
	got, err := u.Attest(context.Background(), Peer{PID: int32(cmd.Process.Pid), UID: 1234, GID: 5678, PIDFD: pidfd})
	if err != nil {
		t.Fatal(err)
	}
	for _, w := range []wire.Selector{
		{Type: "unix", Value: "uid:1234"},
		{Type: "unix", Value: "gid:5678"},
		{Type: "unix", Value: "path:" + sleep},
		{Type: "unix", Value: "sha256:" + fileSHA256(t, sleep)},
	} {
		if !slices.Contains(got, w) {
			t.Errorf("selector %s missing from %v", w, got)
		}
	}
	for _, s := range got {
		if s.Value[:5] == "user:" || s.Value[:6] == "group:" {
			t.Errorf("SkipNames set but got %s", s)
		}
	}

	// Once the process is gone the pidfd proves it, even though /proc
	// reads could race with a new process under the same PID.
	cmd.Process.Kill()
	cmd.Wait()
	_, err = u.Attest(context.Background(), Peer{PID: int32(cmd.Process.Pid), UID: 1234, GID: 5678, PIDFD: pidfd})
	if !errors.Is(err, ErrProcessGone) {
		t.Fatalf("attest of exited process: err = %v, want ErrProcessGone", err)
	}
}

func TestUnixAttestRejects(t *testing.T) {
	tests := []struct {
		name string
		peer Peer
		want error
	}{
		{"zero_pid", Peer{PID: 0, PIDFD: -1}, ErrInvalidPeer},
		{"negative_pid", Peer{PID: -5, PIDFD: -1}, ErrInvalidPeer},
		{"no_such_process", Peer{PID: 1<<22 + 17, PIDFD: -1}, ErrProcessGone},
	}
	u := NewUnix(UnixConfig{})
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			sels, err := u.Attest(context.Background(), tt.peer)
			if !errors.Is(err, tt.want) {
				t.Fatalf("err = %v, want %v", err, tt.want)
			}
			if sels != nil {
				t.Fatalf("selectors returned with an error: %v", sels)
			}
		})
	}
}

func TestUnixAttestBinaryTooLargeHasNoHash(t *testing.T) {
	u := NewUnix(UnixConfig{MaxBinarySize: 1024, SkipNames: true})
	got, err := u.Attest(context.Background(), selfPeer(t))
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range got {
		if len(s.Value) > 7 && s.Value[:7] == "sha256:" {
			t.Fatalf("binary above the size limit was hashed: %s", s)
		}
	}
}

// fakeProc builds a procfs tree for one PID with the given stat and status.
func fakeProc(t *testing.T, pid int, stat, status string) string {
	t.Helper()
	root := t.TempDir()
	dir := filepath.Join(root, strconv.Itoa(pid))
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	os.WriteFile(filepath.Join(dir, "stat"), []byte(stat), 0o644)
	os.WriteFile(filepath.Join(dir, "status"), []byte(status), 0o644)
	// As in the agent's own procfs, "self" names the reader, whose
	// status has one PID: it is in the procfs's own PID namespace.
	fakeSelf(t, root, strconv.Itoa(os.Getpid()), fmt.Sprintf("Name:\ttest\nNSpid:\t%d\n", os.Getpid()))
	return root
}

// fakeSelf makes root/self a link to target and, when target is a
// directory of root not made yet, gives it status.
func fakeSelf(t *testing.T, root, target, status string) {
	t.Helper()
	if err := os.Symlink(target, filepath.Join(root, "self")); err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(root, target)
	if _, err := os.Stat(dir); err == nil {
		return
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "status"), []byte(status), 0o644); err != nil {
		t.Fatal(err)
	}
}

// TestUnixOwnProcfs: the attestor reads only the procfs of its own PID
// namespace. "self" naming the agent's PID is not proof of that: an
// agent in a nested PID namespace may have the same number there as in
// the outer namespace whose procfs it was given, and every peer's PID
// would still name another process. The procfs says in NSpid which
// namespaces the reader is seen from: in the agent's own procfs that
// is one PID, the agent's; in an outer one, two or more. (A kernel
// before 4.1 writes no NSpid; then "self" alone decides.) The trees are
// what such a procfs shows, made by hand: the numbers cannot be chosen
// on a shared host.
func TestUnixOwnProcfs(t *testing.T) {
	pid := os.Getpid()
	for _, tc := range []struct {
		name, self, status string
		foreign            bool
	}{
		{"own_namespace", strconv.Itoa(pid), fmt.Sprintf("Name:\tmoatless\nNSpid:\t%d\n", pid), false},
		{"kernel_without_nspid", strconv.Itoa(pid), "Name:\tmoatless\nGroups:\t\n", false},
		{"outer_namespace_same_number", strconv.Itoa(pid), fmt.Sprintf("Name:\tmoatless\nNSpid:\t%d\t%d\n", pid, pid), true},
		{"outer_namespace_two_levels", strconv.Itoa(pid), fmt.Sprintf("Name:\tmoatless\nNSpid:\t%d\t7\t%d\n", pid, pid), true},
		{"outer_namespace_other_number", strconv.Itoa(pid + 1), fmt.Sprintf("Name:\tmoatless\nNSpid:\t%d\t%d\n", pid+1, pid), true},
		{"nspid_of_another_process", strconv.Itoa(pid), "Name:\tmoatless\nNSpid:\t1\n", true},
		{"nspid_not_a_number", strconv.Itoa(pid), "Name:\tmoatless\nNSpid:\tx\n", true},
		{"nspid_empty", strconv.Itoa(pid), "Name:\tmoatless\nNSpid:\n", true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			root := t.TempDir()
			fakeSelf(t, root, tc.self, tc.status)
			u := NewUnix(UnixConfig{ProcRoot: root, SkipNames: true})
			_, err := u.Attest(context.Background(), Peer{PID: 42, PIDFD: -1})
			if got := errors.Is(err, ErrForeignProc); got != tc.foreign {
				t.Fatalf("foreign procfs %v (%v), want %v", got, err, tc.foreign)
			}
		})
	}
}

// TestUnixAttestForeignProcfs: an agent in a PID namespace of its own
// that reads another namespace's procfs (unshare --pid --fork without
// --mount-proc, a container given the host's /proc) gets its peers' PIDs
// in its own namespace from the kernel, and each names another process in
// that procfs. Attesting itself as PID 1 there read the outer namespace's
// PID 1 (the host's init) and reported its binary; now every attestation
// is refused, naming the cause. Runs itself as "pidns" in a new user and
// PID namespace, keeping the parent's /proc.
func TestUnixAttestForeignProcfs(t *testing.T) {
	c := exec.Command(os.Args[0], "-test.run=^$")
	c.Env = []string{helperEnv + "=pidns"}
	c.SysProcAttr = &syscall.SysProcAttr{
		Cloneflags:  syscall.CLONE_NEWUSER | syscall.CLONE_NEWPID,
		UidMappings: []syscall.SysProcIDMap{{ContainerID: 0, HostID: os.Geteuid(), Size: 1}},
		GidMappings: []syscall.SysProcIDMap{{ContainerID: 0, HostID: os.Getegid(), Size: 1}},
	}
	out, err := c.CombinedOutput()
	if err != nil && len(out) == 0 {
		t.Skipf("cannot make a user and PID namespace here: %v", err)
	}
	if got := strings.TrimSpace(string(out)); got != "refused: foreign procfs" {
		t.Fatalf("attestation in a PID namespace reading its parent's procfs: %s", got)
	}
}

// TestUnixAttestUnmappedPeer: an agent run in a user namespace (a
// rootless container) whose socket a host user reaches gets that user's
// credentials as its namespace sees them: a uid or gid it does not map
// reads as 65534, nobody's. Attesting that as unix:uid:65534 would hand
// nobody's identities to every user of the host the namespace does not
// map. Runs itself as the agent in a new user namespace that maps 65534
// to itself but not host root, and calls it as host root.
func TestUnixAttestUnmappedPeer(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root: an unprivileged user's namespace can map only that user")
	}
	dir, err := os.MkdirTemp("", "unmapped")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(dir)
	sock := filepath.Join(dir, "agent.sock")
	c := exec.Command(os.Args[0], "-test.run=^$", sock)
	c.Env = []string{helperEnv + "=userns-attest"}
	ids := []syscall.SysProcIDMap{{ContainerID: 0, HostID: 4100000, Size: 1}, {ContainerID: 65534, HostID: 65534, Size: 1}}
	c.SysProcAttr = &syscall.SysProcAttr{Cloneflags: syscall.CLONE_NEWUSER, UidMappings: ids, GidMappings: ids}
	stdout, err := c.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	c.Stderr = os.Stderr
	if err := c.Start(); err != nil {
		t.Skipf("cannot make a user namespace here: %v", err)
	}
	defer c.Wait()
	r := bufio.NewReader(stdout)
	if line, err := r.ReadString('\n'); line != "ready\n" {
		t.Fatalf("helper: %q %v", line, err)
	}
	conn, err := net.Dial("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if got, _ := r.ReadString('\n'); strings.TrimSpace(got) != "refused: unmapped" {
		t.Fatalf("a host user unmapped in the agent's user namespace: %q, want refused", got)
	}
}

func TestUnixAttestMalformedProc(t *testing.T) {
	good := "42 (x) S 1 1 1 0 -1 4194560 1 0 0 0 0 0 0 0 20 0 1 0 777 1 1\n"
	tests := []struct {
		name, stat, status string
	}{
		{"stat_without_command", "42 x S 1", "Groups:\n"},
		{"stat_short", "42 (x) S 1 2 3\n", "Groups:\n"},
		{"stat_start_not_number", "42 (x) S 1 1 1 0 -1 4194560 1 0 0 0 0 0 0 0 20 0 1 0 abc 1\n", "Groups:\n"},
		{"status_without_groups", good, "Name: x\n"},
		{"status_bad_group", good, "Groups:\t1 two 3\n"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			u := NewUnix(UnixConfig{ProcRoot: fakeProc(t, 42, tt.stat, tt.status), SkipNames: true})
			sels, err := u.Attest(context.Background(), Peer{PID: 42, PIDFD: -1})
			if err == nil {
				t.Fatalf("attestation succeeded with selectors %v", sels)
			}
		})
	}
}

func TestParseStatStartTime(t *testing.T) {
	tests := []struct {
		name string
		stat string
		want uint64
		ok   bool
	}{
		{"plain", "1 (init) S 0 1 1 0 -1 4194560 1 0 0 0 0 0 0 0 20 0 1 0 9 1 1", 9, true},
		{"command_with_spaces_and_parens", "7 (a) b (c) R 1 1 1 0 -1 0 0 0 0 0 0 0 0 0 20 0 1 0 123456 1", 123456, true},
		{"empty", "", 0, false},
		{"no_close_paren", "1 (init S 0", 0, false},
		{"overflow", "1 (x) S 0 1 1 0 -1 0 0 0 0 0 0 0 0 0 20 0 1 0 99999999999999999999999 1", 0, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := ParseStatStartTime([]byte(tt.stat))
			if (err == nil) != tt.ok || got != tt.want {
				t.Fatalf("got %d, %v; want %d, ok=%v", got, err, tt.want, tt.ok)
			}
		})
	}
}

func TestParseStatusGroups(t *testing.T) {
	tests := []struct {
		name   string
		status string
		want   []uint32
		ok     bool
	}{
		{"several", "Name:\tx\nGroups:\t4 24 27 \nNSpid:\t1\n", []uint32{4, 24, 27}, true},
		{"none", "Groups:\n", []uint32{}, true},
		{"missing", "Name:\tx\n", nil, false},
		{"negative", "Groups:\t-1\n", nil, false},
		{"too_big", "Groups:\t4294967296\n", nil, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := ParseStatusGroups([]byte(tt.status))
			if (err == nil) != tt.ok || !slices.Equal(got, tt.want) {
				t.Fatalf("got %v, %v; want %v, ok=%v", got, err, tt.want, tt.ok)
			}
		})
	}
}

func TestMatches(t *testing.T) {
	s := func(v string) wire.Selector { return wire.Selector{Type: "unix", Value: v} }
	have := []wire.Selector{s("uid:1000"), s("gid:1000"), s("path:/bin/app")}
	tests := []struct {
		name string
		want []wire.Selector
		ok   bool
	}{
		{"subset", []wire.Selector{s("uid:1000")}, true},
		{"all", have, true},
		{"one_missing", []wire.Selector{s("uid:1000"), s("sha256:ab")}, false},
		{"other_type_same_value", []wire.Selector{{Type: "k8s", Value: "uid:1000"}}, false},
		{"empty_matches_nothing", nil, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := Matches(tt.want, have); got != tt.ok {
				t.Fatalf("Matches = %v, want %v", got, tt.ok)
			}
		})
	}
}

// FuzzParseStatStartTime: whatever command name a local user gives a
// process (any bytes but NUL, up to the kernel's 15, parentheses, spaces
// and newlines included), the start time read from the line the kernel
// writes (fs/proc/array.c, do_task_stat) is the one in it: a name such as
// "x) R 1 1 1 ..." must not move the fields that PID-reuse checks rely on.
func FuzzParseStatStartTime(f *testing.F) {
	f.Add([]byte("init"), int32(1), uint64(9), uint8(0))
	f.Add([]byte("a) b (c"), int32(7), uint64(123456789), uint8(3))
	f.Add([]byte("x) R 1 1 1 0 -1"), int32(4242), uint64(1), uint8(52))
	f.Add([]byte(") ) ) )\n)"), int32(1<<22), uint64(1<<63), uint8(30))
	f.Fuzz(func(t *testing.T, comm []byte, pid int32, start uint64, more uint8) {
		if len(comm) > 15 || slices.Contains(comm, 0) || pid <= 0 {
			return
		}
		// Fields 3 (state) to 52; a kernel before 3.5 stops earlier, but
		// never before field 44.
		fields := []string{"S"}
		for n := 4; n <= 22+int(more)%31; n++ {
			v := strconv.Itoa(n * 7)
			if n == 22 {
				v = strconv.FormatUint(start, 10)
			} else if n == 7 {
				v = "-1" // tty_pgrp: negative without a terminal
			}
			fields = append(fields, v)
		}
		line := fmt.Sprintf("%d (%s) %s\n", pid, comm, strings.Join(fields, " "))
		got, err := ParseStatStartTime([]byte(line))
		if err != nil || got != start {
			t.Fatalf("%q: start time %d, %v; want %d", line, got, err, start)
		}
	})
}

// FuzzParseStatusGroups: on any input the parser refuses or returns at
// most maxGroups groups; and on the status the kernel writes
// (proc_pid_status: "Name:" first, its "\n" and "\\" escaped, then
// "Groups:" with a space after each group), whatever the command name,
// it returns exactly the process's groups: a name such as
// "x\nGroups:\t0" cannot claim root's group.
func FuzzParseStatusGroups(f *testing.F) {
	f.Add([]byte("Groups:\t4 24 27\n"), []byte("x"), []byte{4, 24, 27})
	f.Add([]byte("Name:\tx\nGroups:\n"), []byte("x\nGroups:\t0"), []byte{})
	f.Add([]byte("Groups:\t0\nGroups:\t1"), []byte("Groups:\t0 \\n"), []byte{1, 2, 3, 200})
	f.Fuzz(func(t *testing.T, b, comm, gids []byte) {
		gs, err := ParseStatusGroups(b)
		if err == nil && len(gs) > maxGroups {
			t.Fatalf("%d groups accepted", len(gs))
		}
		if len(comm) > 15 || slices.Contains(comm, 0) || len(gids) > maxGroups {
			return
		}
		name := strings.NewReplacer("\\", "\\\\", "\n", "\\n").Replace(string(comm))
		var groups strings.Builder
		want := []uint32{}
		for _, g := range gids {
			fmt.Fprintf(&groups, "%d ", uint32(g)*1009)
			want = append(want, uint32(g)*1009)
		}
		status := "Name:\t" + name + "\nUmask:\t0022\nState:\tS (sleeping)\nTgid:\t7\nUid:\t1000\t1000\t1000\t1000\n" +
			"Gid:\t1000\t1000\t1000\t1000\nFDSize:\t64\nGroups:\t" + groups.String() + "\nNStgid:\t7\n"
		got, err := ParseStatusGroups([]byte(status))
		if err != nil || !slices.Equal(got, want) {
			t.Fatalf("%q: groups %v, %v; want %v", status, got, err, want)
		}
	})
}

func BenchmarkUnixAttestCached(b *testing.B) {
	u := NewUnix(UnixConfig{SkipNames: true})
	peer := Peer{PID: int32(os.Getpid()), UID: 0, GID: 0, PIDFD: -1}
	if _, err := u.Attest(context.Background(), peer); err != nil {
		b.Fatal(err)
	}
	for b.Loop() {
		if _, err := u.Attest(context.Background(), peer); err != nil {
			b.Fatal(err)
		}
	}
}

// TestUnixAttestOtherUser attests a process of another user: its binary,
// path and liveness must be readable across users. (Running as root the
// pidfd signal succeeds; the EPERM case of an agent without CAP_KILL is
// handled in Attest but not reproducible here without dropping caps.)
func TestUnixAttestOtherUser(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to start a process as another user")
	}
	sleep, err := exec.LookPath("sleep")
	if err != nil {
		t.Skip("no sleep binary")
	}
	cmd := exec.Command(sleep, "30")
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}
	if err := cmd.Start(); err != nil {
		t.Skipf("cannot start as nobody: %v", err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	pidfd, err := unix.PidfdOpen(cmd.Process.Pid, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(pidfd)
	got, err := NewUnix(UnixConfig{SkipNames: true}).Attest(context.Background(), Peer{PID: int32(cmd.Process.Pid), UID: 65534, GID: 65534, PIDFD: pidfd})
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Contains(got, wire.Selector{Type: "unix", Value: "uid:65534"}) {
		t.Fatalf("selectors %v", got)
	}
}

// TestUnixBindRefusesAfterExec: a peer bound while it ran one program is
// attested while it runs it, and refused with ErrExecuted once it has
// executed another (same PID, same start time), never described as the
// new one. An exited peer, zombie or reaped, is ErrProcessGone.
func TestUnixBindRefusesAfterExec(t *testing.T) {
	sh, err := exec.LookPath("sh")
	if err != nil {
		t.Skip("no sh")
	}
	sleep, err := exec.LookPath("sleep")
	if err != nil {
		t.Skip("no sleep binary")
	}
	sleep, _ = filepath.EvalSymlinks(sleep)
	cmd := exec.Command(sh, "-c", "read x; exec "+sleep+" 30")
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	pidfd, err := unix.PidfdOpen(cmd.Process.Pid, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(pidfd)
	u := NewUnix(UnixConfig{SkipNames: true})
	peer := Peer{PID: int32(cmd.Process.Pid), UID: 1, GID: 1, PIDFD: pidfd}
	img, err := u.Bind(context.Background(), peer)
	if err != nil || !img.ExeKnown || img.StartTime == 0 {
		t.Fatalf("Bind = %+v, %v", img, err)
	}
	peer.Image = &img
	sels, err := u.Attest(context.Background(), peer)
	if err != nil || slices.Contains(sels, wire.Selector{Type: "unix", Value: "path:" + sleep}) {
		t.Fatalf("before exec: %v %v", sels, err)
	}

	stdin.Write([]byte("go\n"))
	deadline := time.Now().Add(10 * time.Second)
	for {
		if exe, _ := os.Readlink(fmt.Sprintf("/proc/%d/exe", cmd.Process.Pid)); exe == sleep {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("sh never executed sleep")
		}
		time.Sleep(2 * time.Millisecond)
	}
	if sels, err := u.Attest(context.Background(), peer); !errors.Is(err, ErrExecuted) || sels != nil {
		t.Fatalf("after exec: %v, %v; want ErrExecuted", sels, err)
	}
	// Unbound, the same process is attested as what it runs now.
	fresh := peer
	fresh.Image = nil
	if sels, err := u.Attest(context.Background(), fresh); err != nil || !slices.Contains(sels, wire.Selector{Type: "unix", Value: "path:" + sleep}) {
		t.Fatalf("unbound after exec: %v %v", sels, err)
	}

	cmd.Process.Kill()
	// Not yet reaped: a zombie still answers signal 0, but its pidfd says
	// it exited.
	deadline = time.Now().Add(10 * time.Second)
	for !exited(pidfd) {
		if time.Now().After(deadline) {
			t.Fatal("pidfd never reported the exit")
		}
		time.Sleep(2 * time.Millisecond)
	}
	if _, err := u.Attest(context.Background(), peer); !errors.Is(err, ErrProcessGone) {
		t.Fatalf("zombie: %v, want ErrProcessGone", err)
	}
	cmd.Wait()
	if _, err := u.Attest(context.Background(), peer); !errors.Is(err, ErrProcessGone) {
		t.Fatalf("reaped: %v, want ErrProcessGone", err)
	}
	if _, err := u.Bind(context.Background(), peer); !errors.Is(err, ErrProcessGone) {
		t.Fatalf("Bind of a reaped process: %v, want ErrProcessGone", err)
	}
}

// BenchmarkUnixAttestBound is the per-request cost on a bound connection:
// attestation plus the re-checks of the bound image (hash cached).
func BenchmarkUnixAttestBound(b *testing.B) {
	u := NewUnix(UnixConfig{SkipNames: true})
	pidfd, err := unix.PidfdOpen(os.Getpid(), 0)
	if err != nil {
		b.Skip("no pidfd")
	}
	defer unix.Close(pidfd)
	peer := Peer{PID: int32(os.Getpid()), PIDFD: pidfd}
	img, err := u.Bind(context.Background(), peer)
	if err != nil {
		b.Fatal(err)
	}
	peer.Image = &img
	for b.Loop() {
		if _, err := u.Attest(context.Background(), peer); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkUnixBind is the cost added to each accepted connection.
func BenchmarkUnixBind(b *testing.B) {
	u := NewUnix(UnixConfig{SkipNames: true})
	peer := Peer{PID: int32(os.Getpid()), PIDFD: -1}
	for b.Loop() {
		if _, err := u.Bind(context.Background(), peer); err != nil {
			b.Fatal(err)
		}
	}
}

// helperEnv makes the test binary, re-executed with it set, the attacker
// of TestUnixAttestBinaryInUserNamespace. As "unshare" it plays the
// unprivileged user's unshare -Urm ("unshare-user": unshare -Ur): it
// starts itself again as "bind-exec" in a user and mount namespace of its
// own (its uid is root there), prints that process's PID and waits for
// it. As "bind-exec" it bind-mounts argument 1 (unless empty) over
// argument 2 and executes argument 2.
const helperEnv = "MOATLESS_ATTEST_TEST_HELPER"

func TestMain(m *testing.M) {
	switch os.Getenv(helperEnv) {
	case "":
		os.Exit(m.Run())
	case "unshare", "unshare-user":
		flags := uintptr(syscall.CLONE_NEWUSER | syscall.CLONE_NEWNS)
		if os.Getenv(helperEnv) == "unshare-user" {
			flags = syscall.CLONE_NEWUSER
		}
		c := exec.Command(os.Args[0], os.Args[1:]...)
		c.Env = []string{helperEnv + "=bind-exec"}
		c.Stderr = os.Stderr
		c.SysProcAttr = &syscall.SysProcAttr{
			Cloneflags:  flags,
			UidMappings: []syscall.SysProcIDMap{{ContainerID: 0, HostID: os.Geteuid(), Size: 1}},
			GidMappings: []syscall.SysProcIDMap{{ContainerID: 0, HostID: os.Getegid(), Size: 1}},
		}
		if err := c.Start(); err != nil {
			fmt.Fprintln(os.Stderr, "user namespace:", err)
			os.Exit(3)
		}
		fmt.Println(c.Process.Pid)
		c.Wait()
		os.Exit(0)
	case "pidns":
		// PID 1 of a new PID namespace, with the parent's /proc.
		u := NewUnix(UnixConfig{SkipNames: true})
		sels, err := u.Attest(context.Background(), Peer{PID: int32(os.Getpid()), UID: uint32(os.Geteuid()), GID: uint32(os.Getegid()), PIDFD: -1})
		switch {
		case errors.Is(err, ErrForeignProc):
			fmt.Println("refused: foreign procfs")
		case err != nil:
			fmt.Println("refused otherwise:", err)
		default:
			fmt.Println("attested PID", os.Getpid(), "as", sels)
		}
		os.Exit(0)
	case "userns-attest":
		// The agent in a user namespace that maps 65534 (and not host
		// root): attest the first caller of the unix socket at argument 1.
		l, err := net.Listen("unix", os.Args[len(os.Args)-1])
		if err != nil {
			fmt.Println("listen:", err)
			os.Exit(0)
		}
		fmt.Println("ready")
		c, err := l.Accept()
		if err != nil {
			fmt.Println("accept:", err)
			os.Exit(0)
		}
		var cred *unix.Ucred
		raw, _ := c.(*net.UnixConn).SyscallConn()
		raw.Control(func(fd uintptr) { cred, err = unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED) })
		if err != nil {
			fmt.Println("peercred:", err)
			os.Exit(0)
		}
		u := NewUnix(UnixConfig{SkipNames: true})
		sels, err := u.Attest(context.Background(), Peer{PID: cred.Pid, UID: cred.Uid, GID: cred.Gid, PIDFD: -1})
		switch {
		case errors.Is(err, ErrUnmappedPeer):
			fmt.Println("refused: unmapped")
		case err != nil:
			fmt.Println("refused otherwise:", err)
		default:
			fmt.Println("attested as", sels)
		}
		os.Exit(0)
	case "bind-exec":
		src, dst := os.Args[1], os.Args[2]
		if src != "" {
			if err := unix.Mount(src, dst, "", unix.MS_BIND, ""); err != nil {
				fmt.Fprintln(os.Stderr, "bind mount:", err)
				os.Exit(2)
			}
		}
		err := syscall.Exec(dst, []string{dst, "30"}, nil)
		fmt.Fprintln(os.Stderr, "exec:", err)
		os.Exit(2)
	}
	os.Exit(2)
}

// TestUnixAttestBinaryInUserNamespace: a local user without privilege
// makes a user and mount namespace (unshare -Urm), bind-mounts a program
// of their own over an allowed binary's path there and executes it.
// /proc/PID/exe then names the allowed path (SPIRE's unix attestor
// reports it as unix:path: spiffe/spire#1433), and a second process of
// the same user in the agent's own namespace can execute the same file
// through /proc/PID/root. Neither may be described by the allowed path,
// nor by a hash of bytes whose source it chose. Nor may a genuine binary
// the user started inside a user namespace of their own (unshare -Ur),
// which the user may trace at will. None of them gets unix:path or
// unix:sha256 (uid and gid still come from the kernel); the same binary
// started plainly by the same user does.
func TestUnixAttestBinaryInUserNamespace(t *testing.T) {
	sleep, err := exec.LookPath("sleep")
	if err != nil {
		t.Skip("no sleep binary")
	}
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	// Files every user may read and execute: the test's own temporary
	// directories are private to it.
	dir, err := os.MkdirTemp("", "moatless-attest-bind-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	os.Chmod(dir, 0o755)
	copyFile := func(from, to string) {
		b, err := os.ReadFile(from)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(to, b, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	allowed, evil, helper := filepath.Join(dir, "allowed"), filepath.Join(dir, "evil"), filepath.Join(dir, "helper")
	copyFile("/bin/true", allowed)
	copyFile(sleep, evil)
	copyFile(self, helper)

	uid, gid := os.Geteuid(), os.Getegid()
	var cred *syscall.SysProcAttr
	if uid == 0 {
		// Play an unprivileged user.
		uid, gid = 65534, 65534
		cred = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid), NoSetGroups: true}}
	}
	// start runs a process as that user and returns its PID once it runs
	// want.
	start := func(c *exec.Cmd, want string) int {
		t.Helper()
		c.Stderr = os.Stderr
		c.SysProcAttr = cred
		out, err := c.StdoutPipe()
		if err != nil {
			t.Fatal(err)
		}
		if err := c.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Process.Kill(); c.Wait() })
		pid := c.Process.Pid
		if c.Path == helper {
			if _, err := fmt.Fscan(out, &pid); err != nil {
				t.Skipf("cannot make a user namespace here (%v)", err)
			}
			t.Cleanup(func() { syscall.Kill(pid, syscall.SIGKILL) })
		}
		deadline := time.Now().Add(10 * time.Second)
		for {
			if exe, _ := os.Readlink(fmt.Sprintf("/proc/%d/exe", pid)); exe == want {
				return pid
			}
			if time.Now().After(deadline) {
				t.Fatalf("process %d never ran %s", pid, want)
			}
			time.Sleep(2 * time.Millisecond)
		}
	}
	helperCmd := func(mode, src, dst string) *exec.Cmd {
		c := exec.Command(helper, src, dst)
		c.Env = []string{helperEnv + "=" + mode}
		return c
	}
	bound := start(helperCmd("unshare", evil, allowed), allowed)
	tests := []struct {
		name    string
		pid     int
		trusted bool
	}{
		{"bind_mounted_in_its_own_namespace", bound, false},
		{"through_proc_root", start(exec.Command(fmt.Sprintf("/proc/%d/root%s", bound, allowed), "30"), allowed), false},
		{"genuine_binary_in_its_own_user_namespace", start(helperCmd("unshare-user", "", evil), evil), false},
		{"genuine_binary_outside_namespaces", start(exec.Command(evil, "30"), evil), true},
	}
	u := NewUnix(UnixConfig{SkipNames: true})
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			pidfd, err := unix.PidfdOpen(tc.pid, 0)
			if err != nil {
				t.Fatal(err)
			}
			defer unix.Close(pidfd)
			peer := Peer{PID: int32(tc.pid), UID: uint32(uid), GID: uint32(gid), PIDFD: pidfd}
			img, err := u.Bind(context.Background(), peer)
			if err != nil {
				t.Fatal(err)
			}
			peer.Image = &img
			got, err := u.Attest(context.Background(), peer)
			if err != nil {
				t.Fatal(err)
			}
			if !slices.Contains(got, wire.Selector{Type: "unix", Value: "uid:" + strconv.Itoa(uid)}) {
				t.Errorf("unix:uid missing from %v", got)
			}
			var exeSels []wire.Selector
			for _, s := range got {
				if strings.HasPrefix(s.Value, "path:") || strings.HasPrefix(s.Value, "sha256:") {
					exeSels = append(exeSels, s)
				}
			}
			switch {
			case !tc.trusted && exeSels != nil:
				t.Errorf("a binary the caller chose the source of is described by %v (all: %v)", exeSels, got)
			case tc.trusted && !slices.Contains(got, wire.Selector{Type: "unix", Value: "path:" + evil}):
				t.Errorf("unix:path:%s missing from %v", evil, got)
			}
		})
	}
}

// TestUnixHashesOneBinaryAtATimePerUID: while a binary is hashed for a
// process of one uid, a second hash for that uid waits (a user making
// every call miss the cache takes one core, not all of them), a hash for
// another uid does not, and the waiting call then takes the hash the first
// one cached instead of hashing again.
func TestUnixHashesOneBinaryAtATimePerUID(t *testing.T) {
	u := NewUnix(UnixConfig{SkipNames: true})
	peer := selfPeer(t)
	other := peer
	other.UID++
	holding, waiting := make(chan uint32, 8), make(chan uint32, 8)
	hold := make(chan struct{})
	u.testHashing = func(uid uint32) {
		holding <- uid
		if uid == peer.UID {
			<-hold
		}
	}
	u.testHashWait = func(uid uint32) { waiting <- uid }
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	type result struct {
		sels []wire.Selector
		err  error
	}
	results := make(chan result, 3)
	attest := func(p Peer) {
		sels, err := u.Attest(ctx, p)
		results <- result{sels, err}
	}
	next := func(ch chan uint32) uint32 {
		t.Helper()
		select {
		case uid := <-ch:
			return uid
		case <-ctx.Done():
			t.Fatal("timed out")
		}
		return 0
	}

	go attest(peer)
	if uid := next(holding); uid != peer.UID {
		t.Fatalf("hashing for uid %d, want %d", uid, peer.UID)
	}
	go attest(peer)
	select {
	case uid := <-holding:
		t.Fatalf("a second binary hashed for uid %d while one was", uid)
	case uid := <-waiting:
		if uid != peer.UID {
			t.Fatalf("uid %d waited, want %d", uid, peer.UID)
		}
	case <-ctx.Done():
		t.Fatal("timed out")
	}
	go attest(other)
	if uid := next(holding); uid != other.UID {
		t.Fatalf("hashing for uid %d, want the other uid %d at once", uid, other.UID)
	}
	close(hold)
	for range 3 {
		r := <-results
		if r.err != nil {
			t.Fatal(r.err)
		}
		if !slices.ContainsFunc(r.sels, func(s wire.Selector) bool { return strings.HasPrefix(s.Value, "sha256:") }) {
			t.Fatalf("no sha256 selector: %v", r.sels)
		}
	}
	u.mu.Lock()
	left := len(u.hashing)
	u.mu.Unlock()
	if left != 0 {
		t.Fatalf("%d uids' hashing slots left after every call returned", left)
	}
}
