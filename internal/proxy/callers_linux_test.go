package proxy

import (
	"bufio"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"golang.org/x/sys/unix"

	"github.com/moatless/moatless/internal/policy"
	"github.com/moatless/moatless/internal/testpki"
)

// nobody is the uid and gid the tests run a second local user as: the one
// account every Linux host has, with no identity of its own.
const nobody = 65534

// callerHelperEnv makes this test binary, run again as another user, dial
// an outbound listener once instead of running tests (see
// TestCallerHelperProcess).
const callerHelperEnv = "MOATLESS_CALLER_HELPER"

// TestCallerHelperProcess is not a test: run as a child process with
// callerHelperEnv set to "network addr [source-ip]", it sends one HTTP
// request to addr and prints "status=N" with the response's status, or
// "closed=..." when the connection ends without a response.
func TestCallerHelperProcess(t *testing.T) {
	spec := os.Getenv(callerHelperEnv)
	if spec == "" {
		return
	}
	f := strings.Fields(spec)
	d := net.Dialer{Timeout: 10 * time.Second}
	if len(f) == 3 {
		d.LocalAddr = &net.TCPAddr{IP: net.ParseIP(f[2])}
	}
	var c net.Conn
	var err error
	if f[0] == "mapped" {
		c, err = dialMapped(f[1])
	} else {
		c, err = d.Dial(f[0], f[1])
	}
	if err != nil {
		fmt.Printf("dial=%v\n", err)
		os.Exit(0)
	}
	c.SetDeadline(time.Now().Add(10 * time.Second))
	io.WriteString(c, "GET /who HTTP/1.1\r\nHost: orders\r\nConnection: close\r\n\r\n")
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		fmt.Printf("closed=%v\n", err)
		os.Exit(0)
	}
	fmt.Printf("status=%d\n", resp.StatusCode)
	os.Exit(0)
}

// dialMapped connects to the IPv4 address addr from an IPv6 socket, as a
// dual-stack client does: the kernel lists that socket in /proc/net/tcp6
// with IPv4-mapped addresses. Go's net package would pick an IPv4 socket.
func dialMapped(addr string) (net.Conn, error) {
	ap, err := netip.ParseAddrPort(addr)
	if err != nil {
		return nil, err
	}
	fd, err := unix.Socket(unix.AF_INET6, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, err
	}
	f := os.NewFile(uintptr(fd), "mapped")
	defer f.Close()
	if err := unix.SetsockoptInt(fd, unix.IPPROTO_IPV6, unix.IPV6_V6ONLY, 0); err != nil {
		return nil, err
	}
	if err := unix.Connect(fd, &unix.SockaddrInet6{Port: int(ap.Port()), Addr: netip.AddrFrom4(ap.Addr().As4()).As16()}); err != nil {
		return nil, err
	}
	return net.FileConn(f)
}

// needRoot skips a test that must start processes as another uid, unless
// it runs in CI, which runs as root: there it fails instead.
func needRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() == 0 {
		return
	}
	if os.Getenv("CI") == "true" {
		t.Fatal("this test runs a client as another local user and needs root; CI runs as root")
	}
	t.Skip("needs root to run a client as another local user (uid 65534)")
}

// userBinary returns a copy of this test binary that uid 65534 can run:
// go test builds it in a directory only its owner can enter.
func userBinary(t *testing.T) string {
	t.Helper()
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	for d := dir; d != os.TempDir() && d != "/" && d != "."; d = filepath.Dir(d) {
		if err := os.Chmod(d, 0o755); err != nil {
			t.Fatal(err)
		}
		if strings.HasPrefix(filepath.Base(d), t.Name()) {
			break
		}
	}
	bin := filepath.Join(dir, "proxy.test")
	if err := os.Link(self, bin); err != nil {
		src, err := os.Open(self)
		if err != nil {
			t.Fatal(err)
		}
		defer src.Close()
		dst, err := os.OpenFile(bin, os.O_CREATE|os.O_WRONLY|os.O_EXCL, 0o755)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := io.Copy(dst, src); err != nil {
			t.Fatal(err)
		}
		if err := dst.Close(); err != nil {
			t.Fatal(err)
		}
	}
	return bin
}

