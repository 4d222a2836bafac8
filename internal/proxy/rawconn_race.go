//go:build linux && race

package proxy

import "syscall"

// Under the race detector, rawConn makes its calls through syscall.Read
// and syscall.Write: they record the happens-before edge between a write
// to a socket and the read of what was written, as net.Conn's methods
// do, which the detector would otherwise miss.

func sysRead(fd uintptr, p []byte) (int, syscall.Errno) {
	n, err := syscall.Read(int(fd), p)
	return max(n, 0), errnoOf(err)
}

func sysWrite(fd uintptr, p []byte) (int, syscall.Errno) {
	n, err := syscall.Write(int(fd), p)
	return max(n, 0), errnoOf(err)
}

func errnoOf(err error) syscall.Errno {
	if err == nil {
		return 0
	}
	return err.(syscall.Errno)
}
