package proxy

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"syscall"
)

// The netlink sock_diag messages the outbound caller check exchanges with
// the kernel (include/uapi/linux/netlink.h, sock_diag.h, inet_diag.h). The
// layout is Linux's on every architecture; only the byte order of the
// header and of the 32-bit fields is the CPU's. The encoding lives here,
// free of system calls, so that it is tested and fuzzed on any platform.
const (
	nlmsgHdrLen      = 16
	nlmsgError       = 0x2
	nlmFRequest      = 0x1
	sockDiagByFamily = 20
	inetDiagReqLen   = 56 // struct inet_diag_req_v2
	inetDiagMsgLen   = 72 // struct inet_diag_msg
	linuxAFInet      = 2
	linuxAFInet6     = 10
	linuxTCP         = 6
	linuxENOENT      = 2
)

// errNoSocket: the kernel knows no socket with the 4-tuple asked for.
var errNoSocket = errors.New("no such socket")

// inetDiagRequest builds the SOCK_DIAG_BY_FAMILY request for the one TCP
// socket whose own address is local and whose peer is remote. It is not a
// dump: the kernel looks the 4-tuple up in its hash tables
// (inet_diag_find_one_icsk), which costs the same on a host with ten
// sockets or a million. IPv4 and IPv4-mapped addresses are asked for as
// AF_INET: the kernel keeps a dual-stack IPv6 socket talking to an IPv4
// peer in the IPv4 table, so one question finds either kind.
func inetDiagRequest(order binary.ByteOrder, seq uint32, local, remote netip.AddrPort) []byte {
	b := make([]byte, nlmsgHdrLen+inetDiagReqLen)
	order.PutUint32(b[0:], uint32(len(b)))
	order.PutUint16(b[4:], sockDiagByFamily)
	order.PutUint16(b[6:], nlmFRequest)
	order.PutUint32(b[8:], seq)
	r := b[nlmsgHdrLen:]
	v4 := local.Addr().Unmap().Is4() && remote.Addr().Unmap().Is4()
	if v4 {
		r[0] = linuxAFInet
	} else {
		r[0] = linuxAFInet6
	}
	r[1] = linuxTCP
	order.PutUint32(r[4:], ^uint32(0)) // every state
	putDiagSockID(r[8:], local, remote, v4)
	// idiag_if stays 0 (any interface); the cookie is INET_DIAG_NOCOOKIE.
	order.PutUint32(r[8+40:], ^uint32(0))
	order.PutUint32(r[8+44:], ^uint32(0))
	return b
}

// putDiagSockID writes the ports and addresses of a struct inet_diag_sockid
// (network byte order, as on the wire).
func putDiagSockID(id []byte, local, remote netip.AddrPort, v4 bool) {
	binary.BigEndian.PutUint16(id[0:], local.Port())
	binary.BigEndian.PutUint16(id[2:], remote.Port())
	if v4 {
		l, r := local.Addr().Unmap().As4(), remote.Addr().Unmap().As4()
		copy(id[4:], l[:])
		copy(id[20:], r[:])
		return
	}
	l, r := local.Addr().As16(), remote.Addr().As16()
	copy(id[4:], l[:])
	copy(id[20:], r[:])
}

// parseInetDiagReply reads the kernel's answer to inetDiagRequest(seq,
// local, remote): the socket, errNoSocket when the kernel has none
// (ENOENT), or an error for any other errno and for anything malformed.
// The socket described must be the one asked for — same ports and
// addresses — so that a reply about another socket (a listener the
// kernel fell back to, say) never lends its owner to a connection.
func parseInetDiagReply(order binary.ByteOrder, b []byte, seq uint32, local, remote netip.AddrPort) (tcpSocket, error) {
	var s tcpSocket
	if len(b) < nlmsgHdrLen {
		return s, fmt.Errorf("proxy: sock_diag: short reply (%d bytes)", len(b))
	}
	n := order.Uint32(b[0:])
	typ := order.Uint16(b[4:])
	if n < nlmsgHdrLen || int64(n) > int64(len(b)) {
		return s, fmt.Errorf("proxy: sock_diag: message length %d in a %d-byte reply", n, len(b))
	}
	if got := order.Uint32(b[8:]); got != seq {
		return s, fmt.Errorf("proxy: sock_diag: reply to request %d, want %d", got, seq)
	}
	body := b[nlmsgHdrLen:n]
	switch typ {
	case nlmsgError:
		if len(body) < 4 {
			return s, errors.New("proxy: sock_diag: short error message")
		}
		errno := -int32(order.Uint32(body))
		switch {
		case errno == 0:
			return s, errors.New("proxy: sock_diag: acknowledgement instead of a socket")
		case errno == linuxENOENT:
			return s, errNoSocket
		case errno < 0:
			return s, fmt.Errorf("proxy: sock_diag: error code %d", -errno)
		}
		return s, fmt.Errorf("proxy: sock_diag: %w", syscall.Errno(errno))
	case sockDiagByFamily:
	default:
		return s, fmt.Errorf("proxy: sock_diag: unexpected message type %d", typ)
	}
	if len(body) < inetDiagMsgLen {
		return s, fmt.Errorf("proxy: sock_diag: short socket message (%d bytes)", len(body))
	}
	family := body[0]
	if family != linuxAFInet && family != linuxAFInet6 {
		return s, fmt.Errorf("proxy: sock_diag: address family %d", family)
	}
	s.state = body[1]
	if s.state == 0 || s.state > tcpMaxState {
		return s, fmt.Errorf("proxy: sock_diag: state %d", s.state)
	}
	id := body[4:52]
	sport := binary.BigEndian.Uint16(id[0:])
	dport := binary.BigEndian.Uint16(id[2:])
	var src, dst netip.Addr
	if family == linuxAFInet {
		src = netip.AddrFrom4([4]byte(id[4:8]))
		dst = netip.AddrFrom4([4]byte(id[20:24]))
	} else {
		src = netip.AddrFrom16([16]byte(id[4:20])).Unmap()
		dst = netip.AddrFrom16([16]byte(id[20:36])).Unmap()
	}
	s.local = netip.AddrPortFrom(src, sport)
	s.remote = netip.AddrPortFrom(dst, dport)
	if !sameAddrPort(s.local, local) || !sameAddrPort(s.remote, remote) {
		return s, fmt.Errorf("proxy: sock_diag: reply describes %s → %s, not %s → %s", s.local, s.remote, local, remote)
	}
	s.uid = order.Uint32(body[64:])
	s.inode = uint64(order.Uint32(body[68:]))
	return s, nil
}

// sameAddrPort compares two socket addresses with IPv4-mapped IPv6 read as
// IPv4 and without zones: the kernel's tables carry neither distinction.
func sameAddrPort(a, b netip.AddrPort) bool {
	return a.Port() == b.Port() && a.Addr().Unmap().WithZone("") == b.Addr().Unmap().WithZone("")
}
