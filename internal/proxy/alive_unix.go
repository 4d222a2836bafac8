//go:build unix

package proxy

import (
	"net"
	"syscall"
)

// connAlive peeks at an idle pooled connection without blocking: a closed
// one reads EOF, a live one has nothing to read. Unsolicited bytes from
// the app also make it unusable.
func connAlive(c net.Conn) bool {
	if tc, ok := c.(interface{ NetConn() net.Conn }); ok {
		// TLS: any byte the peer sent while idle (a close_notify, a
		// KeyUpdate) makes the connection not worth reusing.
		c = tc.NetConn()
	}
	sc, ok := c.(syscall.Conn)
	if !ok {
		return true
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return false
	}
	alive := false
	var b [1]byte
	err = rc.Read(func(fd uintptr) bool {
		n, _, rerr := syscall.Recvfrom(int(fd), b[:], syscall.MSG_PEEK|syscall.MSG_DONTWAIT)
		alive = n < 0 && (rerr == syscall.EAGAIN || rerr == syscall.EWOULDBLOCK)
		return true
	})
	return err == nil && alive
}
