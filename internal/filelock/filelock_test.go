//go:build unix

package filelock

import (
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

// TestHelperHold holds a lock in a child process until stdin closes.
func TestHelperHold(t *testing.T) {
	path := os.Getenv("FILELOCK_HOLD")
	if path == "" {
		t.Skip("helper process")
	}
	release, err := Lock(path, os.Getenv("FILELOCK_PID") == "1")
	if err != nil {
		t.Fatal(err)
	}
	defer release()
	os.Stdout.WriteString("locked\n")
	buf := make([]byte, 1)
	os.Stdin.Read(buf)
}

func TestLock(t *testing.T) {
	tests := []struct {
		name       string
		writePID   bool
		wantHolder func(pid int) string
	}{
		{"holder_named_by_pid", true, func(pid int) string { return "process " + strconv.Itoa(pid) }},
		{"holder_without_pid", false, func(int) string { return "another process" }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "lock")
			cmd := exec.Command(os.Args[0], "-test.run=^TestHelperHold$")
			cmd.Env = append(os.Environ(), "FILELOCK_HOLD="+path, "FILELOCK_PID="+map[bool]string{true: "1", false: "0"}[tt.writePID])
			stdin, _ := cmd.StdinPipe()
			out, _ := cmd.StdoutPipe()
			if err := cmd.Start(); err != nil {
				t.Fatal(err)
			}
			buf := make([]byte, 64)
			n, _ := out.Read(buf)
			if !strings.Contains(string(buf[:n]), "locked") {
				t.Fatalf("helper: %q", buf[:n])
			}
			_, err := Lock(path, true)
			var held *HeldError
			if !errors.As(err, &held) || !errors.Is(err, ErrHeld) || held.Holder != tt.wantHolder(cmd.Process.Pid) {
				t.Fatalf("Lock while held: %v, want held by %s", err, tt.wantHolder(cmd.Process.Pid))
			}
			stdin.Close()
			cmd.Wait()
			release, err := Lock(path, true)
			if err != nil {
				t.Fatalf("Lock after the holder exited: %v", err)
			}
			release()
		})
	}
}

// TestLockRefusesSymlink: a link planted at the lock's path is not
// followed, so the file it points at is neither truncated nor written.
func TestLockRefusesSymlink(t *testing.T) {
	dir := t.TempDir()
	victim := filepath.Join(dir, "victim")
	if err := os.WriteFile(victim, []byte("precious\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, "lock")
	if err := os.Symlink(victim, path); err != nil {
		t.Fatal(err)
	}
	release, err := Lock(path, true)
	if err == nil {
		release()
		t.Fatal("Lock followed a symbolic link")
	}
	if b, _ := os.ReadFile(victim); string(b) != "precious\n" {
		t.Fatalf("the link's target now holds %q", b)
	}
}
