// Package workload serves the SPIFFE Workload API (gRPC over a unix socket)
// from the agent's cache, with go-spiffe's generated types, as the SPIFFE
// Workload API, X509-SVID and JWT-SVID standards describe it:
//
//   - every call must carry the metadata header "workload.spiffe.io: true"
//     (InvalidArgument otherwise), which keeps browsers and SSRF-style
//     proxies from reaching the API;
//   - every call is attested from the kernel's peer credentials; a caller
//     that no registration entry matches gets PermissionDenied;
//   - FetchX509SVID, FetchX509Bundles and FetchJWTBundles are streams that
//     send the full current answer at once and again whenever it changes
//     (rotation, revocation, bundle change); a stream whose caller loses its
//     last identity ends with PermissionDenied;
//   - FetchJWTSVID needs an audience; ValidateJWTSVID checks a token against
//     the trust bundle and rejects revoked SPIFFE IDs (InvalidArgument).
package workload

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/spiffe/go-spiffe/v2/proto/spiffe/workload"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/jwtsvid"
	"go.opentelemetry.io/otel/trace"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/structpb"

	"github.com/moatless/moatless/internal/attest"
	"github.com/moatless/moatless/internal/telemetry"
	"github.com/moatless/moatless/internal/wire"
)

// Limits on what a workload may send.
const (
	// MaxRequestSize bounds one request message (a JWT to validate is the
	// largest thing a workload sends).
	MaxRequestSize = 64 << 10
	// MaxAudiences bounds the audiences of one FetchJWTSVID request.
	MaxAudiences = 32
	// MaxAudienceLen bounds one audience string.
	MaxAudienceLen = 512
	// SecurityHeader is the metadata key every call must carry with value
	// "true".
	SecurityHeader = "workload.spiffe.io"
	// MaxHeaderListSize bounds the headers of one call (gRPC's default is
	// 16 MiB, kept for the call's life; a Workload API client sends a few
	// hundred bytes).
	MaxHeaderListSize = 16 << 10
	// MaxConcurrentStreams bounds the calls open at once on one connection.
	MaxConcurrentStreams = 64
	// DefaultMaxConnsPerUID is Config.MaxConnsPerUID's default.
	DefaultMaxConnsPerUID = 512
	// DefaultMaxStreamsPerUID is Config.MaxStreamsPerUID's default.
	DefaultMaxStreamsPerUID = 1024
)

// Config configures a Workload API server.
type Config struct {
	// SocketPath is the unix socket to listen on. Required. Its directory
	// is created 0755 when missing and must be owned by the agent's user
	// and writable by no one else (checkSocketDir); the socket itself is
	// 0777 (any local process may ask; attestation decides what it gets). A stale socket
	// left by a dead agent is removed; a live one is an error.
	SocketPath string
	// Source serves the SVIDs and bundles. Required.
	Source Source
	// Attestor turns a caller into selectors. Required.
	Attestor attest.Attestor
	// Logger receives structured logs; slog.Default() when nil. Never
	// given a key or token.
	Logger *slog.Logger
	// Now is the clock; time.Now when nil.
	Now func() time.Time
	// OnServe, when set, is called once per SVID handed out ("x509" or
	// "jwt"). OnAttestFailure is called when a caller could not be
	// attested. Both must be cheap and safe for concurrent use.
	OnServe         func(kind string)
	OnAttestFailure func()
	// FirstSyncWait bounds how long a call waits for a Source that is a
	// Syncer to complete its first sync (see Syncer). Default
	// DefaultFirstSyncWait.
	FirstSyncWait time.Duration
	// Tracer, when set, makes a span of every call and of every answer a
	// stream sends (tracing.go). Nil: no span, and nothing of the
	// tracing is on the call path.
	Tracer trace.Tracer
	// Risk, when set with a Tracer, holds the risk scores the server
	// pushes: a span that serves identities says the highest of theirs.
	Risk *telemetry.RiskScores
	// MaxConnsPerUID bounds the connections one uid (SO_PEERCRED) holds
	// open at once, MaxConns those of all callers together; a connection
	// past either is closed when accepted, before gRPC reads from it.
	// Every connection holds two of the agent's file descriptors (the
	// socket and a pidfd) for as long as its caller keeps it open, so
	// without a bound one local user could take them all: no other
	// workload could connect, and the agent could neither read /proc nor
	// reach the server. Defaults: DefaultMaxConnsPerUID, and MaxConns
	// half of what the agent's descriptor limit (RLIMIT_NOFILE) leaves
	// after keeping back a quarter of it, at most 1,024, for the agent's
	// own use.
	MaxConnsPerUID int
	MaxConns       int
	// MaxStreamsPerUID bounds the FetchX509SVID, FetchX509Bundles and
	// FetchJWTBundles streams one uid holds open at once (default
	// DefaultMaxStreamsPerUID); one more is ResourceExhausted. Every open
	// stream attests its caller again at each change of what the agent
	// serves (any rotation on the node): without a bound, a workload
	// holding its connections' 64 streams each would make every rotation
	// cost the agent seconds of CPU. A workload needs one of each kind.
	MaxStreamsPerUID int
}

