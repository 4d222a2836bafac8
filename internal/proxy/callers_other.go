//go:build !linux

package proxy

import (
	"errors"
	"io/fs"
	"net"
	"runtime"
)

// callerCheckSupported: only Linux tells who is behind a loopback TCP
// connection here; elsewhere outbound listeners need AnyLocalUser.
const callerCheckSupported = false

var errCallersUnsupported = errors.New("proxy: identifying local callers is not implemented on " + runtime.GOOS)

func tcpOwnerBackend() (*tcpOwnerLookup, error) { return nil, errCallersUnsupported }

func unixPeerCred(*net.UnixConn) (localCaller, error) { return localCaller{}, errCallersUnsupported }

func listenUnixOutbound(string, fs.FileMode, *uint32) (net.Listener, error) {
	return nil, errCallersUnsupported
}

func unmappedCaller(uint32) bool { return false }

func unmappedUnixPeer(localCaller) bool { return false }