// callAs sends one request to addr from a process running as uid and gid
// and returns what it printed: "status=N", "closed=…" or "dial=…".
func callAs(t *testing.T, bin string, uid, gid uint32, network, addr, source string) string {
	t.Helper()
	cmd := exec.Command(bin, "-test.run=^TestCallerHelperProcess$")
	cmd.Env = []string{callerHelperEnv + "=" + strings.TrimSpace(network+" "+addr+" "+source)}
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: uid, Gid: gid, NoSetGroups: true}}
	cmd.Dir = "/"
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("helper as uid %d: %v\n%s", uid, err, out)
	}
	s := strings.TrimSpace(string(out))
	if i := strings.LastIndexByte(s, '\n'); i >= 0 {
		s = s[i+1:]
	}
	return s
}

// counterValue reads one sample of a counter from reg, 0 when absent.
func counterValue(t *testing.T, reg *prometheus.Registry, name string, labels map[string]string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
	metrics:
		for _, m := range mf.GetMetric() {
			for _, lp := range m.GetLabel() {
				if v, ok := labels[lp.GetName()]; ok && v != lp.GetValue() {
					continue metrics
				}
			}
			return m.GetCounter().GetValue()
		}
	}
	return 0
}

// TestOutboundRefusesOtherLocalUser is the attack of issue 7 item 2: on a
// shared host, a process of a user with no identity of its own calls the
// frontend sidecar's plaintext outbound port and reaches orders as
// frontend. With the default settings only the sidecar's own uid may use
// the outbound listeners: nobody's connection is closed before a byte is
// forwarded, logged and counted, while the sidecar's uid still gets through.
func TestOutboundRefusesOtherLocalUser(t *testing.T) {
	needRoot(t)
	bin := userBinary(t)
	app := echoApp(t)
	ca := testpki.NewCA(t, "example.org")
	inL := listen(t)
	startSidecar(t, Config{
		Identity:   newStaticIdentity(ca, ca.SVID(t, ordersID, 0)),
		Namespace:  "prod",
		Inbound:    []Inbound{{Name: "in", Listener: inL, App: app}},
		Authorizer: allowPrincipals(policy.ModeStrict, "example.org/ns/prod/sa/frontend"),
	})
	outL := listen(t)
	reg := prometheus.NewRegistry()
	logs := &syncBuf{}
	startSidecar(t, Config{
		Identity:   newStaticIdentity(ca, ca.SVID(t, frontendID, 0)),
		Outbound:   []Outbound{{Name: "orders", Listener: outL, Upstream: inL.Addr().String(), ID: spiffeid.RequireFromString(ordersID)}},
		Registerer: reg,
		Logger:     slog.New(slog.NewJSONHandler(logs, nil)),
	})
	addr := outL.Addr().String()

	if got := callAs(t, bin, 0, 0, "tcp", addr, ""); got != "status=200" {
		t.Fatalf("the sidecar's own uid (0): %s, want status=200", got)
	}
	if got := callAs(t, bin, nobody, nobody, "tcp", addr, ""); !strings.HasPrefix(got, "closed=") {
		t.Fatalf("uid %d reached orders as frontend: %s", nobody, got)
	}
	// From another loopback source address, and through an IPv6 socket
	// with the IPv4-mapped address: the same kernel connection, so the
	// same answer.
	if got := callAs(t, bin, nobody, nobody, "tcp4", addr, "127.0.0.2"); !strings.HasPrefix(got, "closed=") {
		t.Fatalf("uid %d from 127.0.0.2: %s", nobody, got)
	}
	if got := callAs(t, bin, nobody, nobody, "mapped", addr, ""); !strings.HasPrefix(got, "closed=") {
		t.Fatalf("uid %d over an IPv4-mapped IPv6 socket: %s", nobody, got)
	}
	if n := counterValue(t, reg, "moatless_sidecar_outbound_refused_total", map[string]string{"listener": "orders", "reason": "not_allowed"}); n != 3 {
		t.Errorf("moatless_sidecar_outbound_refused_total{reason=not_allowed} = %v, want 3", n)
	}
	if out := logs.String(); !strings.Contains(out, `"msg":"outbound connection refused"`) || !strings.Contains(out, `"uid":65534`) || !strings.Contains(out, `"listener":"orders"`) {
		t.Errorf("no refusal log line naming uid 65534 and the listener:\n%s", out)
	}
}
