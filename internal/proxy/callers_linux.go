package proxy

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/moatless/moatless/internal/userns"
)

// callerCheckSupported: Linux tells who is behind a local connection.
const callerCheckSupported = true

// tcpOwnerBackend is the owner lookup this host supports, chosen once per
// process by probing: sock_diag, else /proc/net/tcp, else an error.
var tcpOwnerBackend = sync.OnceValues(func() (*tcpOwnerLookup, error) {
	return probeTCPOwner([]*tcpOwnerLookup{diagLookup, procLookup})
})

var (
	diagLookup = &tcpOwnerLookup{name: "sock_diag", find: diagFind}
	// One read of /proc/net/tcp at a time, per process: the connections
	// any local user opens in a loop cost the sidecar at most one core.
	procLookup = &tcpOwnerLookup{name: "/proc/net/tcp", find: procFind, slots: make(chan struct{}, 1)}
)

// probeTCPOwner returns the first lookup that finds the client end of a
// loopback connection made for the purpose, owned by this process's uid.
// A kernel without inet_diag (or a sandbox that filters netlink) and one
// without /proc are told apart here, at start, not on the first caller.
func probeTCPOwner(candidates []*tcpOwnerLookup) (*tcpOwnerLookup, error) {
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		return nil, fmt.Errorf("probe: %w", err)
	}
	defer ln.Close()
	c, err := net.Dial("tcp4", ln.Addr().String())
	if err != nil {
		return nil, fmt.Errorf("probe: %w", err)
	}
	defer c.Close()
	a, err := ln.Accept()
	if err != nil {
		return nil, fmt.Errorf("probe: %w", err)
	}
	defer a.Close()
	local, remote := c.LocalAddr().(*net.TCPAddr).AddrPort(), c.RemoteAddr().(*net.TCPAddr).AddrPort()
	var errs []error
	for _, l := range candidates {
		s, err := l.find(local, remote)
		switch {
		case err != nil:
			errs = append(errs, fmt.Errorf("%s: %w", l.name, err))
		case s.uid != uint32(os.Geteuid()) || s.inode == 0:
			errs = append(errs, fmt.Errorf("%s: own socket reported as uid %d, inode %d", l.name, s.uid, s.inode))
		default:
			return l, nil
		}
	}
	return nil, errors.Join(errs...)
}

// diagSeq numbers sock_diag requests, so that a reply is matched to its
// question.
var diagSeq atomic.Uint32

// diagFind asks the kernel over netlink sock_diag for the one socket with
// the 4-tuple (local, remote): a hash lookup, the same cost however many
// sockets the host has. Each call uses its own netlink socket, so calls
// from several accept loops never share one.
func diagFind(local, remote netip.AddrPort) (tcpSocket, error) {
	fd, err := unix.Socket(unix.AF_NETLINK, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, unix.NETLINK_SOCK_DIAG)
	if err != nil {
		return tcpSocket{}, fmt.Errorf("proxy: sock_diag: %w", err)
	}
	defer unix.Close(fd)
	// The kernel answers within sendto; the timeout only bounds a
	// misbehaving one.
	if err := unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &unix.Timeval{Sec: 1}); err != nil {
		return tcpSocket{}, fmt.Errorf("proxy: sock_diag: %w", err)
	}
	seq := diagSeq.Add(1)
	req := inetDiagRequest(binary.NativeEndian, seq, local, remote)
	if err := unix.Sendto(fd, req, 0, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		return tcpSocket{}, fmt.Errorf("proxy: sock_diag: send: %w", err)
	}
	var buf [2048]byte
	for {
		n, from, err := unix.Recvfrom(fd, buf[:], 0)
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil {
			return tcpSocket{}, fmt.Errorf("proxy: sock_diag: receive: %w", err)
		}
		// Only the kernel (port 0) answers; anything else is not ours to
		// believe.
		if nl, ok := from.(*unix.SockaddrNetlink); !ok || nl.Pid != 0 {
			continue
		}
		return parseInetDiagReply(binary.NativeEndian, buf[:n], seq, local, remote)
	}
}

// procFind looks the 4-tuple up in /proc/net/tcp and /proc/net/tcp6: a
// read of every socket of the network namespace, so its cost grows with
// the host's connections. An IPv4 tuple is looked for in both tables: a
// dual-stack IPv6 client socket talking to an IPv4 listener appears in
// tcp6 with IPv4-mapped addresses. The kernel builds the tables in chunks,
// and a socket can be skipped when others come and go between two chunks;
// a miss is read once more before it counts.
func procFind(local, remote netip.AddrPort) (tcpSocket, error) {
	var err error
	for range 2 {
		var s tcpSocket
		if s, err = procFindOnce(local, remote); !errors.Is(err, errNoSocket) {
			return s, err
		}
	}
	return tcpSocket{}, err
}

