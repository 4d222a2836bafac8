//go:build linux

package workload

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/proto/spiffe/workload"
	"github.com/spiffe/go-spiffe/v2/svid/jwtsvid"
	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
	"golang.org/x/sys/unix"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/moatless/moatless/internal/wire"
)

// The exec-race tests run real processes: the test binary re-executed
// with helperEnv set plays the attacker. Its "opener" connects to the
// Workload API and then executes an allowed binary (sleep) or exits; its
// "user", started by the opener with the connection as file descriptor 3,
// tries to get that binary's identity through the connection.
const (
	helperEnv      = "MOATLESS_WORKLOAD_TEST_HELPER"
	helperSock     = "MOATLESS_WORKLOAD_TEST_SOCK"
	helperCase     = "MOATLESS_WORKLOAD_TEST_CASE"
	helperAllowed  = "MOATLESS_WORKLOAD_TEST_ALLOWED"
	helperResult   = "MOATLESS_WORKLOAD_TEST_RESULT"
	helperOpener   = "MOATLESS_WORKLOAD_TEST_OPENER"
	helperDeadline = 20 * time.Second
)

func TestMain(m *testing.M) {
	switch os.Getenv(helperEnv) {
	case "":
		os.Exit(m.Run())
	case "opener":
		runOpener()
	case "user":
		runUser()
	case "unshare", "ns-bind-exec", "ns-fetch":
		runNamespaced(os.Getenv(helperEnv))
	}
	os.Exit(3)
}

func helperFail(format string, args ...any) {
	msg := fmt.Sprintf(format, args...)
	if p := os.Getenv(helperResult); p != "" {
		os.WriteFile(p, []byte("helper-error "+msg), 0o600)
	}
	fmt.Fprintln(os.Stderr, msg)
	os.Exit(2)
}

// runOpener connects, does what its case says, and ends by executing the
// allowed binary or exiting.
func runOpener() {
	c, err := net.Dial("unix", os.Getenv(helperSock))
	if err != nil {
		helperFail("dial: %v", err)
	}
	uc := c.(*net.UnixConn)
	kase := os.Getenv(helperCase)
	if !strings.Contains(kase, "before_bind") {
		// The server writes its HTTP/2 preface after its handshake: once
		// a byte is readable (peeked, not consumed) the connection was
		// accepted and bound to this process image.
		raw, _ := uc.SyscallConn()
		var perr error
		raw.Read(func(fd uintptr) bool {
			var b [1]byte
			_, _, perr = unix.Recvfrom(int(fd), b[:], unix.MSG_PEEK)
			return perr != unix.EAGAIN
		})
		if perr != nil {
			helperFail("peek: %v", perr)
		}
	}
	userMode := "grpc"
	if strings.HasPrefix(kase, "request_") {
		// The opener itself sends the request, then executes the allowed
		// binary or exits; the user only reads the answer.
		if _, err := c.Write(rawJWTRequest()); err != nil {
			helperFail("write request: %v", err)
		}
		userMode = "read"
	}
	f, err := uc.File()
	if err != nil {
		helperFail("file: %v", err)
	}
	user := exec.Command(os.Args[0], "-test.run=^$")
	user.Env = append(os.Environ(), helperEnv+"=user", helperCase+"="+userMode, helperOpener+"="+strconv.Itoa(os.Getpid()))
	user.ExtraFiles = []*os.File{f}
	user.Stderr = os.Stderr
	if err := user.Start(); err != nil {
		helperFail("start user: %v", err)
	}
	if strings.HasSuffix(kase, "exit") || strings.HasSuffix(kase, "exits") {
		os.Exit(0)
	}
	if err := syscall.Exec(os.Getenv(helperAllowed), []string{"sleep", "60"}, os.Environ()); err != nil {
		helperFail("exec: %v", err)
	}
}

