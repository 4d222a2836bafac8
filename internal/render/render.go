// Package render delivers secrets and SVIDs to programs that cannot call
// an API: it renders text/template files from the secrets service's
// answers and the workload's X509-SVID, keeps leases renewed, rewrites the
// files before what they hold expires, and signals or runs a command when
// a file changes — what Vault Agent templates and spiffe-helper do.
//
// Templates use consul-template's shape, so existing ones carry over:
//
//	{{ with secret "secret/data/orders/db" }}{{ .Data.data.password }}{{ end }}
//	{{ with secret "database/creds/orders" }}postgres://{{ .Data.username }}:{{ .Data.password }}@db/orders{{ end }}
//	{{ svidCert }} {{ svidKey }} {{ bundle }} {{ spiffeID }}
//
// Files are written atomically (temporary file, fsync, rename) with mode
// 0600 unless a template says otherwise, and only when their content
// changes.
//
// Lifecycle: New(Config, Options) checks the config; Run(ctx) renders,
// then keeps everything fresh until ctx ends; Once does one pass (tests
// and "--once").
package render

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"text/template"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"github.com/spiffe/go-spiffe/v2/workloadapi"

	"github.com/moatless/moatless/internal/wire"
)

// Config is the renderer's configuration (YAML or JSON, strict).
type Config struct {
	// Server is the secrets API's base URL, e.g. https://127.0.0.1:8443.
	Server string `json:"server"`
	// WorkloadAPI is the agent's socket ("unix:///run/moatless/agent.sock"
	// or a path): the renderer authenticates with the workload's X509-SVID
	// (no token at all) and verifies the server as
	// spiffe://TD/moatless/server; the SVID is also what svidCert/svidKey
	// render.
	WorkloadAPI string `json:"workload_api,omitempty"`
	// TokenFile holds a client token, for programs without an SVID;
	// CAFile is then the PEM bundle that verifies the server.
	TokenFile string `json:"token_file,omitempty"`
	CAFile    string `json:"ca_file,omitempty"`
	// Refresh is how often non-leased secrets (KV) are read again; 5m when 0.
	Refresh wire.Duration `json:"refresh,omitempty"`
	// Templates to render.
	Templates []Template `json:"templates"`
	// SVID, when set, writes the SVID, key and bundle as PEM files (like
	// spiffe-helper) and rewrites them on rotation.
	SVID *SVIDFiles `json:"svid,omitempty"`
}

// Template is one file to render.
type Template struct {
	// Source is the template file; Contents the template inline (one of).
	Source   string `json:"source,omitempty"`
	Contents string `json:"contents,omitempty"`
	// Destination is the file written.
	Destination string `json:"destination"`
	// Perms is the file mode as an octal string ("0640"); "0600" when empty.
	Perms string `json:"perms,omitempty"`
	// Command runs (no shell) after the file changed; Signal is sent to
	// the process in PIDFile instead or as well.
	Command []string `json:"command,omitempty"`
	Signal  string   `json:"signal,omitempty"` // HUP, USR1, USR2, TERM, INT
	PIDFile string   `json:"pid_file,omitempty"`
}

// SVIDFiles names the PEM files of the workload's SVID.
type SVIDFiles struct {
	CertFile   string   `json:"cert_file"`
	KeyFile    string   `json:"key_file"`
	BundleFile string   `json:"bundle_file"`
	Command    []string `json:"command,omitempty"`
}

