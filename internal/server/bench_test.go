package server_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"syscall"
	"testing"
	"time"

	"github.com/moatless/moatless/internal/server"
	"github.com/moatless/moatless/internal/wire"
)

// BenchmarkSignX509 measures X509-SVID issuance end to end through the
// server's agent API: mTLS with a node SVID, JSON decode, node and entry
// checks, CA signing, the group-committed certificate and audit records
// (fsynced SQLite), and the JSON answer. batch is the CSRs per request
// (agents batch them). Reports svids/s.
func BenchmarkSignX509(b *testing.B) {
	for _, bc := range []struct{ batch, clients int }{{1, 1}, {1, 32}, {32, 1}, {32, 32}} {
		batch := bc.batch
		b.Run(fmt.Sprintf("batch=%d/clients=%dxGOMAXPROCS", bc.batch, bc.clients), func(b *testing.B) {
			e := startB(b)
			n := e.attestB(b, "spiffe://example.org/agent/bench")
			var ent wire.Entry
			e.adminB(b, "POST", server.PathAdminEntries, entryReq(n.id, "spiffe://example.org/bench/w", "unix:uid:1"), &ent)
			csrDER := csr(b, newKey(b))
			reqs := make([]wire.X509SVIDRequest, batch)
			for i := range reqs {
				reqs[i] = wire.X509SVIDRequest{EntryID: ent.ID, CSR: csrDER}
			}
			body, _ := json.Marshal(wire.SignX509Request{Requests: reqs})
			b.SetParallelism(bc.clients)
			cpu0 := cpuTime()
			b.ResetTimer()
			b.RunParallel(func(pb *testing.PB) {
				client := e.client(n.cert()) // one connection per goroutine
				for pb.Next() {
					req, _ := http.NewRequest("POST", "https://"+e.addr+wire.PathSignX509, bytes.NewReader(body))
					req.Header.Set("Content-Type", "application/json")
					resp, err := client.Do(req)
					if err != nil {
						b.Error(err)
						return
					}
					io.Copy(io.Discard, resp.Body)
					resp.Body.Close()
					if resp.StatusCode != 200 {
						b.Errorf("status %d", resp.StatusCode)
						return
					}
				}
			})
			b.StopTimer()
			b.ReportMetric(float64(b.N*batch)/b.Elapsed().Seconds(), "svids/s")
			// CPU per SVID is robust against a busy machine; it includes
			// the client's side (TLS, JSON) running in this process too.
			b.ReportMetric(float64((cpuTime()-cpu0).Microseconds())/float64(b.N*batch), "cpu-µs/svid")
		})
	}
}

// cpuTime is the user+system CPU time of this process.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// BenchmarkWatchFanout measures how long a revocation takes to reach every
// open watch stream: from the admin call's start until each of N streams
// has received the update. Reports ms per fan-out.
func BenchmarkWatchFanout(b *testing.B) {
	for _, n := range []int{10, 100} {
		b.Run(fmt.Sprintf("streams=%d", n), func(b *testing.B) {
			e := startB(b)
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			chans := make([]<-chan wire.Update, n)
			for i := range chans {
				node := e.attestB(b, fmt.Sprintf("spiffe://example.org/agent/f%d", i))
				chans[i] = e.watch(ctx, node)
				for u := range chans[i] { // the first, full update
					if !u.Heartbeat {
						break
					}
				}
			}
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				e.adminB(b, "POST", server.PathAdminRevocations, server.RevokeRequest{SPIFFEID: fmt.Sprintf("spiffe://example.org/gone/%d", i)}, nil)
				for _, ch := range chans {
					for u := range ch {
						if u.Revocations != nil {
							break
						}
					}
				}
			}
			b.ReportMetric(float64(b.Elapsed().Milliseconds())/float64(b.N), "ms/fanout")
		})
	}
}
