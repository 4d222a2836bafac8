//go:build !linux

package extauthz

import (
	"errors"
	"net"
)

func peerUID(*net.UnixConn) (uint32, error) {
	return 0, errors.New("peer credentials of unix sockets are read on Linux only: use a TCP listener with mutual TLS")
}
