package proxy

import (
	"bytes"
	"errors"
	"io"
	"math/rand/v2"
	"net"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"
)

// rawPair returns two connected sockets of network ("tcp" on 127.0.0.1,
// "unix" in a temporary directory), each wrapped by withRawSyscalls.
func rawPair(t *testing.T, network string) (a, b *rawConn) {
	t.Helper()
	addr := "127.0.0.1:0"
	if network == "unix" {
		addr = filepath.Join(t.TempDir(), "s")
	}
	ln, err := net.Listen(network, addr)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	accepted := make(chan net.Conn, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			t.Error(err)
		}
		accepted <- c
	}()
	c1, err := net.Dial(network, ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	c2 := <-accepted
	if c2 == nil {
		t.FailNow()
	}
	a, ok1 := withRawSyscalls(c1).(*rawConn)
	b, ok2 := withRawSyscalls(c2).(*rawConn)
	if !ok1 || !ok2 {
		t.Fatalf("withRawSyscalls did not wrap a %s connection", network)
	}
	t.Cleanup(func() { a.Close(); b.Close() })
	return a, b
}

func TestRawConnCarriesEveryByte(t *testing.T) {
	tests := []struct {
		name    string
		size    int // bytes written in one Write
		readBuf int // bytes per Read
	}{
		{name: "zero_length_write", size: 0, readBuf: 16},
		{name: "one_byte", size: 1, readBuf: 1},
		{name: "small_reads_of_a_record", size: 16 << 10, readBuf: 7},
		// Far more than the socket buffers hold: the Write waits in the
		// poller (EAGAIN) and goes on where it stopped.
		{name: "write_larger_than_socket_buffers", size: 8 << 20, readBuf: 32 << 10},
	}
	for _, network := range []string{"tcp", "unix"} {
		for _, tt := range tests {
			t.Run(network+"/"+tt.name, func(t *testing.T) {
				a, b := rawPair(t, network)
				want := make([]byte, tt.size)
				for i := range want {
					want[i] = byte(rand.IntN(256))
				}
				werr := make(chan error, 1)
				go func() {
					n, err := a.Write(want)
					if err == nil && n != len(want) {
						err = errors.New("short write")
					}
					a.CloseWrite()
					werr <- err
				}()
				var got bytes.Buffer
				buf := make([]byte, tt.readBuf)
				for {
					n, err := b.Read(buf)
					got.Write(buf[:n])
					if err == io.EOF {
						break
					}
					if err != nil {
						t.Fatalf("read: %v", err)
					}
				}
				if err := <-werr; err != nil {
					t.Fatalf("write: %v", err)
				}
				if !bytes.Equal(got.Bytes(), want) {
					t.Fatalf("read %d bytes, not the %d written", got.Len(), len(want))
				}
			})
		}
	}
}

// Each call's buffer, count and error are the rawConn's while it runs:
// concurrent Writes and Reads must each use their own buffer, with
// nothing lost or doubled; -race sees any sharing.
func TestRawConnConcurrentCallsKeepTheirOwnState(t *testing.T) {
	const writers, records, recLen = 4, 200, 3000
	a, b := rawPair(t, "tcp")
	var wg sync.WaitGroup
	for w := range writers {
		wg.Go(func() {
			rec := bytes.Repeat([]byte{byte('a' + w)}, recLen)
			for range records {
				if _, err := a.Write(rec); err != nil {
					t.Errorf("write: %v", err)
					return
				}
			}
		})
	}
	go func() { wg.Wait(); a.CloseWrite() }()

	// Several readers share b, each counting the bytes it reads by value:
	// every writer's bytes must arrive exactly once.
	var (
		mu    sync.Mutex
		count [256]int
	)
	var rg sync.WaitGroup
	for range 3 {
		rg.Go(func() {
			var mine [256]int
			buf := make([]byte, 1000)
			for {
				n, err := b.Read(buf)
				for _, c := range buf[:n] {
					mine[c]++
				}
				if err == io.EOF {
					break
				}
				if err != nil {
					t.Errorf("read: %v", err)
					break
				}
			}
			mu.Lock()
			for i, n := range mine {
				count[i] += n
			}
			mu.Unlock()
		})
	}
	rg.Wait()
	for i, n := range count {
		want := 0
		if i >= 'a' && i < 'a'+writers {
			want = records * recLen
		}
		if n != want {
			t.Errorf("byte %q read %d times, want %d", byte(i), n, want)
		}
	}
}

// A failed or empty call after a successful one reports its own result,
// not the last call's count, and no call's buffer stays with the
// connection.
func TestRawConnResultsDoNotLeakBetweenCalls(t *testing.T) {
	a, b := rawPair(t, "unix")
	buf := make([]byte, 64)
	if _, err := a.Write([]byte("hello")); err != nil {
		t.Fatal(err)
	}
	if n, err := b.Read(buf); err != nil || string(buf[:n]) != "hello" {
		t.Fatalf("read = %q, %v; want hello", buf[:n], err)
	}

	b.SetReadDeadline(time.Now().Add(-time.Second))
	if n, err := b.Read(buf); n != 0 || !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("read past its deadline = %d, %v; want 0 and a timeout", n, err)
	}
	b.SetReadDeadline(time.Time{})

	if _, err := a.Write([]byte("xy")); err != nil {
		t.Fatal(err)
	}
	if n, err := b.Read(buf); err != nil || string(buf[:n]) != "xy" {
		t.Fatalf("read after the timeout = %q, %v; want xy", buf[:n], err)
	}
	a.SetWriteDeadline(time.Now().Add(-time.Second))
	if n, err := a.Write([]byte("late")); n != 0 || !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("write past its deadline = %d, %v; want 0 and a timeout", n, err)
	}
	a.SetWriteDeadline(time.Time{})
	a.CloseWrite()
	if n, err := b.Read(buf); n != 0 || err != io.EOF {
		t.Fatalf("read at the end = %d, %v; want 0, EOF", n, err)
	}
	if a.rp != nil || a.wp != nil || b.rp != nil || b.wp != nil {
		t.Error("a call's buffer is still held by the connection")
	}
	b.Close()
	if _, err := b.Read(buf); !errors.Is(err, net.ErrClosed) {
		t.Errorf("read of a closed connection: %v, want net.ErrClosed", err)
	}
}

// The point of the per-connection callbacks: a read and a write of a
// proxied message allocate nothing.
func TestRawConnReadWriteAllocateNothing(t *testing.T) {
	a, b := rawPair(t, "tcp")
	msg, buf := []byte("ping"), make([]byte, 16)
	allocs := testing.AllocsPerRun(200, func() {
		if _, err := a.Write(msg); err != nil {
			t.Fatal(err)
		}
		if _, err := io.ReadFull(b, buf[:len(msg)]); err != nil {
			t.Fatal(err)
		}
	})
	if allocs != 0 {
		t.Errorf("a Write and a Read allocate %.1f times, want 0", allocs)
	}
}