// Server is a Workload API server. Lifecycle: New → Serve → Close.
type Server struct {
	workload.UnimplementedSpiffeWorkloadAPIServer

	cfg     Config
	log     *slog.Logger
	now     func() time.Time
	grpc    *grpc.Server
	streams *connLimits // open streams by uid (no total)
	// callerLog paces the log lines callers cause.
	callerLog *logPacer

	mu       sync.Mutex
	lis      net.Listener
	sockIno  uint64
	closed   bool
	ready    chan struct{}
	readyOne sync.Once
	// closeOnce makes every Close wait until the first has stopped the
	// server and removed the socket: Serve returns only after that.
	closeOnce sync.Once

	testHooks testHooks
}

// testHooks let tests stop the server at the points an attacker races
// for. Unset hooks do nothing; production code never sets them. Atomic:
// tests set them while the server runs.
type testHooks struct {
	// handshake runs when a connection is accepted, before it is bound
	// to its peer process.
	handshake atomic.Pointer[func(pid int32)]
	// request runs when a call arrives, before its caller is checked.
	request atomic.Pointer[func(pid int32)]
}

func runHook(h *atomic.Pointer[func(int32)], pid int32) {
	if f := h.Load(); f != nil && *f != nil {
		(*f)(pid)
	}
}

// New checks cfg and returns a server that does not listen yet.
func New(cfg Config) (*Server, error) {
	switch {
	case cfg.SocketPath == "":
		return nil, errors.New("workload: socket path is required")
	case cfg.Source == nil:
		return nil, errors.New("workload: source is required")
	case cfg.Attestor == nil:
		return nil, errors.New("workload: attestor is required")
	}
	s := &Server{cfg: cfg, log: cfg.Logger, now: cfg.Now, ready: make(chan struct{}), callerLog: newLogPacer()}
	if s.log == nil {
		s.log = slog.Default()
	}
	if s.now == nil {
		s.now = time.Now
	}
	binder, _ := cfg.Attestor.(attest.Binder)
	limits := newConnLimits(cfg.MaxConnsPerUID, cfg.MaxConns, func(uid uint32, open int, all bool) {
		if all {
			s.log.Warn("refusing Workload API connections: too many open", "open", open, "uid", uid)
			return
		}
		s.log.Warn("refusing Workload API connections of a user with too many open", "uid", uid, "open", open)
	})
	perUID := cfg.MaxStreamsPerUID
	if perUID <= 0 {
		perUID = DefaultMaxStreamsPerUID
	}
	s.streams = &connLimits{perUID: perUID, total: math.MaxInt, byUID: map[uint32]int{}, warnedUID: map[uint32]bool{},
		warn: func(uid uint32, open int, _ bool) {
			s.log.Warn("refusing Workload API streams of a user with too many open", "uid", uid, "open", open)
		}}
	s.grpc = grpc.NewServer(
		grpc.Creds(peerCredentials{binder: binder, hooks: &s.testHooks, limits: limits}),
		grpc.MaxRecvMsgSize(MaxRequestSize),
		grpc.MaxConcurrentStreams(MaxConcurrentStreams),
		grpc.MaxHeaderListSize(MaxHeaderListSize),
	)
	workload.RegisterSpiffeWorkloadAPIServer(s.grpc, s)
	return s, nil
}

