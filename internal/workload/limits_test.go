//go:build linux

package workload

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/proto/spiffe/workload"
	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
	"golang.org/x/sys/unix"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"

	"github.com/moatless/moatless/internal/attest"
)

// TestHugeHeaderListIsRefused: gRPC's server takes header lists of up to
// 16 MiB by default and keeps them for the call's life, 64 calls to a
// connection; a local caller holding streams open with such headers makes
// the agent hold gigabytes. A call whose headers exceed MaxHeaderListSize
// is reset, or its connection closed, before any handler sees it; a
// normal call is still answered.
func TestHugeHeaderListIsRefused(t *testing.T) {
	f := newFixture(t)
	f.publish(1, nil, f.identity("spiffe://example.org/web", time.Hour, uidSelector()))
	for _, tc := range []struct {
		name   string
		pad    int
		served bool
	}{
		{"small_headers_served", 100, true},
		{"one_mebibyte_of_headers_reset", 1 << 20, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, err := net.Dial("unix", f.sock)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			c.SetDeadline(time.Now().Add(20 * time.Second))
			go c.Write(rawJWTRequest(hpack.HeaderField{Name: "x-pad", Value: strings.Repeat("a", tc.pad)}))
			fr := http2.NewFramer(io.Discard, c)
			fr.ReadMetaHeaders = hpack.NewDecoder(4096, nil)
			for {
				fr0, err := fr.ReadFrame()
				if err != nil {
					// The server may also drop the whole connection (an
					// oversized header string is a compression error).
					if tc.served {
						t.Fatalf("read: %v", err)
					}
					return
				}
				switch fr0 := fr0.(type) {
				case *http2.MetaHeadersFrame:
					if fr0.StreamID == 1 {
						if !tc.served {
							t.Fatalf("a call with %d bytes of headers was answered: %v", tc.pad, fr0.Fields)
						}
						return
					}
				case *http2.RSTStreamFrame:
					if fr0.StreamID == 1 {
						if tc.served {
							t.Fatalf("the call was reset: %v", fr0.ErrCode)
						}
						return
					}
				case *http2.GoAwayFrame:
					if tc.served {
						t.Fatalf("GOAWAY %v", fr0.ErrCode)
					}
					return
				}
			}
		})
	}
}