// Validate checks the config; errors name the field.
func (c *Config) Validate() error {
	if !strings.HasPrefix(c.Server, "https://") {
		return errors.New("render: server: want an https:// URL")
	}
	if (c.WorkloadAPI == "") == (c.TokenFile == "") {
		return errors.New("render: give workload_api (authenticate with the SVID) or token_file, exactly one")
	}
	if c.TokenFile != "" && c.CAFile == "" {
		return errors.New("render: token_file needs ca_file to verify the server")
	}
	if c.SVID != nil && c.WorkloadAPI == "" {
		return errors.New("render: svid files need workload_api")
	}
	if len(c.Templates) == 0 && c.SVID == nil {
		return errors.New("render: templates: at least one (or svid)")
	}
	for i, t := range c.Templates {
		switch {
		case (t.Source == "") == (t.Contents == ""):
			return fmt.Errorf("render: templates[%d]: give source or contents", i)
		case t.Destination == "":
			return fmt.Errorf("render: templates[%d].destination: required", i)
		case t.Signal != "" && signals[t.Signal] == 0:
			return fmt.Errorf("render: templates[%d].signal %q: want HUP, USR1, USR2, TERM or INT", i, t.Signal)
		case t.Signal != "" && t.PIDFile == "":
			return fmt.Errorf("render: templates[%d]: signal needs pid_file", i)
		}
		if _, err := perms(t.Perms); err != nil {
			return fmt.Errorf("render: templates[%d].perms: %v", i, err)
		}
	}
	return nil
}

func perms(s string) (os.FileMode, error) {
	if s == "" {
		return 0o600, nil
	}
	var m uint32
	if _, err := fmt.Sscanf(s, "%o", &m); err != nil || m > 0o777 || m&0o002 != 0 {
		return 0, fmt.Errorf("%q: want an octal mode like 0640, not writable by others", s)
	}
	return os.FileMode(m), nil
}

// Options are the renderer's injectable parts.
type Options struct {
	// Now is the clock; time.Now when nil.
	Now    func() time.Time
	Logger *slog.Logger
	// Source overrides the Workload API connection (tests).
	Source SVIDSource
}

// SVIDSource gives the current SVID and bundle (go-spiffe's X509Source).
type SVIDSource interface {
	x509svid.Source
	GetX509BundleForTrustDomain(spiffeid.TrustDomain) (*x509bundle.Bundle, error)
}

// Secret is what a template's secret function returns: Vault's envelope.
type Secret struct {
	RequestID     string         `json:"request_id"`
	LeaseID       string         `json:"lease_id"`
	LeaseDuration int64          `json:"lease_duration"`
	Renewable     bool           `json:"renewable"`
	Data          map[string]any `json:"data"`
	Warnings      []string       `json:"warnings"`
}

// lease is a leased secret the renderer holds.
type lease struct {
	path      string
	id        string
	ttl       time.Duration // as first issued
	renewAt   time.Time
	refetchAt time.Time // when the data must be replaced (expiry near)
}

// Renderer renders and refreshes. Create it with New.
type Renderer struct {
	cfg    Config
	now    func() time.Time
	log    *slog.Logger
	client *http.Client
	token  string
	source SVIDSource
	closer io.Closer

	mu         sync.Mutex
	cache      map[string]*Secret // path -> secret, for leased ones until refetch
	leases     map[string]*lease
	nextKV     time.Time
	lastSerial string
	templates  []*template.Template
}

