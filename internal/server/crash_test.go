package server_test

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"fmt"
	mrand "math/rand/v2"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/moatless/moatless/internal/loopback"
	"github.com/moatless/moatless/internal/server"
	"github.com/moatless/moatless/internal/store"
	"github.com/moatless/moatless/internal/wire"
)

// buildBinary builds cmd/moatless into a temp dir once per test binary.
var (
	buildOnce sync.Once
	binPath   string
	buildErr  error
)

func moatlessBinary(t *testing.T) string {
	t.Helper()
	buildOnce.Do(func() {
		dir, err := os.MkdirTemp("", "moatless-bin")
		if err != nil {
			buildErr = err
			return
		}
		binPath = filepath.Join(dir, "moatless")
		cmd := exec.Command("go", "build", "-tags", "grpcnotrace", "-o", binPath, "github.com/moatless/moatless/cmd/moatless")
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		if out, err := cmd.CombinedOutput(); err != nil {
			buildErr = fmt.Errorf("go build: %v\n%s", err, out)
		}
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return binPath
}

func freePort(t *testing.T) string {
	a, err := loopback.FreeAddr()
	if err != nil {
		t.Fatal(err)
	}
	return a
}

// proc is a server process started from the built binary.
type proc struct {
	cmd    *exec.Cmd
	stderr *bytes.Buffer
	addr   string
	dir    string
	http   *http.Client
	token  string
}

func startProc(t *testing.T, dir, addr string) *proc {
	t.Helper()
	p := &proc{addr: addr, dir: dir, stderr: &bytes.Buffer{}}
	p.cmd = exec.Command(moatlessBinary(t), "server", "--data-dir", dir, "--listen", addr, "--trust-domain", "example.org")
	p.cmd.Stderr = p.stderr
	p.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.cmd.Process.Kill(); p.cmd.Wait() })
	deadline := time.Now().Add(30 * time.Second)
	for {
		if b, err := os.ReadFile(filepath.Join(dir, server.BundleFile)); err == nil {
			pool := x509.NewCertPool()
			if pool.AppendCertsFromPEM(b) {
				p.http = &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}}
				if resp, err := p.http.Get("https://" + addr + "/readyz"); err == nil {
					resp.Body.Close()
					if resp.StatusCode == 200 {
						break
					}
				}
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("server process not ready: %s", p.stderr)
		}
		time.Sleep(25 * time.Millisecond)
	}
	tok, err := os.ReadFile(filepath.Join(dir, server.AdminTokenFile))
	if err != nil {
		t.Fatal(err)
	}
	p.token = strings.TrimSpace(string(tok))
	return p
}

func (p *proc) call(method, path string, in, out any) (int, error) {
	var body *bytes.Reader
	if in != nil {
		b, _ := json.Marshal(in)
		body = bytes.NewReader(b)
	} else {
		body = bytes.NewReader(nil)
	}
	req, _ := http.NewRequest(method, "https://"+p.addr+path, body)
	req.Header.Set("Authorization", "Bearer "+p.token)
	req.Header.Set("Content-Type", "application/json")
	resp, err := p.http.Do(req)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	if out != nil && resp.StatusCode/100 == 2 {
		if err := json.NewDecoder(resp.Body).Decode(out); err != nil {
			return resp.StatusCode, err
		}
	}
	return resp.StatusCode, nil
}

