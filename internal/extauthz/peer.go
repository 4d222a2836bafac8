package extauthz

import (
	"context"
	"errors"
	"fmt"
	"net"
	"slices"

	"google.golang.org/grpc/credentials"
)

// peerUIDs is a gRPC TransportCredentials for a unix socket: no
// encryption (the socket never leaves the kernel), but every connection's
// peer UID (SO_PEERCRED, the kernel's word, nothing the client sends)
// must be one of allow, or the connection is closed before any call.
type peerUIDs struct{ allow []uint32 }

type peerInfo struct {
	credentials.CommonAuthInfo
	UID uint32
}

func (peerInfo) AuthType() string { return "unix-peercred" }

func (p peerUIDs) ServerHandshake(conn net.Conn) (net.Conn, credentials.AuthInfo, error) {
	uc, ok := conn.(*net.UnixConn)
	if !ok {
		return nil, nil, errors.New("extauthz: not a unix socket connection")
	}
	uid, err := peerUID(uc)
	if err != nil {
		return nil, nil, fmt.Errorf("extauthz: peer credentials: %w", err)
	}
	if !slices.Contains(p.allow, uid) {
		return nil, nil, fmt.Errorf("extauthz: uid %d may not call (allowed: %v)", uid, p.allow)
	}
	return conn, peerInfo{CommonAuthInfo: credentials.CommonAuthInfo{SecurityLevel: credentials.PrivacyAndIntegrity}, UID: uid}, nil
}

func (peerUIDs) ClientHandshake(context.Context, string, net.Conn) (net.Conn, credentials.AuthInfo, error) {
	return nil, nil, errors.New("extauthz: peer credentials are server side only")
}

func (peerUIDs) Info() credentials.ProtocolInfo {
	return credentials.ProtocolInfo{SecurityProtocol: "unix-peercred"}
}

func (p peerUIDs) Clone() credentials.TransportCredentials {
	return peerUIDs{allow: slices.Clone(p.allow)}
}

func (peerUIDs) OverrideServerName(string) error { return nil }