func procFindOnce(local, remote netip.AddrPort) (tcpSocket, error) {
	if local.Addr().Unmap().Is4() && remote.Addr().Unmap().Is4() {
		if s, err := procFindIn("/proc/net/tcp", false, local, remote); !errors.Is(err, errNoSocket) {
			return s, err
		}
	}
	return procFindIn("/proc/net/tcp6", true, local, remote)
}

func procFindIn(path string, v6 bool, local, remote netip.AddrPort) (tcpSocket, error) {
	f, err := os.Open(path)
	if err != nil {
		if v6 && errors.Is(err, fs.ErrNotExist) {
			return tcpSocket{}, errNoSocket // IPv6 disabled: no tcp6 table
		}
		return tcpSocket{}, fmt.Errorf("proxy: %w", err)
	}
	defer f.Close()
	var found tcpSocket
	ok := false
	err = scanProcNetTCP(f, v6, binary.NativeEndian, maxProcNetBytes, func(s tcpSocket) bool {
		if sameAddrPort(s.local, local) && sameAddrPort(s.remote, remote) {
			found, ok = s, true
			return false
		}
		return true
	})
	switch {
	case err != nil:
		return tcpSocket{}, fmt.Errorf("%s: %w", path, err)
	case !ok:
		return tcpSocket{}, errNoSocket
	}
	return found, nil
}

// unixPeerCred is the kernel's word on the process that connected to a
// unix socket: uid, gid and pid at connect(2) (SO_PEERCRED).
func unixPeerCred(c *net.UnixConn) (localCaller, error) {
	raw, err := c.SyscallConn()
	if err != nil {
		return localCaller{}, fmt.Errorf("proxy: peer credentials: %w", err)
	}
	var (
		cred *unix.Ucred
		cerr error
	)
	if err := raw.Control(func(fd uintptr) {
		cred, cerr = unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED)
	}); err != nil {
		return localCaller{}, fmt.Errorf("proxy: peer credentials: %w", err)
	}
	if cerr != nil {
		return localCaller{}, fmt.Errorf("proxy: peer credentials: %w", cerr)
	}
	return localCaller{uid: cred.Uid, gid: cred.Gid, hasGID: true, pid: cred.Pid}, nil
}

// listenUnixOutbound binds an outbound unix socket at path with the given
// file mode and, when gid is set, group.
//
// The directory must not be writable by other users unless it is sticky:
// anyone who can write there could replace the socket with their own and
// read the app's plaintext. A socket file left by an earlier run (owned by
// this uid, nobody listening) is removed; anything else at the path is an
// error. The mode and group are applied through an O_PATH descriptor of
// the file just bound, never by path, so a file swapped in after bind(2)
// cannot be chmod'ed instead; the window between bind and chmod is covered
// by the peer credential check, which every connection meets anyway.
func listenUnixOutbound(path string, mode fs.FileMode, gid *uint32) (net.Listener, error) {
	dir := filepath.Dir(path)
	di, err := os.Stat(dir)
	if err != nil {
		return nil, err
	}
	if !di.IsDir() {
		return nil, fmt.Errorf("%s is not a directory", dir)
	}
	if di.Mode().Perm()&0o022 != 0 && di.Mode()&fs.ModeSticky == 0 {
		return nil, fmt.Errorf("directory %s is writable by other users (mode %v) and not sticky: another user could replace the socket", dir, di.Mode().Perm())
	}
	if err := removeStaleSocket(path); err != nil {
		return nil, err
	}
	l, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		return nil, err
	}
	if err := setSocketFileMode(path, mode, gid); err != nil {
		l.Close()
		return nil, err
	}
	return l, nil
}