// Ready is closed once the socket is listening.
func (s *Server) Ready() <-chan struct{} { return s.ready }

// Serve listens on the socket and serves until ctx ends or Close is
// called; then it stops every stream and removes the socket. It returns
// nil after a clean stop.
func (s *Server) Serve(ctx context.Context) error {
	lis, err := listenUnix(s.cfg.SocketPath)
	if err != nil {
		return err
	}
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		lis.Close()
		removeIfSame(s.cfg.SocketPath, inode(s.cfg.SocketPath))
		return nil
	}
	s.lis = lis
	s.sockIno = inode(s.cfg.SocketPath)
	s.mu.Unlock()
	s.readyOne.Do(func() { close(s.ready) })
	s.log.Info("workload API listening", "socket", s.cfg.SocketPath)

	stop := context.AfterFunc(ctx, func() { s.Close() })
	defer stop()
	err = s.grpc.Serve(lis)
	s.Close()
	if err != nil && !errors.Is(err, grpc.ErrServerStopped) {
		return fmt.Errorf("workload: serve: %w", err)
	}
	return nil
}

// Close stops the server (open streams end with Unavailable as the
// connection closes) and removes the socket. It is idempotent, and a
// call made while another is under way returns when that one is done.
func (s *Server) Close() error {
	s.closeOnce.Do(func() {
		s.mu.Lock()
		s.closed = true
		ino := s.sockIno
		s.mu.Unlock()
		s.grpc.Stop()
		if ino != 0 {
			removeIfSame(s.cfg.SocketPath, ino)
		}
	})
	return nil
}

// listenUnix creates the socket as SPIRE does: directory 0755, socket 0777.
func listenUnix(path string) (net.Listener, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return nil, fmt.Errorf("workload: create socket directory: %w", err)
	}
	if err := checkSocketDir(filepath.Dir(path)); err != nil {
		return nil, err
	}
	if fi, err := os.Lstat(path); err == nil {
		if fi.Mode().Type() != os.ModeSocket {
			return nil, fmt.Errorf("workload: %s exists and is not a socket; remove it or choose another --socket", path)
		}
		c, err := net.DialTimeout("unix", path, time.Second)
		if err == nil {
			c.Close()
			return nil, fmt.Errorf("workload: another process is serving %s; stop it or choose another --socket", path)
		}
		if err := os.Remove(path); err != nil {
			return nil, fmt.Errorf("workload: remove stale socket: %w", err)
		}
	}
	// The socket is bound under a temporary name and renamed into place
	// once it listens with its final mode: a workload started with the
	// agent that connects the moment the path appears is never refused
	// (bind(2) creates the file before listen(2) accepts).
	tmp := filepath.Join(filepath.Dir(path), fmt.Sprintf(".moatless-%d.sock", os.Getpid()))
	os.Remove(tmp)
	lis, err := net.Listen("unix", tmp)
	if err != nil {
		return nil, fmt.Errorf("workload: listen: %w", err)
	}
	fail := func(what string, err error) (net.Listener, error) {
		lis.Close()
		os.Remove(tmp)
		return nil, fmt.Errorf("workload: %s: %w", what, err)
	}
	// Accepted sockets inherit SO_PASSCRED, so even the bytes a client
	// writes before accept(2) carry its PID (see boundConn).
	if err := passCred(lis.(*net.UnixListener)); err != nil {
		return fail("listen: SO_PASSCRED", err)
	}
	// The listener must not unlink on Close: Close removes the socket only
	// when it is still ours (a new agent may have replaced it).
	lis.(*net.UnixListener).SetUnlinkOnClose(false)
	if err := os.Chmod(tmp, 0o777); err != nil {
		return fail("chmod socket", err)
	}
	if err := os.Rename(tmp, path); err != nil {
		return fail("put the socket in place", err)
	}
	return lis, nil
}

