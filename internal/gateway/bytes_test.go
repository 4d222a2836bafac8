package gateway

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"io"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/moatless/moatless/internal/config"
	"github.com/moatless/moatless/internal/proxy"
	"github.com/moatless/moatless/internal/proxy/proxytest"
	"github.com/moatless/moatless/internal/testpki"
	"github.com/moatless/moatless/internal/wire"
)

// An aborted forward counts the request body bytes the gateway read, in
// the traffic record and the access log's request_bytes, on both HTTP/1.1
// server paths: the upstream failing midway through its answer after it
// read the whole body (small, read whole for the WAF, and streamed), the
// client going away midway through its body, and a chunked body cut off
// at max_body_bytes. Before, the upstream's failure aborted the handler
// before the forwarder's count reached the record: it said 0.
func TestGatewayCountsBytesOfAbortedForward(t *testing.T) {
	ca := testpki.NewCA(t, td)
	up := startUpstream(t, ca, ordersID, proxytest.EarlyApp(t))
	const limit = 256 << 10
	cases := []struct {
		name, path string
		// head is the request's head and body what the client sends of
		// its body; then it reads what comes (but client_gone) and
		// closes.
		head     string
		body     string
		min, max int64 // the body bytes counted
	}{
		{name: "upstream_fails_small_body", path: "/orders/small/abort",
			head: "POST /orders/small/abort HTTP/1.1\r\nHost: localhost\r\nContent-Length: 1000\r\n\r\n",
			body: strings.Repeat("a", 1000), min: 1000, max: 1000},
		{name: "upstream_fails_streamed_body", path: "/orders/large/abort",
			head: "POST /orders/large/abort HTTP/1.1\r\nHost: localhost\r\nContent-Length: 204800\r\n\r\n",
			body: strings.Repeat("a", 200<<10), min: 200 << 10, max: 200 << 10},
		{name: "client_gone", path: "/orders/gone",
			head: "POST /orders/gone HTTP/1.1\r\nHost: localhost\r\nContent-Length: 262144\r\n\r\n",
			body: strings.Repeat("a", 200<<10), min: 1, max: 200 << 10},
		{name: "chunked_over_limit", path: "/orders/chunked",
			head: "POST /orders/chunked HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\n\r\n",
			body: strings.Repeat(strconv.FormatInt(16<<10, 16)+"\r\n"+strings.Repeat("c", 16<<10)+"\r\n", 20) + "0\r\n\r\n",
			min:  limit / 2, max: limit},
	}
	for _, fast := range []bool{true, false} {
		el := newEdgeLog(t)
		tg := startGatewayWith(t, ca, up, func(c *config.Gateway) {
			c.DisableHTTP1FastPath = !fast
			c.Limits.MaxBodyBytes = limit
		}, func(o *Options) { o.Recorder = el.rec })
		for _, tc := range cases {
			t.Run(ownPath(fast)+"_"+tc.name, func(t *testing.T) {
				c, err := tls.Dial("tcp", tg.addr, &tls.Config{RootCAs: tg.ca.Pool(), ServerName: "localhost", NextProtos: []string{"http/1.1"}})
				if err != nil {
					t.Fatal(err)
				}
				c.SetDeadline(time.Now().Add(5 * time.Second))
				io.WriteString(c, tc.head+tc.body)
				if tc.name != "client_gone" {
					io.Copy(io.Discard, c)
				}
				c.Close()
				// The access log line is written when the request ends.
				var line struct {
					RequestBytes *int64 `json:"request_bytes"`
				}
				deadline := time.Now().Add(5 * time.Second)
				for found := false; !found; {
					for _, l := range strings.Split(tg.access.String(), "\n") {
						if strings.Contains(l, `"path":"`+tc.path+`"`) {
							if err := json.Unmarshal([]byte(l), &line); err != nil {
								t.Fatal(err)
							}
							found = true
						}
					}
					if !found && time.Now().After(deadline) {
						t.Fatalf("no access log line for %s:\n%s", tc.path, tg.access.String())
					}
					time.Sleep(5 * time.Millisecond)
				}
				if line.RequestBytes == nil {
					t.Errorf("access log line without request_bytes")
				} else if n := *line.RequestBytes; n < tc.min || n > tc.max {
					t.Errorf("access log request_bytes %d, want %d to %d", n, tc.min, tc.max)
				}
				var got []uint64
				for _, e := range el.take(t) {
					if strings.HasPrefix(tc.path, strings.TrimSuffix(e.Path, "{*}")) || e.Path == tc.path {
						got = append(got, e.ReqBytes)
					}
				}
				if len(got) != 1 || got[0] < uint64(tc.min) || got[0] > uint64(tc.max) {
					t.Errorf("traffic record request bytes %v, want one of %d to %d", got, tc.min, tc.max)
				}
			})
		}
	}
}

// edgeLog is a gateway's traffic recorder (rec, for Options.Recorder)
// whose reports a test reads.
type edgeLog struct {
	rec   *proxy.Recorder
	mu    sync.Mutex
	edges []wire.EdgeRecord
}

func newEdgeLog(t testing.TB) *edgeLog {
	t.Helper()
	l := &edgeLog{}
	rec, err := proxy.NewRecorder(proxy.RecorderConfig{Component: "gateway", Logger: discard(), Send: func(_ context.Context, r *wire.RecordReport) error {
		l.mu.Lock()
		l.edges = append(l.edges, r.Edges...)
		l.mu.Unlock()
		return nil
	}})
	if err != nil {
		t.Fatal(err)
	}
	l.rec = rec
	return l
}

// take flushes the recorder and returns the edges reported since the
// last take.
func (l *edgeLog) take(t testing.TB) []wire.EdgeRecord {
	t.Helper()
	if err := l.rec.Flush(context.Background()); err != nil {
		t.Fatal(err)
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	e := l.edges
	l.edges = nil
	return e
}
