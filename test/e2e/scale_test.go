package e2e

import (
	"bufio"
	"bytes"
	"cmp"
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"net/http"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

// TestScaleWatchClients connects many lightweight watch clients (each its
// own TLS connection and stream, as a sidecar would have) spread over
// three replicas, reports the servers' memory per connected client, then
// applies a policy through one replica and reports how long until each
// client had it (p50, p99, max). 300 clients by default;
// MOATLESS_SCALE_CLIENTS=10000 is the run in docs/benchmarks.md.
func TestScaleWatchClients(t *testing.T) {
	if testing.Short() {
		t.Skip("starts three servers")
	}
	n := 300
	if v := os.Getenv("MOATLESS_SCALE_CLIENTS"); v != "" {
		var err error
		if n, err = strconv.Atoi(v); err != nil || n < 1 {
			t.Fatalf("MOATLESS_SCALE_CLIENTS=%q", v)
		}
	}
	const identities = 100 // node identities the clients share (streams per node are independent)
	// GOGC=10 (the default here): the heap in use stays within a tenth
	// of the live heap, so its growth is what the clients hold, not
	// uncollected garbage. MOATLESS_SCALE_GOGC=100 runs the servers as
	// deployed, for the push latency: GOGC=10 spends a good part of
	// their CPU collecting.
	gogc := cmp.Or(os.Getenv("MOATLESS_SCALE_GOGC"), "10")
	if _, err := strconv.Atoi(gogc); err != nil && gogc != "off" {
		t.Fatalf("MOATLESS_SCALE_GOGC=%q", gogc)
	}
	rs := startReplicasEnv(t, 3, []string{"GOGC=" + gogc})
	pool := x509.NewCertPool()
	b, _ := os.ReadFile(rs.bundle)
	pool.AppendCertsFromPEM(b)

	// Node identities, attested through the agent API.
	certs := make([]tls.Certificate, identities)
	for i := range identities {
		id := fmt.Sprintf("spiffe://e2e.test/agent/scale-%d", i)
		var tok struct {
			Token string `json:"token"`
		}
		if !rs.admin(i%3, "POST", "/v1/admin/jointokens", map[string]string{"spiffe_id": id}, &tok) {
			t.Fatal("join token")
		}
		certs[i] = attestJoin(t, rs.https, rs.addrs[i%3], id, tok.Token)
	}

	rss := func() (total int64) {
		for _, p := range rs.procs {
			b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", p.cmd.Process.Pid))
			if err != nil {
				t.Fatal(err)
			}
			for _, line := range strings.Split(string(b), "\n") {
				if strings.HasPrefix(line, "VmRSS:") {
					kb, _ := strconv.ParseInt(strings.Fields(line)[1], 10, 64)
					total += kb << 10
				}
			}
		}
		return total
	}
	// Go heap in use and goroutines, summed over the replicas (their
	// /metrics).
	goStats := func() (heap, goroutines float64) {
		for _, a := range rs.addrs {
			resp, err := rs.https.Get("https://" + a + "/metrics")
			if err != nil {
				t.Fatal(err)
			}
			sc := bufio.NewScanner(resp.Body)
			for sc.Scan() {
				f := strings.Fields(sc.Text())
				if len(f) != 2 {
					continue
				}
				v, _ := strconv.ParseFloat(f[1], 64)
				switch f[0] {
				case "go_memstats_heap_inuse_bytes":
					heap += v
				case "go_goroutines":
					goroutines += v
				}
			}
			resp.Body.Close()
		}
		return heap, goroutines
	}
	// The low point over a few samples, between collections.
	liveHeap := func() (heap, goroutines float64) {
		heap = -1
		for range 5 {
			h, g := goStats()
			if heap < 0 || h < heap {
				heap = h
			}
			goroutines = g
			time.Sleep(200 * time.Millisecond)
		}
		return heap, goroutines
	}
	before := rss()
	heapBefore, grBefore := liveHeap()

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var (
		mu      sync.Mutex
		seenAt  = make([]time.Time, n)
		wantVer atomic.Uint64
		wg      sync.WaitGroup
	)
	start := time.Now()
	streams := watchClients(ctx, t, &wg, n, 64, rs.addrs, pool, certs, func(c int, line []byte) {
		// A policy update names its version first: no JSON decoding of
		// every heartbeat by ten thousand clients.
		if w := wantVer.Load(); w > 0 && bytes.Contains(line, []byte(`"policies":{"version":`+strconv.FormatUint(w, 10)+`,`)) {
			mu.Lock()
			if seenAt[c].IsZero() {
				seenAt[c] = time.Now()
			}
			mu.Unlock()
		}
	})
	streams.waitConnected(t, 10*time.Minute, n)
	connectTime := time.Since(start)
	heapAfter, grAfter := liveHeap()
	after := rss()
	// The steady cost of the connected clients (heartbeats, mostly): CPU
	// of the servers and of this process, the clients, over a window.
	const window = 3 * time.Second
	srv0, self0 := serversCPU(t, rs.procs), selfCPU()
	time.Sleep(window)
	srvIdle, selfIdle := serversCPU(t, rs.procs)-srv0, selfCPU()-self0
	t.Logf("%d clients on 3 replicas connected in %s (%d connects retried); per client on the servers (GOGC=%s): %.1f KiB RSS (%d -> %d MiB), %.1f KiB Go heap in use, %.1f goroutines",
		n, connectTime.Round(time.Millisecond), streams.retries.Load(), gogc, float64(after-before)/float64(n)/1024, before>>20, after>>20,
		(heapAfter-heapBefore)/float64(n)/1024, (grAfter-grBefore)/float64(n))
	t.Logf("idle (heartbeats): servers %.0f ms CPU/s, clients %.0f ms CPU/s", float64(srvIdle.Milliseconds())/window.Seconds(), float64(selfIdle.Milliseconds())/window.Seconds())

	// A policy applied through replica 0 reaches every client.
	var cur struct {
		Version uint64 `json:"version"`
	}
	rs.admin(0, "GET", "/v1/admin/policies", nil, &cur)
	wantVer.Store(cur.Version + 1)
	req := map[string]any{"files": []map[string]string{{"name": "p.yaml", "content": policyDoc(1)}}}
	srv0, self0 = serversCPU(t, rs.procs), selfCPU()
	t0 := time.Now()
	var res struct {
		Version uint64 `json:"version"`
	}
	if !rs.admin(0, "POST", "/v1/admin/policies", req, &res) || res.Version != cur.Version+1 {
		t.Fatalf("apply: %+v", res)
	}
	applied := time.Since(t0)
	waitFor(t, 5*time.Minute, "every client to get the policy", func() bool {
		if streams.ended.Load() > 0 {
			t.Fatalf("%d watch streams ended before the policy reached them", streams.ended.Load())
		}
		mu.Lock()
		defer mu.Unlock()
		return !slices.ContainsFunc(seenAt, time.Time.IsZero)
	})
	srvPush, selfPush := serversCPU(t, rs.procs)-srv0, selfCPU()-self0
	mu.Lock()
	lat := make([]time.Duration, n)
	for i, at := range seenAt {
		lat[i] = at.Sub(t0)
	}
	mu.Unlock()
	slices.Sort(lat)
	q := func(p float64) time.Duration { return lat[min(n-1, int(p*float64(n)))].Round(time.Millisecond) }
	t.Logf("policy push to %d clients: p50 %s, p99 %s, max %s (first %s, the apply answered after %s); CPU during it: servers %s, clients %s",
		n, q(0.5), q(0.99), lat[n-1].Round(time.Millisecond), lat[0].Round(time.Millisecond), applied.Round(time.Millisecond),
		srvPush.Round(time.Millisecond), selfPush.Round(time.Millisecond))
	cancel()
	wg.Wait()
}

// watchStreams counts watch clients' streams: connected is how many had
// their first update, ended how many ended before the test cancelled
// them (a connect that failed every attempt, or a stream the server
// dropped), retries how many connects were tried again.
type watchStreams struct{ connected, ended, retries atomic.Int64 }

// waitConnected waits until every one of n streams either connected or
// ended, and fails the test at once if any ended: one lost client would
// otherwise keep the caller waiting for its full timeout.
func (ws *watchStreams) waitConnected(t *testing.T, d time.Duration, n int) {
	t.Helper()
	waitFor(t, d, fmt.Sprintf("%d watch streams", n), func() bool { return ws.connected.Load()+ws.ended.Load() >= int64(n) })
	if e := ws.ended.Load(); e > 0 {
		t.Fatalf("%d of %d watch streams ended before all connected (%d connects retried)", e, n, ws.retries.Load())
	}
}

// watchConnectAttempts is how often a watch client tries to connect, as
// a sidecar retries: at thousands of connections on two cores, a TLS
// handshake can outlast the server's 10 s ReadHeaderTimeout.
const watchConnectAttempts = 3

// watchClients opens n watch streams, stream c to addrs[c%len(addrs)] as
// certs[c%len(certs)], each on its own TLS connection (as a sidecar
// would have), at most inflight connecting at once; onLine gets every
// line stream c reads. The streams end with ctx; wg waits for them.
func watchClients(ctx context.Context, t *testing.T, wg *sync.WaitGroup, n, inflight int, addrs []string, pool *x509.CertPool, certs []tls.Certificate, onLine func(c int, line []byte)) *watchStreams {
	ws := new(watchStreams)
	sem := make(chan struct{}, inflight)
	for c := range n {
		sem <- struct{}{}
		wg.Add(1)
		go func() {
			defer wg.Done()
			tr := &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool, Certificates: []tls.Certificate{certs[c%len(certs)]}},
				ForceAttemptHTTP2: true, ReadBufferSize: 4 << 10, WriteBufferSize: 4 << 10}
			defer tr.CloseIdleConnections()
			var resp *http.Response
			var err error
			for attempt := range watchConnectAttempts {
				if attempt > 0 {
					ws.retries.Add(1)
				}
				req, _ := http.NewRequestWithContext(ctx, "GET", "https://"+addrs[c%len(addrs)]+"/v1/agent/watch", nil)
				if resp, err = (&http.Client{Transport: tr}).Do(req); err == nil && resp.StatusCode != 200 {
					resp.Body.Close()
					err = fmt.Errorf("status %d", resp.StatusCode)
				}
				if err == nil || ctx.Err() != nil {
					break
				}
			}
			<-sem
			if err != nil {
				if ctx.Err() == nil {
					ws.ended.Add(1)
					t.Errorf("watch client %d: %v", c, err)
				}
				return
			}
			defer resp.Body.Close()
			r := bufio.NewReaderSize(resp.Body, 4<<10)
			first := true
			for {
				line, err := r.ReadBytes('\n')
				if err != nil {
					if ctx.Err() == nil {
						ws.ended.Add(1)
						t.Errorf("watch client %d: stream ended: %v", c, err)
					}
					return
				}
				if first {
					first = false
					ws.connected.Add(1)
				}
				onLine(c, line)
			}
		}()
	}
	return ws
}

// serversCPU is the user+system CPU time the processes used so far
// (/proc/PID/stat, in clock ticks of 10 ms).
func serversCPU(t *testing.T, procs []*proc) (total time.Duration) {
	t.Helper()
	for _, p := range procs {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", p.cmd.Process.Pid))
		if err != nil {
			t.Fatal(err)
		}
		// The fields after the command name, which is in parentheses
		// and may contain spaces: utime and stime are the 12th and 13th.
		f := strings.Fields(string(b[bytes.LastIndexByte(b, ')')+1:]))
		for _, v := range f[11:13] {
			ticks, err := strconv.ParseInt(v, 10, 64)
			if err != nil {
				t.Fatalf("/proc/%d/stat: %v", p.cmd.Process.Pid, err)
			}
			total += time.Duration(ticks) * 10 * time.Millisecond
		}
	}
	return total
}

// selfCPU is the user+system CPU time of this process.
func selfCPU() time.Duration {
	var ru syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