func removeIfSame(path string, ino uint64) {
	if ino != 0 && inode(path) == ino {
		os.Remove(path)
	}
}

// caller checks the security header, that the connection still serves
// the process that opened it (see peerCredentials), and attests that
// process. Streams call it again before every later answer, so a stream
// ends (PermissionDenied) once its opener executes another program, exits
// or hands the connection to another process.
//
// The attestation's result goes on c's span.
func (s *Server) caller(ctx context.Context, method string, c *call) ([]wire.Selector, attest.Peer, error) {
	sels, p, err := s.attestCaller(ctx, method)
	c.attested(p, len(sels), err)
	return sels, p, err
}

func (s *Server) attestCaller(ctx context.Context, method string) ([]wire.Selector, attest.Peer, error) {
	md, _ := metadata.FromIncomingContext(ctx)
	if v := md.Get(SecurityHeader); len(v) != 1 || v[0] != "true" {
		return nil, attest.Peer{}, status.Error(codes.InvalidArgument, "security header missing from request")
	}
	s.waitFirstSync(ctx)
	p, ok := peer.FromContext(ctx)
	if !ok {
		return nil, attest.Peer{}, status.Error(codes.Internal, "no peer information")
	}
	info, ok := p.AuthInfo.(AuthInfo)
	if !ok || info.conn == nil {
		return nil, attest.Peer{}, status.Error(codes.Internal, "no peer credentials on this connection")
	}
	runHook(&s.testHooks.request, info.Peer.PID)
	deny := func(reason error, msg string) error {
		if s.cfg.OnAttestFailure != nil {
			s.cfg.OnAttestFailure()
		}
		s.callerLog.log(s.log, s.now(), slog.LevelWarn, "workload attestation failed", "method", method, "pid", info.Peer.PID, "uid", info.Peer.UID, "error", reason)
		return status.Error(codes.PermissionDenied, "workload attestation failed: "+msg)
	}
	if err := info.conn.check(); err != nil {
		return nil, info.Peer, deny(err, err.Error())
	}
	sels, err := s.cfg.Attestor.Attest(ctx, info.Peer)
	switch {
	case errors.Is(err, attest.ErrExecuted):
		return nil, info.Peer, deny(err, fmt.Sprintf("the process that opened this connection (pid %d) executed another program since; a connection carries the identity of the program that opened it: open a new one", info.Peer.PID))
	case errors.Is(err, attest.ErrProcessGone):
		return nil, info.Peer, deny(err, fmt.Sprintf("the process that opened this connection (pid %d) exited", info.Peer.PID))
	case err != nil:
		return nil, info.Peer, deny(err, "the agent could not read the caller's process")
	}
	return sels, info.Peer, nil
}

// holdStream counts a stream of p's uid open until release is called, or
// refuses it (ResourceExhausted) past Config.MaxStreamsPerUID. The uid is
// the one its connection counts against (accountUID): a user's
// subordinate uids share the user's bound.
func (s *Server) holdStream(ctx context.Context, p attest.Peer) (release func(), err error) {
	uid := p.UID
	if pr, ok := peer.FromContext(ctx); ok {
		if info, ok := pr.AuthInfo.(AuthInfo); ok && info.conn != nil {
			if a, ok := info.conn.accountOf(); ok {
				uid = a
			}
		}
	}
	if err := s.streams.acquire(uid); err != nil {
		return nil, status.Errorf(codes.ResourceExhausted, "uid %d holds %d Workload API streams open, the most one user may; a workload needs one of each kind: close the others", uid, s.streams.perUID)
	}
	return func() { s.streams.release(uid) }, nil
}

// matching returns the caller's identities in st, deduplicated by SPIFFE
// ID (first entry wins, entries in the order the source gives them).
func matching(st *State, sels []wire.Selector) []*Identity {
	have := make(map[wire.Selector]struct{}, len(sels))
	for _, s := range sels {
		have[s] = struct{}{}
	}
	var out []*Identity
	seen := map[spiffeid.ID]bool{}
next:
	for _, id := range st.Identities {
		if len(id.Selectors) == 0 || seen[id.SPIFFEID] || st.revoked(id.SPIFFEID) {
			continue
		}
		for _, w := range id.Selectors {
			if _, ok := have[w]; !ok {
				continue next
			}
		}
		seen[id.SPIFFEID] = true
		out = append(out, id)
	}
	return out
}

