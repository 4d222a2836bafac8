package main

import (
	"bufio"
	"context"
	"crypto/sha256"
	"debug/elf"
	"encoding/hex"
	"encoding/json"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

const testVersion = "1.2.3-test.1"

// build makes a release for this machine's architecture once per test
// binary (a build takes a while).
var build = sync.OnceValues(func() (string, error) {
	dir, err := os.MkdirTemp("", "moatless-dist-test-")
	if err != nil {
		return "", err
	}
	_, err = Build(context.Background(), Config{Repo: "../..", Out: dir, Version: testVersion, Arches: []string{runtime.GOARCH}})
	return dir, err
})

func release(t *testing.T) string {
	t.Helper()
	if runtime.GOOS != "linux" {
		t.Skip("releases are built on Linux")
	}
	dir, err := build()
	if err != nil {
		t.Fatal(err)
	}
	return dir
}

func TestMain(m *testing.M) {
	code := m.Run()
	if dir, err := build(); err == nil && dir != "" {
		os.RemoveAll(dir)
	}
	os.Exit(code)
}

// TestReleaseFiles: static binaries (moatless and moatless-sidecar) that
// know their version, a .deb, and SHA256SUMS that match them.
func TestReleaseFiles(t *testing.T) {
	dir := release(t)
	bin := filepath.Join(dir, "moatless_"+testVersion+"_linux_"+runtime.GOARCH)
	slim := filepath.Join(dir, "moatless-sidecar_"+testVersion+"_linux_"+runtime.GOARCH)
	pkg := filepath.Join(dir, "moatless_"+testVersion+"_"+runtime.GOARCH+".deb")

	for _, b := range []string{bin, slim} {
		f, err := elf.Open(b)
		if err != nil {
			t.Fatal(err)
		}
		for _, p := range f.Progs {
			if p.Type == elf.PT_INTERP {
				t.Errorf("%s has a program interpreter: it is not static", filepath.Base(b))
			}
		}
		f.Close()
		out, err := exec.Command(b, "version", "-o", "json").Output()
		if err != nil {
			t.Fatal(err)
		}
		var v struct{ Version string }
		if err := json.Unmarshal(out, &v); err != nil || v.Version != "v"+testVersion {
			t.Fatalf("%s: version %q (%v), want v%s", filepath.Base(b), v.Version, err, testVersion)
		}
	}
	// The data plane alone is the smaller file: no control plane, no WAF.
	if a, b := fileSize(t, bin), fileSize(t, slim); b >= a/2 {
		t.Errorf("moatless-sidecar is %d bytes, moatless %d: want less than half", b, a)
	}

	sums, err := os.ReadFile(filepath.Join(dir, "SHA256SUMS"))
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]bool{filepath.Base(bin): true, filepath.Base(slim): true, filepath.Base(pkg): true}
	sc := bufio.NewScanner(strings.NewReader(string(sums)))
	for sc.Scan() {
		sum, name, ok := strings.Cut(sc.Text(), "  ")
		if !ok || !want[name] {
			t.Fatalf("bad line %q", sc.Text())
		}
		b, err := os.ReadFile(filepath.Join(dir, name))
		if err != nil {
			t.Fatal(err)
		}
		h := sha256.Sum256(b)
		if hex.EncodeToString(h[:]) != sum {
			t.Errorf("%s: sum does not match", name)
		}
		delete(want, name)
	}
	if len(want) > 0 {
		t.Errorf("SHA256SUMS lacks %v", want)
	}
}

// needDpkg skips without dpkg or root outside CI; under CI=true a missing
// one fails, as for every Debian tool a test starts.
func needDpkg(t *testing.T) {
	t.Helper()
	why := ""
	if _, err := exec.LookPath("dpkg"); err != nil {
		why = "dpkg is not installed (Debian package dpkg)"
	} else if os.Geteuid() != 0 {
		why = "installing a package needs root"
	}
	if why == "" {
		return
	}
	if os.Getenv("CI") == "true" {
		t.Fatal(why)
	}
	t.Skip(why)
}

