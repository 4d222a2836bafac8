// Package storetest gives tests real stores: a fresh SQLite file, and a
// fresh database on a real PostgreSQL server started from the Debian
// package's binaries in a temporary directory (one server per test binary,
// one database per test).
//
// Outside CI a missing PostgreSQL skips the PostgreSQL half with a message
// naming the package; with CI=true it fails the test.
package storetest

import (
	"context"
	"fmt"
	"net/url"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/moatless/moatless/internal/store"
)

// SQLite opens a store on a new SQLite file in t.TempDir.
func SQLite(t testing.TB) *store.DB {
	t.Helper()
	db, err := store.Open(context.Background(), filepath.Join(t.TempDir(), "moatless.db"))
	if err != nil {
		t.Fatalf("open sqlite store: %v", err)
	}
	t.Cleanup(func() { db.Close() })
	return db
}

// Postgres opens a store on a new, empty database of the shared test
// PostgreSQL server, starting the server on first use.
func Postgres(t testing.TB) *store.DB {
	t.Helper()
	db, err := store.Open(context.Background(), PostgresDSN(t))
	if err != nil {
		t.Fatalf("open postgres store: %v", err)
	}
	t.Cleanup(func() { db.Close() })
	return db
}

// Each runs fn as a subtest against SQLite and against PostgreSQL.
func Each(t *testing.T, fn func(t *testing.T, db *store.DB)) {
	t.Run("sqlite", func(t *testing.T) { fn(t, SQLite(t)) })
	t.Run("postgres", func(t *testing.T) { fn(t, Postgres(t)) })
}

// EachB runs fn as a sub-benchmark against SQLite and against
// PostgreSQL.
func EachB(b *testing.B, fn func(b *testing.B, db *store.DB)) {
	b.Run("sqlite", func(b *testing.B) { fn(b, SQLite(b)) })
	b.Run("postgres", func(b *testing.B) { fn(b, Postgres(b)) })
}

var (
	pgOnce   sync.Once
	pgServer *server
	pgErr    error
	dbSeq    atomic.Int64
)

// PostgresDSN returns the DSN of a new empty database on the shared test
// server.
func PostgresDSN(t testing.TB) string {
	t.Helper()
	pgOnce.Do(func() { pgServer, pgErr = startPostgres() })
	if pgErr != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("PostgreSQL is required under CI=true: %v", pgErr)
		}
		t.Skipf("skipping PostgreSQL test: %v (install the Debian package postgresql)", pgErr)
	}
	name := fmt.Sprintf("t%d_%d", os.Getpid(), dbSeq.Add(1))
	if err := pgServer.psql("CREATE DATABASE " + name); err != nil {
		t.Fatalf("create test database: %v", err)
	}
	return pgServer.dsn(name)
}

// Main wraps testing.M so the shared PostgreSQL server is stopped when
// the package's tests end: func TestMain(m *testing.M) { storetest.Main(m) }.
func Main(m interface{ Run() int }) {
	code := m.Run()
	Stop()
	os.Exit(code)
}

// Stop stops the shared servers that were started.
func Stop() {
	if pgServer != nil {
		pgServer.stop()
	}
	if pwServer != nil {
		pwServer.srv.stop()
	}
}

// dropPrivileges: PostgreSQL refuses to run as root; drop to the
// package's postgres user (or nobody) and give it the directory.
func dropPrivileges(s *server) error {
	if os.Geteuid() != 0 {
		return nil
	}
	u, err := user.Lookup("postgres")
	if err != nil {
		u, err = user.Lookup("nobody")
	}
	if err != nil {
		return fmt.Errorf("running as root and no postgres user to drop to")
	}
	uid, _ := strconv.Atoi(u.Uid)
	gid, _ := strconv.Atoi(u.Gid)
	s.cred = &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)}
	return os.Chown(s.dir, uid, gid)
}

type server struct {
	dir  string
	bin  string
	cmd  *exec.Cmd
	cred *syscall.Credential
}

func (s *server) dsn(db string) string {
	q := url.Values{"host": {s.dir}, "sslmode": {"disable"}}
	return "postgres://moatless@/" + db + "?" + q.Encode()
}

func (s *server) psql(stmt string) error {
	cmd := exec.Command(filepath.Join(s.bin, "psql"), "-h", s.dir, "-U", "moatless", "-d", "postgres", "-v", "ON_ERROR_STOP=1", "-qc", stmt)
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: s.cred}
	out, err := cmd.CombinedOutput()
	if err != nil {
		return fmt.Errorf("psql %q: %v: %s", stmt, err, out)
	}
	return nil
}

func (s *server) stop() {
	if s.cmd != nil && s.cmd.Process != nil {
		s.cmd.Process.Signal(syscall.SIGINT) // fast shutdown
		done := make(chan struct{})
		go func() { s.cmd.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			s.cmd.Process.Kill()
		}
	}
	os.RemoveAll(s.dir)
}

// findBin locates the PostgreSQL server binaries of the Debian package.
func findBin() (string, error) {
	if d := os.Getenv("MOATLESS_PG_BIN"); d != "" {
		return d, nil
	}
	matches, _ := filepath.Glob("/usr/lib/postgresql/*/bin/initdb")
	if len(matches) == 0 {
		if p, err := exec.LookPath("initdb"); err == nil {
			return filepath.Dir(p), nil
		}
		return "", fmt.Errorf("no PostgreSQL server binaries (initdb) found")
	}
	return filepath.Dir(matches[len(matches)-1]), nil
}

func startPostgres() (*server, error) {
	bin, err := findBin()
	if err != nil {
		return nil, err
	}
	// A short path: unix socket paths are limited to ~100 bytes.
	dir, err := os.MkdirTemp("", "mlpg")
	if err != nil {
		return nil, err
	}
	s := &server{dir: dir, bin: bin}
	if err := dropPrivileges(s); err != nil {
		return nil, err
	}
	data := filepath.Join(dir, "data")
	initdb := exec.Command(filepath.Join(bin, "initdb"), "-D", data, "-U", "moatless", "--auth=trust", "-E", "UTF8", "--no-sync")
	initdb.SysProcAttr = &syscall.SysProcAttr{Credential: s.cred}
	if out, err := initdb.CombinedOutput(); err != nil {
		os.RemoveAll(dir)
		return nil, fmt.Errorf("initdb: %v: %s", err, strings.TrimSpace(string(out)))
	}
	s.cmd = exec.Command(filepath.Join(bin, "postgres"), "-D", data, "-k", dir, "-c", "listen_addresses=",
		"-c", "fsync=off", "-c", "max_connections=200", "-c", "shared_buffers=32MB")
	s.cmd.SysProcAttr = &syscall.SysProcAttr{Credential: s.cred, Pdeathsig: syscall.SIGKILL, Setpgid: true}
	logf, _ := os.Create(filepath.Join(dir, "postgres.log"))
	if logf != nil {
		s.cmd.Stdout, s.cmd.Stderr = logf, logf
	}
	if err := s.cmd.Start(); err != nil {
		os.RemoveAll(dir)
		return nil, fmt.Errorf("start postgres: %w", err)
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		if err := s.psql("SELECT 1"); err == nil {
			return s, nil
		} else if time.Now().After(deadline) {
			log, _ := os.ReadFile(filepath.Join(dir, "postgres.log"))
			s.stop()
			return nil, fmt.Errorf("postgres did not become ready: %v\n%s", err, log)
		}
		time.Sleep(50 * time.Millisecond)
	}
}