// rawJWTRequest is a complete FetchJWTSVID call as HTTP/2 bytes: client
// preface, SETTINGS, HEADERS (with extra fields after the usual ones,
// continued in CONTINUATION frames past 16 KiB) and one DATA frame ending
// the stream. A raw client does not heed the server's
// SETTINGS_MAX_HEADER_LIST_SIZE, as grpc-go's own would.
func rawJWTRequest(extra ...hpack.HeaderField) []byte {
	var buf bytes.Buffer
	buf.WriteString(http2.ClientPreface)
	fr := http2.NewFramer(&buf, nil)
	fr.WriteSettings()
	var hb bytes.Buffer
	enc := hpack.NewEncoder(&hb)
	for _, f := range [][2]string{
		{":method", "POST"}, {":scheme", "http"}, {":path", workload.SpiffeWorkloadAPI_FetchJWTSVID_FullMethodName},
		{":authority", "localhost"}, {"content-type", "application/grpc"}, {"te", "trailers"}, {SecurityHeader, "true"},
	} {
		enc.WriteField(hpack.HeaderField{Name: f[0], Value: f[1]})
	}
	for _, f := range extra {
		enc.WriteField(f)
	}
	block := hb.Bytes()
	const frag = 16 << 10 // the default SETTINGS_MAX_FRAME_SIZE
	first := block[:min(frag, len(block))]
	block = block[len(first):]
	fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: first, EndHeaders: len(block) == 0})
	for len(block) > 0 {
		n := min(frag, len(block))
		fr.WriteContinuation(1, n == len(block), block[:n])
		block = block[n:]
	}
	msg, _ := proto.Marshal(&workload.JWTSVIDRequest{Audience: []string{"aud"}})
	data := make([]byte, 5+len(msg))
	binary.BigEndian.PutUint32(data[1:], uint32(len(msg)))
	copy(data[5:], msg)
	fr.WriteData(1, true, data)
	return buf.Bytes()
}

// runUser waits until the opener has executed the allowed binary (or is
// gone), then uses the inherited connection and writes what it got to the
// result file: "code=N ids=A,B" or "code=N msg=... data=BOOL".
func runUser() {
	opener, _ := strconv.Atoi(os.Getenv(helperOpener))
	allowed := os.Getenv(helperAllowed)
	deadline := time.Now().Add(helperDeadline)
	for {
		exe, err := os.Readlink(fmt.Sprintf("/proc/%d/exe", opener))
		if exe == allowed || (errors.Is(err, os.ErrNotExist) && gone(opener)) {
			break
		}
		if time.Now().After(deadline) {
			helperFail("opener %d never executed %s (exe %q, %v)", opener, allowed, exe, err)
		}
		time.Sleep(5 * time.Millisecond)
	}
	conn, err := net.FileConn(os.NewFile(3, "workload-api"))
	if err != nil {
		helperFail("file conn: %v", err)
	}
	var result string
	if os.Getenv(helperCase) == "read" {
		result = readAnswer(conn)
	} else {
		result = grpcCall(conn)
	}
	if err := os.WriteFile(os.Getenv(helperResult), []byte(result), 0o600); err != nil {
		helperFail("write result: %v", err)
	}
	os.Exit(0)
}

func gone(pid int) bool {
	_, err := os.Stat(fmt.Sprintf("/proc/%d", pid))
	return errors.Is(err, os.ErrNotExist)
}

// grpcCall runs FetchX509SVID with a real gRPC client over conn.
func grpcCall(conn net.Conn) string {
	used := false
	cc, err := grpc.NewClient("passthrough:///workload-api",
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithContextDialer(func(context.Context, string) (net.Conn, error) {
			if used {
				return nil, errors.New("the inherited connection is gone")
			}
			used = true
			return conn, nil
		}))
	if err != nil {
		helperFail("grpc client: %v", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), helperDeadline)
	defer cancel()
	s, err := workload.NewSpiffeWorkloadAPIClient(cc).FetchX509SVID(withHeader(ctx), &workload.X509SVIDRequest{})
	if err == nil {
		var resp *workload.X509SVIDResponse
		if resp, err = s.Recv(); err == nil {
			var ids []string
			for _, s := range resp.Svids {
				ids = append(ids, s.SpiffeId)
			}
			return "code=0 ids=" + strings.Join(ids, ",")
		}
	}
	st := status.Convert(err)
	return fmt.Sprintf("code=%d msg=%s", st.Code(), st.Message())
}

