package e2e

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/workloadapi"

	"github.com/moatless/moatless/internal/store"
	"github.com/moatless/moatless/internal/store/storetest"
)

// replicaSet is N server processes on one PostgreSQL database.
type replicaSet struct {
	t      *testing.T
	extra  []string // more server flags
	env    []string // more environment
	dsn    string
	kek    string
	token  string
	bundle string
	dirs   []string
	addrs  []string
	procs  []*proc
	https  *http.Client
}

func startReplicas(t *testing.T, n int, extra ...string) *replicaSet {
	t.Helper()
	return startReplicasEnv(t, n, nil, extra...)
}

// startReplicasEnv is startReplicas with environment variables for the
// servers.
func startReplicasEnv(t *testing.T, n int, env []string, extra ...string) *replicaSet {
	t.Helper()
	rs := &replicaSet{t: t, extra: extra, env: env, dsn: storetest.PostgresDSN(t), kek: filepath.Join(t.TempDir(), "kek")}
	for i := range n {
		rs.dirs = append(rs.dirs, t.TempDir())
		rs.addrs = append(rs.addrs, freeAddr(t))
		rs.procs = append(rs.procs, nil)
		rs.start(i)
		if i == 0 {
			// The first creates the CA, the KEK and the admin token; the
			// others load them from the store and the shared KEK file.
			tok, err := os.ReadFile(filepath.Join(rs.dirs[0], "admin-token"))
			if err != nil {
				t.Fatal(err)
			}
			rs.token = strings.TrimSpace(string(tok))
			rs.bundle = filepath.Join(rs.dirs[0], "bundle.pem")
			pool := x509.NewCertPool()
			b, _ := os.ReadFile(rs.bundle)
			pool.AppendCertsFromPEM(b)
			rs.https = &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}}
		}
	}
	return rs
}

// start (re)starts replica i on its data directory and address.
func (rs *replicaSet) start(i int) {
	args := append([]string{"server", "--data-dir", rs.dirs[i], "--store", rs.dsn, "--kek-file", rs.kek,
		"--trust-domain", trustDomain, "--listen", rs.addrs[i]}, rs.extra...)
	rs.procs[i] = start(rs.t, fmt.Sprintf("replica-%d", i), rs.env, args...)
	waitListening(rs.t, rs.procs[i], rs.addrs[i], rs.dirs[i])
}

// admin sends an admin request to replica i; ok is false when the replica
// did not answer 2xx (the write is then not acknowledged).
func (rs *replicaSet) admin(i int, method, path string, in, out any) (ok bool) {
	var body io.Reader
	if in != nil {
		b, _ := json.Marshal(in)
		body = bytes.NewReader(b)
	}
	req, _ := http.NewRequest(method, "https://"+rs.addrs[i]+path, body)
	req.Header.Set("Authorization", "Bearer "+rs.token)
	req.Header.Set("Content-Type", "application/json")
	resp, err := rs.https.Do(req)
	if err != nil {
		return false
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(resp.Body)
	if resp.StatusCode/100 != 2 {
		return false
	}
	if out != nil {
		if err := json.Unmarshal(raw, out); err != nil {
			return false
		}
	}
	return true
}

// logEvent is one line of a client's JSON log that says where its watch
// stream is.
type logEvent struct {
	Time    time.Time `json:"time"`
	Msg     string    `json:"msg"`
	Server  string    `json:"server"`
	Resumed bool      `json:"resumed"`
}

// streamEvents reads the "watch stream established" lines of a process's
// log.
func streamEvents(out string) []logEvent {
	var evs []logEvent
	sc := bufio.NewScanner(strings.NewReader(out))
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		var e logEvent
		if json.Unmarshal(sc.Bytes(), &e) == nil && e.Msg == "watch stream established" {
			evs = append(evs, e)
		}
	}
	return evs
}

// serverAt is where a client's stream was at t (the last establishment
// before t), and "" before its first.
func serverAt(evs []logEvent, t time.Time) string {
	s := ""
	for _, e := range evs {
		if e.Time.After(t) {
			break
		}
		s = e.Server
	}
	return s
}

// firstAfter is the first establishment after t.
func firstAfter(evs []logEvent, t time.Time) (logEvent, bool) {
	for _, e := range evs {
		if e.Time.After(t) {
			return e, true
		}
	}
	return logEvent{}, false
}

