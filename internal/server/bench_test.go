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

	"github.com/moatless/moatless/internal/config"
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
			// One node signs far more than its default budget here.
			e := startTB(b, "", func(c *server.Config) { c.X509SVIDBurst, c.X509SVIDRate = 1<<30, 1e9 })
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
			cpu0 := cpuTime()
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				e.adminB(b, "POST", server.PathAdminRevocations, server.RevokeRequest{SPIFFEID: fmt.Sprintf("spiffe://example.org/gone/%d", i), Force: true}, nil)
				for _, ch := range chans {
					for u := range ch {
						if u.Revocations != nil {
							break
						}
					}
				}
			}
			b.ReportMetric(float64(b.Elapsed().Milliseconds())/float64(b.N), "ms/fanout")
			// CPU per fan-out (server and streams' clients, all in this
			// process) is robust against a busy machine.
			b.ReportMetric(float64((cpuTime()-cpu0).Microseconds())/1000/float64(b.N), "cpu-ms/fanout")
		})
	}
}

// BenchmarkAuditReport measures decision reports end to end through the
// agent API: mTLS with a node SVID, strict decoding and validation of every
// event, the per-node budget, and one group commit of the audit records
// (fsynced SQLite) before the 204. events is the events per report (the
// sidecar sends up to wire.MaxAuditEvents). Reports events/s.
func BenchmarkAuditReport(b *testing.B) {
	for _, events := range []int{1, wire.MaxAuditEvents} {
		b.Run(fmt.Sprintf("events=%d", events), func(b *testing.B) {
			e := startTB(b, "", nil, func(c *config.Server) { c.AuditReportRate, c.AuditReportBurst = 100_000, 1_000_000 })
			n := e.attestB(b, "spiffe://example.org/sidecar/bench")
			r := wire.AuditReport{Events: make([]wire.AuditEvent, events)}
			for i := range r.Events {
				r.Events[i] = denyEvent("/api/orders")
			}
			body, _ := json.Marshal(r)
			client := e.client(n.cert())
			b.ResetTimer()
			for b.Loop() {
				e.clock.Add(10 * time.Millisecond) // refills 1,000 events of budget: this measures the path, not the limit
				req, _ := http.NewRequest("POST", "https://"+e.addr+wire.PathAudit, bytes.NewReader(body))
				resp, err := client.Do(req)
				if err != nil {
					b.Fatal(err)
				}
				io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				if resp.StatusCode != 204 {
					b.Fatalf("status %d", resp.StatusCode)
				}
			}
			b.ReportMetric(float64(b.N*events)/b.Elapsed().Seconds(), "events/s")
		})
	}
}
