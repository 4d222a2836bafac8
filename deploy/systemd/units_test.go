// Package systemd_test checks the systemd units in this directory and
// the Debian package's (deploy/debian): systemd's own parser accepts
// every line of them (systemd-analyze verify: a misspelt key or a bad
// value is only a warning to systemd, so any output fails here), their
// exposure (systemd-analyze security) stays low, and the sidecar's
// template keeps the hardening the server's unit has, with its own
// differences named.
package systemd_test

import (
	"bufio"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
)

// units are the units to check, with the highest overall exposure
// systemd-analyze security may give each (systemd 252: 1.4 for the
// sidecar, 1.6 for the server, 2.7 for the agent, which runs as root to
// read other users' /proc/PID/exe).
var units = []struct {
	path        string
	maxExposure float64
}{
	{"moatless-sidecar@.service", 1.5},
	{"moatless-server.service", 1.7},
	{"moatless-agent.service", 2.8},
	{"../debian/moatless-server.service", 1.7},
}

// systemdAnalyze returns systemd-analyze's path, skipping the test
// without it outside CI; under CI=true a missing one is a failure
// (.ci/run installs the Debian package systemd).
func systemdAnalyze(t *testing.T) string {
	t.Helper()
	p, err := exec.LookPath("systemd-analyze")
	if err == nil {
		return p
	}
	if os.Getenv("CI") == "true" {
		t.Fatal("systemd-analyze not found: install the Debian package systemd")
	}
	t.Skip("systemd-analyze not found (Debian package systemd)")
	return ""
}

