//go:build linux

package attest

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"os/user"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"

	"golang.org/x/sys/unix"

	"github.com/moatless/moatless/internal/userns"
	"github.com/moatless/moatless/internal/wire"
)

// Unix attests a local process from its peer credentials and /proc:
//
//	unix:uid:N                  effective uid at connect(2) (SO_PEERCRED)
//	unix:gid:N                  effective gid at connect(2) (SO_PEERCRED)
//	unix:user:NAME              name of that uid, when it has one
//	unix:group:NAME             name of that gid, when it has one
//	unix:supplementary_gid:N    each supplementary group (/proc/PID/status)
//	unix:supplementary_group:NAME
//	unix:path:/abs/path         the caller's binary (/proc/PID/exe)
//	unix:sha256:HEX             SHA-256 of that binary
//
// unix:path and unix:sha256 are given only for a binary whose path and
// bytes the caller could not choose (Image.ExeTrusted): not one executed
// from a mount namespace of a user namespace a user made, nor from FUSE.
//
// Races: Unix is a Binder. A peer bound when its connection was accepted
// is attested only while it still runs the bound image: same start time
// (not a reused PID), same executable device and inode (no execve since),
// and, with a pidfd, not exited. The path and hash come from one
// descriptor opened from /proc/PID/exe and checked against the bound
// image (the path is that descriptor's own, read from /proc/self/fd), so
// they describe the same file, and replacing the file at the path changes
// nothing. Everything is checked again after the reads, so an execve
// during attestation is caught too. Without a pidfd (kernels before 5.3)
// a PID reused before the binding is not detectable; from 5.3 to 6.4 the
// pidfd is opened from the PID after accept(2), which leaves the same
// window between the peer's connect(2) and the agent's accept(2).
//
// Hashes are cached by (device, inode, size, mtime, ctime) so a busy
// binary is hashed once. Unix is safe for concurrent use.
type Unix struct {
	procRoot  string
	maxBinary int64
	skipNames bool

	mu    sync.Mutex
	cache map[fileKey]string
	// hashing holds, per uid, the binaries being hashed for its
	// processes (at most hashesPerUID at once).
	hashing map[uint32]*hashSlots
	// testHashWait and testHashing, set by tests only, run when a hash
	// waits for its uid's slot and once it holds it.
	testHashWait, testHashing func(uid uint32)

	userNSOnce sync.Once
	userNS     unix.Stat_t
	userNSErr  error

	procOnce sync.Once
	procErr  error

	overflowOnce sync.Once
	overflow     overflowIDs
}

// overflowIDs are the ids the kernel reports for a uid or gid the agent's
// user namespace does not map (/proc/sys/kernel/overflowuid, overflowgid:
// 65534, nobody and nogroup), and whether any can be unmapped at all.
type overflowIDs struct {
	uid, gid uint32
	initial  bool // the agent is in the initial user namespace: all are mapped
}

type fileKey struct {
	dev, ino, size  uint64
	mtimeS, mtimeNs int64
	ctimeS, ctimeNs int64
}

// NewUnix returns a unix attestor.
func NewUnix(cfg UnixConfig) *Unix {
	u := &Unix{procRoot: cfg.ProcRoot, maxBinary: cfg.MaxBinarySize, skipNames: cfg.SkipNames, cache: map[fileKey]string{}, hashing: map[uint32]*hashSlots{}}
	if u.procRoot == "" {
		u.procRoot = DefaultProcRoot
	}
	if u.maxBinary <= 0 {
		u.maxBinary = DefaultMaxBinarySize
	}
	return u
}

func sel(kind, value string) wire.Selector {
	return wire.Selector{Type: SelectorType, Value: kind + ":" + value}
}

func (u *Unix) procDir(pid int32) string {
	return filepath.Join(u.procRoot, strconv.FormatInt(int64(pid), 10))
}