// liveX509 keeps identities with an SVID that is valid at now.
func liveX509(ids []*Identity, now time.Time) []*Identity {
	out := ids[:0:0]
	for _, id := range ids {
		if id.X509 != nil && now.Before(id.X509.ExpiresAt) {
			out = append(out, id)
		}
	}
	return out
}

var errNoIdentity = status.Error(codes.PermissionDenied, "no identity issued")

// watch runs send with every new snapshot until ctx ends. send returns the
// earliest time the answer changes by itself (an expiry), or zero.
func (s *Server) watch(ctx context.Context, send func(*State) (time.Time, error)) error {
	for {
		st, changed := s.cfg.Source.State()
		next, err := send(st)
		if err != nil {
			return err
		}
		var (
			timer <-chan time.Time
			t     *time.Timer
		)
		if !next.IsZero() {
			t = time.NewTimer(max(next.Sub(s.now()), 0))
			timer = t.C
		}
		select {
		case <-ctx.Done():
		case <-changed:
		case <-timer:
		}
		if t != nil {
			t.Stop()
		}
		if ctx.Err() != nil {
			return nil
		}
	}
}

// FetchX509SVID implements the Workload API.
func (s *Server) FetchX509SVID(_ *workload.X509SVIDRequest, stream grpc.ServerStreamingServer[workload.X509SVIDResponse]) error {
	ctx := stream.Context()
	c0 := s.startCall(ctx, "FetchX509SVID", 0)
	sels, p, err := s.caller(ctx, "FetchX509SVID", c0)
	if err == nil {
		var release func()
		if release, err = s.holdStream(ctx, p); err == nil {
			defer release()
		}
	}
	if err != nil {
		c0.end(err)
		return err
	}
	var last []byte
	first, sent := true, 0
	return s.watch(ctx, func(st *State) (time.Time, error) {
		c := c0
		if !first {
			c = c0.next(sent)
			if sels, _, err = s.caller(ctx, "FetchX509SVID", c); err != nil {
				c.end(err)
				return time.Time{}, err
			}
		}
		first = false
		now := s.now()
		ids := liveX509(matching(st, sels), now)
		if len(ids) == 0 {
			s.callerLog.log(s.log, now, slog.LevelInfo, "no X509-SVID for caller", "pid", p.PID, "uid", p.UID)
			err := noIdentity(st, sels, spiffeid.ID{})
			c.end(err)
			return time.Time{}, err
		}
		// The answer changes when any served serial or the bundle does.
		var key bytes.Buffer
		fmt.Fprintf(&key, "%d|", st.BundleSequence)
		key.Write(st.x509BundleDER)
		next := ids[0].X509.ExpiresAt
		resp := &workload.X509SVIDResponse{Svids: make([]*workload.X509SVID, 0, len(ids))}
		for _, id := range ids {
			key.WriteString("|" + id.SPIFFEID.String() + "=" + id.X509.Serial)
			next = minTime(next, id.X509.ExpiresAt)
			resp.Svids = append(resp.Svids, &workload.X509SVID{
				SpiffeId:    id.SPIFFEID.String(),
				X509Svid:    id.X509.ChainDER,
				X509SvidKey: id.X509.KeyDER,
				Bundle:      st.x509BundleDER,
			})
		}
		if bytes.Equal(key.Bytes(), last) {
			return next, nil
		}
		c.served(ids)
		err := stream.Send(resp)
		c.end(err)
		if err != nil {
			return time.Time{}, err
		}
		last, sent = key.Bytes(), sent+1
		if s.cfg.OnServe != nil {
			for range ids {
				s.cfg.OnServe("x509")
			}
		}
		s.log.Debug("sent X509-SVIDs", "pid", p.PID, "count", len(ids))
		return next, nil
	})
}