// readAnswer reads HTTP/2 frames (never writing) until the trailers of
// stream 1, and reports grpc-status, grpc-message and whether a JWT came.
func readAnswer(conn net.Conn) string {
	conn.SetReadDeadline(time.Now().Add(helperDeadline))
	fr := http2.NewFramer(io.Discard, conn)
	dec := hpack.NewDecoder(4096, nil)
	gotData := false
	for {
		f, err := fr.ReadFrame()
		if err != nil {
			return fmt.Sprintf("code=-1 msg=read: %v data=%v", err, gotData)
		}
		switch f := f.(type) {
		case *http2.DataFrame:
			if len(f.Data()) > 5 {
				gotData = true
			}
		case *http2.HeadersFrame:
			fields, err := dec.DecodeFull(f.HeaderBlockFragment())
			if err != nil {
				return fmt.Sprintf("code=-1 msg=hpack: %v", err)
			}
			code, msg, trailers := "", "", false
			for _, h := range fields {
				switch h.Name {
				case "grpc-status":
					code, trailers = h.Value, true
				case "grpc-message":
					msg = h.Value
				}
			}
			if trailers {
				return fmt.Sprintf("code=%s msg=%s data=%v", code, msg, gotData)
			}
		case *http2.GoAwayFrame:
			return fmt.Sprintf("code=-1 msg=goaway %v data=%v", f.ErrCode, gotData)
		}
	}
}

// waitExe blocks until process pid runs path (or the deadline passes).
func waitExe(pid int32, path string) {
	deadline := time.Now().Add(helperDeadline)
	for time.Now().Before(deadline) {
		if exe, _ := os.Readlink(fmt.Sprintf("/proc/%d/exe", pid)); exe == path {
			return
		}
		time.Sleep(2 * time.Millisecond)
	}
}

// waitGone blocks until process pid has exited and was reaped.
func waitGone(pid int32) {
	deadline := time.Now().Add(helperDeadline)
	for time.Now().Before(deadline) && !gone(int(pid)) {
		time.Sleep(2 * time.Millisecond)
	}
}

func sleepBinary(t *testing.T) string {
	t.Helper()
	p, err := exec.LookPath("sleep")
	if err != nil {
		t.Skip("no sleep binary")
	}
	if p, err = filepath.EvalSymlinks(p); err != nil {
		t.Fatal(err)
	}
	return p
}

func sha256File(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:])
}

