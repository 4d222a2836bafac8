//go:build linux

package workload

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"syscall"

	"golang.org/x/sys/unix"
	"google.golang.org/grpc/credentials"

	"github.com/moatless/moatless/internal/attest"
	"github.com/moatless/moatless/internal/userns"
)

// peerCredentials is a gRPC TransportCredentials that adds no encryption
// (the unix socket never leaves the kernel) but binds each connection, at
// accept time, to the process that opened it, from the kernel's word
// alone: SO_PEERCRED (pid, uid, gid at connect(2)), a pidfd for that
// process (SO_PEERPIDFD, or pidfd_open of the PID on kernels before 6.5),
// and, through binder, the program image it runs then (start time,
// executable device and inode).
//
// The connection it returns then checks every byte it reads: the kernel
// stamps each write on a unix socket with the writing process's PID
// (SCM_CREDENTIALS, with SO_PASSCRED on the socket), so bytes written by
// any other process than the opener — a child it handed the descriptor
// to, a process it passed it to over another socket — mark the connection,
// and so does a request already sent before the binding (it may come from
// the program the process ran before an execve). Server.caller refuses
// every call on a marked connection. Nothing the client sends is used to
// identify it.
type peerCredentials struct {
	// binder binds connections to program images; nil binds nothing
	// (an attestor that reads no /proc needs no binding).
	binder attest.Binder
	hooks  *testHooks
	// limits bounds the open connections, by uid and in all; nil bounds
	// nothing.
	limits *connLimits
}

// AuthInfo is the peer information attached to every RPC on a Workload API
// connection (read it with peer.FromContext).
type AuthInfo struct {
	credentials.CommonAuthInfo
	Peer attest.Peer
	conn *boundConn
}

// AuthType implements credentials.AuthInfo.
func (AuthInfo) AuthType() string { return "unix-peercred" }

var errNotUnix = errors.New("workload: connection is not a unix socket")

func (pc peerCredentials) ServerHandshake(conn net.Conn) (net.Conn, credentials.AuthInfo, error) {
	uc, ok := conn.(*net.UnixConn)
	if !ok {
		return nil, nil, errNotUnix
	}
	raw, err := uc.SyscallConn()
	if err != nil {
		return nil, nil, fmt.Errorf("workload: peer credentials: %w", err)
	}
	var (
		cred    *unix.Ucred
		serr    error
		pidfd   = -1
		account uint32 // the uid the connection counts against in limits
	)
	cerr := raw.Control(func(fd uintptr) {
		if cred, serr = unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED); serr != nil {
			return
		}
		if pc.limits != nil {
			account = accountUID(cred)
			if serr = pc.limits.acquire(account); serr != nil {
				cred = nil // no slot taken: nothing to release
				return
			}
		}
		// The listener has SO_PASSCRED, which accepted sockets inherit;
		// set it again in case this one came from elsewhere. Bytes queued
		// before it was set carry no PID and count as foreign.
		if serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_PASSCRED, 1); serr != nil {
			return
		}
		// ENOPROTOOPT before Linux 6.5: pidfd_open below.
		if p, err := unix.GetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_PEERPIDFD); err == nil {
			pidfd = p
		}
	})
	if cerr != nil || serr != nil {
		if cred != nil && pc.limits != nil {
			pc.limits.release(account)
		}
		if pidfd >= 0 {
			unix.Close(pidfd)
		}
		if errors.Is(serr, errTooManyConns) {
			return nil, nil, serr
		}
		return nil, nil, fmt.Errorf("workload: peer credentials: %w", errors.Join(cerr, serr))
	}
	if pidfd < 0 && cred.Pid > 0 {
		// Weaker than SO_PEERPIDFD: the PID may already name another
		// process if the peer exited since connect(2). The binding's
		// start time then belongs to that process; see docs/agent.md.
		if p, err := unix.PidfdOpen(int(cred.Pid), unix.PIDFD_NONBLOCK); err == nil {
			pidfd = p
		}
	}
	if pc.hooks != nil {
		runHook(&pc.hooks.handshake, cred.Pid)
	}
	peer := attest.Peer{PID: cred.Pid, UID: cred.Uid, GID: cred.Gid, PIDFD: pidfd}
	bc := &boundConn{UnixConn: uc, pid: cred.Pid, pidfd: pidfd, account: cred.Uid}
	if pc.limits != nil {
		bc.account = account
		bc.release = func() { pc.limits.release(account) }
	}
	if pc.binder != nil && cred.Pid > 0 {
		img, err := pc.binder.Bind(context.Background(), peer)
		if err != nil {
			// Refused at the first call, with the reason, rather than by
			// a failed handshake the client would only see as Unavailable.
			bc.bindErr = err
		} else {
			peer.Image = &img
		}
	}
	// Everything queued by now was written before the binding above: by
	// the image bound, or by one the process ran before an execve. A
	// request among those bytes cannot be attributed to the bound image.
	var inq int
	cerr = raw.Control(func(fd uintptr) { inq, serr = unix.IoctlGetInt(int(fd), unix.SIOCINQ) })
	if cerr == nil && serr == nil {
		bc.early.left = inq
	} else {
		bc.bindErr = fmt.Errorf("workload: queued bytes: %w", errors.Join(cerr, serr))
	}
	info := AuthInfo{
		CommonAuthInfo: credentials.CommonAuthInfo{SecurityLevel: credentials.PrivacyAndIntegrity},
		Peer:           peer,
		conn:           bc,
	}
	return bc, info, nil
}

