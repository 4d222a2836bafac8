package proxy

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/moatless/moatless/internal/testpki"
)

// timeoutError is a net.Error whose Timeout is true.
type timeoutError struct{}

func (timeoutError) Error() string   { return "i/o timeout" }
func (timeoutError) Timeout() bool   { return true }
func (timeoutError) Temporary() bool { return true }

// acceptErr wraps errno as a real failed accept(2) does.
func acceptErr(errno syscall.Errno) error {
	return &net.OpError{Op: "accept", Net: "tcp", Err: os.NewSyscallError("accept4", errno)}
}

func TestTemporaryAcceptError(t *testing.T) {
	tests := []struct {
		name string
		err  error
		want bool
	}{
		{"timeout", &net.OpError{Op: "accept", Net: "tcp", Err: timeoutError{}}, true},
		{"emfile", acceptErr(syscall.EMFILE), true},
		{"enfile", acceptErr(syscall.ENFILE), true},
		{"enobufs", acceptErr(syscall.ENOBUFS), true},
		{"enomem", acceptErr(syscall.ENOMEM), true},
		{"econnaborted", acceptErr(syscall.ECONNABORTED), true},
		{"wrapped_emfile", fmt.Errorf("listener: %w", acceptErr(syscall.EMFILE)), true},
		{"closed", fmt.Errorf("accept: %w", net.ErrClosed), false},
		{"einval", acceptErr(syscall.EINVAL), false},
		{"plain_error", errors.New("boom"), false},
		{"nil", nil, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if got := temporaryAcceptError(tc.err); got != tc.want {
				t.Fatalf("temporaryAcceptError(%v) = %v, want %v", tc.err, got, tc.want)
			}
		})
	}
}

// scriptedListener answers Accept from a script of errors and
// connections, then signals drained and blocks until closed.
type scriptedListener struct {
	mu      sync.Mutex
	script  []any // error or net.Conn
	drained chan struct{}
	closed  chan struct{}
	once    sync.Once
}

func newScriptedListener(script ...any) *scriptedListener {
	return &scriptedListener{script: script, drained: make(chan struct{}), closed: make(chan struct{})}
}

func (l *scriptedListener) Accept() (net.Conn, error) {
	l.mu.Lock()
	if len(l.script) > 0 {
		next := l.script[0]
		l.script = l.script[1:]
		l.mu.Unlock()
		if c, ok := next.(net.Conn); ok {
			return c, nil
		}
		return nil, next.(error)
	}
	l.mu.Unlock()
	select {
	case <-l.drained:
	default:
		close(l.drained)
	}
	<-l.closed
	return nil, net.ErrClosed
}

func (l *scriptedListener) Close() error {
	l.once.Do(func() { close(l.closed) })
	return nil
}

func (l *scriptedListener) Addr() net.Addr {
	return &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 15001}
}

// TestOutboundAcceptBackoff: the TCP outbound's accept loop waits 5 ms
// after a temporary error, doubling to 1 s, starts over after a
// successful accept, keeps serving through EMFILE, and ends Serve on a
// permanent error without waiting.
func TestOutboundAcceptBackoff(t *testing.T) {
	emfile := acceptErr(syscall.EMFILE)
	timeout := &net.OpError{Op: "accept", Net: "tcp", Err: timeoutError{}}
	ms := time.Millisecond
	conn := func() net.Conn {
		a, b := net.Pipe()
		t.Cleanup(func() { a.Close(); b.Close() })
		return a
	}
	repeat := func(n int, v any) []any {
		s := make([]any, n)
		for i := range s {
			s[i] = v
		}
		return s
	}
	tests := []struct {
		name       string
		script     []any
		wantDelays []time.Duration
		wantErr    string // "" when Serve ends only with its context
	}{
		{"doubles_from_5ms", []any{emfile, timeout, emfile, emfile},
			[]time.Duration{5 * ms, 10 * ms, 20 * ms, 40 * ms}, ""},
		{"capped_at_1s", repeat(10, emfile),
			[]time.Duration{5 * ms, 10 * ms, 20 * ms, 40 * ms, 80 * ms, 160 * ms, 320 * ms, 640 * ms, time.Second, time.Second}, ""},
		{"reset_by_a_successful_accept", []any{emfile, emfile, emfile, conn(), emfile, emfile},
			[]time.Duration{5 * ms, 10 * ms, 20 * ms, 5 * ms, 10 * ms}, ""},
		{"permanent_error_ends_serve", []any{emfile, acceptErr(syscall.EINVAL)},
			[]time.Duration{5 * ms}, "proxy: outbound out: accept:"},
	}
	ca := testpki.NewCA(t, "example.org")
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			ln := newScriptedListener(tc.script...)
			s, err := New(Config{
				Identity: newStaticIdentity(ca, ca.SVID(t, frontendID, 0)),
				Logger:   slog.New(slog.NewTextHandler(io.Discard, nil)),
				// Port 1 refuses: an accepted connection ends at its dial.
				Outbound: []Outbound{{Name: "out", Listener: ln, Upstream: "127.0.0.1:1", ID: spiffeid.RequireFromString(ordersID), Protocol: TCP}},
			})
			if err != nil {
				t.Fatal(err)
			}
			defer s.Close()
			var (
				mu     sync.Mutex
				delays []time.Duration
			)
			s.outbound[0].accept.sleep = func(d time.Duration) {
				mu.Lock()
				delays = append(delays, d)
				mu.Unlock()
			}
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			errc := make(chan error, 1)
			go func() { errc <- s.Serve(ctx) }()

			if tc.wantErr != "" {
				err := <-errc
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("Serve: %v, want an error containing %q", err, tc.wantErr)
				}
			} else {
				select {
				case <-ln.drained:
				case err := <-errc:
					t.Fatalf("Serve ended before the script did: %v", err)
				}
				cancel()
				if err := <-errc; err != nil && !errors.Is(err, context.Canceled) && !errors.Is(err, ErrClosed) {
					t.Fatalf("Serve: %v", err)
				}
			}
			mu.Lock()
			defer mu.Unlock()
			if !slices.Equal(delays, tc.wantDelays) {
				t.Fatalf("delays %v, want %v", delays, tc.wantDelays)
			}
		})
	}
}

// The inbound listener rides out a file-descriptor shortage too: EMFILE
// used to end Serve, stopping the workload's only way in for good.
func TestInboundSurvivesEMFILE(t *testing.T) {
	ca := testpki.NewCA(t, "example.org")
	ln := newScriptedListener(acceptErr(syscall.EMFILE), acceptErr(syscall.ENFILE))
	s, err := New(Config{
		Identity: newStaticIdentity(ca, ca.SVID(t, ordersID, 0)),
		Logger:   slog.New(slog.NewTextHandler(io.Discard, nil)),
		Inbound:  []Inbound{{Name: "in", Listener: ln, App: "127.0.0.1:1"}},
	})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	errc := make(chan error, 1)
	go func() { errc <- s.Serve(ctx) }()
	select {
	case <-ln.drained:
	case err := <-errc:
		t.Fatalf("Serve ended on a temporary accept error: %v", err)
	}
	cancel()
	if err := <-errc; err != nil && !errors.Is(err, context.Canceled) && !errors.Is(err, ErrClosed) {
		t.Fatalf("Serve: %v", err)
	}
}
