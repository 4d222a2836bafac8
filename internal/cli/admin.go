package cli

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"math"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/moatless/moatless/internal/cli/dataplane"
	"github.com/moatless/moatless/internal/config"
)

// adminFlags are the connection flags every admin command takes. Each flag
// falls back to an environment variable, then to the default data
// directory, in the habit of VAULT_ADDR / VAULT_TOKEN / VAULT_CACERT.
type adminFlags struct {
	addr       string
	token      string
	tokenFile  string
	cacert     string
	clientCert string
	clientKey  string
	output     string
	getenv     func(string) string
}

func (a *adminFlags) register(fs *flag.FlagSet, e *Env) {
	a.getenv = e.getenv
	fs.StringVar(&a.addr, "addr", "", "server address `host:port` or https URL (env MOATLESS_ADDR; default "+config.DefaultListen+")")
	fs.StringVar(&a.token, "token", "", "admin token (env MOATLESS_TOKEN; default: DATA_DIR/admin-token)")
	fs.StringVar(&a.tokenFile, "token-file", "", "read the admin token from this `file`")
	fs.StringVar(&a.cacert, "cacert", "", "PEM trust bundle to verify the server (env MOATLESS_CACERT; default: DATA_DIR/bundle.pem)")
	fs.StringVar(&a.clientCert, "client-cert", "", "admin client certificate `file` (env MOATLESS_CLIENT_CERT), instead of a token")
	fs.StringVar(&a.clientKey, "client-key", "", "admin client key `file` (env MOATLESS_CLIENT_KEY)")
	fs.StringVar(&a.output, "o", "text", "output format: text or json")
}

// json reports whether -o json was asked for.
func (a *adminFlags) json() bool { return a.output == "json" }

func (a *adminFlags) validateOutput() error {
	if a.output != "text" && a.output != "json" {
		return fmt.Errorf("-o must be text or json, not %q", a.output)
	}
	return nil
}

func firstNonEmpty(vs ...string) string {
	for _, v := range vs {
		if v != "" {
			return v
		}
	}
	return ""
}

// adminClient talks to the server's admin API over TLS, verifying the
// server against the trust bundle.
type adminClient struct {
	base  string
	token string
	http  *http.Client
	// bundle is the trust bundle file that verifies the server, named
	// when the server's certificate does not chain to it.
	bundle string
}

// client builds an adminClient from the flags. Its errors say what to set.
func (a *adminFlags) client() (*adminClient, error) {
	if err := a.validateOutput(); err != nil {
		return nil, err
	}
	dataDir := config.DefaultDataDir(a.getenv)
	addr := firstNonEmpty(a.addr, a.getenv("MOATLESS_ADDR"), config.DefaultListen)
	if !strings.Contains(addr, "://") {
		addr = "https://" + addr
	}
	if strings.HasPrefix(addr, "http://") {
		return nil, fmt.Errorf("the admin API is TLS only: use an https:// address, not %q", addr)
	}
	addr = strings.TrimRight(addr, "/")

	pool, err := serverTrust(a.cacert, a.getenv)
	if err != nil {
		return nil, err
	}
	tlsConf := &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}

	certFile := firstNonEmpty(a.clientCert, a.getenv("MOATLESS_CLIENT_CERT"))
	keyFile := firstNonEmpty(a.clientKey, a.getenv("MOATLESS_CLIENT_KEY"))
	token := firstNonEmpty(a.token, a.getenv("MOATLESS_TOKEN"))
	switch {
	case certFile != "" || keyFile != "":
		if certFile == "" || keyFile == "" {
			return nil, errors.New("--client-cert and --client-key go together")
		}
		cert, err := tls.LoadX509KeyPair(certFile, keyFile)
		if err != nil {
			return nil, fmt.Errorf("load admin client certificate: %w", err)
		}
		tlsConf.Certificates = []tls.Certificate{cert}
	case token != "":
	case a.tokenFile != "":
		t, err := readTokenFile(a.tokenFile)
		if err != nil {
			return nil, fmt.Errorf("read admin token: %w", err)
		}
		token = t
	default:
		t, err := readTokenFile(filepath.Join(dataDir, "admin-token"))
		if err != nil {
			return nil, fmt.Errorf("no admin credential: set MOATLESS_TOKEN (the server wrote it to DATA_DIR/admin-token on first start) or pass --client-cert/--client-key")
		}
		token = t
	}
	// The server is verified by its SPIFFE trust bundle; its certificate
	// carries the DNS names and IPs it listens on, so normal hostname
	// verification applies.
	tr := &http.Transport{TLSClientConfig: tlsConf, ForceAttemptHTTP2: true, TLSHandshakeTimeout: 10 * time.Second}
	return &adminClient{base: addr, token: token, http: &http.Client{Transport: tr, Timeout: 60 * time.Second}, bundle: serverTrustPath(a.cacert, a.getenv)}, nil
}

// adminCommand is the frame every admin command shares: a flag set named
// after the command with the connection flags (adminFlags) registered on
// it. A command adds its own flags to fs, parses, checks its input, and
// only then builds the client, so bad input is reported before any
// credential or trust bundle is read.
type adminCommand struct {
	e  *Env
	fs *flag.FlagSet
	af adminFlags
}

// newAdminCommand starts the admin command called name ("entry create");
// name is also the prefix of its error messages.
func (e *Env) newAdminCommand(name string) *adminCommand {
	a := &adminCommand{e: e, fs: flag.NewFlagSet(name, flag.ContinueOnError)}
	a.af.register(a.fs, e)
	return a
}

// parse parses args into the flag set; see Env.parseFlags.
func (a *adminCommand) parse(args []string) (int, bool) { return a.e.parseFlags(a.fs, args) }