// Bind implements Binder: it reads the image peer runs now. It fails with
// ErrProcessGone if the process exited (or its PID changed hands) while it
// read.
func (u *Unix) Bind(_ context.Context, peer Peer) (Image, error) {
	if peer.PID <= 0 {
		return Image{}, ErrInvalidPeer
	}
	if err := u.ownProc(); err != nil {
		return Image{}, err
	}
	dir := u.procDir(peer.PID)
	start, err := readStartTime(dir)
	if err != nil {
		return Image{}, err
	}
	img := Image{StartTime: start}
	if img.Dev, img.Ino, img.ExeKnown, err = exeIdentity(dir); err != nil {
		return Image{}, err
	}
	if img.ExeKnown {
		if img.ExeTrusted, err = u.exeTrusted(dir, img); err != nil {
			return Image{}, err
		}
	}
	if err := u.same(dir, peer, img.StartTime); err != nil {
		return Image{}, err
	}
	return img, nil
}

// exeIdentity stats the executable behind dir/exe (stat follows the
// link to the file the process runs). known is false when the agent may
// not read it.
func exeIdentity(dir string) (dev, ino uint64, known bool, err error) {
	var st unix.Stat_t
	err = unix.Stat(filepath.Join(dir, "exe"), &st)
	switch {
	case err == nil:
		return st.Dev, st.Ino, true, nil
	case errors.Is(err, unix.EACCES), errors.Is(err, unix.EPERM):
		return 0, 0, false, nil
	default:
		return 0, 0, false, gone(err)
	}
}

// same checks that the process behind dir is still the one peer names,
// started at start, and has not exited.
func (u *Unix) same(dir string, peer Peer, start uint64) error {
	now, err := readStartTime(dir)
	if err != nil {
		return err
	}
	if now != start {
		return ErrProcessGone
	}
	if peer.PIDFD >= 0 && exited(peer.PIDFD) {
		return ErrProcessGone
	}
	return nil
}

// exited reports whether the process behind pidfd has terminated: a
// pidfd polls readable from the moment its process exits, zombie or
// reaped (a signal 0 would still reach a zombie).
func exited(pidfd int) bool {
	fds := []unix.PollFd{{Fd: int32(pidfd), Events: unix.POLLIN}}
	for {
		n, err := unix.Poll(fds, 0)
		if errors.Is(err, unix.EINTR) {
			continue
		}
		// An error other than EINTR means the pidfd is unusable: treat
		// the process as gone rather than trust /proc alone.
		return err != nil || (n > 0 && fds[0].Revents != 0)
	}
}

// Attest implements Attestor.
func (u *Unix) Attest(ctx context.Context, peer Peer) ([]wire.Selector, error) {
	if peer.PID <= 0 {
		return nil, ErrInvalidPeer
	}
	if err := u.ownProc(); err != nil {
		return nil, err
	}
	img := peer.Image
	if img == nil {
		b, err := u.Bind(ctx, peer)
		if err != nil {
			return nil, err
		}
		img = &b
	}
	dir := u.procDir(peer.PID)
	if err := u.same(dir, peer, img.StartTime); err != nil {
		return nil, err
	}

	sels := []wire.Selector{
		sel("uid", strconv.FormatUint(uint64(peer.UID), 10)),
		sel("gid", strconv.FormatUint(uint64(peer.GID), 10)),
	}
	if !u.skipNames {
		if usr, err := user.LookupId(strconv.FormatUint(uint64(peer.UID), 10)); err == nil {
			sels = append(sels, sel("user", usr.Username))
		}
		if g, err := user.LookupGroupId(strconv.FormatUint(uint64(peer.GID), 10)); err == nil {
			sels = append(sels, sel("group", g.Name))
		}
	}

	status, err := readProcFile(filepath.Join(dir, "status"))
	if err != nil {
		return nil, gone(err)
	}
	groups, err := ParseStatusGroups(status)
	if err != nil {
		return nil, err
	}
	if err := u.checkMapped(dir, peer, groups); err != nil {
		return nil, err
	}
	for _, g := range groups {
		gs := strconv.FormatUint(uint64(g), 10)
		sels = append(sels, sel("supplementary_gid", gs))
		if !u.skipNames {
			if grp, err := user.LookupGroupId(gs); err == nil {
				sels = append(sels, sel("supplementary_group", grp.Name))
			}
		}
	}

	exeSels, err := u.exeSelectors(ctx, dir, img, peer.UID)
	if err != nil {
		return nil, err
	}
	sels = append(sels, exeSels...)

	// Everything above described the bound image only if the process
	// still runs it now: an execve or exit during the reads shows here.
	if err := u.same(dir, peer, img.StartTime); err != nil {
		return nil, err
	}
	dev, ino, known, err := exeIdentity(dir)
	if err != nil {
		return nil, err
	}
	if known != img.ExeKnown || dev != img.Dev || ino != img.Ino {
		return nil, ErrExecuted
	}
	return sels, nil
}