// TestDebInstallsAndStarts: dpkg -i installs the binary, the units and
// the conffile, creates the moatless system user and /var/lib/moatless
// (0700, theirs); the server unit's ExecStart line, run as the unit's
// user, starts a server that writes its files there and stops cleanly on
// SIGTERM; dpkg --purge removes it all again. systemctl is not available
// here, so the test does what the unit says. The one addition is
// --listen on a free loopback port: the packaged config listens on
// 0.0.0.0:8443, which a test must not take.
func TestDebInstallsAndStarts(t *testing.T) {
	dir := release(t)
	needDpkg(t)
	if exec.Command("dpkg", "-s", "moatless").Run() == nil {
		t.Skip("a moatless package is installed on this machine already; not touching it")
	}
	pkg := filepath.Join(dir, "moatless_"+testVersion+"_"+runtime.GOARCH+".deb")
	dpkg := func(args ...string) {
		t.Helper()
		if b, err := exec.Command("dpkg", args...).CombinedOutput(); err != nil {
			t.Fatalf("dpkg %v: %v\n%s", args, err, b)
		}
	}
	dpkg("-i", pkg)
	purged := false
	t.Cleanup(func() {
		if !purged {
			exec.Command("dpkg", "--purge", "moatless").Run()
		}
	})

	u, err := user.Lookup("moatless")
	if err != nil {
		t.Fatalf("no moatless user after install: %v", err)
	}
	uid, _ := strconv.Atoi(u.Uid)
	gid, _ := strconv.Atoi(u.Gid)
	st, err := os.Stat("/var/lib/moatless")
	if err != nil {
		t.Fatal(err)
	}
	if sys := st.Sys().(*syscall.Stat_t); st.Mode().Perm() != 0o700 || int(sys.Uid) != uid {
		t.Fatalf("/var/lib/moatless: mode %v, uid %d; want 0700 and moatless (%d)", st.Mode().Perm(), sys.Uid, uid)
	}
	for _, p := range []string{"/usr/bin/moatless", "/usr/bin/moatless-sidecar", "/lib/systemd/system/moatless-server.service", "/lib/systemd/system/moatless-agent.service", "/lib/systemd/system/moatless-sidecar@.service", "/etc/moatless/server.yaml", "/usr/share/doc/moatless/server.md"} {
		if _, err := os.Stat(p); err != nil {
			t.Errorf("not installed: %v", err)
		}
	}
	if st, err := os.Stat("/etc/moatless/sidecar"); err != nil || !st.IsDir() || st.Mode().Perm() != 0o755 {
		t.Errorf("/etc/moatless/sidecar: %v, %v; want a directory, 0755", st, err)
	}
	for unit, exe := range map[string]string{"moatless-agent.service": "/usr/bin/moatless", "moatless-sidecar@.service": "/usr/bin/moatless-sidecar"} {
		b, _ := os.ReadFile("/lib/systemd/system/" + unit)
		if argv, _ := execStart(t, string(b)); strings.Contains(string(b), "/usr/local/bin") || argv[0] != exe {
			t.Errorf("the packaged %s runs %q, want %s", unit, argv[0], exe)
		}
	}

	unit, err := os.ReadFile("/lib/systemd/system/moatless-server.service")
	if err != nil {
		t.Fatal(err)
	}
	argv, runAs := execStart(t, string(unit))
	if runAs != "moatless" {
		t.Fatalf("the unit runs as %q, want moatless", runAs)
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	argv = append(argv, "--listen", addr)
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Dir = "/"
	cmd.Env = []string{"PATH=/usr/bin:/bin"}
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)}}
	var logs syncBuf
	cmd.Stdout, cmd.Stderr = &logs, &logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	deadline := time.Now().Add(60 * time.Second)
	for !strings.Contains(logs.String(), `"msg":"serving"`) {
		select {
		case err := <-done:
			t.Fatalf("the server exited: %v\n%s", err, logs.String())
		default:
		}
		if time.Now().After(deadline) {
			cmd.Process.Kill()
			t.Fatalf("the server did not start:\n%s", logs.String())
		}
		time.Sleep(50 * time.Millisecond)
	}
	for _, f := range []string{"moatless.db", "kek", "admin-token", "bundle.pem"} {
		st, err := os.Stat(filepath.Join("/var/lib/moatless", f))
		if err != nil {
			t.Errorf("%s: %v", f, err)
			continue
		}
		if sys := st.Sys().(*syscall.Stat_t); int(sys.Uid) != uid {
			t.Errorf("%s is owned by uid %d, not moatless", f, sys.Uid)
		}
	}
	cmd.Process.Signal(syscall.SIGTERM)
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("exit after SIGTERM: %v\n%s", err, logs.String())
		}
	case <-time.After(20 * time.Second):
		cmd.Process.Kill()
		t.Fatal("the server ignored SIGTERM")
	}

	if out, err := exec.Command("/usr/bin/moatless-sidecar", "version").CombinedOutput(); err != nil || !strings.Contains(string(out), "moatless v"+testVersion) {
		t.Errorf("/usr/bin/moatless-sidecar version: %v\n%s", err, out)
	}

	dpkg("--purge", "moatless")
	purged = true
	for _, p := range []string{"/usr/bin/moatless", "/usr/bin/moatless-sidecar", "/var/lib/moatless", "/etc/moatless/server.yaml"} {
		if _, err := os.Stat(p); err == nil {
			t.Errorf("%s is still there after purge", p)
		}
	}
}

// execStart reads a unit's ExecStart (continuation lines joined, split on
// blanks: our units quote nothing) and User.
func execStart(t *testing.T, unit string) (argv []string, runAs string) {
	t.Helper()
	joined := strings.ReplaceAll(unit, "\\\n", " ")
	for _, line := range strings.Split(joined, "\n") {
		line = strings.TrimSpace(line)
		if v, ok := strings.CutPrefix(line, "ExecStart="); ok {
			argv = strings.Fields(v)
		}
		if v, ok := strings.CutPrefix(line, "User="); ok {
			runAs = v
		}
	}
	if len(argv) == 0 {
		t.Fatal("the unit has no ExecStart")
	}
	return argv, runAs
}

type syncBuf struct {
	mu sync.Mutex
	b  strings.Builder
}

func (s *syncBuf) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuf) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func fileSize(t *testing.T, path string) int64 {
	t.Helper()
	st, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	return st.Size()
}
