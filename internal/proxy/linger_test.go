package proxy

import (
	"io"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

// A lingering close half-closes the connection at once (the peer reads
// its end) and ends on the first of its bounds: the peer closing, the
// peer quiet for the idle bound, the total bound with the peer still
// sending, or the byte cap; it then closes the connection and reports
// which it was.
func TestLingerCloseBounds(t *testing.T) {
	const idle, total = 100 * time.Millisecond, 400 * time.Millisecond
	cases := []struct {
		name string
		// peer runs on the client's end after it read the server's
		// half-close; it returns when it stops sending.
		peer     func(c net.Conn)
		maxBytes int64
		// within bounds how long lingerClose may take (generously: a
		// loaded machine), after bounds at least.
		after, within time.Duration
		end           LingerEnd
	}{
		{name: "peer_closes", peer: func(c net.Conn) { c.Close() }, maxBytes: 1 << 20, within: idle, end: LingerClientClosed},
		{name: "peer_quiet", peer: func(net.Conn) {}, maxBytes: 1 << 20, after: idle, within: total, end: LingerIdleTimeout},
		{name: "peer_sends_on", peer: func(c net.Conn) {
			for {
				if _, err := c.Write([]byte("x")); err != nil {
					return
				}
				time.Sleep(idle / 10) // the peer's pace: never quiet for idle
			}
		}, maxBytes: 1 << 20, after: total, within: 5 * total, end: LingerTimeLimit},
		{name: "byte_cap", peer: func(c net.Conn) {
			b := []byte(strings.Repeat("x", 4096))
			for {
				if _, err := c.Write(b); err != nil {
					return
				}
			}
		}, maxBytes: 64 << 10, within: total, end: LingerByteLimit},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			l := listen(t)
			defer l.Close()
			cli, err := net.Dial("tcp", l.Addr().String())
			if err != nil {
				t.Fatal(err)
			}
			defer cli.Close()
			srv, err := l.Accept()
			if err != nil {
				t.Fatal(err)
			}
			done := make(chan time.Duration, 1)
			var end LingerEnd
			start := time.Now()
			go func() {
				end = lingerClose(srv, 0, tc.maxBytes, idle, total)
				done <- time.Since(start)
			}()
			// The half-close comes first: the peer reads its end.
			cli.SetReadDeadline(time.Now().Add(5 * time.Second))
			if n, err := io.Copy(io.Discard, cli); n != 0 || err != nil {
				t.Fatalf("peer read %d bytes, %v; want the server's end", n, err)
			}
			go tc.peer(cli)
			select {
			case d := <-done:
				if d < tc.after || d > tc.within+time.Second {
					t.Fatalf("lingered %v, want between %v and %v", d, tc.after, tc.within)
				}
				if end != tc.end {
					t.Fatalf("ended %v, want %v", end, tc.end)
				}
			case <-time.After(10 * time.Second):
				t.Fatal("lingerClose did not end")
			}
			// The connection is closed: the server's end reads no more.
			if _, err := srv.Read(make([]byte, 1)); err == nil {
				t.Fatal("the connection is still open")
			}
		})
	}
}

// A LingerSet counts its lingering connections while they linger and
// each close by how it ended, and exports both; Close ends the lingering
// ones at once, counted as shutdown, and a connection given to a closed
// set is closed at once, counted as shutdown too.
func TestLingerSetMetrics(t *testing.T) {
	l := listen(t)
	defer l.Close()
	var set LingerSet
	reg := prometheus.NewRegistry()
	reg.MustRegister(set.Collector("moatless_test"))
	// pair returns the server end of a new connection and the client's.
	pair := func() (srv, cli net.Conn) {
		t.Helper()
		cli, err := net.Dial("tcp", l.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { cli.Close() })
		if srv, err = l.Accept(); err != nil {
			t.Fatal(err)
		}
		return srv, cli
	}
	long := LingerBounds{Idle: time.Minute, Total: time.Minute, MaxBytes: 1 << 20}
	closed := make(chan struct{}, 4)
	done := func() { closed <- struct{}{} }
	// One whose client closes, one that reaches its byte cap, two that
	// linger until Close.
	srv, cli := pair()
	set.Linger(srv, 0, long, done)
	cli.Close()
	<-closed
	srv, cli = pair()
	set.Linger(srv, 0, LingerBounds{Idle: time.Minute, Total: time.Minute, MaxBytes: 10}, done)
	cli.Write([]byte(strings.Repeat("x", 100)))
	<-closed
	for range 2 {
		srv, _ := pair()
		set.Linger(srv, 0, long, done)
	}
	if got := set.Lingering(); got != 2 {
		t.Fatalf("lingering now: %v, want 2", got)
	}
	set.Close()
	<-closed
	<-closed
	srv, _ = pair()
	set.Linger(srv, 0, long, done)
	<-closed
	want := `
# HELP moatless_test_lingering_closes_total Lingering closes by how they ended: client_closed, idle_timeout, time_limit, byte_limit, shutdown.
# TYPE moatless_test_lingering_closes_total counter
moatless_test_lingering_closes_total{end="byte_limit"} 1
moatless_test_lingering_closes_total{end="client_closed"} 1
moatless_test_lingering_closes_total{end="idle_timeout"} 0
moatless_test_lingering_closes_total{end="shutdown"} 3
moatless_test_lingering_closes_total{end="time_limit"} 0
# HELP moatless_test_lingering_connections Connections closing lingering now: answered before their request body was read, the client's bytes read and discarded until it closes or a limit.
# TYPE moatless_test_lingering_connections gauge
moatless_test_lingering_connections 0
`
	if err := testutil.GatherAndCompare(reg, strings.NewReader(want)); err != nil {
		t.Fatal(err)
	}
}