// exeSelectors returns unix:path and unix:sha256 for the executable of
// the process at dir, of uid (see hashesPerUID), read through one
// descriptor that must be the bound image's executable. An executable the agent may not read gives none,
// unless the bound image's was readable (then the image changed).
func (u *Unix) exeSelectors(ctx context.Context, dir string, img *Image, uid uint32) ([]wire.Selector, error) {
	f, err := os.Open(filepath.Join(dir, "exe"))
	if err != nil {
		if errors.Is(err, os.ErrPermission) {
			if img.ExeKnown {
				return nil, ErrExecuted
			}
			return nil, nil
		}
		// Kernel threads have no exe; an exited process has none either.
		return nil, gone(err)
	}
	defer f.Close()
	key, err := statKey(f)
	if err != nil {
		return nil, fmt.Errorf("attest: stat binary: %w", err)
	}
	if !img.ExeKnown || key.dev != img.Dev || key.ino != img.Ino {
		return nil, ErrExecuted
	}
	if !img.ExeTrusted {
		// The path and the bytes are the caller's to choose (see Image).
		return nil, nil
	}
	// The descriptor's own path: the file it opened, whatever the
	// process runs by now.
	path, err := os.Readlink(filepath.Join(u.procRoot, "self", "fd", strconv.Itoa(int(f.Fd()))))
	if err != nil {
		return nil, fmt.Errorf("attest: path of the binary: %w", err)
	}
	sels := []wire.Selector{sel("path", path)}
	if sum, ok, err := u.hashExe(ctx, f, key, uid); err != nil {
		return nil, err
	} else if ok {
		sels = append(sels, sel("sha256", sum))
	}
	return sels, nil
}

// exeTrusted reports whether the executable the process at dir runs,
// whose device and inode img holds, is one whose path and content only
// the agent's own privilege could have chosen (Image.ExeTrusted).
//
// /proc/PID/exe names the file as seen from the mount it was executed
// through. A user who makes a user and mount namespace (unshare -Urm)
// may bind-mount any file over /usr/local/bin/web there and execute it:
// the link then reads /usr/local/bin/web and the running file is theirs.
// A process of the same user in the agent's namespace can execute that
// file too, through /proc/PID/root of the first. So the executable's
// mount must be one of the process's own namespace, and that namespace
// must be owned by the agent's user namespace: an unprivileged user can
// neither add a mount to such a namespace (save FUSE through the setuid
// fusermount) nor return to one after leaving it. On FUSE, the server
// that answers the kernel's reads sees who reads and may answer the
// agent's hash with other bytes than it gave exec(2).
func (u *Unix) exeTrusted(dir string, img Image) (bool, error) {
	f, err := os.Open(filepath.Join(dir, "exe"))
	if err != nil {
		if errors.Is(err, os.ErrPermission) {
			return false, nil
		}
		return false, gone(err)
	}
	defer f.Close()
	fd := int(f.Fd())
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return false, fmt.Errorf("attest: stat binary: %w", err)
	}
	if st.Dev != img.Dev || st.Ino != img.Ino {
		// It executed another program meanwhile: Attest refuses it.
		return false, nil
	}
	var fs unix.Statfs_t
	if err := unix.Fstatfs(fd, &fs); err != nil {
		return false, fmt.Errorf("attest: statfs binary: %w", err)
	}
	if fs.Type == unix.FUSE_SUPER_MAGIC {
		return false, nil
	}
	mnt, err := u.mountID(fd)
	if err != nil {
		return false, err
	}
	if ok, err := mountListed(filepath.Join(dir, "mountinfo"), mnt); err != nil || !ok {
		return false, err
	}
	if ok, err := u.inAgentUserNS(dir); err != nil || !ok {
		return false, err
	}
	return u.nsOwnedByAgent(dir)
}

