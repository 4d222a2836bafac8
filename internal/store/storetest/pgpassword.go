package storetest

import (
	"fmt"
	"net"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/moatless/moatless/internal/loopback"
)

// PasswordServer is a PostgreSQL server that authenticates with
// passwords (scram-sha-256) on 127.0.0.1, for tests of code that creates
// and logs in as PostgreSQL users (the secrets service's dynamic
// credentials). The shared store server trusts every local connection and
// so cannot show that a password works or stopped working.
type PasswordServer struct {
	Host      string // 127.0.0.1
	Port      int
	Superuser string
	Password  string // the superuser's initial password
	srv       *server
}

// DSN is a postgres:// URL for user and password on database db.
func (p *PasswordServer) DSN(user, password, db string) string {
	u := url.URL{Scheme: "postgres", User: url.UserPassword(user, password), Host: net.JoinHostPort(p.Host, strconv.Itoa(p.Port)),
		Path: "/" + db, RawQuery: "sslmode=disable&connect_timeout=5"}
	return u.String()
}

// Psql runs a statement as the superuser over the unix socket (peer
// trust is off: it uses the current superuser password given).
func (p *PasswordServer) Psql(password, stmt string) error {
	cmd := exec.Command(filepath.Join(p.srv.bin, "psql"), p.DSN(p.Superuser, password, "postgres"), "-v", "ON_ERROR_STOP=1", "-qc", stmt)
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: p.srv.cred}
	out, err := cmd.CombinedOutput()
	if err != nil {
		return fmt.Errorf("psql: %v: %s", err, out)
	}
	return nil
}

var (
	pwOnce   sync.Once
	pwServer *PasswordServer
	pwErr    error
)

// PostgresPassword returns the shared password-authenticating server,
// starting it on first use. Like Postgres it skips outside CI when the
// Debian package is missing and fails under CI=true. Tests that change
// the superuser's password must set it back (or use their own role).
func PostgresPassword(t testing.TB) *PasswordServer {
	t.Helper()
	pwOnce.Do(func() { pwServer, pwErr = startPasswordServer() })
	if pwErr != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("PostgreSQL is required under CI=true: %v", pwErr)
		}
		t.Skipf("skipping PostgreSQL test: %v (install the Debian package postgresql)", pwErr)
	}
	return pwServer
}

func freePort() (int, error) { return loopback.FreePort() }

func startPasswordServer() (*PasswordServer, error) {
	bin, err := findBin()
	if err != nil {
		return nil, err
	}
	dir, err := os.MkdirTemp("", "mlpw")
	if err != nil {
		return nil, err
	}
	s := &server{dir: dir, bin: bin}
	if err := dropPrivileges(s); err != nil {
		os.RemoveAll(dir)
		return nil, err
	}
	p := &PasswordServer{Host: "127.0.0.1", Superuser: "moatless_root", Password: "initial-root-password", srv: s}
	pwfile := filepath.Join(dir, "pw")
	if err := os.WriteFile(pwfile, []byte(p.Password+"\n"), 0o600); err != nil {
		return nil, err
	}
	if s.cred != nil {
		os.Chown(pwfile, int(s.cred.Uid), int(s.cred.Gid))
	}
	data := filepath.Join(dir, "data")
	initdb := exec.Command(filepath.Join(bin, "initdb"), "-D", data, "-U", p.Superuser, "--auth=scram-sha-256", "--pwfile="+pwfile, "-E", "UTF8", "--no-sync")
	initdb.SysProcAttr = &syscall.SysProcAttr{Credential: s.cred}
	if out, err := initdb.CombinedOutput(); err != nil {
		os.RemoveAll(dir)
		return nil, fmt.Errorf("initdb: %v: %s", err, strings.TrimSpace(string(out)))
	}
	os.Remove(pwfile)
	var last error
	for range 5 { // the free port may be taken between the probe and the start
		if p.Port, err = freePort(); err != nil {
			return nil, err
		}
		s.cmd = exec.Command(filepath.Join(bin, "postgres"), "-D", data, "-k", dir, "-c", "listen_addresses=127.0.0.1", "-p", strconv.Itoa(p.Port),
			"-c", "fsync=off", "-c", "max_connections=100", "-c", "shared_buffers=16MB")
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
		for time.Now().Before(deadline) {
			if last = p.Psql(p.Password, "SELECT 1"); last == nil {
				return p, nil
			}
			if s.cmd.ProcessState != nil {
				break
			}
			time.Sleep(50 * time.Millisecond)
		}
		s.cmd.Process.Kill()
		s.cmd.Wait()
	}
	log, _ := os.ReadFile(filepath.Join(dir, "postgres.log"))
	s.stop()
	return nil, fmt.Errorf("postgres did not become ready: %v\n%s", last, log)
}
