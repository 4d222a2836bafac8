package e2e

import (
	"bufio"
	"context"
	"crypto/x509"
	"encoding/json"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/proto/spiffe/workload"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/jwtsvid"
	"github.com/spiffe/go-spiffe/v2/workloadapi"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
)

const (
	trustDomain = "e2e.test"
	agentID     = "spiffe://e2e.test/agent/node1"
)

// plane is a running server with its admin environment.
type plane struct {
	t       *testing.T
	dataDir string
	addr    string
	env     []string
	server  *proc
}

// startPlane starts "moatless server" on a free loopback port with its
// own data directory and waits until it answers.
func startPlane(t *testing.T) *plane {
	t.Helper()
	p := &plane{t: t, dataDir: t.TempDir(), addr: freeAddr(t)}
	p.env = []string{"MOATLESS_ADDR=" + p.addr, "MOATLESS_DATA_DIR=" + p.dataDir, "MOATLESS_TOKEN=", "MOATLESS_CACERT="}
	p.restart()
	return p
}

// restart (re)starts the server process on the same data dir and address.
func (p *plane) restart() {
	t := p.t
	t.Helper()
	p.server = start(t, "server", p.env, "server", "--data-dir", p.dataDir, "--trust-domain", trustDomain, "--listen", p.addr)
	waitListening(t, p.server, p.addr, p.dataDir)
}

// waitListening waits until the server process srv wrote dataDir's
// bundle.pem and accepts connections on addr.
func waitListening(t *testing.T, srv *proc, addr, dataDir string) {
	t.Helper()
	waitFor(t, 30*time.Second, "the server to listen", func() bool {
		if srv.exited() {
			t.Fatalf("server exited:\n%s", srv.out.String())
		}
		if _, err := os.Stat(filepath.Join(dataDir, "bundle.pem")); err != nil {
			return false
		}
		c, err := net.DialTimeout("tcp", addr, time.Second)
		if err != nil {
			return false
		}
		c.Close()
		return true
	})
}

// admin runs an admin command that must succeed and returns its stdout.
func (p *plane) admin(args ...string) string {
	p.t.Helper()
	code, out, errOut := run(p.t, p.env, "", args...)
	if code != 0 {
		p.t.Fatalf("moatless %s: exit %d: %s", strings.Join(args, " "), code, errOut)
	}
	return out
}

func (p *plane) joinToken(id string, extra ...string) string {
	p.t.Helper()
	return strings.TrimSpace(p.admin(append([]string{"jointoken", "create", "--spiffe-id", id}, extra...)...))
}

// joinTokenFile writes a new join token for id into a file of its own, as
// a sidecar's identity.join.token_file reads it, and returns the path.
func (p *plane) joinTokenFile(id string) string {
	p.t.Helper()
	f := filepath.Join(p.t.TempDir(), "token")
	if err := os.WriteFile(f, []byte(p.joinToken(id)+"\n"), 0o600); err != nil {
		p.t.Fatal(err)
	}
	return f
}

func uidSelector() string { return "unix:uid:" + strconv.Itoa(os.Geteuid()) }

// agentProc is a running agent.
type agentProc struct {
	*proc
	sock   string
	health string
}

// startAgent starts an agent with the token (and env added to its
// environment) and waits until /readyz says it is ready.
func (p *plane) startAgent(token, dataDir string, env ...string) *agentProc {
	t := p.t
	t.Helper()
	a := &agentProc{sock: filepath.Join(shortTempDir(t), "agent.sock"), health: freeAddr(t)}
	args := []string{"agent", "--server", p.addr, "--trust-bundle", filepath.Join(p.dataDir, "bundle.pem"),
		"--socket", a.sock, "--data-dir", dataDir, "--health-listen", a.health}
	env = append(append(env, p.env...), "MOATLESS_JOIN_TOKEN="+token)
	a.proc = start(t, "agent", env, args...)
	waitFor(t, 30*time.Second, "the agent to be ready", func() bool {
		if a.exited() {
			t.Fatalf("agent exited with %d:\n%s", a.cmd.ProcessState.ExitCode(), a.out.String())
		}
		resp, err := http.Get("http://" + a.health + "/readyz")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == 200
	})
	return a
}

