package proxy

import (
	"io"
	"net"
	"os"
	"sync"
	"syscall"
)

// rawConn is a TCP or unix socket connection whose reads and writes make
// their system calls without handing the goroutine's P back to the
// scheduler (syscall.RawSyscall in a syscall.RawConn callback, except
// under the race detector: rawconn_race.go; the
// socket is non-blocking, so neither call sleeps: EAGAIN waits in the
// network poller as net.Conn's own methods wait).
//
// Why: a write on loopback TCP runs the receiver's side of the stack too
// and takes tens of microseconds. For a syscall made the usual way, the
// runtime's sysmon takes the P away after 20 µs, and with GOMAXPROCS=1
// (a sidecar's usual share) it then wakes another thread to hold it and
// puts the caller's thread to sleep when the call returns: two context
// switches and two futex calls for a write that had nothing to wait for
// (strace -c of a sidecar under load: 0.3 nanosleep and 0.03 futex calls
// per request besides its reads and writes; see docs/benchmarks.md).
// Deadlines, Close and the poller behave as for the wrapped connection:
// they act on the same file descriptor.
//
// The callbacks handed to syscall.RawConn are method values made once per
// connection, and the arguments and results of the one Read and the one
// Write in progress live in the rawConn: a closure made per call escapes
// to the heap (RawConn.Read and Write keep f as they like), which cost an
// allocation per read and per write, two to four per proxied request. A
// mutex per direction keeps concurrent Reads (or Writes) from sharing the
// state, as the descriptor's own read and write locks keep them from
// sharing the socket; each call starts from zeroed results and drops its
// buffer before it returns, so nothing of one call reaches the next and
// the connection keeps no caller's buffer alive.
type rawConn struct {
	net.Conn // *net.TCPConn or *net.UnixConn
	rc       syscall.RawConn

	rmu    sync.Mutex
	rp     []byte
	rn     int
	rerrno syscall.Errno
	readFn func(fd uintptr) bool // c.read

	wmu     sync.Mutex
	wp      []byte
	wn      int
	werrno  syscall.Errno
	writeFn func(fd uintptr) bool // c.write
}

// withRawSyscalls wraps c when it is a socket the runtime polls; any
// other connection comes back as it is.
func withRawSyscalls(c net.Conn) net.Conn {
	switch c.(type) {
	case *net.TCPConn, *net.UnixConn:
	default:
		return c
	}
	rc, err := c.(syscall.Conn).SyscallConn()
	if err != nil {
		return c
	}
	r := &rawConn{Conn: c, rc: rc}
	r.readFn, r.writeFn = r.read, r.write
	return r
}

func (c *rawConn) Read(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	c.rmu.Lock()
	c.rp, c.rn, c.rerrno = p, 0, 0
	err := c.rc.Read(c.readFn)
	n, errno := c.rn, c.rerrno
	c.rp = nil
	c.rmu.Unlock()
	switch {
	case err != nil:
		return 0, c.opError("read", err)
	case errno != 0:
		return 0, c.opError("read", os.NewSyscallError("read", errno))
	case n == 0:
		return 0, io.EOF
	}
	return n, nil
}

// read is Read's callback: one read(2) into c.rp, false (wait for the
// poller) when nothing is there yet.
func (c *rawConn) read(fd uintptr) bool {
	for {
		r, e := sysRead(fd, c.rp)
		switch e {
		case syscall.EINTR:
			continue
		case syscall.EAGAIN:
			return false
		}
		c.rn, c.rerrno = r, e
		return true
	}
}

func (c *rawConn) Write(p []byte) (int, error) {
	c.wmu.Lock()
	c.wp, c.wn, c.werrno = p, 0, 0
	err := c.rc.Write(c.writeFn)
	n, errno := c.wn, c.werrno
	c.wp = nil
	c.wmu.Unlock()
	switch {
	case err != nil:
		return n, c.opError("write", err)
	case errno != 0:
		return n, c.opError("write", os.NewSyscallError("write", errno))
	}
	return n, nil
}

// write is Write's callback: write(2) until all of c.wp is written (c.wn
// counts it across calls), false (wait for the poller) when the socket's
// buffer is full.
func (c *rawConn) write(fd uintptr) bool {
	for c.wn < len(c.wp) {
		r, e := sysWrite(fd, c.wp[c.wn:])
		switch e {
		case 0:
			c.wn += r
		case syscall.EINTR:
		case syscall.EAGAIN:
			return false
		default:
			c.werrno = e
			return true
		}
	}
	return true
}

func (c *rawConn) opError(op string, err error) error {
	return &net.OpError{Op: op, Net: c.LocalAddr().Network(), Source: c.LocalAddr(), Addr: c.RemoteAddr(), Err: err}
}

// SyscallConn and CloseWrite are the wrapped connection's (the liveness
// peek, half-closing a TCP stream).
func (c *rawConn) SyscallConn() (syscall.RawConn, error) { return c.rc, nil }

func (c *rawConn) CloseWrite() error {
	if cw, ok := c.Conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return c.Conn.Close()
}