// inAgentUserNS reports whether the process at dir is in the agent's own
// user namespace. The owner of a user namespace holds every capability in
// it, CAP_SYS_PTRACE included: a user who starts a binary inside one they
// made (unshare -U) may trace it and write its memory even where Yama's
// admin-only mode (ptrace_scope 2) forbids that outside, so the binary
// says nothing about what the process does.
func (u *Unix) inAgentUserNS(dir string) (bool, error) {
	self, err := u.agentUserNS()
	if err != nil {
		return false, err
	}
	var st unix.Stat_t
	if err := unix.Stat(filepath.Join(dir, "ns", "user"), &st); err != nil {
		if errors.Is(err, unix.EACCES) || errors.Is(err, unix.EPERM) {
			return false, nil
		}
		return false, gone(err)
	}
	return st.Dev == self.Dev && st.Ino == self.Ino, nil
}

// mountID returns the ID of the mount fd was opened through: statx (Linux
// ≥ 5.8), else /proc/self/fdinfo (≥ 3.15).
func (u *Unix) mountID(fd int) (uint64, error) {
	var stx unix.Statx_t
	if err := unix.Statx(fd, "", unix.AT_EMPTY_PATH, unix.STATX_MNT_ID, &stx); err == nil && stx.Mask&unix.STATX_MNT_ID != 0 {
		return stx.Mnt_id, nil
	}
	b, err := readProcFile(filepath.Join(u.procRoot, "self", "fdinfo", strconv.Itoa(fd)))
	if err != nil {
		return 0, fmt.Errorf("attest: mount of the binary: %w", err)
	}
	for line := range bytes.SplitSeq(b, []byte{'\n'}) {
		if v, ok := bytes.CutPrefix(line, []byte("mnt_id:")); ok {
			id, err := strconv.ParseUint(string(bytes.TrimSpace(v)), 10, 64)
			if err != nil {
				return 0, fmt.Errorf("attest: mount of the binary: %w", err)
			}
			return id, nil
		}
	}
	return 0, errors.New("attest: mount of the binary: no mnt_id in fdinfo")
}

// mountListed reports whether the mountinfo file at path lists the mount
// id (its first field).
func mountListed(path string, id uint64) (bool, error) {
	f, err := os.Open(path)
	if err != nil {
		if errors.Is(err, os.ErrPermission) {
			return false, nil
		}
		return false, gone(err)
	}
	defer f.Close()
	want := strconv.FormatUint(id, 10) + " "
	r := bufio.NewReaderSize(f, 64<<10)
	for {
		line, err := r.ReadSlice('\n')
		if bytes.HasPrefix(line, []byte(want)) {
			return true, nil
		}
		for errors.Is(err, bufio.ErrBufferFull) { // a line longer than the buffer: skip its rest
			_, err = r.ReadSlice('\n')
		}
		if err == io.EOF {
			return false, nil
		}
		if err != nil {
			return false, gone(err)
		}
	}
}

// nsOwnedByAgent reports whether the mount namespace of the process at
// dir is owned by the agent's own user namespace.
func (u *Unix) nsOwnedByAgent(dir string) (bool, error) {
	self, err := u.agentUserNS()
	if err != nil {
		return false, err
	}
	ns, err := os.Open(filepath.Join(dir, "ns", "mnt"))
	if err != nil {
		if errors.Is(err, os.ErrPermission) {
			return false, nil
		}
		return false, gone(err)
	}
	defer ns.Close()
	var st unix.Stat_t
	owner, err := userns.Owner(int(ns.Fd()))
	switch {
	case err == nil:
		defer unix.Close(owner)
		if err := unix.Fstat(owner, &st); err != nil {
			return false, fmt.Errorf("attest: owner of the mount namespace: %w", err)
		}
	case errors.Is(err, unix.ENOTTY), errors.Is(err, unix.EINVAL):
		// Before Linux 4.9: the process's own user namespace. An
		// unprivileged process in the agent's can only be in a mount
		// namespace of the same owner.
		if err := unix.Stat(filepath.Join(dir, "ns", "user"), &st); err != nil {
			if errors.Is(err, unix.EACCES) || errors.Is(err, unix.EPERM) {
				return false, nil
			}
			return false, gone(err)
		}
	case errors.Is(err, unix.EPERM):
		// Owned by a user namespace outside the agent's.
		return false, nil
	default:
		return false, fmt.Errorf("attest: owner of the mount namespace: %w", err)
	}
	return st.Dev == self.Dev && st.Ino == self.Ino, nil
}