func (peerCredentials) ClientHandshake(context.Context, string, net.Conn) (net.Conn, credentials.AuthInfo, error) {
	return nil, nil, errors.New("workload: peer credentials are server side only")
}

func (peerCredentials) Info() credentials.ProtocolInfo {
	return credentials.ProtocolInfo{SecurityProtocol: "unix-peercred"}
}

func (c peerCredentials) Clone() credentials.TransportCredentials { return c }

func (peerCredentials) OverrideServerName(string) error { return nil } //nolint:staticcheck // interface

// boundConn is a Workload API connection bound to the process that opened
// it. It reads with recvmsg to see the writer of every byte, and closes the
// peer's pidfd with the connection. Read is called by one goroutine (the
// gRPC transport's reader); the marks are read by the handlers.
type boundConn struct {
	*net.UnixConn
	pid     int32
	pidfd   int
	bindErr error

	// oob has room for the writer's SCM_CREDENTIALS and nothing more:
	// descriptors a client attaches (SCM_RIGHTS) find no room, so the
	// kernel closes them instead of installing them in the agent (with
	// 64 bytes it installed up to four per write, and a client writing
	// one byte at a time could fill the agent's descriptor table).
	oob   [credSpace]byte
	early earlyScan

	// release gives back the connection's slot in peerCredentials.limits
	// (nil: none taken).
	release func()
	// account is the uid the connection and its streams count against
	// (accountUID).
	account uint32

	foreign      atomic.Int32 // first other writer's PID (-1: a write without a PID)
	earlyRequest atomic.Bool
	once         sync.Once
}

// credSpace is the control buffer one SCM_CREDENTIALS takes.
const credSpace = 32 // unix.CmsgSpace(unix.SizeofUcred) on every Linux ABI the agent builds for

// Read implements net.Conn. Each recvmsg returns bytes of one writer only:
// with SO_PASSCRED the kernel never merges writes of different processes
// into one read.
func (c *boundConn) Read(p []byte) (int, error) {
	n, oobn, _, _, err := c.UnixConn.ReadMsgUnix(p, c.oob[:])
	if n < 0 { // some error paths report -1
		n = 0
	}
	closeRights(c.oob[:oobn])
	if n > 0 {
		if w := writerPID(c.oob[:oobn]); w != c.pid {
			if w == 0 {
				w = -1
			}
			c.foreign.CompareAndSwap(0, w)
		}
		if c.early.active() && c.early.feed(p[:n]) {
			c.earlyRequest.Store(true)
		}
	}
	return n, err
}

// closeRights closes any descriptor that reached the agent in oob
// (SCM_RIGHTS). The buffer leaves them no room (credSpace); this holds
// should a kernel find some anyway.
func closeRights(oob []byte) {
	msgs, err := unix.ParseSocketControlMessage(oob)
	if err != nil {
		return
	}
	for i := range msgs {
		if msgs[i].Header.Level != unix.SOL_SOCKET || msgs[i].Header.Type != unix.SCM_RIGHTS {
			continue
		}
		if fds, err := unix.ParseUnixRights(&msgs[i]); err == nil {
			for _, fd := range fds {
				unix.Close(fd)
			}
		}
	}
}