// client builds the admin client from the connection flags. What fails
// here (a bad -o, no credential, an unreadable trust bundle) is the user's
// to fix: it is printed as "NAME: ..." with ExitUsage, returned with false.
func (a *adminCommand) client() (*adminClient, int, bool) {
	c, err := a.af.client()
	if err != nil {
		return nil, a.e.errorf(ExitUsage, "%s: %v", a.fs.Name(), err), false
	}
	return c, ExitOK, true
}

// connect is parse then client, for commands that check nothing between.
func (a *adminCommand) connect(args []string) (*adminClient, int, bool) {
	if code, ok := a.parse(args); !ok {
		return nil, code, false
	}
	return a.client()
}

// json reports whether -o json was asked for.
func (a *adminCommand) json() bool { return a.af.json() }

// serverTrust reads the PEM trust bundle that verifies the server: the
// file given by --cacert (cacert), else MOATLESS_CACERT, else
// DATA_DIR/bundle.pem. A bundle with no certificate, or with one that does
// not parse, is an error naming the file.
func serverTrust(cacert string, getenv func(string) string) (*x509.CertPool, error) {
	path := serverTrustPath(cacert, getenv)
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read trust bundle: %w (set --cacert or MOATLESS_CACERT to the server's bundle.pem)", err)
	}
	certs, err := dataplane.ParsePEMCerts(b, "trust bundle "+path)
	if err != nil {
		return nil, err
	}
	pool := x509.NewCertPool()
	for _, c := range certs {
		pool.AddCert(c)
	}
	return pool, nil
}

// apiError is a non-2xx answer from the server: {"errors": [...]}.
type apiError struct {
	Status int
	Msgs   []string
}

func (e *apiError) Error() string {
	if len(e.Msgs) == 0 {
		return fmt.Sprintf("server answered %d %s", e.Status, http.StatusText(e.Status))
	}
	return strings.Join(e.Msgs, "; ")
}

// do sends in (if non-nil) as JSON and decodes a 2xx answer into out (if
// non-nil). Non-2xx answers become *apiError.
func (c *adminClient) do(ctx context.Context, method, path string, in, out any) error {
	var body io.Reader
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return err
		}
		body = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, c.base+path, body)
	if err != nil {
		return err
	}
	if in != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	if c.token != "" {
		req.Header.Set("Authorization", "Bearer "+c.token)
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return reachError(c.base, c.bundle, err)
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(io.LimitReader(resp.Body, 64<<20))
	if err != nil {
		return fmt.Errorf("read answer: %w", err)
	}
	if resp.StatusCode/100 != 2 {
		ae := &apiError{Status: resp.StatusCode}
		var eb struct {
			Errors []string `json:"errors"`
		}
		if json.Unmarshal(raw, &eb) == nil {
			ae.Msgs = eb.Errors
		}
		return ae
	}
	if out != nil && len(raw) > 0 {
		if err := json.Unmarshal(raw, out); err != nil {
			return fmt.Errorf("decode answer: %w", err)
		}
	}
	return nil
}

// exitCode maps an error from an admin call to the documented exit codes
// and prints it with a hint.
func (e *Env) fail(err error) int {
	var ae *apiError
	if errors.As(err, &ae) {
		switch {
		case ae.Status == http.StatusUnauthorized || ae.Status == http.StatusForbidden:
			return e.errorf(ExitDenied, "%v (check MOATLESS_TOKEN or the admin client certificate)", err)
		case ae.Status == http.StatusNotFound:
			return e.errorf(ExitNotFound, "%v", err)
		case ae.Status/100 == 4:
			return e.errorf(ExitUsage, "%v", err)
		}
	}
	return e.errorf(ExitFailure, "%v", err)
}

// printJSON writes v as indented JSON followed by a newline.
func (e *Env) printJSON(v any) int { return e.dp().PrintJSON(v) }

// pagePath is path?limit=LIMIT[&before=BEFORE] for the paged listings
// (audit list, policy history). The server's bounds are checked here so
// that the error names the flag: --limit is 1 to 1000, --before is 0 (the
// newest page) or a positive int64, a position the server calls what.
func pagePath(path string, limit int, before uint64, what string) (string, error) {
	if limit < 1 || limit > 1000 {
		return "", errors.New("--limit must be 1 to 1000")
	}
	if before > math.MaxInt64 {
		return "", fmt.Errorf("--before %d is not a %s", before, what)
	}
	path += "?limit=" + strconv.Itoa(limit)
	if before > 0 {
		path += "&before=" + strconv.FormatUint(before, 10)
	}
	return path, nil
}

// newTable is the writer of every table and key/value listing the
// commands print (dataplane.NewTable). Flush it at the end. What it
// writes goes through termSafe: no control character in a field reaches
// the terminal raw. A field anyone may have chosen also goes through
// printable, so a tab or newline in it cannot make cells or rows of its
// own.
func newTable(w io.Writer) *tabwriter.Writer { return dataplane.NewTable(termSafe{w}) }

// parseFlags parses args into fs (dataplane.Env.ParseFlags): false with
// the exit code when parsing failed or help was asked.
func (e *Env) parseFlags(fs *flag.FlagSet, args []string) (int, bool) {
	return e.dp().ParseFlags(fs, args)
}

// parseFlagSet parses args with fs, leaving positional arguments in
// fs.Args() (dataplane.Env.ParseFlagSet).
func (e *Env) parseFlagSet(fs *flag.FlagSet, args []string) (int, bool) {
	return e.dp().ParseFlagSet(fs, args)
}

// stringList is a repeatable string flag.
type stringList = dataplane.StringList
