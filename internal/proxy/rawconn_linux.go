package proxy

import (
	"io"
	"net"
	"os"
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
type rawConn struct {
	net.Conn // *net.TCPConn or *net.UnixConn
	rc       syscall.RawConn
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
	return &rawConn{Conn: c, rc: rc}
}

func (c *rawConn) Read(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	var (
		n     int
		errno syscall.Errno
	)
	err := c.rc.Read(func(fd uintptr) bool {
		for {
			r, e := sysRead(fd, p)
			switch e {
			case syscall.EINTR:
				continue
			case syscall.EAGAIN:
				return false
			}
			n, errno = r, e
			return true
		}
	})
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

func (c *rawConn) Write(p []byte) (int, error) {
	var (
		n     int
		errno syscall.Errno
	)
	err := c.rc.Write(func(fd uintptr) bool {
		for n < len(p) {
			r, e := sysWrite(fd, p[n:])
			switch e {
			case 0:
				n += r
			case syscall.EINTR:
			case syscall.EAGAIN:
				return false
			default:
				errno = e
				return true
			}
		}
		return true
	})
	switch {
	case err != nil:
		return n, c.opError("write", err)
	case errno != 0:
		return n, c.opError("write", os.NewSyscallError("write", errno))
	}
	return n, nil
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
