package workload

import (
	"context"
	"errors"
	"fmt"
	"net"
	"sync"

	"golang.org/x/sys/unix"
	"google.golang.org/grpc/credentials"

	"github.com/moatless/moatless/internal/attest"
)

// peerCredentials is a gRPC TransportCredentials that adds no encryption
// (the unix socket never leaves the kernel) but captures, at accept time,
// the kernel's word about the process that connected: SO_PEERCRED and,
// where the kernel has it, a pidfd (SO_PEERPIDFD). Nothing the client
// sends is used to identify it.
type peerCredentials struct{}

// AuthInfo is the peer information attached to every RPC on a Workload API
// connection (read it with peer.FromContext).
type AuthInfo struct {
	credentials.CommonAuthInfo
	Peer attest.Peer
}

// AuthType implements credentials.AuthInfo.
func (AuthInfo) AuthType() string { return "unix-peercred" }

var errNotUnix = errors.New("workload: connection is not a unix socket")

func (peerCredentials) ServerHandshake(conn net.Conn) (net.Conn, credentials.AuthInfo, error) {
	uc, ok := conn.(*net.UnixConn)
	if !ok {
		return nil, nil, errNotUnix
	}
	raw, err := uc.SyscallConn()
	if err != nil {
		return nil, nil, fmt.Errorf("workload: peer credentials: %w", err)
	}
	var (
		cred   *unix.Ucred
		credEr error
		pidfd  = -1
	)
	cerr := raw.Control(func(fd uintptr) {
		cred, credEr = unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED)
		if credEr != nil {
			return
		}
		// ENOPROTOOPT before Linux 6.5: attest without the pidfd.
		if p, err := unix.GetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_PEERPIDFD); err == nil {
			pidfd = p
		}
	})
	if cerr != nil {
		return nil, nil, fmt.Errorf("workload: peer credentials: %w", cerr)
	}
	if credEr != nil {
		return nil, nil, fmt.Errorf("workload: peer credentials: %w", credEr)
	}
	info := AuthInfo{
		CommonAuthInfo: credentials.CommonAuthInfo{SecurityLevel: credentials.PrivacyAndIntegrity},
		Peer:           attest.Peer{PID: cred.Pid, UID: cred.Uid, GID: cred.Gid, PIDFD: pidfd},
	}
	if pidfd < 0 {
		return conn, info, nil
	}
	return &pidfdConn{Conn: conn, pidfd: pidfd}, info, nil
}

func (peerCredentials) ClientHandshake(context.Context, string, net.Conn) (net.Conn, credentials.AuthInfo, error) {
	return nil, nil, errors.New("workload: peer credentials are server side only")
}

func (peerCredentials) Info() credentials.ProtocolInfo {
	return credentials.ProtocolInfo{SecurityProtocol: "unix-peercred"}
}

func (c peerCredentials) Clone() credentials.TransportCredentials { return c }

func (peerCredentials) OverrideServerName(string) error { return nil } //nolint:staticcheck // interface

// pidfdConn closes the peer's pidfd with the connection.
type pidfdConn struct {
	net.Conn
	once  sync.Once
	pidfd int
}

func (c *pidfdConn) Close() error {
	c.once.Do(func() { unix.Close(c.pidfd) })
	return c.Conn.Close()
}