// TestCrashLosesNoAcknowledgedWrite starts the real binary, creates
// entries and join tokens from several clients, SIGKILLs the server in the
// middle of the stream, restarts it, and checks that every write the
// server acknowledged is there, that the audit chain verifies, and that
// the CA and admin token are the same.
func TestCrashLosesNoAcknowledgedWrite(t *testing.T) {
	if testing.Short() {
		t.Skip("starts the real binary")
	}
	dir := t.TempDir()
	addr := freePort(t)
	p := startProc(t, dir, addr)
	bundleBefore := readFile(t, filepath.Join(dir, server.BundleFile))

	var (
		mu      sync.Mutex
		entries []string
		tokens  []string
	)
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for w := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				if i%4 == 3 {
					var jt server.JoinTokenResponse
					st, err := p.call("POST", server.PathAdminJoinTokens, server.JoinTokenRequest{SPIFFEID: fmt.Sprintf("spiffe://example.org/agent/%d-%d", w, i)}, &jt)
					if err == nil && st == 201 {
						mu.Lock()
						tokens = append(tokens, jt.ID)
						mu.Unlock()
					}
					continue
				}
				var e wire.Entry
				req := entryReq("spiffe://example.org/agent/a", fmt.Sprintf("spiffe://example.org/w/%d/%d", w, i), fmt.Sprintf("unix:uid:%d", i))
				st, err := p.call("POST", server.PathAdminEntries, req, &e)
				if err != nil {
					return // the server is gone
				}
				if st == 201 {
					mu.Lock()
					entries = append(entries, e.ID)
					mu.Unlock()
				}
			}
		}()
	}
	// Kill once a good number of writes were acknowledged, mid-stream.
	deadline := time.Now().Add(60 * time.Second)
	for {
		mu.Lock()
		n := len(entries)
		mu.Unlock()
		if n >= 60 || time.Now().After(deadline) {
			break
		}
		time.Sleep(5 * time.Millisecond)
	}
	if err := p.cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	p.cmd.Wait()
	close(stop)
	wg.Wait()
	if len(entries) < 10 {
		t.Fatalf("only %d entries acknowledged before the kill", len(entries))
	}

	p2 := startProc(t, dir, addr)
	if p2.token != p.token {
		t.Fatal("admin token changed")
	}
	if readFile(t, filepath.Join(dir, server.BundleFile)) != bundleBefore {
		t.Fatal("CA changed after the crash")
	}
	for _, id := range entries {
		var e wire.Entry
		if st, err := p2.call("GET", server.PathAdminEntries+"/"+id, nil, &e); err != nil || st != 200 {
			t.Fatalf("acknowledged entry %s lost: %d %v", id, st, err)
		}
	}
	var list []store.JoinToken
	if st, err := p2.call("GET", server.PathAdminJoinTokens+"?all=true", nil, &list); err != nil || st != 200 {
		t.Fatal(st, err)
	}
	have := map[string]bool{}
	for _, jt := range list {
		have[jt.ID] = true
	}
	for _, id := range tokens {
		if !have[id] {
			t.Fatalf("acknowledged join token %s lost", id)
		}
	}
	t.Logf("%d entries and %d tokens acknowledged before SIGKILL; all present after restart", len(entries), len(tokens))

	// Stop cleanly, then verify the chain with the CLI, as a user would.
	p2.cmd.Process.Signal(syscall.SIGTERM)
	if err := p2.cmd.Wait(); err != nil {
		t.Fatalf("server did not exit cleanly on SIGTERM: %v\n%s", err, p2.stderr)
	}
	out, err := exec.Command(moatlessBinary(t), "audit", "verify", "--data-dir", dir, "-o", "json").CombinedOutput()
	if err != nil {
		t.Fatalf("audit verify after the crash: %v\n%s", err, out)
	}
	var res struct {
		OK      bool `json:"ok"`
		Records int  `json:"records_checked"`
	}
	if err := json.Unmarshal(out, &res); err != nil || !res.OK || res.Records < len(entries)+len(tokens) {
		t.Fatalf("audit verify: %s", out)
	}
	// Every stored entry has its audit record (change and record commit
	// together).
	db, err := store.Open(context.Background(), filepath.Join(dir, "moatless.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	var orphans int
	if err := db.SQL().QueryRow(`SELECT COUNT(*) FROM entries WHERE id NOT IN (SELECT subject FROM audit_log WHERE kind = 'entry.create')`).Scan(&orphans); err != nil {
		t.Fatal(err)
	}
	if orphans != 0 {
		t.Fatalf("%d entries without an audit record", orphans)
	}
}

// TestAuditVerifyCLIFindsTampering edits the store of a stopped server and
// expects "moatless audit verify" to exit 1 naming the record.
func TestAuditVerifyCLIFindsTampering(t *testing.T) {
	if testing.Short() {
		t.Skip("starts the real binary")
	}
	dir := t.TempDir()
	p := startProc(t, dir, freePort(t))
	for i := range 3 {
		if st, err := p.call("POST", server.PathAdminEntries, entryReq("spiffe://example.org/agent/a", fmt.Sprintf("spiffe://example.org/t/%d", i), "unix:uid:1"), nil); err != nil || st != 201 {
			t.Fatal(st, err)
		}
	}
	p.cmd.Process.Signal(syscall.SIGTERM)
	p.cmd.Wait()
	db, err := store.Open(context.Background(), filepath.Join(dir, "moatless.db"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := db.SQL().Exec("UPDATE audit_log SET actor = 'someone-else' WHERE seq = 3"); err != nil {
		t.Fatal(err)
	}
	db.Close()
	cmd := exec.Command(moatlessBinary(t), "audit", "verify", "--data-dir", dir)
	out, err := cmd.CombinedOutput()
	if cmd.ProcessState.ExitCode() != 1 || !strings.Contains(string(out), "record 3") || !strings.Contains(string(out), "edited") {
		t.Fatalf("audit verify on a tampered log: exit %d, %v\n%s", cmd.ProcessState.ExitCode(), err, out)
	}
}

// TestCrashAtRandomPoints kills the embedded-store server with SIGKILL at
// a random moment of a stream of writes (entries, join tokens,
// revocations, policy applies from four clients), three times over the
// same data directory. After each kill "moatless audit verify" passes on
// the dead server's store, and after each restart every write any server
// acknowledged so far is there.
func TestCrashAtRandomPoints(t *testing.T) {
	if testing.Short() {
		t.Skip("starts the real binary")
	}
	dir := t.TempDir()
	addr := freePort(t)
	var (
		mu       sync.Mutex
		entries  []string
		tokens   []string
		revoked  []string
		policyAt uint64
	)
	for round := range 3 {
		p := startProc(t, dir, addr)
		stop := make(chan struct{})
		var wg sync.WaitGroup
		for w := range 4 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for i := 0; ; i++ {
					select {
					case <-stop:
						return
					default:
					}
					tag := fmt.Sprintf("r%d-w%d-%d", round, w, i)
					switch w {
					case 0:
						var e wire.Entry
						if st, err := p.call("POST", server.PathAdminEntries, entryReq("spiffe://example.org/agent/a", "spiffe://example.org/w/"+tag, "unix:uid:1"), &e); err != nil {
							return
						} else if st == 201 {
							mu.Lock()
							entries = append(entries, e.ID)
							mu.Unlock()
						}
					case 1:
						var jt server.JoinTokenResponse
						if st, err := p.call("POST", server.PathAdminJoinTokens, server.JoinTokenRequest{SPIFFEID: "spiffe://example.org/agent/" + tag}, &jt); err != nil {
							return
						} else if st == 201 {
							mu.Lock()
							tokens = append(tokens, jt.ID)
							mu.Unlock()
						}
					case 2:
						id := "spiffe://example.org/revoked/" + tag
						if st, err := p.call("POST", server.PathAdminRevocations, server.RevokeRequest{SPIFFEID: id}, nil); err != nil {
							return
						} else if st/100 == 2 {
							mu.Lock()
							revoked = append(revoked, id)
							mu.Unlock()
						}
					case 3:
						doc := fmt.Sprintf("apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: p, namespace: prod}\nspec:\n  rules: [{to: [{operation: {ports: [\"%d\"]}}]}]\n", 1000+i)
						var res server.PolicyChangeResult
						if st, err := p.call("POST", server.PathAdminPolicies, server.PolicyApplyRequest{Files: []server.PolicyFile{{Name: "p.yaml", Content: doc}}}, &res); err != nil {
							return
						} else if st == 200 {
							mu.Lock()
							policyAt = max(policyAt, res.Version)
							mu.Unlock()
						}
					}
				}
			}()
		}
		// A random point in the stream: the kill lands in whatever write,
		// fsync or group commit is running then.
		time.Sleep(time.Duration(300+mrand.IntN(1200)) * time.Millisecond)
		p.cmd.Process.Signal(syscall.SIGKILL)
		p.cmd.Wait()
		close(stop)
		wg.Wait()
		out, err := exec.Command(moatlessBinary(t), "audit", "verify", "--data-dir", dir).CombinedOutput()
		if err != nil {
			t.Fatalf("round %d: audit verify after SIGKILL: %v\n%s", round, err, out)
		}
		p2 := startProc(t, dir, addr)
		mu.Lock()
		for _, id := range entries {
			if st, err := p2.call("GET", server.PathAdminEntries+"/"+id, nil, nil); err != nil || st != 200 {
				t.Fatalf("round %d: acknowledged entry %s lost: %d %v", round, id, st, err)
			}
		}
		var list []store.JoinToken
		p2.call("GET", server.PathAdminJoinTokens+"?all=true", nil, &list)
		have := map[string]bool{}
		for _, jt := range list {
			have[jt.ID] = true
		}
		for _, id := range tokens {
			if !have[id] {
				t.Fatalf("round %d: acknowledged join token %s lost", round, id)
			}
		}
		var revs store.RevocationList
		p2.call("GET", server.PathAdminRevocations, nil, &revs)
		rv := map[string]bool{}
		for _, r := range revs.IDs {
			rv[r.SPIFFEID] = true
		}
		for _, id := range revoked {
			if !rv[id] {
				t.Fatalf("round %d: acknowledged revocation of %s lost", round, id)
			}
		}
		var pol struct {
			Version uint64 `json:"version"`
		}
		p2.call("GET", server.PathAdminPolicies, nil, &pol)
		if pol.Version < policyAt {
			t.Fatalf("round %d: policy version %d after %d was acknowledged", round, pol.Version, policyAt)
		}
		t.Logf("round %d: killed after %d entries, %d tokens, %d revocations, policy version %d acknowledged in all; all there, audit log verifies",
			round, len(entries), len(tokens), len(revoked), policyAt)
		mu.Unlock()
		p2.cmd.Process.Signal(syscall.SIGTERM)
		p2.cmd.Wait()
	}
}