// ErrUnmappedPeer means the peer's uid, gid or a supplementary group is
// the overflow id of an agent run in a user namespace, and the peer is in
// another user namespace: the kernel reports any id the agent's namespace
// does not map as that id, 65534 (nobody, nogroup), so the peer may be
// any user of the host that reached the socket — it cannot be told from
// nobody.
var ErrUnmappedPeer = errors.New("attest: the caller's uid, gid or a group reads as the overflow id (65534) of the agent's user namespace, which stands for every id that namespace does not map: it is not attested; run the agent in the host's user namespace, or the workload under another uid")

// checkMapped refuses (ErrUnmappedPeer) a peer that may hold ids the
// agent's user namespace does not map. In the initial user namespace
// every id is mapped. Elsewhere a peer in the agent's own user namespace
// holds mapped ids (or those of the namespace's creator), and one whose
// ids are not the overflow ids is mapped by definition.
func (u *Unix) checkMapped(dir string, peer Peer, groups []uint32) error {
	o := u.overflowIDs()
	if o.initial || (peer.UID != o.uid && peer.GID != o.gid && !slices.Contains(groups, o.gid)) {
		return nil
	}
	same, err := u.inAgentUserNS(dir)
	if err != nil {
		return err
	}
	if !same {
		return ErrUnmappedPeer
	}
	return nil
}

// overflowIDs reads, once, the overflow ids and whether the agent is in
// the initial user namespace (uid_map maps all 2^32-1 ids to themselves).
// Anything unreadable counts as not initial.
func (u *Unix) overflowIDs() overflowIDs {
	u.overflowOnce.Do(func() {
		var o overflowIDs
		o.uid, o.gid = userns.Overflow(u.procRoot)
		if maps, err := userns.UIDMap(u.procRoot); err == nil {
			o.initial = userns.Initial(maps)
		}
		u.overflow = o
	})
	return u.overflow
}

// ErrForeignProc means the procfs the attestor reads belongs to another
// PID namespace than the agent's: the kernel gives the agent its peers'
// PIDs in the agent's own namespace (SO_PEERCRED), so each would name
// another process there. It happens when the agent runs in a PID
// namespace of its own without a procfs of its own: `unshare --pid
// --fork` without `--mount-proc`, or a container given the host's /proc.
var ErrForeignProc = errors.New("attest: procfs belongs to another PID namespace than the agent's, so a peer's PID would name another process: mount a procfs of the agent's own PID namespace (unshare --mount-proc), or run the agent in the workloads' PID namespace (hostPID)")

// ownProc checks, once, that procRoot is the procfs of the agent's own
// PID namespace: there, "self" names the agent's own PID, and its NSpid
// (Linux ≥ 4.1) lists that one PID alone. "self" is not enough: in an
// outer namespace's procfs the agent may have the same number as in its
// own, while its peers' numbers still name other processes; NSpid, read
// from the procfs's namespace down to the agent's, then lists two.
func (u *Unix) ownProc() error {
	u.procOnce.Do(func() { u.procErr = checkOwnProc(u.procRoot, os.Getpid()) })
	return u.procErr
}