// writerPID returns the PID in the SCM_CREDENTIALS of oob, 0 if none.
func writerPID(oob []byte) int32 {
	msgs, err := unix.ParseSocketControlMessage(oob)
	if err != nil {
		return 0
	}
	for i := range msgs {
		if msgs[i].Header.Level == unix.SOL_SOCKET && msgs[i].Header.Type == unix.SCM_CREDENTIALS {
			if cr, err := unix.ParseUnixCredentials(&msgs[i]); err == nil {
				return cr.Pid
			}
		}
	}
	return 0
}

// accountOf is the uid the connection's streams count against.
func (c *boundConn) accountOf() (uint32, bool) { return c.account, true }

// check returns why no call may be served on this connection, or nil.
// The messages go to the client: they say what happened and what to do.
func (c *boundConn) check() error {
	switch w := c.foreign.Load(); {
	case c.bindErr != nil && errors.Is(c.bindErr, attest.ErrProcessGone):
		return fmt.Errorf("the process that opened this connection (pid %d) exited before the agent accepted it", c.pid)
	case c.bindErr != nil:
		return fmt.Errorf("the agent could not bind this connection to the process that opened it (pid %d)", c.pid)
	case w == -1:
		return fmt.Errorf("this connection was written to by a process the kernel did not name, not by process %d that opened it; a Workload API connection serves only the process that opened it", c.pid)
	case w != 0:
		return fmt.Errorf("this connection was written to by process %d, not by process %d that opened it; a Workload API connection serves only the process that opened it: open one in each process", w, c.pid)
	case c.earlyRequest.Load():
		return fmt.Errorf("a request on this connection was sent before the agent bound it to process %d, so the program that sent it is unknown; send requests only after the server's HTTP/2 SETTINGS (gRPC clients do)", c.pid)
	}
	return nil
}

func (c *boundConn) Close() error {
	c.once.Do(func() {
		if c.pidfd >= 0 {
			unix.Close(c.pidfd)
		}
		if c.release != nil {
			c.release()
		}
	})
	return c.UnixConn.Close()
}

// accountUID is the uid a connection of cred counts against in the
// per-uid bounds: the peer's own, unless the peer runs in a user namespace
// below the agent's that a user other than root made — then that user's,
// the outermost such. A user with subordinate uids (/etc/subuid, mapped
// by newuidmap into a namespace of their own) holds 65,536 uids or more:
// counted by the uid alone, they could open MaxConnsPerUID connections
// under each and take every slot of MaxConns from the other users. A
// namespace root made (a container runtime's, Kubernetes' user
// namespaces) gives each workload uids of its own, counted as such.
// Anything the agent cannot read counts under the peer's uid.
func accountUID(cred *unix.Ucred) uint32 {
	if cred.Pid <= 0 {
		return cred.Uid
	}
	fd, err := unix.Open(fmt.Sprintf("/proc/%d/ns/user", cred.Pid), unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return cred.Uid
	}
	account := cred.Uid
	// Nesting is at most 32 user namespaces deep (Linux's limit).
	for range 33 {
		if same, err := userns.Same(fd, "/proc/self/ns/user"); err != nil || same {
			break
		}
		if owner, err := userns.OwnerUID(fd); err == nil && owner != 0 {
			account = owner
		}
		parent, err := userns.Parent(fd)
		if err != nil {
			// EPERM: the parent is outside the agent's namespace, so
			// the peer's is not below it; its uid is what it is.
			unix.Close(fd)
			return cred.Uid
		}
		unix.Close(fd)
		fd = parent
	}
	unix.Close(fd)
	return account
}

// passCred turns on SO_PASSCRED, so every read names its writer.
func passCred(l *net.UnixListener) error {
	raw, err := l.SyscallConn()
	if err != nil {
		return err
	}
	var serr error
	if err := raw.Control(func(fd uintptr) { serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_PASSCRED, 1) }); err != nil {
		return err
	}
	return serr
}

func inode(path string) uint64 {
	fi, err := os.Lstat(path)
	if err != nil {
		return 0
	}
	if st, ok := fi.Sys().(*syscall.Stat_t); ok {
		return st.Ino
	}
	return 0
}
