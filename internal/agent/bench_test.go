package agent

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/moatless/moatless/internal/wire"
)

// vmRSS returns this process's resident set size in bytes.
func vmRSS(tb testing.TB) float64 {
	f, err := os.Open("/proc/self/status")
	if err != nil {
		tb.Skip("no /proc")
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), "VmRSS:"); ok {
			kb, _ := strconv.ParseFloat(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 64)
			return kb * 1024
		}
	}
	return 0
}

// BenchmarkCacheSync300 measures signing a full set of 300 workload SVIDs
// (key generation, CSR, server round trip over mTLS, verification) and
// reports the process RSS with those 300 SVIDs cached.
func BenchmarkCacheSync300(b *testing.B) {
	const n = 300
	f := newFakeServerTB(b)
	f.tokens["t"] = nodeID
	for i := range n {
		f.entries = append(f.entries, wire.Entry{ID: fmt.Sprintf("e%d", i), SPIFFEID: fmt.Sprintf("spiffe://example.org/w/%d", i),
			ParentID: nodeID, X509TTL: wire.Duration(time.Hour), Selectors: []wire.Selector{{Type: "unix", Value: fmt.Sprintf("uid:%d", 1000+i)}}})
	}
	node, err := NewNode(NodeConfig{ServerAddr: f.addr(), TrustBundle: f.trust(), JoinToken: "t", Logger: quiet()})
	if err != nil {
		b.Fatal(err)
	}
	if err := node.Attest(context.Background()); err != nil {
		b.Fatal(err)
	}
	var c *Cache
	for b.Loop() {
		c = newCache(node, CacheConfig{Logger: quiet()})
		c.SetBundle(f.bundle())
		c.SetEntries(f.entries)
		c.syncOnce(context.Background())
		if c.Served() != n {
			b.Fatalf("%d SVIDs cached, want %d", c.Served(), n)
		}
	}
	runtime.GC()
	b.ReportMetric(vmRSS(b)/(1<<20), "RSS-MiB")
	b.ReportMetric(float64(b.Elapsed().Microseconds())/float64(b.N)/n, "µs/SVID")
}
