//go:build !linux

package workload

import (
	"context"
	"errors"
	"net"
	"runtime"

	"google.golang.org/grpc/credentials"

	"github.com/moatless/moatless/internal/attest"
)

// errPeerCredUnsupported is why the Workload API is not served outside
// Linux: a caller is identified only by the kernel's word about the
// process behind the socket (SO_PEERCRED, SCM_CREDENTIALS, pidfds), which
// this package reads from Linux alone. Serving without it would hand
// identities to whoever connects.
var errPeerCredUnsupported = errors.New("workload: the Workload API needs Linux (SO_PEERCRED, SCM_CREDENTIALS), not " + runtime.GOOS)

// peerCredentials refuses every connection outside Linux.
type peerCredentials struct {
	binder attest.Binder
	hooks  *testHooks
	limits *connLimits
}

// AuthInfo is the peer information attached to every RPC on a Workload API
// connection; outside Linux no connection gets one.
type AuthInfo struct {
	credentials.CommonAuthInfo
	Peer attest.Peer
	conn *boundConn
}

// AuthType implements credentials.AuthInfo.
func (AuthInfo) AuthType() string { return "unix-peercred" }

func (peerCredentials) ServerHandshake(net.Conn) (net.Conn, credentials.AuthInfo, error) {
	return nil, nil, errPeerCredUnsupported
}

func (peerCredentials) ClientHandshake(context.Context, string, net.Conn) (net.Conn, credentials.AuthInfo, error) {
	return nil, nil, errors.New("workload: peer credentials are server side only")
}

func (peerCredentials) Info() credentials.ProtocolInfo {
	return credentials.ProtocolInfo{SecurityProtocol: "unix-peercred"}
}

func (c peerCredentials) Clone() credentials.TransportCredentials { return c }

func (peerCredentials) OverrideServerName(string) error { return nil } //nolint:staticcheck // interface

// boundConn never exists outside Linux; check refuses.
type boundConn struct{}

func (*boundConn) check() error { return errPeerCredUnsupported }

func (*boundConn) accountOf() (uint32, bool) { return 0, false }

// passCred fails: Listen then refuses to serve.
func passCred(*net.UnixListener) error { return errPeerCredUnsupported }

func inode(string) uint64 { return 0 }