func minTime(a, b time.Time) time.Time {
	if b.Before(a) {
		return b
	}
	return a
}

// FetchX509Bundles implements the Workload API. Like SPIRE, only callers
// entitled to an identity get bundles.
func (s *Server) FetchX509Bundles(_ *workload.X509BundlesRequest, stream grpc.ServerStreamingServer[workload.X509BundlesResponse]) error {
	return s.streamBundles(stream.Context(), "FetchX509Bundles",
		func(st *State) []byte { return st.x509BundleDER },
		func(bundles map[string][]byte) error {
			return stream.Send(&workload.X509BundlesResponse{Bundles: bundles})
		})
}

// FetchJWTBundles implements the Workload API.
func (s *Server) FetchJWTBundles(_ *workload.JWTBundlesRequest, stream grpc.ServerStreamingServer[workload.JWTBundlesResponse]) error {
	return s.streamBundles(stream.Context(), "FetchJWTBundles",
		func(st *State) []byte { return st.jwtBundleJSON },
		func(bundles map[string][]byte) error {
			return stream.Send(&workload.JWTBundlesResponse{Bundles: bundles})
		})
}

// streamBundles serves one of the bundle streams of the Workload API
// (method names it to caller): it sends the trust domain's bundle, as
// bundle picks it from a snapshot, keyed by the trust domain's ID, first
// and then whenever it changes, until ctx ends or send fails. Like SPIRE,
// a caller entitled to no identity gets errNoIdentity instead, also when
// its last entry goes away mid-stream.
func (s *Server) streamBundles(ctx context.Context, method string, bundle func(*State) []byte, send func(map[string][]byte) error) error {
	c0 := s.startCall(ctx, method, 0)
	sels, p, err := s.caller(ctx, method, c0)
	if err == nil {
		var release func()
		if release, err = s.holdStream(ctx, p); err == nil {
			defer release()
		}
	}
	if err != nil {
		c0.end(err)
		return err
	}
	var last []byte
	sent, first := 0, true
	return s.watch(ctx, func(st *State) (time.Time, error) {
		c := c0
		if !first {
			c = c0.next(sent)
			if sels, _, err = s.caller(ctx, method, c); err != nil {
				c.end(err)
				return time.Time{}, err
			}
		}
		first = false
		if len(matching(st, sels)) == 0 {
			c.end(errNoIdentity)
			return time.Time{}, errNoIdentity
		}
		b := bundle(st)
		if sent > 0 && bytes.Equal(b, last) {
			return time.Time{}, nil
		}
		c.set(attrTrustDomain.String(st.TrustDomain.Name()))
		err := send(map[string][]byte{st.TrustDomain.IDString(): b})
		c.end(err)
		if err != nil {
			return time.Time{}, err
		}
		last, sent = b, sent+1
		return time.Time{}, nil
	})
}

