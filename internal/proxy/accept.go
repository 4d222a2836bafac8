package proxy

import (
	"context"
	"errors"
	"net"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// Bounds of acceptBackoff, as net/http's Server.Serve paces itself.
const (
	minAcceptDelay = 5 * time.Millisecond
	maxAcceptDelay = time.Second
)

// acceptBackoff paces an accept loop through temporary accept errors: 5
// ms after the first, doubling to 1 s, and back to nothing after a
// successful accept. A listener out of file descriptors would otherwise
// spin a core retrying (a fixed short sleep still burns one under a long
// shortage), and giving up on such an error would stop the listener for
// good after one burst of connections. The zero value is ready; it is
// used by one accept loop goroutine only.
type acceptBackoff struct {
	delay time.Duration
	// sleep waits; nil is time.Sleep. Tests record the delays instead.
	sleep func(time.Duration)
}

// retry reports whether err is a temporary accept error and, if so, waits
// the next delay first. A false answer leaves the delay as it was: the
// loop is expected to end.
func (b *acceptBackoff) retry(err error) bool {
	if !temporaryAcceptError(err) {
		return false
	}
	b.delay = min(max(2*b.delay, minAcceptDelay), maxAcceptDelay)
	if b.sleep != nil {
		b.sleep(b.delay)
	} else {
		time.Sleep(b.delay)
	}
	return true
}

// reset starts the next run of errors at the shortest delay again; call it
// after every successful accept.
func (b *acceptBackoff) reset() { b.delay = 0 }

// temporaryAcceptError reports whether an accept error is one a listener
// recovers from by itself: a timeout, running out of file descriptors
// (EMFILE, ENFILE) or kernel memory (ENOBUFS, ENOMEM), or a connection
// aborted or interrupted before it was accepted. net.Error's Timeout alone
// misses EMFILE, the common case.
func temporaryAcceptError(err error) bool {
	if err == nil || errors.Is(err, net.ErrClosed) {
		return false
	}
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		return true
	}
	for _, e := range []error{syscall.EMFILE, syscall.ENFILE, syscall.ENOBUFS, syscall.ENOMEM, syscall.ECONNABORTED, syscall.EINTR} {
		if errors.Is(err, e) {
			return true
		}
	}
	return false
}

// streamGroup counts a listener's connections and streams in flight so
// that Shutdown can wait for them. Once drain is called it admits no more:
// mu orders every add against drain, so a wait that started after drain
// never races a late add (sync.WaitGroup forbids Add concurrent with a
// Wait at zero). The zero value is ready.
type streamGroup struct {
	mu       sync.Mutex
	draining atomic.Bool
	wg       sync.WaitGroup
}

// add counts a new stream unless the group is draining; the caller calls
// done when the stream ends, and only if add returned true.
func (g *streamGroup) add() bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.draining.Load() {
		return false
	}
	g.wg.Add(1)
	return true
}

func (g *streamGroup) done() { g.wg.Done() }

// drain stops admitting streams.
func (g *streamGroup) drain() {
	g.mu.Lock()
	g.draining.Store(true)
	g.mu.Unlock()
}

// isDraining reports whether drain was called.
func (g *streamGroup) isDraining() bool { return g.draining.Load() }

// wait waits until every admitted stream is done or ctx ends.
func (g *streamGroup) wait(ctx context.Context) {
	done := make(chan struct{})
	go func() { g.wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-ctx.Done():
	}
}