func checkOwnProc(root string, pid int) error {
	self, err := os.Readlink(filepath.Join(root, "self"))
	if err != nil {
		return fmt.Errorf("attest: reading %s/self: %w", root, err)
	}
	if self != strconv.Itoa(pid) {
		return fmt.Errorf("%w (%s/self is %s, the agent is PID %d)", ErrForeignProc, root, self, pid)
	}
	status, err := readProcFile(filepath.Join(root, self, "status"))
	if err != nil {
		return fmt.Errorf("attest: reading %s/%s/status: %w", root, self, err)
	}
	for line := range bytes.SplitSeq(status, []byte{'\n'}) {
		rest, ok := bytes.CutPrefix(line, []byte("NSpid:"))
		if !ok {
			continue
		}
		if f := strings.Fields(string(rest)); len(f) != 1 || f[0] != self {
			return fmt.Errorf("%w (the agent's NSpid there is %q: it is seen from %d PID namespaces)", ErrForeignProc, strings.TrimSpace(string(rest)), len(f))
		}
		return nil
	}
	return nil // before Linux 4.1: no NSpid
}

// agentUserNS is the agent's own user namespace, read once.
func (u *Unix) agentUserNS() (unix.Stat_t, error) {
	u.userNSOnce.Do(func() {
		u.userNSErr = unix.Stat(filepath.Join(u.procRoot, "self", "ns", "user"), &u.userNS)
		if u.userNSErr != nil {
			u.userNSErr = fmt.Errorf("attest: the agent's user namespace: %w", u.userNSErr)
		}
	})
	return u.userNS, u.userNSErr
}

func gone(err error) error {
	if errors.Is(err, os.ErrNotExist) || errors.Is(err, syscall.ESRCH) {
		return ErrProcessGone
	}
	return fmt.Errorf("attest: %w", err)
}

// hashesPerUID bounds the binaries hashed at once for the processes of
// one uid. A binary not in the cache costs a read of up to MaxBinarySize
// (256 MiB: a good part of a second of a core); any local user can make
// every call miss the cache (touch the binary between calls, or run many
// copies) and make calls on hundreds of connections at once. Bounded per
// uid, one user's hashes queue behind each other and take one core, and
// other users' calls are not held. Users of a user namespace of their own
// (their subordinate uids) are never hashed (Image.ExeTrusted).
const hashesPerUID = 1

// hashSlots are one uid's slots (a semaphore), with how many calls hold
// or wait for one: the entry goes when none does.
type hashSlots struct {
	ch   chan struct{}
	refs int
}

// hashSlot takes one of uid's hashing slots, waiting for it until ctx
// ends. release gives it back.
func (u *Unix) hashSlot(ctx context.Context, uid uint32) (release func(), err error) {
	u.mu.Lock()
	s := u.hashing[uid]
	if s == nil {
		s = &hashSlots{ch: make(chan struct{}, hashesPerUID)}
		u.hashing[uid] = s
	}
	s.refs++
	u.mu.Unlock()
	done := func() {
		u.mu.Lock()
		if s.refs--; s.refs == 0 {
			delete(u.hashing, uid)
		}
		u.mu.Unlock()
	}
	select {
	case s.ch <- struct{}{}:
	default:
		if u.testHashWait != nil {
			u.testHashWait(uid)
		}
		select {
		case s.ch <- struct{}{}:
		case <-ctx.Done():
			done()
			return nil, fmt.Errorf("attest: waiting to hash the binary: %w", ctx.Err())
		}
	}
	return func() { <-s.ch; done() }, nil
}

// cachedHash is the cached hash of the binary with key, if any.
func (u *Unix) cachedHash(key fileKey) (string, bool) {
	u.mu.Lock()
	defer u.mu.Unlock()
	sum, hit := u.cache[key]
	return sum, hit
}

