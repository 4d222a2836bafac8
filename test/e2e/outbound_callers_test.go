package e2e

import (
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"
)

// nobodyUID is the second local user of these tests: an account every
// Linux host has, with no identity of its own.
const nobodyUID = 65534

// needRootForOtherUser skips the test unless it runs as root, which it
// needs to run a client as another local user; under CI it fails instead.
func needRootForOtherUser(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		if os.Getenv("CI") == "true" {
			t.Fatal("this test runs a client as another local user and needs root; CI runs as root")
		}
		t.Skip("needs root to run a client as another local user (uid 65534)")
	}
}

// callAsUser sends "GET path" to the loopback address addr from a bash
// process running as uid (bash's /dev/tcp: no binary of ours, which other
// users cannot reach in the test's private temporary directory) and
// returns the response's status line, or "" when the connection was
// closed without one. Only root can run it; outside CI the test is
// skipped otherwise.
func callAsUser(t *testing.T, uid uint32, addr, path string) string {
	t.Helper()
	return callAsUserHost(t, uid, addr, "orders", path)
}

// callAsUserHost is callAsUser with the request's Host header.
func callAsUserHost(t *testing.T, uid uint32, addr, hostHeader, path string) string {
	t.Helper()
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		t.Fatal(err)
	}
	script := fmt.Sprintf(`exec 3<>/dev/tcp/%s/%s || exit 3
printf 'GET %s HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n\r\n' >&3
head -n 1 <&3`, host, port, path, hostHeader)
	cmd := exec.Command("bash", "-c", script)
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: uid, Gid: uid, NoSetGroups: true}}
	cmd.Dir = "/"
	out, err := cmd.Output()
	if ee, ok := err.(*exec.ExitError); ok && ee.ExitCode() == 3 {
		t.Fatalf("uid %d could not connect to %s", uid, addr)
	}
	return strings.TrimSpace(string(out))
}

// TestOutboundRefusesOtherLocalUsers: on a shared host, a user with no
// identity of its own must not reach orders as frontend through the
// frontend sidecar's plaintext outbound port. By default only the
// sidecar's own uid (root here) gets through; outbound_allowed_uids
// admits exactly the listed users instead. Refusals are logged and
// counted on /metrics.
func TestOutboundRefusesOtherLocalUsers(t *testing.T) {
	needRootForOtherUser(t)
	m := startSidecarMesh(t, sidecarEchoApp(t))
	root := &http.Client{Timeout: 10 * time.Second}
	if code, body := sidecarDo(t, root, "GET", "http://"+m.outbound+"/api/orders"); code != 200 {
		t.Fatalf("the sidecar's own uid: %d %s", code, body)
	}
	if got := callAsUser(t, nobodyUID, m.outbound, "/api/orders"); got != "" {
		t.Fatalf("uid %d reached orders as frontend: %q", nobodyUID, got)
	}
	waitFor(t, 10*time.Second, "the refusal on /metrics", func() bool {
		return m.frontend.metric(t, `moatless_sidecar_outbound_refused_total{listener="orders",reason="not_allowed"}`) == 1
	})
	if out := m.frontend.out.String(); !strings.Contains(out, `"msg":"outbound connection refused"`) || !strings.Contains(out, `"uid":65534`) {
		t.Fatalf("no refusal log line naming uid 65534:\n%s", out)
	}

	// outbound_allowed_uids replaces the default: nobody in, root out.
	ff, _ := m.pki.files("frontend", scFrontendID)
	listed := freeAddr(t)
	other := startSidecarProc(t, "frontend-listed-uid", fmt.Sprintf(`identity:
  files: {cert: %s, key: %s, bundle: %s}
outbound:
  - {name: orders, listen: "%s", upstream: "%s", spiffe_id: "%s"}
outbound_allowed_uids: [%d]
`, ff.Cert, ff.Key, ff.Bundle, listed, m.inbound, scOrdersID, nobodyUID), true)
	if got := callAsUser(t, nobodyUID, listed, "/api/orders"); got != "HTTP/1.1 200 OK" {
		t.Fatalf("listed uid %d: %q, want 200", nobodyUID, got)
	}
	if code, body := sidecarDo(t, root, "GET", "http://"+listed+"/api/orders"); code != 0 {
		t.Fatalf("root, not listed, got %d %s", code, body)
	}
	waitFor(t, 10*time.Second, "root's refusal on /metrics", func() bool {
		return other.metric(t, `moatless_sidecar_outbound_refused_total{listener="orders",reason="not_allowed"}`) == 1
	})
}
