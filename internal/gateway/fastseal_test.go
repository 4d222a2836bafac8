package gateway

import (
	"bytes"
	"crypto/tls"
	"errors"
	"io"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/moatless/moatless/internal/testpki"
)

// TestFastBodySealedAgainstTransport: the fast path's request body is
// read on a goroutine of its own by a transport still sending it upstream
// after the upstream answered early; when the handler returns, the
// connection's serving goroutine seals the body (6019bb0) and reads what
// is left of it, then the next head. The two goroutines must never read
// the connection or its buffer at once (-race reports it without the
// seal's mutex), and from the seal on the transport gets no byte: every
// byte it read is the body's, the serving goroutine reads the rest of the
// body, and the next request's head is left whole for the parser —
// whichever of the transport's read and the seal comes first.
func TestFastBodySealedAgainstTransport(t *testing.T) {
	ca := testpki.NewCA(t, td)
	const (
		first = 6 << 10  // sent before the seal; the transport reads it
		rest  = 20 << 10 // sent after: the seal reads it, or the transport before it
		next  = "GET /next HTTP/1.1\r\nHost: localhost\r\n\r\n"
	)
	for round := range 20 {
		srv, cli := tlsPair(t, ca)
		fc := &fastConn{tc: srv, buf: make([]byte, 8192)}
		fc.body.fc, fc.body.left = fc, first+rest

		// The transport: reads the body until it is refused.
		var got atomic.Int64
		tdone := make(chan error, 1)
		var stray atomic.Bool
		go func() {
			p := make([]byte, 1000)
			for {
				n, err := fc.body.Read(p)
				if bytes.ContainsFunc(p[:n], func(r rune) bool { return r != 'a' }) {
					stray.Store(true)
				}
				got.Add(int64(n))
				if err != nil {
					tdone <- err
					return
				}
			}
		}()
		go io.WriteString(cli, strings.Repeat("a", first))
		for deadline := time.Now().Add(5 * time.Second); got.Load() < first; time.Sleep(time.Millisecond) {
			if time.Now().After(deadline) {
				t.Fatalf("round %d: the transport read %d of %d bytes", round, got.Load(), first)
			}
		}
		// The handler has returned: the serving goroutine seals the body
		// while the transport waits for more of it.
		sealed := make(chan bool, 1)
		go func() { sealed <- fc.body.seal(true) }()
		go io.WriteString(cli, strings.Repeat("a", rest)+next)
		var ok bool
		select {
		case ok = <-sealed:
		case <-time.After(5 * time.Second):
			t.Fatalf("round %d: seal did not return", round)
		}
		if !ok {
			t.Fatalf("round %d: seal reports the connection must close (left %d)", round, fc.body.left)
		}
		// The transport gets nothing more (it may be waiting for the next
		// bytes on the connection: they are the next head, and not its).
		if _, err := fc.body.Read(make([]byte, 1)); !errors.Is(err, http.ErrBodyReadAfterClose) {
			t.Fatalf("round %d: a read after the seal: %v", round, err)
		}
		// What follows on the connection is the next head, whole.
		cli.Write([]byte("X")) // wakes a transport read still waiting
		head := make([]byte, len(next))
		n := copy(head, fc.buf[fc.r:fc.w])
		if _, err := io.ReadFull(srv, head[n:]); err != nil {
			t.Fatal(err)
		}
		if string(head) != next {
			t.Fatalf("round %d: after the body the connection reads %q, want the next head", round, head)
		}
		select {
		case err := <-tdone:
			// EOF: it read the whole body before the seal.
			if !errors.Is(err, http.ErrBodyReadAfterClose) && !(err == io.EOF && got.Load() == first+rest) {
				t.Errorf("round %d: the transport ended with %v after %d bytes", round, err, got.Load())
			}
		case <-time.After(5 * time.Second):
			t.Fatalf("round %d: the transport still reads the body", round)
		}
		if stray.Load() || got.Load() > first+rest {
			t.Errorf("round %d: the transport read %d bytes, some not the body's", round, got.Load())
		}
		srv.Close()
		cli.Close()
	}
}

// tlsPair is a TLS connection over loopback TCP, both ends handshaken.
func tlsPair(t *testing.T, ca *testpki.CA) (srv, cli *tls.Conn) {
	t.Helper()
	l := listen(t)
	defer l.Close()
	cert := ca.ServerCert(t, "", "localhost")
	accepted := make(chan *tls.Conn, 1)
	go func() {
		c, err := l.Accept()
		if err != nil {
			accepted <- nil
			return
		}
		s := tls.Server(c, &tls.Config{Certificates: []tls.Certificate{cert}})
		s.Handshake()
		accepted <- s
	}()
	cli, err := tls.Dial("tcp", l.Addr().String(), &tls.Config{RootCAs: ca.Pool(), ServerName: "localhost"})
	if err != nil {
		t.Fatal(err)
	}
	if srv = <-accepted; srv == nil {
		t.Fatal("accept failed")
	}
	t.Cleanup(func() { srv.Close(); cli.Close() })
	return srv, cli
}
