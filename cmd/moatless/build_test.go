package main

import (
	"os"
	"os/exec"
	"regexp"
	"strings"
	"testing"
)

// TestOneBuild: "make demo", "make build" and the README's "go run" and
// "go build" lines use the same tags and flags, so the first of them
// compiles and the others reuse the build cache (before, "go run
// ./cmd/moatless demo" had no tags and compiled a second, larger binary).
func TestOneBuild(t *testing.T) {
	mk, err := os.ReadFile("../../Makefile")
	if err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile(`(?m)^GOFLAGS_BUILD = (.+)$`).FindSubmatch(mk)
	if m == nil {
		t.Fatal("Makefile has no GOFLAGS_BUILD line")
	}
	flags := strings.TrimSpace(string(m[1]))
	readme, err := os.ReadFile("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	lines := regexp.MustCompile(`go (run|build) [^\n]*\./cmd/moatless`).FindAll(readme, -1)
	if len(lines) < 2 {
		t.Fatalf("README: found %d go run/build lines, want the demo's and the tour's", len(lines))
	}
	for _, l := range lines {
		if !strings.Contains(string(l), " "+flags+" ") {
			t.Errorf("README line %q does not use the Makefile's flags %q", l, flags)
		}
	}
	demo := regexp.MustCompile(`(?ms)^demo:\n(.*?)\n\n`).FindSubmatch(mk)
	if demo == nil || !strings.Contains(string(demo[1]), "$(GOFLAGS_BUILD)") || !strings.Contains(string(demo[1]), "compiling") {
		t.Errorf("Makefile: the demo target must build with $(GOFLAGS_BUILD) and say it is compiling:\n%s", demo)
	}
}

// TestTourFilesIgnored: what the tour and the walkthroughs write in the
// repository root is ignored by git (a tour run once committed its logs,
// pid files and join token).
func TestTourFilesIgnored(t *testing.T) {
	if _, err := exec.LookPath("git"); err != nil {
		t.Skip("git not installed")
	}
	if err := exec.Command("git", "-C", "../..", "rev-parse", "--git-dir").Run(); err != nil {
		t.Skip("not a git checkout")
	}
	for _, f := range []string{"moatless", "alice.pw", "admin.pw", "join-token", "bundle.pem", "agent.log", "server.log", "agent.pid",
		"orders-sidecar.yaml", "policies.yaml", "revocations.json", "bin/moatless", "bin/moatless-sidecar", "moatless-sidecar", "dist/moatless_linux_amd64"} {
		if err := exec.Command("git", "-C", "../..", "check-ignore", "-q", "--no-index", f).Run(); err != nil {
			t.Errorf("%s is not ignored by .gitignore", f)
		}
	}
}