// TestExecRaceIsRefused: a process that opened a Workload API connection
// and then executed an allowed binary does not get that binary's identity
// through the connection, whoever uses it afterwards and whichever of its
// steps the agent saw first. Each attack ends with the allowed binary
// running under the opener's PID; before the fix the agent read
// /proc/PID/exe at request time and issued the allowed binary's SVID.
func TestExecRaceIsRefused(t *testing.T) {
	sleep := sleepBinary(t)
	untilSleep := func(pid int32) { waitExe(pid, sleep) }
	untilGone := func(pid int32) { waitGone(pid) }
	tests := []struct {
		name string
		// holdHandshake / holdRequest make the agent wait, at accept or
		// at the request, until the opener runs the allowed binary (or
		// is gone): the orders an attacker would race for.
		holdHandshake, holdRequest func(pid int32)
		want                       string // in the helper's result
	}{
		// The opener is bound (as the test binary) before it executes
		// sleep; its child then calls with a real gRPC client.
		{"child_calls_after_exec", nil, nil, "connection was written to by process"},
		// sleep is running before the agent accepts: the binding sees
		// sleep, but the bytes come from the child, not the opener.
		{"child_calls_exec_before_bind", untilSleep, nil, "connection was written to by process"},
		// The opener wrote the whole request itself, then executed sleep
		// before the agent handled it; its child only reads the answer.
		{"request_written_then_exec", nil, untilSleep, "executed another program"},
		// The same, with sleep running before the agent accepted: the
		// request was sent before the connection was bound.
		{"request_written_before_bind_then_exec", untilSleep, nil, "sent before the agent bound"},
		// The opener wrote the request and exited before it was handled.
		{"request_written_then_exit", nil, untilGone, "exited"},
		// The opener exits; its child calls on the connection.
		{"opener_exits", nil, nil, "connection was written to by process"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			f := newFixture(t)
			f.publish(1, nil, f.identity("spiffe://example.org/allowed-sleep", time.Hour,
				wire.Selector{Type: "unix", Value: "path:" + sleep},
				wire.Selector{Type: "unix", Value: "sha256:" + sha256File(t, sleep)}))
			f.srv.testHooks.handshake.Store(&tc.holdHandshake)
			f.srv.testHooks.request.Store(&tc.holdRequest)
			result := filepath.Join(t.TempDir(), "result")
			kase := strings.ReplaceAll(tc.name, "exec_before_bind", "before_bind")
			kase = strings.ReplaceAll(kase, "request_written_before_bind_then_exec", "request_before_bind")
			kase = strings.ReplaceAll(kase, "request_written_then_exit", "request_then_exit")
			cmd := exec.Command(os.Args[0], "-test.run=^$")
			cmd.Env = append(os.Environ(), helperEnv+"=opener", helperCase+"="+kase, helperSock+"="+f.sock,
				helperAllowed+"="+sleep, helperResult+"="+result)
			cmd.Stderr = os.Stderr
			if err := cmd.Start(); err != nil {
				t.Fatal(err)
			}
			waited := make(chan struct{})
			go func() { cmd.Wait(); close(waited) }()
			t.Cleanup(func() { cmd.Process.Kill(); <-waited })
			got := waitResult(t, result)
			if strings.HasPrefix(got, "code=0") || strings.Contains(got, "data=true") {
				t.Fatalf("the allowed binary's identity was handed out: %s", got)
			}
			if !strings.HasPrefix(got, "code=7 ") || !strings.Contains(got, tc.want) {
				t.Fatalf("got %q, want PermissionDenied (7) saying %q", got, tc.want)
			}
		})
	}
}

func waitResult(t *testing.T, path string) string {
	t.Helper()
	deadline := time.Now().Add(helperDeadline + 5*time.Second)
	for time.Now().Before(deadline) {
		if b, err := os.ReadFile(path); err == nil && len(b) > 0 {
			return string(b)
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Fatal("the helper wrote no result")
	return ""
}

// TestAllowedBinaryStillServed: the workload that is the allowed binary
// (here the test binary itself, by path and sha256) gets its identity
// through go-spiffe, on a connection it opened and keeps using.
func TestAllowedBinaryStillServed(t *testing.T) {
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	exe, _ = filepath.EvalSymlinks(exe)
	f := newFixture(t)
	f.publish(1, nil, f.identity("spiffe://example.org/test-binary", time.Hour,
		wire.Selector{Type: "unix", Value: "path:" + exe},
		wire.Selector{Type: "unix", Value: "sha256:" + sha256File(t, exe)}))
	c := f.client(t)
	for range 3 {
		x, err := c.FetchX509Context(ctxT(t))
		if err != nil {
			t.Fatal(err)
		}
		if len(x.SVIDs) != 1 || x.SVIDs[0].ID.String() != "spiffe://example.org/test-binary" {
			t.Fatalf("SVIDs %v", x.SVIDs)
		}
		if _, err := c.FetchJWTSVID(ctxT(t), jwtsvid.Params{Audience: "aud"}); err != nil {
			t.Fatal(err)
		}
	}
}