// TestConnectionsPerUserAreBounded: every Workload API connection holds
// two of the agent's descriptors (the socket and a pidfd) for as long as
// the caller keeps it open, and gRPC closes none that stay quiet. A local
// user opening connections without end would use up the agent's
// descriptors: no other workload could connect, and the agent could
// neither read /proc nor reach the server. A user's connections past
// MaxConnsPerUID are closed at once; one closed makes room again.
func TestConnectionsPerUserAreBounded(t *testing.T) {
	f := newFixtureWith(t, func(c *Config) { c.MaxConnsPerUID = 3 })
	f.publish(1, nil, f.identity("spiffe://example.org/web", time.Hour, uidSelector()))
	// served reports whether the server answers on c with its HTTP/2
	// SETTINGS (it does once the connection was accepted and bound), or
	// closes it.
	served := func(c net.Conn) bool {
		t.Helper()
		c.SetReadDeadline(time.Now().Add(20 * time.Second))
		fr := http2.NewFramer(io.Discard, c)
		_, err := fr.ReadFrame()
		if err != nil && !errors.Is(err, io.EOF) && !errors.Is(err, net.ErrClosed) && !strings.Contains(err.Error(), "reset") {
			t.Fatalf("read: %v", err)
		}
		return err == nil
	}
	dial := func() net.Conn {
		t.Helper()
		c, err := net.Dial("unix", f.sock)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		return c
	}
	var open []net.Conn
	for i := range 3 {
		c := dial()
		if !served(c) {
			t.Fatalf("connection %d of 3 was closed", i+1)
		}
		open = append(open, c)
	}
	if served(dial()) {
		t.Fatal("a fourth connection of the same user was served past MaxConnsPerUID 3")
	}
	open[0].Close()
	// The server notices the close on its reader; until then the slot
	// is taken.
	deadline := time.Now().Add(20 * time.Second)
	for !served(dial()) {
		if time.Now().After(deadline) {
			t.Fatal("no connection was served again after one closed")
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// TestConnLimits: a uid past its own bound is refused while others are
// served; all callers together past the total are refused whatever their
// uid; a released slot serves again, and each bound warns once until it
// is left.
func TestConnLimits(t *testing.T) {
	var warned []string
	l := newConnLimits(2, 3, func(uid uint32, open int, all bool) {
		warned = append(warned, fmt.Sprintf("uid=%d open=%d all=%v", uid, open, all))
	})
	steps := []struct {
		name    string
		release bool
		uid     uint32
		ok      bool
	}{
		{"first_of_uid_1", false, 1, true},
		{"second_of_uid_1", false, 1, true},
		{"third_of_uid_1_refused", false, 1, false},
		{"third_of_uid_1_refused_again", false, 1, false},
		{"first_of_uid_2", false, 2, true},
		{"total_reached_refuses_uid_3", false, 3, false},
		{"release_one_of_uid_1", true, 1, true},
		{"uid_3_served_again", false, 3, true},
	}
	for _, st := range steps {
		if st.release {
			l.release(st.uid)
			continue
		}
		err := l.acquire(st.uid)
		if (err == nil) != st.ok || (err != nil && !errors.Is(err, errTooManyConns)) {
			t.Fatalf("%s: acquire = %v, want ok=%v", st.name, err, st.ok)
		}
	}
	want := []string{"uid=1 open=2 all=false", "uid=3 open=3 all=true"}
	if fmt.Sprint(warned) != fmt.Sprint(want) {
		t.Fatalf("warnings %v, want %v", warned, want)
	}
}

// TestStreamsPerUserAreBounded: every open stream attests its caller again
// whenever what the agent serves changes, so a workload holding thousands
// open would make each rotation on the node cost the agent seconds of
// CPU. A uid's streams past MaxStreamsPerUID, of any kind, are
// ResourceExhausted; one closed makes room again.
func TestStreamsPerUserAreBounded(t *testing.T) {
	f := newFixtureWith(t, func(c *Config) { c.MaxStreamsPerUID = 2 })
	f.publish(1, nil, f.identity("spiffe://example.org/web", time.Hour, uidSelector()))
	c := f.raw(t)
	open := func(ctx context.Context) error {
		s, err := c.FetchX509SVID(withHeader(ctx), &workload.X509SVIDRequest{})
		if err != nil {
			return err
		}
		_, err = s.Recv()
		return err
	}
	ctx1, cancel1 := context.WithCancel(ctxT(t))
	defer cancel1()
	if err := open(ctx1); err != nil {
		t.Fatal(err)
	}
	bundles, err := c.FetchJWTBundles(withHeader(ctxT(t)), &workload.JWTBundlesRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := bundles.Recv(); err != nil {
		t.Fatal(err)
	}
	if err := open(ctxT(t)); status.Code(err) != codes.ResourceExhausted || !strings.Contains(err.Error(), "streams open") {
		t.Fatalf("a third stream of the same user: %v, want ResourceExhausted", err)
	}
	cancel1()
	deadline := time.Now().Add(20 * time.Second)
	for {
		err := open(ctxT(t))
		if err == nil {
			break
		}
		if status.Code(err) != codes.ResourceExhausted || time.Now().After(deadline) {
			t.Fatalf("after one stream closed: %v", err)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// TestDescriptorsSentAlongAreNotKept: a client may attach descriptors
// (SCM_RIGHTS) to every byte it writes. The agent reads with recvmsg and a
// control buffer: any descriptor the kernel finds room for there is
// installed in the agent, and nothing closes it. One byte at a time, a
// local user could fill the agent's descriptor table (the HTTP/2 preface,
// SETTINGS and a PING are 50 bytes: 200 descriptors on the parent).
func TestDescriptorsSentAlongAreNotKept(t *testing.T) {
	f := newFixture(t)
	countFDs := func() int {
		t.Helper()
		ents, err := os.ReadDir("/proc/self/fd")
		if err != nil {
			t.Fatal(err)
		}
		return len(ents)
	}
	devnull, err := os.Open(os.DevNull)
	if err != nil {
		t.Fatal(err)
	}
	defer devnull.Close()
	c, err := net.Dial("unix", f.sock)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	uc := c.(*net.UnixConn)
	before := countFDs()
	var stream bytes.Buffer
	stream.WriteString(http2.ClientPreface)
	fr := http2.NewFramer(&stream, nil)
	fr.WriteSettings()
	fr.WritePing(false, [8]byte{1, 2, 3, 4, 5, 6, 7, 8})
	fd := int(devnull.Fd())
	rights := unix.UnixRights(fd, fd, fd, fd)
	for _, b := range stream.Bytes() {
		if _, _, err := uc.WriteMsgUnix([]byte{b}, rights, nil); err != nil {
			t.Fatal(err)
		}
	}
	// The PING's answer says the server has read every byte before it.
	uc.SetReadDeadline(time.Now().Add(20 * time.Second))
	rd := http2.NewFramer(io.Discard, uc)
	for {
		fr0, err := rd.ReadFrame()
		if err != nil {
			t.Fatalf("read: %v", err)
		}
		if p, ok := fr0.(*http2.PingFrame); ok && p.IsAck() {
			break
		}
	}
	if grown := countFDs() - before; grown > 10 {
		t.Fatalf("the agent holds %d more descriptors after one connection sent %d bytes with 4 descriptors each", grown, stream.Len())
	}
}

// TestCredSpace: the control buffer fits one SCM_CREDENTIALS exactly (a
// larger one has room for descriptors, a smaller one loses the writer).
func TestCredSpace(t *testing.T) {
	if want := unix.CmsgSpace(unix.SizeofUcred); credSpace != want {
		t.Fatalf("credSpace %d, want %d", credSpace, want)
	}
}

// TestLimitsDoNotLeak: the slots of the per-uid bounds come back however a
// connection or stream ends — closed before the HTTP/2 preface, while the
// agent binds it to its process, after a call; a stream cancelled before
// its first answer or after it — with many at once (run with -race). A
// leaked slot would lock the user out for good once MaxConnsPerUID of
// them leaked. After the storm, every stream slot is free and the user
// holds MaxConnsPerUID served connections again.
func TestLimitsDoNotLeak(t *testing.T) {
	const conns = 4
	f := newFixtureWith(t, func(c *Config) { c.MaxConnsPerUID = conns; c.MaxStreamsPerUID = 3 })
	f.publish(1, nil, f.identity("spiffe://example.org/web", time.Hour, uidSelector()))
	kinds := []func(){
		func() { // closed at once: before the preface, often during binding
			if c, err := net.Dial("unix", f.sock); err == nil {
				c.Close()
			}
		},
		func() { // half a preface, then gone
			if c, err := net.Dial("unix", f.sock); err == nil {
				io.WriteString(c, http2.ClientPreface[:10])
				c.Close()
			}
		},
		func() { // a stream cancelled before its first answer
			conn, err := grpc.NewClient("unix://"+f.sock, grpc.WithTransportCredentials(insecure.NewCredentials()))
			if err != nil {
				return
			}
			defer conn.Close()
			ctx, cancel := context.WithCancel(withHeader(context.Background()))
			if s, err := workload.NewSpiffeWorkloadAPIClient(conn).FetchX509SVID(ctx, &workload.X509SVIDRequest{}); err == nil {
				cancel()
				s.Recv()
			}
			cancel()
		},
		func() { // a stream that got its answer, then cancelled
			conn, err := grpc.NewClient("unix://"+f.sock, grpc.WithTransportCredentials(insecure.NewCredentials()))
			if err != nil {
				return
			}
			defer conn.Close()
			ctx, cancel := context.WithTimeout(withHeader(context.Background()), 20*time.Second)
			defer cancel()
			if s, err := workload.NewSpiffeWorkloadAPIClient(conn).FetchJWTBundles(ctx, &workload.JWTBundlesRequest{}); err == nil {
				s.Recv()
			}
		},
	}
	var wg sync.WaitGroup
	for i := range 64 {
		wg.Go(kinds[i%len(kinds)])
	}
	wg.Wait()

	served := func(c net.Conn) bool {
		c.SetReadDeadline(time.Now().Add(20 * time.Second))
		_, err := http2.NewFramer(io.Discard, c).ReadFrame()
		return err == nil
	}
	deadline := time.Now().Add(20 * time.Second)
	for {
		f.srv.streams.mu.Lock()
		open := f.srv.streams.n
		f.srv.streams.mu.Unlock()
		var held []net.Conn
		all := true
		for range conns {
			c, err := net.Dial("unix", f.sock)
			if err != nil {
				t.Fatal(err)
			}
			held = append(held, c)
			if !served(c) {
				all = false
				break
			}
		}
		for _, c := range held {
			c.Close()
		}
		if open == 0 && all {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("after the storm: %d stream slots held, %d connections served of %d", open, len(held), conns)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// subuidHolder is run by /usr/bin/python3 as a user with subordinate uids
// (what newuidmap gives one, mapped here by the test as root): it makes
// a user namespace of its own, prints its PID, waits for its maps, then
// forks one child per inner uid 1..3, each of which takes that uid (a
// host uid of its own) and connects to the socket at argv[1]. Each child
// reports whether the agent served its connection (sent its HTTP/2
// preface) or closed it, one after the other, and holds it until stdin
// ends.
const subuidHolder = `
import ctypes, os, socket, sys
libc = ctypes.CDLL(None, use_errno=True)
if libc.unshare(0x10000000) != 0:
    print("unshare", ctypes.get_errno(), flush=True); sys.exit(1)
print(os.getpid(), flush=True)
sys.stdin.readline()
for i in (1, 2, 3):
    r, w = os.pipe()
    if os.fork() == 0:
        try:
            os.setuid(i)
            s = socket.socket(socket.AF_UNIX)
            s.connect(sys.argv[1])
            s.settimeout(20)
            try:
                res = "served" if s.recv(1) else "closed"
            except ConnectionResetError:
                res = "closed"
        except Exception as e:
            res = "error " + repr(e)
        os.write(w, res.encode())
        sys.stdin.read()
        os._exit(0)
    os.close(w)
    print(i, os.read(r, 200).decode(), flush=True)
sys.stdin.read()
`

// TestSubordinateUIDsCountAsTheirUser: a user with subordinate uids
// (/etc/subuid, 65,536 of them by default, mapped by the setuid
// newuidmap into a user namespace of their own) runs a process under
// each. Counted by the uid alone, each would have MaxConnsPerUID
// connections, and some 64 of them would take every slot of MaxConns:
// no other workload could connect. Connections from a user namespace
// that a user other than root made count against that user.
func TestSubordinateUIDsCountAsTheirUser(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to stand in for newuidmap and to run as another user")
	}
	if _, err := os.Stat("/usr/bin/python3"); err != nil {
		t.Skip("needs /usr/bin/python3 to make a user namespace as a single-threaded process")
	}
	f := newFixtureWith(t, func(c *Config) { c.MaxConnsPerUID = 2 })
	f.publish(1, nil, f.identity("spiffe://example.org/web", time.Hour, uidSelector()))
	for _, d := range []string{filepath.Dir(filepath.Dir(f.sock)), filepath.Dir(f.sock)} {
		if err := os.Chmod(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	const user = 4400000
	c := exec.Command("/usr/bin/python3", "-c", subuidHolder, f.sock)
	c.Dir = "/"
	c.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: user, Gid: user, NoSetGroups: true}}
	stdin, err := c.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := c.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	c.Stderr = os.Stderr
	if err := c.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { stdin.Close(); c.Wait() }()
	r := bufio.NewReader(stdout)
	line, err := r.ReadString('\n')
	pid, perr := strconv.Atoi(strings.TrimSpace(line))
	if err != nil || perr != nil {
		t.Skipf("the user cannot make a user namespace here: %q %v", line, err)
	}
	// As newuidmap would, for subordinate uids user+1..user+3.
	if err := os.WriteFile(fmt.Sprintf("/proc/%d/uid_map", pid), fmt.Appendf(nil, "1 %d 3\n", user+1), 0); err != nil {
		t.Fatal(err)
	}
	io.WriteString(stdin, "\n")
	var got []string
	for range 3 {
		line, err := r.ReadString('\n')
		if err != nil {
			t.Fatalf("helper: %v (so far %v)", err, got)
		}
		got = append(got, strings.TrimSpace(line))
	}
	if want := []string{"1 served", "2 served", "3 closed"}; !slices.Equal(got, want) {
		t.Fatalf("connections of three subordinate uids of one user, MaxConnsPerUID 2: %v, want %v", got, want)
	}
}

// TestStreamsCountAgainstTheConnectionsUser: a stream counts against the
// uid its connection counts against (accountUID), so subordinate uids of
// one user share that user's MaxStreamsPerUID as they share its
// connections.
func TestStreamsCountAgainstTheConnectionsUser(t *testing.T) {
	f := newFixtureWith(t, func(c *Config) { c.MaxStreamsPerUID = 1 })
	on := func(account uint32) context.Context {
		return peer.NewContext(context.Background(), &peer.Peer{AuthInfo: AuthInfo{conn: &boundConn{account: account}}})
	}
	release, err := f.srv.holdStream(on(4400000), attest.Peer{UID: 4400001})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.srv.holdStream(on(4400000), attest.Peer{UID: 4400002}); status.Code(err) != codes.ResourceExhausted {
		t.Fatalf("a second subordinate uid of the same user: %v, want ResourceExhausted", err)
	}
	other, err := f.srv.holdStream(on(4500000), attest.Peer{UID: 4500000})
	if err != nil {
		t.Fatalf("another user: %v", err)
	}
	other()
	release()
	if r, err := f.srv.holdStream(on(4400000), attest.Peer{UID: 4400002}); err != nil {
		t.Fatalf("after the first was released: %v", err)
	} else {
		r()
	}
}
