// Package proxytest holds test helpers shared by the sidecar's
// (internal/proxy) and the gateway's (internal/gateway) tests. Only tests
// import it.
package proxytest

import (
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"
)

// EarlyApp runs, until the test ends, an app on a loopback port (its
// "host:port" returned) that answers some requests before reading their
// bodies, as an app refusing an upload from its head does: a path ending
// in /early or /early/413 gets 413 "upload refused" and the handler
// returns (net/http's server then closes the connection when the body
// is too large to discard, and reads a smaller one before it answers); a
// path ending in /early/now gets the same 413 at once whatever the body's
// size (full duplex: nothing is read first), saying Connection: close; a
// path ending in /early/keep answers as /early/now without Connection:
// close, as a Go app does: net/http's server then drops the connection if
// the body (under 256 KiB) was sent anyway (golang/go#68560, below); a
// path ending in /drop has 16 KiB of its body read, then its connection
// closed without an answer: an app failing mid-upload; a path ending in
// /early/close gets a 401 "nope" written on the raw
// connection, which is then closed as servers close (FIN, then what the
// peer still sends is read until it closes). A path ending in /abort has its
// whole body read, then the head of a 200 with a 1 MiB body and 64 KiB
// of it written on the raw connection, which is then closed: an
// upstream failing mid-answer.
// A path ending in /expect has its whole body read and gets 200 with the
// Expect fields it arrived with and the body's length: expect=["..."] n=5.
// Any other request has its whole body read and gets 200 with the body's
// length.
func EarlyApp(t testing.TB) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch p := r.URL.Path; {
		case strings.HasSuffix(p, "/early"), strings.HasSuffix(p, "/early/413"):
			w.Header().Set("Content-Type", "text/plain")
			w.WriteHeader(http.StatusRequestEntityTooLarge)
			io.WriteString(w, "upload refused")
		case strings.HasSuffix(p, "/early/keep"):
			_ = http.NewResponseController(w).EnableFullDuplex()
			w.Header().Set("Content-Type", "text/plain")
			w.WriteHeader(http.StatusRequestEntityTooLarge)
			io.WriteString(w, "upload refused")
		case strings.HasSuffix(p, "/early/now"):
			_ = http.NewResponseController(w).EnableFullDuplex()
			// In full duplex, net/http's server reads an unread body of
			// up to 256 KiB after the handler returns, then panics
			// reading the next request on the connection
			// (golang/go#68560): it drops the connection after an
			// answer that said it stays open. An app refusing an upload
			// from its head closes the connection instead.
			w.Header().Set("Connection", "close")
			w.Header().Set("Content-Type", "text/plain")
			w.WriteHeader(http.StatusRequestEntityTooLarge)
			io.WriteString(w, "upload refused")
		case strings.HasSuffix(p, "/drop"):
			io.CopyN(io.Discard, r.Body, 16<<10)
			if conn, _, err := http.NewResponseController(w).Hijack(); err == nil {
				conn.Close()
			}
		case strings.HasSuffix(p, "/abort"):
			io.Copy(io.Discard, r.Body)
			conn, _, err := http.NewResponseController(w).Hijack()
			if err != nil {
				return
			}
			io.WriteString(conn, "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 1048576\r\n\r\n"+strings.Repeat("r", 64<<10))
			conn.Close()
		case strings.HasSuffix(p, "/early/close"):
			conn, _, err := http.NewResponseController(w).Hijack()
			if err != nil {
				return
			}
			io.WriteString(conn, "HTTP/1.1 401 Unauthorized\r\nContent-Type: text/plain\r\nContent-Length: 4\r\nConnection: close\r\n\r\nnope")
			// Close as servers do (net/http's closeWriteAndWait, nginx's
			// lingering close): FIN after the answer, then read what the
			// peer still sends until it closes. A bare Close over unread
			// bytes makes the kernel reset the connection, and a reset
			// that arrives before the peer has read the answer discards
			// it: the sidecar then saw no answer at all (a 503), which is
			// the app's fault, not what these tests are about.
			if tc, ok := conn.(*net.TCPConn); ok {
				tc.CloseWrite()
			}
			conn.SetReadDeadline(time.Now().Add(5 * time.Second))
			io.Copy(io.Discard, conn)
			conn.Close()
		case strings.HasSuffix(p, "/expect"):
			n, _ := io.Copy(io.Discard, r.Body)
			fmt.Fprintf(w, "expect=%q n=%d", r.Header["Expect"], n)
		default:
			n, err := io.Copy(io.Discard, r.Body)
			if err != nil {
				w.WriteHeader(http.StatusBadRequest)
				return
			}
			io.WriteString(w, strconv.FormatInt(n, 10))
		}
	})}
	go srv.Serve(l)
	t.Cleanup(func() { srv.Close() })
	return l.Addr().String()
}

// Within polls done every millisecond until it holds, and fails the test
// saying what did not happen when it does not within 5 s: for a state
// another goroutine reaches (a connection closed, a registration
// forgotten), not for a clock.
func Within(t testing.TB, what string, done func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !done() {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within 5 s", what)
		}
		time.Sleep(time.Millisecond)
	}
}