// removeStaleSocket removes a socket file of this uid that nobody listens
// on; any other file at path is left alone and reported.
func removeStaleSocket(path string) error {
	fi, err := os.Lstat(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	if fi.Mode().Type() != fs.ModeSocket {
		return fmt.Errorf("%s exists and is not a socket", path)
	}
	if st, ok := fi.Sys().(*syscall.Stat_t); !ok || st.Uid != uint32(os.Geteuid()) {
		return fmt.Errorf("%s exists and belongs to another user", path)
	}
	if c, err := net.DialTimeout("unix", path, time.Second); err == nil {
		c.Close()
		return fmt.Errorf("%s is in use by another process", path)
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	return nil
}

// setSocketFileMode sets the mode and group of the socket file at path,
// which must be a socket owned by this process's uid.
func setSocketFileMode(path string, mode fs.FileMode, gid *uint32) error {
	fd, err := unix.Open(path, unix.O_PATH|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return &fs.PathError{Op: "open", Path: path, Err: err}
	}
	defer unix.Close(fd)
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return &fs.PathError{Op: "stat", Path: path, Err: err}
	}
	if st.Mode&unix.S_IFMT != unix.S_IFSOCK || st.Uid != uint32(os.Geteuid()) {
		return fmt.Errorf("%s was replaced after bind", path)
	}
	if gid != nil {
		if err := unix.Fchownat(fd, "", -1, int(*gid), unix.AT_EMPTY_PATH); err != nil {
			return &fs.PathError{Op: "chgrp", Path: path, Err: err}
		}
	}
	// chmod has no "this descriptor" form for an O_PATH file before
	// fchmodat2; the descriptor's /proc/self/fd link names exactly it.
	if err := unix.Chmod(fmt.Sprintf("/proc/self/fd/%d", fd), uint32(mode.Perm())); err != nil {
		return &fs.PathError{Op: "chmod", Path: path, Err: err}
	}
	return nil
}

// overflowOwner says, once per process, whether the kernel may report a
// local caller whose uid this process's user namespace does not map, and
// under which uid: the overflow uid (/proc/sys/kernel/overflowuid, 65534
// by default), which is also "nobody". The kernel reports every owner and
// peer credential as this namespace sees it (sock_diag, /proc/net/tcp and
// SO_PEERCRED alike), and maps a user it cannot map to the overflow uid.
//
// In the initial user namespace every uid is mapped: nothing is
// ambiguous. Elsewhere a report of the overflow uid is ambiguous for any
// caller when that uid is not mapped here (then it is always a stand-in),
// or when the network namespace belongs to a user namespace outside this
// one (a rootless container sharing the host's network): every host user
// can then reach 127.0.0.1 here. In a network namespace of its own user
// namespace only a privileged process from outside could enter, and a
// mapped "nobody" is the app user it seems — over TCP; a unix socket may
// be reached through a shared directory, which unmappedUnixPeer checks.
// Any doubt counts as ambiguous: a caller is refused rather than taken
// for nobody.
var overflowOwner = sync.OnceValue(func() (o overflowIDs) {
	o.uid, _ = userns.Overflow("/proc")
	o.ambiguous = true
	maps, err := userns.UIDMap("/proc")
	switch {
	case err != nil:
	case userns.Initial(maps):
		o.initial, o.ambiguous = true, false
	case userns.Maps(maps, o.uid):
		own, err := netnsOwnedHere()
		o.ambiguous = err != nil || !own
	}
	return o
})

// overflowIDs is what overflowOwner found.
type overflowIDs struct {
	uid uint32
	// initial: the initial user namespace, where every uid is mapped.
	initial bool
	// ambiguous: a caller of any transport reported as uid may be a user
	// this namespace does not map.
	ambiguous bool
}

// netnsOwnedHere reports whether this process's network namespace is
// owned by its own user namespace (NS_GET_USERNS). An owner outside it
// is EPERM: false.
func netnsOwnedHere() (bool, error) {
	ns, err := os.Open("/proc/self/ns/net")
	if err != nil {
		return false, err
	}
	defer ns.Close()
	owner, err := userns.Owner(int(ns.Fd()))
	if errors.Is(err, unix.EPERM) {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	defer unix.Close(owner)
	return userns.Same(owner, "/proc/self/ns/user")
}

// unmappedCaller reports whether uid, as the kernel reported a local
// caller's, may stand for a user this process's user namespace does not
// map (overflowOwner).
func unmappedCaller(uid uint32) bool {
	o := overflowOwner()
	return o.ambiguous && uid == o.uid
}

// unmappedUnixPeer reports whether a unix socket peer reported as the
// overflow uid may be a user this user namespace does not map although
// overflowOwner found TCP callers unambiguous: outside the initial user
// namespace, a peer this PID namespace does not show (pid 0), or one in
// another user namespace, may have reached the socket through a shared
// directory. A peer in this process's own user namespace holds mapped ids
// (or its creator's).
func unmappedUnixPeer(p localCaller) bool {
	o := overflowOwner()
	if o.initial || p.uid != o.uid {
		return false
	}
	if p.pid <= 0 {
		return true
	}
	var peer, self unix.Stat_t
	if unix.Stat(fmt.Sprintf("/proc/%d/ns/user", p.pid), &peer) != nil || unix.Stat("/proc/self/ns/user", &self) != nil {
		return true
	}
	return peer.Dev != self.Dev || peer.Ino != self.Ino
}