// metric reads one sample of the agent's /metrics (-1 when absent).
func (a *agentProc) metric(t *testing.T, name string) float64 {
	t.Helper()
	resp, err := http.Get("http://" + a.health + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		line := sc.Text()
		if strings.HasPrefix(line, name+" ") {
			v, err := strconv.ParseFloat(strings.TrimPrefix(line, name+" "), 64)
			if err != nil {
				t.Fatal(err)
			}
			return v
		}
	}
	return -1
}

func (a *agentProc) client(t *testing.T) *workloadapi.Client {
	t.Helper()
	c, err := workloadapi.New(context.Background(), workloadapi.WithAddr("unix://"+a.sock))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func deadline(t *testing.T, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

// fetchX509 waits until the agent serves this process an SVID (the entry
// may still be on its way to the agent).
func fetchX509(t *testing.T, c *workloadapi.Client) *workloadapi.X509Context {
	t.Helper()
	var x *workloadapi.X509Context
	waitFor(t, 30*time.Second, "an X509-SVID from the agent", func() bool {
		var err error
		x, err = c.FetchX509Context(deadline(t, 5*time.Second))
		return err == nil
	})
	return x
}

func TestIdentityFetchAndValidate(t *testing.T) {
	p := startPlane(t)
	a := p.startAgent(p.joinToken(agentID), t.TempDir())
	c := a.client(t)

	// No entry yet: the caller is denied, and a call without the security
	// header is refused before that.
	if _, err := c.FetchX509Context(deadline(t, 10*time.Second)); status.Code(err) != codes.PermissionDenied {
		t.Fatalf("no entry: got %v, want PermissionDenied", err)
	}
	conn, err := grpc.NewClient("unix://"+a.sock, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	raw := workload.NewSpiffeWorkloadAPIClient(conn)
	s, err := raw.FetchX509SVID(deadline(t, 10*time.Second), &workload.X509SVIDRequest{})
	if err == nil {
		_, err = s.Recv()
	}
	if status.Code(err) != codes.InvalidArgument {
		t.Fatalf("missing security header: got %v, want InvalidArgument", err)
	}

	p.admin("entry", "create", "--parent", agentID, "--spiffe-id", "spiffe://e2e.test/ns/other/sa/nobody",
		"--selector", "unix:uid:4242424")
	p.admin("entry", "create", "--parent", agentID, "--spiffe-id", "spiffe://e2e.test/ns/shop/sa/web",
		"--selector", uidSelector(), "--namespace", "shop", "--label", "app=web")
	x := fetchX509(t, c)
	if len(x.SVIDs) != 1 || x.SVIDs[0].ID.String() != "spiffe://e2e.test/ns/shop/sa/web" {
		t.Fatalf("got SVIDs %v, want only the matching entry's", x.SVIDs)
	}
	svid := x.SVIDs[0]
	bundle, err := x.Bundles.GetX509BundleForTrustDomain(spiffeid.RequireTrustDomainFromString(trustDomain))
	if err != nil {
		t.Fatal(err)
	}
	roots := x509.NewCertPool()
	for _, r := range bundle.X509Authorities() {
		roots.AddCert(r)
	}
	inter := x509.NewCertPool()
	for _, c := range svid.Certificates[1:] {
		inter.AddCert(c)
	}
	if _, err := svid.Certificates[0].Verify(x509.VerifyOptions{Roots: roots, Intermediates: inter, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}}); err != nil {
		t.Fatalf("SVID does not verify against the fetched bundle: %v", err)
	}

	// JWT-SVID: fetch, validate locally against the fetched JWT bundle and
	// through the agent.
	tok, err := c.FetchJWTSVID(deadline(t, 10*time.Second), jwtsvid.Params{Audience: "orders"})
	if err != nil {
		t.Fatal(err)
	}
	jb, err := c.FetchJWTBundles(deadline(t, 10*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	local, err := jwtsvid.ParseAndValidate(tok.Marshal(), jb, []string{"orders"})
	if err != nil || local.ID != svid.ID {
		t.Fatalf("JWT-SVID does not validate against the fetched JWT bundle: %v", err)
	}
	remote, err := c.ValidateJWTSVID(deadline(t, 10*time.Second), tok.Marshal(), "orders")
	if err != nil || remote.ID != svid.ID {
		t.Fatalf("ValidateJWTSVID: %v", err)
	}
	if _, err := c.ValidateJWTSVID(deadline(t, 10*time.Second), tok.Marshal(), "payments"); status.Code(err) != codes.InvalidArgument {
		t.Fatalf("wrong audience: got %v, want InvalidArgument", err)
	}

	// The CLI is a workload too (same uid): fetch, write files, validate.
	out := t.TempDir()
	code, stdout, stderr := run(t, nil, "", "svid", "fetch", "--socket", a.sock, "-o", "json", "--write", out)
	if code != 0 {
		t.Fatalf("svid fetch: %d %s", code, stderr)
	}
	var page struct {
		Items []struct {
			SPIFFEID string `json:"spiffe_id"`
		} `json:"items"`
	}
	err = json.Unmarshal([]byte(stdout), &page)
	if fetched := page.Items; err != nil || len(fetched) != 1 || fetched[0].SPIFFEID != svid.ID.String() {
		t.Fatalf("svid fetch -o json: %v %s", err, stdout)
	}
	if fi, err := os.Stat(filepath.Join(out, "svid_key.pem")); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("svid_key.pem: %v %v", fi, err)
	}
	code, stdout, stderr = run(t, nil, "", "svid", "jwt", "--socket", a.sock, "--audience", "orders")
	if code != 0 {
		t.Fatalf("svid jwt: %d %s", code, stderr)
	}
	code, stdout, stderr = run(t, nil, stdout, "svid", "validate", "--socket", a.sock, "--audience", "orders")
	if code != 0 || !strings.Contains(stdout, svid.ID.String()) {
		t.Fatalf("svid validate: %d %s %s", code, stdout, stderr)
	}
	if code, _, _ := run(t, nil, "not.a.token", "svid", "validate", "--socket", a.sock, "--audience", "orders"); code != 4 {
		t.Fatalf("svid validate of garbage: exit %d, want 4", code)
	}
	if v := a.metric(t, `moatless_agent_svids_served_total{kind="x509"}`); v < 1 {
		t.Fatalf("svids served metric = %v", v)
	}
}

type x509Updates struct {
	updates chan *workloadapi.X509Context
	errs    chan error
}

func (w x509Updates) OnX509ContextUpdate(c *workloadapi.X509Context) { w.updates <- c }
func (w x509Updates) OnX509ContextWatchError(err error) {
	select {
	case w.errs <- err:
	default:
	}
}

// TestIdentityRotationAndRevocation: go-spiffe's X509Source gets a rotated
// SVID before the old one expires; a revocation stops the agent serving
// the ID at once.
func TestIdentityRotationAndRevocation(t *testing.T) {
	p := startPlane(t)
	a := p.startAgent(p.joinToken(agentID), t.TempDir())
	id := "spiffe://e2e.test/ns/shop/sa/rotating"
	p.admin("entry", "create", "--parent", agentID, "--spiffe-id", id, "--selector", uidSelector(), "--x509-ttl", "10s")
	fetchX509(t, a.client(t))

	src, err := workloadapi.NewX509Source(deadline(t, 30*time.Second), workloadapi.WithClientOptions(workloadapi.WithAddr("unix://"+a.sock)))
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	first, err := src.GetX509SVID()
	if err != nil {
		t.Fatal(err)
	}
	var second = first
	waitFor(t, 20*time.Second, "a rotated SVID in the X509Source", func() bool {
		second, err = src.GetX509SVID()
		return err == nil && second.Certificates[0].SerialNumber.Cmp(first.Certificates[0].SerialNumber) != 0
	})
	if !time.Now().Before(first.Certificates[0].NotAfter) {
		t.Fatal("the rotated SVID arrived after the old one expired")
	}

	w := x509Updates{make(chan *workloadapi.X509Context, 16), make(chan error, 16)}
	ctx := deadline(t, 30*time.Second)
	go a.client(t).WatchX509Context(ctx, w)
	select {
	case <-w.updates:
	case <-ctx.Done():
		t.Fatal("no first update on the watch")
	}
	revokedAt := time.Now()
	p.admin("revoke", "--spiffe-id", id)
	for {
		select {
		case err := <-w.errs:
			if status.Code(err) == codes.PermissionDenied {
				t.Logf("revocation reached the workload stream in %s", time.Since(revokedAt))
				if _, err := a.client(t).FetchX509Context(deadline(t, 5*time.Second)); status.Code(err) != codes.PermissionDenied {
					t.Fatalf("revoked ID still served: %v", err)
				}
				return
			}
		case <-w.updates: // a rotation raced the revocation
		case <-ctx.Done():
			t.Fatal("the revoked SVID is still being served")
		}
	}
}

// TestIdentityServerOutage: the agent keeps serving cached SVIDs while the
// server is down and reconnects when it is back; a restarted agent needs
// no new join token.
func TestIdentityServerOutage(t *testing.T) {
	p := startPlane(t)
	agentData := t.TempDir()
	a := p.startAgent(p.joinToken(agentID), agentData)
	p.admin("entry", "create", "--parent", agentID, "--spiffe-id", "spiffe://e2e.test/ns/shop/sa/web", "--selector", uidSelector())
	before := fetchX509(t, a.client(t))

	p.server.kill()
	waitFor(t, 60*time.Second, "the agent to notice the outage", func() bool {
		return a.metric(t, "moatless_agent_server_connected") == 0
	})
	during, err := a.client(t).FetchX509Context(deadline(t, 10*time.Second))
	if err != nil {
		t.Fatalf("no SVID while the server is down: %v", err)
	}
	if during.DefaultSVID().Certificates[0].SerialNumber.Cmp(before.DefaultSVID().Certificates[0].SerialNumber) != 0 {
		t.Fatal("SVID changed while the server was down")
	}

	p.restart()
	waitFor(t, 60*time.Second, "the agent to reconnect", func() bool {
		return a.metric(t, "moatless_agent_server_connected") == 1
	})
	if a.metric(t, "moatless_agent_watch_reconnects_total") < 1 {
		t.Fatal("reconnect not counted")
	}

	// A restarted agent uses its persisted SVID; the join token is spent.
	a.stop(t)
	a2 := p.startAgent("", agentData)
	fetchX509(t, a2.client(t))
}

// TestIdentityBadJoinTokens: unknown, reused and expired tokens are
// refused and the agent exits 4.
func TestIdentityBadJoinTokens(t *testing.T) {
	p := startPlane(t)
	used := p.joinToken(agentID)
	p.startAgent(used, t.TempDir())
	short := p.joinToken("spiffe://e2e.test/agent/node2", "--ttl", "1s")
	expired := time.Now().Add(1100 * time.Millisecond)

	tests := []struct {
		name, token string
	}{
		{"unknown", "definitely-not-a-token"},
		{"reused", used},
		{"expired", short},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if tt.name == "expired" {
				time.Sleep(time.Until(expired)) // the token's own TTL
			}
			sock := filepath.Join(shortTempDir(t), "a.sock")
			ag := start(t, "agent-"+tt.name, append(p.env, "MOATLESS_JOIN_TOKEN="+tt.token), "agent", "--server", p.addr,
				"--trust-bundle", filepath.Join(p.dataDir, "bundle.pem"), "--socket", sock, "--data-dir", t.TempDir(), "--health-listen", "off")
			if code := ag.exitCode(t, 30*time.Second); code != 4 {
				t.Fatalf("exit %d, want 4 (denied)\n%s", code, ag.out.String())
			}
			if !strings.Contains(ag.out.String(), "join token") {
				t.Fatalf("the error does not name the join token:\n%s", ag.out.String())
			}
		})
	}
}