// hashExe hashes the binary open as f, whose stat key is key, for a
// process of uid (see hashesPerUID). ok is false when the binary is larger
// than the limit.
func (u *Unix) hashExe(ctx context.Context, f *os.File, key fileKey, uid uint32) (sum string, ok bool, err error) {
	if int64(key.size) > u.maxBinary {
		return "", false, nil
	}
	if sum, hit := u.cachedHash(key); hit {
		return sum, true, nil
	}
	release, err := u.hashSlot(ctx, uid)
	if err != nil {
		return "", false, err
	}
	defer release()
	if u.testHashing != nil {
		u.testHashing(uid)
	}
	// Another call may have hashed it while this one waited.
	if sum, hit := u.cachedHash(key); hit {
		return sum, true, nil
	}
	h := sha256.New()
	n, err := io.Copy(h, readerCtx{ctx, io.LimitReader(f, u.maxBinary+1)})
	if err != nil {
		return "", false, fmt.Errorf("attest: hash binary: %w", err)
	}
	after, err := statKey(f)
	if err != nil {
		return "", false, fmt.Errorf("attest: stat binary: %w", err)
	}
	if after != key || n != int64(key.size) {
		return "", false, errors.New("attest: binary changed while it was hashed")
	}
	sum = hex.EncodeToString(h.Sum(nil))
	u.mu.Lock()
	if len(u.cache) >= defaultHashCacheSize {
		clear(u.cache)
	}
	u.cache[key] = sum
	u.mu.Unlock()
	return sum, true, nil
}

type readerCtx struct {
	ctx context.Context
	r   io.Reader
}

func (r readerCtx) Read(p []byte) (int, error) {
	if err := r.ctx.Err(); err != nil {
		return 0, err
	}
	return r.r.Read(p)
}

func statKey(f *os.File) (fileKey, error) {
	var st unix.Stat_t
	if err := unix.Fstat(int(f.Fd()), &st); err != nil {
		return fileKey{}, err
	}
	return fileKey{
		dev: st.Dev, ino: st.Ino, size: uint64(st.Size),
		mtimeS: st.Mtim.Sec, mtimeNs: st.Mtim.Nsec,
		ctimeS: st.Ctim.Sec, ctimeNs: st.Ctim.Nsec,
	}, nil
}

func readProcFile(path string) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, maxProcFileSize+1))
	if err != nil {
		return nil, err
	}
	if len(b) > maxProcFileSize {
		return nil, fmt.Errorf("%s is larger than %d bytes", path, maxProcFileSize)
	}
	return b, nil
}

func readStartTime(dir string) (uint64, error) {
	b, err := readProcFile(filepath.Join(dir, "stat"))
	if err != nil {
		return 0, gone(err)
	}
	return ParseStatStartTime(b)
}

// ParseStatStartTime returns field 22 (starttime, clock ticks after boot)
// of a /proc/PID/stat line. The command name (field 2) may hold spaces and
// parentheses, so fields are counted from its last ')'.
func ParseStatStartTime(stat []byte) (uint64, error) {
	i := bytes.LastIndexByte(stat, ')')
	if i < 0 || bytes.IndexByte(stat, '(') < 0 {
		return 0, errors.New("attest: malformed /proc stat: no command name")
	}
	fields := strings.Fields(string(stat[i+1:]))
	// After ')' come fields 3 (state) onwards; starttime is field 22.
	const idx = 22 - 3
	if len(fields) <= idx {
		return 0, fmt.Errorf("attest: malformed /proc stat: %d fields after the command name", len(fields))
	}
	v, err := strconv.ParseUint(fields[idx], 10, 64)
	if err != nil {
		return 0, fmt.Errorf("attest: malformed /proc stat start time: %w", err)
	}
	return v, nil
}

// maxGroups bounds the supplementary groups taken from /proc (the kernel's
// NGROUPS_MAX is 65536; entries needing more than this are not sensible).
const maxGroups = 1024

// ParseStatusGroups returns the supplementary group IDs from the "Groups:"
// line of /proc/PID/status. A status without that line is malformed.
func ParseStatusGroups(status []byte) ([]uint32, error) {
	for line := range bytes.SplitSeq(status, []byte{'\n'}) {
		rest, ok := bytes.CutPrefix(line, []byte("Groups:"))
		if !ok {
			continue
		}
		fields := strings.Fields(string(rest))
		if len(fields) > maxGroups {
			return nil, fmt.Errorf("attest: more than %d supplementary groups", maxGroups)
		}
		out := make([]uint32, 0, len(fields))
		for _, f := range fields {
			g, err := strconv.ParseUint(f, 10, 32)
			if err != nil {
				return nil, fmt.Errorf("attest: malformed /proc status group %q: %w", f, err)
			}
			out = append(out, uint32(g))
		}
		return out, nil
	}
	return nil, errors.New("attest: malformed /proc status: no Groups line")
}