// New prepares a renderer; it connects to the Workload API when one is
// configured (closed by Close).
func New(ctx context.Context, c Config, o Options) (*Renderer, error) {
	if err := c.Validate(); err != nil {
		return nil, err
	}
	r := &Renderer{cfg: c, now: o.Now, log: o.Logger, cache: map[string]*Secret{}, leases: map[string]*lease{}}
	if r.now == nil {
		r.now = time.Now
	}
	if r.log == nil {
		r.log = slog.Default()
	}
	if r.cfg.Refresh <= 0 {
		r.cfg.Refresh = wire.Duration(5 * time.Minute)
	}
	for i, t := range c.Templates {
		text := t.Contents
		if t.Source != "" {
			b, err := os.ReadFile(t.Source)
			if err != nil {
				return nil, fmt.Errorf("render: templates[%d]: %w", i, err)
			}
			text = string(b)
		}
		tp, err := template.New(filepath.Base(t.Destination)).Option("missingkey=error").Funcs(r.funcs(nil)).Parse(text)
		if err != nil {
			return nil, fmt.Errorf("render: templates[%d]: %w", i, err)
		}
		r.templates = append(r.templates, tp)
	}
	tlsConf := &tls.Config{MinVersion: tls.VersionTLS12}
	switch {
	case c.WorkloadAPI != "":
		r.source = o.Source
		if r.source == nil {
			addr := c.WorkloadAPI
			if !strings.Contains(addr, "://") {
				addr = "unix://" + addr
			}
			src, err := workloadapi.NewX509Source(ctx, workloadapi.WithClientOptions(workloadapi.WithAddr(addr)))
			if err != nil {
				return nil, fmt.Errorf("render: workload API %s: %w", c.WorkloadAPI, err)
			}
			r.source, r.closer = x509Source{src}, src
		}
		svid, err := r.source.GetX509SVID()
		if err != nil {
			r.Close()
			return nil, fmt.Errorf("render: no SVID from the workload API: %w", err)
		}
		serverID, err := spiffeid.FromSegments(svid.ID.TrustDomain(), "moatless", "server")
		if err != nil {
			return nil, err
		}
		tlsConf = tlsconfig.MTLSClientConfig(r.source, r.source, tlsconfig.AuthorizeID(serverID))
	default:
		tok, err := os.ReadFile(c.TokenFile)
		if err != nil {
			return nil, fmt.Errorf("render: token_file: %w", err)
		}
		r.token = strings.TrimSpace(string(tok))
		pemb, err := os.ReadFile(c.CAFile)
		if err != nil {
			return nil, fmt.Errorf("render: ca_file: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pemb) {
			return nil, fmt.Errorf("render: ca_file %s holds no certificate", c.CAFile)
		}
		tlsConf.RootCAs = pool
	}
	r.client = &http.Client{Transport: &http.Transport{TLSClientConfig: tlsConf, ForceAttemptHTTP2: true}, Timeout: 30 * time.Second}
	return r, nil
}

// Close releases the Workload API connection.
func (r *Renderer) Close() error {
	if r.closer != nil {
		return r.closer.Close()
	}
	return nil
}

// call sends one request to the secrets API.
func (r *Renderer) call(ctx context.Context, method, path string, body any) (*Secret, error) {
	var rd io.Reader
	if body != nil {
		b, _ := json.Marshal(body)
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, strings.TrimRight(r.cfg.Server, "/")+"/v1/"+path, rd)
	if err != nil {
		return nil, err
	}
	if r.token != "" {
		req.Header.Set("X-Vault-Token", r.token)
	}
	resp, err := r.client.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(io.LimitReader(resp.Body, 8<<20))
	if resp.StatusCode/100 != 2 {
		var e struct {
			Errors []string `json:"errors"`
		}
		json.Unmarshal(raw, &e)
		return nil, fmt.Errorf("%s %s: %d %s", method, path, resp.StatusCode, strings.Join(e.Errors, "; "))
	}
	var s Secret
	if len(raw) > 0 {
		if err := json.Unmarshal(raw, &s); err != nil {
			return nil, err
		}
	}
	return &s, nil
}

// funcs are the template functions; pass nil at parse time.
func (r *Renderer) funcs(pass *renderPass) template.FuncMap {
	return template.FuncMap{
		"secret": func(path string) (*Secret, error) {
			if pass == nil {
				return nil, nil
			}
			return pass.secret(path)
		},
		"svidCert": func() (string, error) { return pass.svidPEM(0) },
		"svidKey":  func() (string, error) { return pass.svidPEM(1) },
		"bundle":   func() (string, error) { return pass.svidPEM(2) },
		"spiffeID": func() (string, error) {
			if pass == nil || pass.r.source == nil {
				return "", errors.New("spiffeID needs workload_api")
			}
			s, err := pass.r.source.GetX509SVID()
			if err != nil {
				return "", err
			}
			return s.ID.String(), nil
		},
	}
}

// renderPass is one rendering of all templates: each path is read once.
type renderPass struct {
	r   *Renderer
	ctx context.Context
}

func (p *renderPass) secret(path string) (*Secret, error) {
	r := p.r
	path = strings.Trim(path, "/")
	if s, ok := r.cache[path]; ok {
		return s, nil
	}
	s, err := r.call(p.ctx, "GET", path, nil)
	if err != nil {
		return nil, err
	}
	r.cache[path] = s
	if s.LeaseID != "" {
		now := r.now()
		ttl := time.Duration(s.LeaseDuration) * time.Second
		l := &lease{path: path, id: s.LeaseID, ttl: ttl, refetchAt: now.Add(ttl * 9 / 10)}
		if s.Renewable {
			l.renewAt = now.Add(ttl * 2 / 3)
		}
		r.leases[path] = l
	}
	return s, nil
}

func (p *renderPass) svidPEM(which int) (string, error) {
	if p == nil || p.r.source == nil {
		return "", errors.New("svidCert, svidKey and bundle need workload_api")
	}
	return svidPEM(p.r.source, which)
}

func svidPEM(src SVIDSource, which int) (string, error) {
	s, err := src.GetX509SVID()
	if err != nil {
		return "", err
	}
	switch which {
	case 0:
		var b []byte
		for _, c := range s.Certificates {
			b = append(b, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Raw})...)
		}
		return string(b), nil
	case 1:
		der, err := x509.MarshalPKCS8PrivateKey(s.PrivateKey)
		if err != nil {
			return "", err
		}
		return string(pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der})), nil
	}
	bd, err := src.GetX509BundleForTrustDomain(s.ID.TrustDomain())
	if err != nil {
		return "", err
	}
	var b []byte
	for _, c := range bd.X509Authorities() {
		b = append(b, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Raw})...)
	}
	return string(b), nil
}

