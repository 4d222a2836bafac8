package main

import (
	"os"
	"os/exec"
	"path/filepath"
	"testing"
)

// TestCrossBuild: the binary builds without cgo for the systems people run
// the admin commands on (macOS on both architectures, Windows) and for the
// Linux architectures releases ship. Linux-only code sits behind build
// tags (internal/attest, internal/workload, the demo's child processes);
// this keeps a new Linux-only call from breaking the other builds
// unnoticed. -short skips it (it compiles the module four times).
func TestCrossBuild(t *testing.T) {
	if testing.Short() {
		t.Skip("-short: cross builds skipped")
	}
	goBin, err := exec.LookPath("go")
	if err != nil {
		t.Fatalf("go tool not found: %v", err)
	}
	for _, target := range []struct{ goos, goarch string }{
		{"darwin", "arm64"}, {"darwin", "amd64"}, {"windows", "amd64"}, {"linux", "arm64"},
	} {
		t.Run(target.goos+"_"+target.goarch, func(t *testing.T) {
			t.Parallel()
			out := filepath.Join(t.TempDir(), "moatless")
			// -N -l: no optimisation, which halves the time of a cold build
			// (modernc.org/sqlite is huge) and finds the same errors.
			cmd := exec.Command(goBin, "build", "-tags", "grpcnotrace", "-gcflags=all=-N -l", "-o", out, ".")
			cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOOS="+target.goos, "GOARCH="+target.goarch)
			if b, err := cmd.CombinedOutput(); err != nil {
				t.Fatalf("GOOS=%s GOARCH=%s go build: %v\n%s", target.goos, target.goarch, err, b)
			}
		})
	}
}