// FetchJWTSVID implements the Workload API.
func (s *Server) FetchJWTSVID(ctx context.Context, req *workload.JWTSVIDRequest) (resp *workload.JWTSVIDResponse, err error) {
	c := s.startCall(ctx, "FetchJWTSVID", -1)
	defer func() { c.end(err) }()
	c.set(attrAudiences.Int(len(req.Audience)))
	sels, p, err := s.caller(ctx, "FetchJWTSVID", c)
	if err != nil {
		return nil, err
	}
	if err := checkAudience(req.Audience); err != nil {
		return nil, err
	}
	var want spiffeid.ID
	if req.SpiffeId != "" {
		if want, err = spiffeid.FromString(req.SpiffeId); err != nil {
			return nil, status.Errorf(codes.InvalidArgument, "invalid requested SPIFFE ID: %v", err)
		}
	}
	st, _ := s.cfg.Source.State()
	ids := matching(st, sels)
	if !want.IsZero() {
		ids = slices.DeleteFunc(ids, func(id *Identity) bool { return id.SPIFFEID != want })
	}
	if len(ids) == 0 {
		s.callerLog.log(s.log, s.now(), slog.LevelInfo, "no JWT-SVID for caller", "pid", p.PID, "uid", p.UID, "requested", req.SpiffeId)
		return nil, noIdentity(st, sels, want)
	}
	resp = &workload.JWTSVIDResponse{}
	c.served(ids)
	for _, id := range ids {
		tok, err := s.cfg.Source.JWTSVID(ctx, id, req.Audience)
		if err != nil {
			s.callerLog.log(s.log, s.now(), slog.LevelWarn, "JWT-SVID unavailable", "spiffe_id", id.SPIFFEID.String(), "error", err)
			if errors.Is(err, ErrJWTSVIDShare) {
				return nil, status.Errorf(codes.ResourceExhausted, "could not get a JWT-SVID for %s: it asked for more new JWT-SVIDs than its share of this node's budget allows; reuse tokens per audience, retry in a second", id.SPIFFEID)
			}
			var se interface{ HTTPStatus() int }
			if errors.As(err, &se) && se.HTTPStatus() == http.StatusTooManyRequests {
				return nil, status.Errorf(codes.ResourceExhausted, "could not get a JWT-SVID for %s: this node asked the server for more JWT-SVIDs than its budget allows; reuse tokens per audience, retry in a second", id.SPIFFEID)
			}
			return nil, status.Errorf(codes.Unavailable, "could not get a JWT-SVID for %s: the agent cannot reach the server", id.SPIFFEID)
		}
		resp.Svids = append(resp.Svids, &workload.JWTSVID{SpiffeId: id.SPIFFEID.String(), Svid: tok})
		if s.cfg.OnServe != nil {
			s.cfg.OnServe("jwt")
		}
	}
	return resp, nil
}

func checkAudience(aud []string) error {
	if len(aud) == 0 {
		return status.Error(codes.InvalidArgument, "audience must be specified")
	}
	if len(aud) > MaxAudiences {
		return status.Errorf(codes.InvalidArgument, "at most %d audiences", MaxAudiences)
	}
	for _, a := range aud {
		if a == "" || len(a) > MaxAudienceLen || strings.ContainsFunc(a, func(r rune) bool { return r < 0x20 || r == 0x7f }) {
			return status.Errorf(codes.InvalidArgument, "each audience must be 1 to %d printable characters", MaxAudienceLen)
		}
	}
	return nil
}

// ValidateJWTSVID implements the Workload API. Any caller may validate (no
// identity is handed out), but the call is still attested and logged.
func (s *Server) ValidateJWTSVID(ctx context.Context, req *workload.ValidateJWTSVIDRequest) (resp *workload.ValidateJWTSVIDResponse, err error) {
	c := s.startCall(ctx, "ValidateJWTSVID", -1)
	defer func() { c.end(err) }()
	if _, _, err := s.caller(ctx, "ValidateJWTSVID", c); err != nil {
		return nil, err
	}
	switch {
	case req.Audience == "":
		return nil, status.Error(codes.InvalidArgument, "audience must be specified")
	case req.Svid == "":
		return nil, status.Error(codes.InvalidArgument, "svid must be specified")
	}
	st, _ := s.cfg.Source.State()
	svid, err := jwtsvid.ParseAndValidate(req.Svid, st.JWTBundle, []string{req.Audience})
	if err != nil {
		c.set(attrJWTValid.Bool(false))
		return nil, status.Errorf(codes.InvalidArgument, "invalid JWT-SVID: %v", err)
	}
	// The token is authentic: the ID it names is the caller's business,
	// whether or not it is still good.
	c.named(svid.ID.String())
	if st.revoked(svid.ID) {
		c.set(attrJWTValid.Bool(false))
		return nil, status.Errorf(codes.InvalidArgument, "invalid JWT-SVID: %s is revoked", svid.ID)
	}
	claims, err := structpb.NewStruct(svid.Claims)
	if err != nil {
		return nil, status.Errorf(codes.InvalidArgument, "invalid JWT-SVID claims: %v", err)
	}
	c.set(attrJWTValid.Bool(true))
	return &workload.ValidateJWTSVIDResponse{SpiffeId: svid.ID.String(), Claims: claims}, nil
}