// Once renews leases that are due, drops secrets that must be fetched
// again (KV at each refresh, leased ones near expiry, all of them when the
// SVID rotated), renders every template, writes the files that changed
// and runs their commands. It returns the destinations it rewrote.
func (r *Renderer) Once(ctx context.Context) ([]string, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	now := r.now()
	svidChanged := false
	if r.source != nil {
		if s, err := r.source.GetX509SVID(); err == nil {
			serial := s.Certificates[0].SerialNumber.String()
			svidChanged = serial != r.lastSerial
			r.lastSerial = serial
		}
	}
	kvDue := !now.Before(r.nextKV)
	for path, s := range r.cache {
		l := r.leases[path]
		switch {
		case l == nil && kvDue:
			delete(r.cache, path)
		case l != nil && !l.renewAt.IsZero() && !now.Before(l.renewAt) && now.Before(l.refetchAt):
			rs, err := r.call(ctx, "PUT", "sys/leases/renew", map[string]any{"lease_id": l.id})
			if err != nil {
				r.log.Warn("lease renewal failed; fetching a new secret before it expires", "path", path, "err", err)
				l.renewAt = time.Time{}
				continue
			}
			ttl := time.Duration(rs.LeaseDuration) * time.Second
			s.LeaseDuration = rs.LeaseDuration
			if ttl < l.ttl {
				// Capped by the lease's max_ttl (or its token): no renewal
				// will extend it; replace the secret with a third of the
				// remaining time to spare.
				l.renewAt, l.refetchAt = time.Time{}, now.Add(ttl*2/3)
			} else {
				l.renewAt, l.refetchAt = now.Add(ttl*2/3), now.Add(ttl*9/10)
			}
		}
		if l != nil && !now.Before(l.refetchAt) {
			delete(r.cache, path)
			delete(r.leases, path)
		}
	}
	if kvDue {
		r.nextKV = now.Add(r.cfg.Refresh.Std())
	}
	var changed []string
	var errs []error
	pass := &renderPass{r: r, ctx: ctx}
	for i, tp := range r.templates {
		t := r.cfg.Templates[i]
		var out bytes.Buffer
		if err := template.Must(tp.Clone()).Funcs(r.funcs(pass)).Execute(&out, nil); err != nil {
			errs = append(errs, fmt.Errorf("render %s: %w", t.Destination, err))
			continue
		}
		mode, _ := perms(t.Perms)
		wrote, err := writeIfChanged(t.Destination, out.Bytes(), mode)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		if wrote {
			changed = append(changed, t.Destination)
			r.notify(ctx, t.Command, t.Signal, t.PIDFile)
		}
	}
	if r.cfg.SVID != nil && r.source != nil && svidChanged {
		f := r.cfg.SVID
		any := false
		for i, dst := range []string{f.CertFile, f.KeyFile, f.BundleFile} {
			if dst == "" {
				continue
			}
			s, err := svidPEM(r.source, i)
			if err != nil {
				errs = append(errs, err)
				continue
			}
			mode := os.FileMode(0o644)
			if i == 1 {
				mode = 0o600
			}
			wrote, err := writeIfChanged(dst, []byte(s), mode)
			if err != nil {
				errs = append(errs, err)
			}
			any = any || wrote
			if wrote {
				changed = append(changed, dst)
			}
		}
		if any {
			r.notify(ctx, f.Command, "", "")
		}
	}
	return changed, errors.Join(errs...)
}

