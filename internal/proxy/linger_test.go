package proxy

import (
	"io"
	"net"
	"strings"
	"testing"
	"time"
)

// A lingering close half-closes the connection at once (the peer reads
// its end) and ends on the first of its bounds: the peer closing, the
// peer quiet for the idle bound, the total bound with the peer still
// sending, or the byte cap; it then closes the connection.
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
	}{
		{name: "peer_closes", peer: func(c net.Conn) { c.Close() }, maxBytes: 1 << 20, within: idle},
		{name: "peer_quiet", peer: func(net.Conn) {}, maxBytes: 1 << 20, after: idle, within: total},
		{name: "peer_sends_on", peer: func(c net.Conn) {
			for {
				if _, err := c.Write([]byte("x")); err != nil {
					return
				}
				time.Sleep(idle / 10) // the peer's pace: never quiet for idle
			}
		}, maxBytes: 1 << 20, after: total, within: 5 * total},
		{name: "byte_cap", peer: func(c net.Conn) {
			b := []byte(strings.Repeat("x", 4096))
			for {
				if _, err := c.Write(b); err != nil {
					return
				}
			}
		}, maxBytes: 64 << 10, within: total},
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
			start := time.Now()
			go func() {
				lingerClose(srv, 0, tc.maxBytes, idle, total)
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