// TestChaosReplicas is the failover test of docs/operations.md: three
// replicas on one PostgreSQL, three agents (each with a workload fetching
// its SVID every 100 ms) and two join-mode sidecars spread over them, and
// steady load through every replica (entries, policy applies, revocations,
// token issuance; SVIDs renewing every few seconds). Replica after replica
// is killed with SIGKILL, then both are restarted, then the busiest is
// frozen with SIGSTOP (a hung host, noticed only by its silence).
// Afterwards: every write
// a replica acknowledged is in the store, the audit chain verifies, every
// workload held a valid SVID at every fetch, and every client whose replica
// died was connected to another within 2 s. Convergence after each kill
// (every node acknowledging a change made after it) is logged.
func TestChaosReplicas(t *testing.T) {
	if testing.Short() {
		t.Skip("starts 3 servers, 3 agents and 2 sidecars")
	}
	rs := startReplicas(t, 3, "--x509-svid-ttl", "20s")
	serverList := strings.Join(rs.addrs, ",")
	adminEnv := []string{"MOATLESS_ADDR=" + rs.addrs[0], "MOATLESS_DATA_DIR=" + rs.dirs[0], "MOATLESS_TOKEN=", "MOATLESS_CACERT="}
	adminCmd := func(args ...string) string {
		t.Helper()
		code, out, errOut := run(t, adminEnv, "", args...)
		if code != 0 {
			t.Fatalf("moatless %s: exit %d: %s", strings.Join(args, " "), code, errOut)
		}
		return out
	}

	// Agents, each with one workload entry (SVIDs of 10 s: renewed every
	// 5 s through whatever replica the agent is on).
	type agentRun struct {
		id   string
		proc *proc
		sock string
	}
	var agents []*agentRun
	for i := range 3 {
		id := fmt.Sprintf("spiffe://e2e.test/agent/chaos-%d", i)
		tok := strings.TrimSpace(adminCmd("jointoken", "create", "--spiffe-id", id))
		adminCmd("entry", "create", "--parent", id, "--spiffe-id", fmt.Sprintf("spiffe://e2e.test/ns/chaos/sa/w%d", i),
			"--selector", uidSelector(), "--x509-ttl", "10s")
		a := &agentRun{id: id, sock: filepath.Join(shortTempDir(t), "agent.sock")}
		args := []string{"agent", "--trust-bundle", rs.bundle, "--socket", a.sock, "--data-dir", t.TempDir(), "--health-listen", "off"}
		for _, s := range rs.addrs {
			args = append(args, "--server", s)
		}
		a.proc = start(t, fmt.Sprintf("agent-%d", i), []string{"MOATLESS_JOIN_TOKEN=" + tok}, args...)
		agents = append(agents, a)
	}
	// Sidecars in join mode, the replicas as a list.
	app := sidecarEchoApp(t)
	var sidecars []*proc
	for i := range 2 {
		id := fmt.Sprintf("spiffe://e2e.test/ns/chaos/sa/sidecar-%d", i)
		tokFile := filepath.Join(t.TempDir(), "token")
		os.WriteFile(tokFile, []byte(adminCmd("jointoken", "create", "--spiffe-id", id)), 0o600)
		sc := startSidecarProc(t, fmt.Sprintf("sidecar-%d", i), fmt.Sprintf(`identity:
  join: {server: [%s], token_file: %s, server_bundle: %s}
namespace: chaos
labels: {app: s%d}
inbound:
  - {listen: "%s", app: "%s", port: 8080}
`, serverList, tokFile, rs.bundle, i, freeAddr(t), app), false)
		sidecars = append(sidecars, sc.proc)
	}
	clients := append([]*proc{}, sidecars...)
	for _, a := range agents {
		clients = append(clients, a.proc)
	}
	waitFor(t, 60*time.Second, "every client's watch stream", func() bool {
		for _, c := range clients {
			if c.exited() {
				t.Fatalf("%s exited:\n%s", c.name, c.out.String())
			}
			if len(streamEvents(c.out.String())) == 0 {
				return false
			}
		}
		return true
	})

	// Workloads: fetch from each agent every 100 ms; every answer must
	// hold an SVID valid at that moment.
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var (
		wmu         sync.Mutex
		fetches     int
		badFetches  []string
		serialsSeen = map[string]bool{}
	)
	var wg sync.WaitGroup
	for _, a := range agents {
		c, err := workloadapi.New(ctx, workloadapi.WithAddr("unix://"+a.sock))
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		fctx, fcancel := context.WithTimeout(ctx, 30*time.Second)
		if _, err := c.FetchX509Context(fctx); err != nil {
			t.Fatalf("first SVID from %s: %v\n%s", a.id, err, a.proc.out.String())
		}
		fcancel()
		wg.Add(1)
		go func() {
			defer wg.Done()
			tick := time.NewTicker(100 * time.Millisecond)
			defer tick.Stop()
			for {
				select {
				case <-ctx.Done():
					return
				case <-tick.C:
				}
				fctx, fcancel := context.WithTimeout(ctx, 2*time.Second)
				xc, err := c.FetchX509Context(fctx)
				fcancel()
				now := time.Now()
				wmu.Lock()
				fetches++
				switch {
				case ctx.Err() != nil:
				case err != nil:
					badFetches = append(badFetches, fmt.Sprintf("%s at %s: %v", a.id, now.Format(time.StampMilli), err))
				default:
					leaf := xc.DefaultSVID().Certificates[0]
					if now.Before(leaf.NotBefore) || now.After(leaf.NotAfter) {
						badFetches = append(badFetches, fmt.Sprintf("%s at %s: SVID valid %s-%s", a.id, now.Format(time.StampMilli), leaf.NotBefore, leaf.NotAfter))
					}
					serialsSeen[leaf.SerialNumber.String()] = true
				}
				wmu.Unlock()
			}
		}()
	}

	// Load through every replica; a write counts only when acknowledged.
	adminCmd("policy", "apply", "-f", writePolicy(t, 0))
	var oc struct {
		ID     string `json:"client_id"`
		Secret string `json:"client_secret"`
	}
	if err := json.Unmarshal([]byte(adminCmd("oauth", "client", "create", "--name", "chaos", "--grant", "client_credentials",
		"--audience", "orders", "-o", "json")), &oc); err != nil {
		t.Fatal(err)
	}
	var (
		lmu        sync.Mutex
		ackEntries []string
		ackRevoked []string
		ackPolicy  uint64
		ackJTIs    []string
		attempts   atomic.Int64
	)
	wg.Add(1)
	go func() {
		defer wg.Done()
		for n := 1; ctx.Err() == nil; n++ {
			i := rand.N(len(rs.addrs))
			attempts.Add(1)
			switch n % 4 {
			case 0:
				var res struct {
					Version uint64 `json:"version"`
				}
				req := map[string]any{"files": []map[string]string{{"name": "p.yaml", "content": policyDoc(n)}}}
				if rs.admin(i, "POST", "/v1/admin/policies", req, &res) {
					lmu.Lock()
					ackPolicy = max(ackPolicy, res.Version)
					lmu.Unlock()
				}
			case 1:
				id := fmt.Sprintf("spiffe://e2e.test/ns/chaos/sa/revoked-%d", n)
				if rs.admin(i, "POST", "/v1/admin/revocations", map[string]any{"spiffe_id": id, "reason": "chaos", "force": true}, nil) {
					lmu.Lock()
					ackRevoked = append(ackRevoked, id)
					lmu.Unlock()
				}
			case 2:
				if jti, ok := issueToken(rs, i, oc.ID, oc.Secret); ok {
					lmu.Lock()
					ackJTIs = append(ackJTIs, jti)
					lmu.Unlock()
				}
			default:
				var e struct {
					ID string `json:"id"`
				}
				req := map[string]any{"spiffe_id": fmt.Sprintf("spiffe://e2e.test/ns/chaos/sa/load-%d", n), "parent_id": "spiffe://e2e.test/agent/elsewhere",
					"selectors": []map[string]string{{"type": "unix", "value": fmt.Sprintf("uid:%d", n)}}}
				if rs.admin(i, "POST", "/v1/admin/entries", req, &e) {
					lmu.Lock()
					ackEntries = append(ackEntries, e.ID)
					lmu.Unlock()
				}
			}
			time.Sleep(40 * time.Millisecond)
		}
	}()

	// convergence measures how long after at every node has acknowledged
	// a change made on a live replica right then.
	convergence := func(live int, at time.Time) time.Duration {
		// A revocation: every node must apply it.
		marker := map[string]any{"spiffe_id": fmt.Sprintf("spiffe://e2e.test/ns/chaos/sa/marker-%d", at.UnixNano()), "reason": "marker", "force": true}
		if !rs.admin(live, "POST", "/v1/admin/revocations", marker, nil) {
			t.Fatalf("marker change through replica %d refused", live)
		}
		var want uint64
		deadline := time.Now().Add(30 * time.Second)
		for {
			var nodes []struct {
				SPIFFEID string `json:"spiffe_id"`
				Acked    uint64 `json:"acked_version"`
				Required uint64 `json:"required_version"`
				InSync   bool   `json:"in_sync"`
			}
			if rs.admin(live, "GET", "/v1/admin/nodes", nil, &nodes) {
				if want == 0 {
					for _, n := range nodes {
						want = max(want, n.Required)
					}
				}
				all := len(nodes) == len(clients)
				for _, n := range nodes {
					all = all && n.Acked >= want
				}
				if all && want > 0 {
					return time.Since(at)
				}
			}
			if time.Now().After(deadline) {
				t.Fatalf("nodes did not converge within 30s of %s: %+v", at.Format(time.StampMilli), nodes)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}

	time.Sleep(3 * time.Second) // steady state
	type kill struct {
		replica int
		at      time.Time
		how     string
	}
	// busiest is the replica among alive serving the most clients.
	busiest := func(alive []int) (int, int) {
		count := map[int]int{}
		for _, c := range clients {
			for _, i := range alive {
				if serverAt(streamEvents(c.out.String()), time.Now()) == rs.addrs[i] {
					count[i]++
				}
			}
		}
		victim := alive[0]
		for _, i := range alive {
			if count[i] > count[victim] {
				victim = i
			}
		}
		if count[victim] == 0 {
			t.Fatalf("no client on any live replica: %v", count)
		}
		return victim, count[victim]
	}
	var kills []kill
	alive := []int{0, 1, 2}
	for range 2 {
		victim, n := busiest(alive)
		alive = slices.DeleteFunc(alive, func(i int) bool { return i == victim })
		at := time.Now()
		rs.procs[victim].kill()
		kills = append(kills, kill{victim, at, "SIGKILL"})
		t.Logf("SIGKILL replica %d (%s, %d clients) at %s; every node acknowledged a change made after it within %s", victim, rs.addrs[victim],
			n, at.Format(time.StampMilli), convergence(alive[0], at).Round(time.Millisecond))
		time.Sleep(3 * time.Second)
	}
	restartAt := time.Now()
	for _, k := range kills {
		rs.start(k.replica)
	}
	t.Logf("killed replicas restarted in %s; every node acknowledged a change made through one of them within %s", time.Since(restartAt).Round(time.Millisecond),
		convergence(kills[0].replica, time.Now()).Round(time.Millisecond))
	time.Sleep(2 * time.Second)

	// A hung host: SIGSTOP keeps the replica's connections open and
	// silent. Its clients must notice by the missing heartbeats.
	frozen, n := busiest([]int{0, 1, 2})
	at := time.Now()
	rs.procs[frozen].cmd.Process.Signal(syscall.SIGSTOP)
	kills = append(kills, kill{frozen, at, "SIGSTOP"})
	t.Logf("SIGSTOP replica %d (%s, %d clients) at %s; every node acknowledged a change made after it within %s", frozen, rs.addrs[frozen],
		n, at.Format(time.StampMilli), convergence((frozen+1)%3, at).Round(time.Millisecond))
	time.Sleep(2 * time.Second)
	rs.procs[frozen].cmd.Process.Signal(syscall.SIGCONT)
	time.Sleep(time.Second)
	cancel()
	wg.Wait()

	// Every client on a killed or hung replica was on another within 2 s.
	for _, k := range kills {
		for _, c := range clients {
			evs := streamEvents(c.out.String())
			if serverAt(evs, k.at) != rs.addrs[k.replica] {
				continue
			}
			next, ok := firstAfter(evs, k.at)
			if !ok {
				t.Errorf("%s never reconnected after %s of replica %d", c.name, k.how, k.replica)
				continue
			}
			d := next.Time.Sub(k.at)
			t.Logf("%s: %s of replica %d, on %s after %s (resumed %v)", c.name, k.how, k.replica, next.Server, d.Round(time.Millisecond), next.Resumed)
			if d > 2*time.Second || next.Server == rs.addrs[k.replica] {
				t.Errorf("%s: on %s %s after %s of replica %d, want another within 2s", c.name, next.Server, d, k.how, k.replica)
			}
			if !next.Resumed {
				t.Errorf("%s: the stream after the failover did not resume (a full snapshot)", c.name)
			}
		}
	}

	// Workloads held valid SVIDs throughout, renewed along the way.
	wmu.Lock()
	t.Logf("%d workload fetches, %d distinct SVIDs, %d admin writes attempted", fetches, len(serialsSeen), attempts.Load())
	if len(badFetches) > 0 {
		t.Errorf("%d fetches without a valid SVID, first: %s", len(badFetches), badFetches[0])
	}
	if len(serialsSeen) < 2*len(agents) {
		t.Errorf("only %d SVIDs seen: workload SVIDs did not renew through the failovers", len(serialsSeen))
	}
	wmu.Unlock()

	// Nothing acknowledged is missing.
	db, err := store.OpenWith(context.Background(), rs.dsn, store.OpenOptions{ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	lmu.Lock()
	defer lmu.Unlock()
	t.Logf("acknowledged: %d entries, %d revocations, %d tokens, policy version %d", len(ackEntries), len(ackRevoked), len(ackJTIs), ackPolicy)
	if len(ackEntries) == 0 || len(ackRevoked) == 0 || len(ackJTIs) == 0 || ackPolicy == 0 {
		t.Fatal("the load acknowledged nothing of some kind")
	}
	for _, id := range ackEntries {
		if _, err := db.Entry(context.Background(), id); err != nil {
			t.Errorf("acknowledged entry %s: %v", id, err)
		}
	}
	for _, id := range ackRevoked {
		if ok, err := db.IsRevokedID(context.Background(), id); err != nil || !ok {
			t.Errorf("acknowledged revocation of %s missing (%v)", id, err)
		}
	}
	if v, err := db.CurrentPolicyVersion(context.Background(), db.SQL()); err != nil || v < ackPolicy {
		t.Errorf("policy version %d after acknowledging %d (%v)", v, ackPolicy, err)
	}
	var issued []string
	rows, err := db.SQL().Query("SELECT details FROM audit_log WHERE kind = 'oauth.token.issued'")
	if err != nil {
		t.Fatal(err)
	}
	for rows.Next() {
		var d string
		rows.Scan(&d)
		issued = append(issued, d)
	}
	rows.Close()
	all := strings.Join(issued, "\n")
	for _, jti := range ackJTIs {
		if !strings.Contains(all, `"jti":"`+jti+`"`) {
			t.Errorf("token %s was issued without its audit record", jti)
		}
	}
	out, err := exec.Command(bin, "audit", "verify", "--store", rs.dsn).CombinedOutput()
	if err != nil || !strings.Contains(string(out), "verifies") {
		t.Errorf("audit verify after the chaos: %v\n%s", err, out)
	}
	t.Logf("%s", bytes.TrimSpace(out))
}

func policyDoc(n int) string {
	nss := []string{"chaos", "prod", "ops"}
	return fmt.Sprintf(`apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: chaos, namespace: chaos}
spec:
  selector: {matchLabels: {app: s0}}
  rules:
  - from: [{source: {namespaces: [%s]}}]
    to: [{operation: {ports: ["%d"]}}]
`, nss[n%len(nss)], 8000+n%1000)
}

func writePolicy(t *testing.T, n int) string {
	p := filepath.Join(t.TempDir(), "policy.yaml")
	if err := os.WriteFile(p, []byte(policyDoc(n)), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// issueToken gets a client-credentials token from replica i's token
// endpoint and returns its jti.
func issueToken(rs *replicaSet, i int, id, secret string) (string, bool) {
	req, _ := http.NewRequest("POST", "https://"+rs.addrs[i]+"/oauth2/token", strings.NewReader(url.Values{"grant_type": {"client_credentials"}}.Encode()))
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	req.SetBasicAuth(id, secret)
	resp, err := rs.https.Do(req)
	if err != nil {
		return "", false
	}
	defer resp.Body.Close()
	var tok struct {
		AccessToken string `json:"access_token"`
	}
	if resp.StatusCode != 200 || json.NewDecoder(resp.Body).Decode(&tok) != nil {
		return "", false
	}
	parts := strings.Split(tok.AccessToken, ".")
	if len(parts) != 3 {
		return "", false
	}
	payload, err := base64.RawURLEncoding.DecodeString(parts[1])
	if err != nil {
		return "", false
	}
	var claims struct {
		JTI string `json:"jti"`
	}
	if json.Unmarshal(payload, &claims) != nil || claims.JTI == "" {
		return "", false
	}
	return claims.JTI, true
}