// next is when Once has work next.
func (r *Renderer) next() time.Time {
	r.mu.Lock()
	defer r.mu.Unlock()
	t := r.nextKV
	for _, l := range r.leases {
		for _, x := range []time.Time{l.renewAt, l.refetchAt} {
			if !x.IsZero() && x.Before(t) {
				t = x
			}
		}
	}
	return t
}

// Run renders and keeps rendering until ctx ends: at the next refresh or
// lease deadline, and at once when the SVID rotates. Failures are logged
// and retried after 10 seconds.
func (r *Renderer) Run(ctx context.Context) error {
	var updated <-chan struct{}
	if u, ok := r.source.(interface{ Updated() <-chan struct{} }); ok && r.source != nil {
		updated = u.Updated()
	}
	for {
		changed, err := r.Once(ctx)
		for _, c := range changed {
			r.log.Info("rendered", "destination", c)
		}
		wait := time.Until(r.next())
		if err != nil {
			r.log.Error("render failed; retrying", "err", err)
			wait = min(wait, 10*time.Second)
		}
		wait = max(wait, time.Second)
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return nil
		case <-t.C:
		case <-updated:
			t.Stop()
		}
	}
}

// notify runs the command (no shell) and sends the signal after a change.
func (r *Renderer) notify(ctx context.Context, cmd []string, sig, pidFile string) {
	if len(cmd) > 0 {
		c := exec.CommandContext(ctx, cmd[0], cmd[1:]...)
		if out, err := c.CombinedOutput(); err != nil {
			r.log.Error("change command failed", "command", cmd[0], "err", err, "output", strings.TrimSpace(string(out)))
		}
	}
	if sig != "" {
		b, err := os.ReadFile(pidFile)
		var pid int
		if err == nil {
			_, err = fmt.Sscanf(strings.TrimSpace(string(b)), "%d", &pid)
		}
		if err != nil || pid <= 1 {
			r.log.Error("cannot signal: unreadable pid_file", "pid_file", pidFile)
			return
		}
		if err := signalPID(pid, sig); err != nil {
			r.log.Error("signal failed", "pid", pid, "signal", sig, "err", err)
		}
	}
}

// writeIfChanged writes b to path atomically with mode unless the file
// already holds exactly b with that mode.
func writeIfChanged(path string, b []byte, mode os.FileMode) (bool, error) {
	if old, err := os.ReadFile(path); err == nil && bytes.Equal(old, b) {
		if fi, err := os.Stat(path); err == nil && fi.Mode().Perm() == mode {
			return false, nil
		}
	}
	dir := filepath.Dir(path)
	f, err := os.CreateTemp(dir, "."+filepath.Base(path)+".tmp*")
	if err != nil {
		return false, fmt.Errorf("render: %w", err)
	}
	tmp := f.Name()
	defer os.Remove(tmp)
	if err := f.Chmod(mode); err != nil {
		f.Close()
		return false, err
	}
	if _, err := f.Write(b); err != nil {
		f.Close()
		return false, err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return false, err
	}
	if err := f.Close(); err != nil {
		return false, err
	}
	if err := os.Rename(tmp, path); err != nil {
		return false, fmt.Errorf("render: %w", err)
	}
	return true, nil
}