// instance writes the unit as systemd would load it for verification:
// a template instantiated as "test", and its ExecStart binary (which
// verify requires to exist and be executable) replaced by a stand-in in
// the same temporary directory. It returns the copy's path.
func instance(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	exe := filepath.Join(dir, "moatless-exe")
	if err := os.WriteFile(exe, []byte("#!/bin/sh\nexit 0\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	unit := regexp.MustCompile(`/usr(/local)?/bin/moatless(-sidecar)?( |$)`).ReplaceAllString(string(b), exe+"$3")
	if unit == string(b) {
		t.Fatalf("%s: no ExecStart binary to replace", path)
	}
	name := filepath.Base(path)
	name = strings.Replace(name, "@.", "@test.", 1)
	out := filepath.Join(dir, name)
	if err := os.WriteFile(out, []byte(unit), 0o644); err != nil {
		t.Fatal(err)
	}
	return out
}

// TestUnitsVerify: systemd-analyze verify says nothing about any unit;
// a unit with a misspelt key and a bad value (the last case) shows the
// check sees them.
func TestUnitsVerify(t *testing.T) {
	sa := systemdAnalyze(t)
	for _, u := range units {
		t.Run(strings.TrimSuffix(filepath.Base(u.path), ".service"), func(t *testing.T) {
			out, err := exec.Command(sa, "verify", instance(t, u.path)).CombinedOutput()
			if err != nil || len(out) > 0 {
				t.Errorf("systemd-analyze verify: %v\n%s", err, out)
			}
		})
	}
	t.Run("typo_is_caught", func(t *testing.T) {
		p := instance(t, "moatless-sidecar@.service")
		b, _ := os.ReadFile(p)
		bad := strings.Replace(strings.Replace(string(b), "ProtectSystem=strict", "ProtectSytem=strict", 1), "MemoryMax=256M", "MemoryMax=lots", 1)
		if err := os.WriteFile(p, []byte(bad), 0o644); err != nil {
			t.Fatal(err)
		}
		out, _ := exec.Command(sa, "verify", p).CombinedOutput()
		for _, want := range []string{"ProtectSytem", "lots"} {
			if !strings.Contains(string(out), want) {
				t.Errorf("verify did not report %q:\n%s", want, out)
			}
		}
	})
}

var exposureRE = regexp.MustCompile(`Overall exposure level for \S+: ([0-9.]+)`)

// TestUnitsExposure: systemd-analyze security (offline, as systemd
// would run the unit) rates each unit no worse than its bound.
func TestUnitsExposure(t *testing.T) {
	sa := systemdAnalyze(t)
	for _, u := range units {
		t.Run(strings.TrimSuffix(filepath.Base(u.path), ".service"), func(t *testing.T) {
			out, err := exec.Command(sa, "security", "--offline=yes", "--no-pager", instance(t, u.path)).CombinedOutput()
			if err != nil {
				t.Fatalf("systemd-analyze security: %v\n%s", err, out)
			}
			m := exposureRE.FindSubmatch(out)
			if m == nil {
				t.Fatalf("no overall exposure in:\n%s", out)
			}
			got, err := strconv.ParseFloat(string(m[1]), 64)
			if err != nil {
				t.Fatal(err)
			}
			if got > u.maxExposure {
				t.Errorf("exposure %.1f, want at most %.1f:\n%s", got, u.maxExposure, out)
			}
		})
	}
}

// settings reads a unit's [Service] assignments; a key given twice keeps
// every value, in order.
func settings(t *testing.T, path string) map[string][]string {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	out := map[string][]string{}
	section := ""
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		for strings.HasSuffix(line, "\\") && sc.Scan() { // a continued line
			line = strings.TrimSuffix(line, "\\") + " " + strings.TrimSpace(sc.Text())
		}
		switch {
		case line == "" || strings.HasPrefix(line, "#"):
		case strings.HasPrefix(line, "["):
			section = line
		case section == "[Service]":
			k, v, ok := strings.Cut(line, "=")
			if !ok {
				t.Fatalf("%s: %q is not key=value", path, line)
			}
			out[k] = append(out[k], v)
		}
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	return out
}

// TestSidecarUnitHardening: the sidecar's template has every setting of
// the server's unit (deploy/systemd) with the same value, except those
// named here with the sidecar's value and why, and the settings the
// brief of a per-workload sidecar needs.
func TestSidecarUnitHardening(t *testing.T) {
	sc := settings(t, "moatless-sidecar@.service")
	server := settings(t, "moatless-server.service")
	differs := map[string]string{
		"ExecStart":               "its own command",
		"DynamicUser":             "a static user per instance: the agent attests by uid and name",
		"StateDirectory":          "one per instance",
		"RestrictAddressFamilies": "AF_NETLINK for sock_diag",
		"SystemCallFilter":        "also ~@resources",
		"TimeoutStopSec":          "", // same value today; listed so a change of either is deliberate
	}
	for k, v := range server {
		if _, ok := differs[k]; ok {
			continue
		}
		if got := sc[k]; strings.Join(got, "|") != strings.Join(v, "|") {
			t.Errorf("%s=%q in the server's unit, %q in the sidecar's", k, v, got)
		}
	}
	want := map[string]string{
		"User":                     "moatless-sidecar-%i",
		"ExecStart":                "/usr/local/bin/moatless-sidecar sidecar -config /etc/moatless/sidecar/%i.yaml",
		"RestrictAddressFamilies":  "AF_UNIX AF_INET AF_INET6 AF_NETLINK",
		"SystemCallFilter":         "@system-service|~@resources",
		"CapabilityBoundingSet":    "",
		"AmbientCapabilities":      "",
		"NoNewPrivileges":          "yes",
		"ProtectSystem":            "strict",
		"ProtectProc":              "invisible",
		"RuntimeDirectory":         "moatless-sidecar/%i",
		"StateDirectory":           "moatless-sidecar/%i",
		"StateDirectoryMode":       "0700",
		"MemoryMax":                "256M",
		"RestartPreventExitStatus": "2",
	}
	for k, v := range want {
		if got := strings.Join(sc[k], "|"); got != v {
			t.Errorf("%s=%q, want %q", k, got, v)
		}
	}
	for _, k := range []string{"DynamicUser", "PrivateUsers", "PrivateNetwork"} {
		if v, ok := sc[k]; ok {
			t.Errorf("%s=%q: the caller check needs the host's uids and loopback", k, v)
		}
	}
}
