package cli

import (
	"context"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/moatless/moatless/internal/loopback"
	"github.com/moatless/moatless/internal/server"
)

// runDemo starts a whole mesh on loopback from this very binary: a server
// on a temporary embedded store, three services (frontend → orders →
// payments) and a reporting job, each behind its own sidecar that attested
// with its own join token; applies deny-by-default Istio policies and an
// OIDC login; then makes scripted calls and prints what the mesh decided.
func runDemo(ctx context.Context, e *Env, args []string) int {
	fs := flag.NewFlagSet("demo", flag.ContinueOnError)
	once := fs.Bool("once", false, "exit after the table: status 1 if any row differs from what was expected")
	dir := fs.String("dir", "", "working `directory` for the demo's data and logs (default: a new temporary directory, removed on exit)")
	keep := fs.Bool("keep", false, "keep the working directory on exit")
	output := fs.String("o", "text", "output format of the table: text or json")
	pg := fs.String("postgres", "", "PostgreSQL admin `URL` (postgres://USER:PASSWORD@HOST:PORT/DB) for the database credentials row; skipped without it")
	fs.Usage = func() {
		fmt.Fprintln(fs.Output(), "Usage: moatless demo [--once] [--dir DIR [--keep]] [-o json] [--postgres URL]")
		fmt.Fprintln(fs.Output(), "\nStarts a server on a temporary embedded store, three services (frontend -> orders ->")
		fmt.Fprintln(fs.Output(), "payments) and a reporting job, each behind its own sidecar that joins the server with")
		fmt.Fprintln(fs.Output(), "its own join token (no agent); applies deny-by-default policies and an OIDC login, makes")
		fmt.Fprintln(fs.Output(), "scripted calls and prints what the mesh decided. Flags:")
		fs.PrintDefaults()
	}
	if code, ok := e.parseFlags(fs, args); !ok {
		return code
	}
	if code, ok := e.linuxOnly("moatless demo"); !ok {
		return code
	}
	if *output != "text" && *output != "json" {
		return e.errorf(ExitUsage, "demo: -o must be text or json")
	}
	d := &demo{e: e, json: *output == "json", postgres: *pg}
	if *dir == "" {
		tmp, err := os.MkdirTemp("", "moatless-demo-")
		if err != nil {
			return e.errorf(ExitFailure, "demo: %v", err)
		}
		d.dir = tmp
		if !*keep {
			defer os.RemoveAll(tmp)
		}
	} else {
		cleared, err := prepareDemoDir(*dir)
		if err != nil {
			return e.errorf(ExitFailure, "demo: %v", err)
		}
		d.dir = *dir
		if cleared {
			d.logf("cleared the previous demo run's data in %s", *dir)
		}
	}
	defer d.stop()

	rows, err := d.run(ctx)
	if err != nil {
		if ctx.Err() != nil {
			return e.errorf(ExitFailure, "demo: interrupted")
		}
		return e.errorf(ExitFailure, "demo: %v (logs in %s; run with --keep to look at them)", err, filepath.Join(d.dir, "logs"))
	}
	bad := d.printTable(rows)
	if *once {
		if bad > 0 {
			return e.errorf(ExitFailure, "demo: %d of %d rows differ from what was expected", bad, len(rows))
		}
		return ExitOK
	}
	d.printNext()
	<-ctx.Done()
	d.logf("stopping")
	return ExitOK
}

// demo holds the processes and addresses of one demo run.
type demo struct {
	e     *Env
	json  bool
	dir   string
	exe   string
	procs []*exec.Cmd

	serverAddr string
	issuer     string
	bundlePath string
	tokenPath  string
	admin      *adminClient
	https      *http.Client // trusts the demo's bundle, for the token endpoints

	sidecars map[string]*demoSidecar
	gateway  *demoGateway
	apps     *demoApps
	// postgres is the admin URL of a PostgreSQL for the database
	// credentials row ("" skips it).
	postgres string
	// containment is what the compromised reports job's rows measured.
	containment *demoContainment
}

// demoSidecar is one workload's sidecar as the demo started it.
type demoSidecar struct {
	name     string
	spiffeID string
	inbound  string            // mTLS listener ("" when the workload serves nothing)
	admin    string            // /readyz and /metrics
	outbound map[string]string // upstream name → loopback listener
	logPath  string
}

const demoTrustDomain = "moatless.local"

func demoID(name string) string { return "spiffe://" + demoTrustDomain + "/ns/prod/sa/" + name }

func (d *demo) logf(format string, args ...any) {
	if d.json {
		return
	}
	fmt.Fprintf(d.e.Stdout, "· "+format+"\n", args...)
}

func (d *demo) run(ctx context.Context) ([]demoRow, error) {
	exe, err := os.Executable()
	if err != nil {
		return nil, fmt.Errorf("find own binary: %w", err)
	}
	d.exe = exe
	if err := os.MkdirAll(filepath.Join(d.dir, "logs"), 0o700); err != nil {
		return nil, err
	}
	if err := d.startServer(ctx); err != nil {
		return nil, err
	}
	if err := d.startApps(); err != nil {
		return nil, err
	}
	if err := d.startSidecars(ctx); err != nil {
		return nil, err
	}
	if err := d.startGateway(ctx); err != nil {
		return nil, err
	}
	version, err := d.applyPolicies(ctx)
	if err != nil {
		return nil, err
	}
	if err := d.applyPlaybook(ctx); err != nil {
		return nil, err
	}
	if err := d.setUpTokens(ctx); err != nil {
		return nil, err
	}
	if err := d.setUpSecrets(ctx); err != nil {
		return nil, err
	}
	if err := d.waitConverged(ctx, version); err != nil {
		return nil, err
	}
	return d.script(ctx)
}

// freeAddr picks a loopback address for a child to listen on.
func freeAddr() (string, error) { return loopback.FreeAddr() }

// start runs this binary with args as a child process, its output in
// logs/NAME.log. Children get SIGTERM when the demo ends, and SIGKILL if
// the demo itself dies.
func (d *demo) start(name string, args ...string) (string, error) {
	logPath := filepath.Join(d.dir, "logs", name+".log")
	f, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o600)
	if err != nil {
		return "", err
	}
	cmd := exec.Command(d.exe, args...)
	cmd.Stdout, cmd.Stderr = f, f
	cmd.Env = append(os.Environ(), "MOATLESS_DATA_DIR="+filepath.Join(d.dir, "server"))
	cmd.SysProcAttr = childProcAttr()
	if err := cmd.Start(); err != nil {
		f.Close()
		return "", fmt.Errorf("start %s: %w", name, err)
	}
	f.Close()
	d.procs = append(d.procs, cmd)
	return logPath, nil
}

// stop ends every child: SIGTERM, then SIGKILL after two seconds.
func (d *demo) stop() {
	if d.apps != nil {
		d.apps.close()
	}
	for _, p := range d.procs {
		p.Process.Signal(syscall.SIGTERM)
	}
	for _, p := range d.procs {
		done := make(chan struct{})
		go func() { p.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(2 * time.Second):
			p.Process.Kill()
			<-done
		}
	}
	d.procs = nil
}

func (d *demo) startServer(ctx context.Context) error {
	addr, err := freeAddr()
	if err != nil {
		return err
	}
	d.serverAddr = addr
	d.issuer = "https://" + addr
	data := filepath.Join(d.dir, "server")
	d.bundlePath = filepath.Join(data, "bundle.pem")
	d.tokenPath = filepath.Join(data, "admin-token")
	d.logf("starting the control plane on %s (embedded store in %s)", addr, data)
	if err := os.MkdirAll(data, 0o700); err != nil {
		return err
	}
	cfg := filepath.Join(d.dir, "server.yaml")
	if err := os.WriteFile(cfg, []byte(demoServerConfig), 0o600); err != nil {
		return err
	}
	if _, err := d.start("server", "server", "--config", cfg, "--data-dir", data, "--listen", addr, "--trust-domain", demoTrustDomain); err != nil {
		return err
	}
	// Wait for the first start to write the bundle and the admin token.
	if err := waitUntil(ctx, 30*time.Second, "the server to write its bundle and admin token", func() bool {
		_, e1 := os.Stat(d.bundlePath)
		_, e2 := os.Stat(d.tokenPath)
		return e1 == nil && e2 == nil
	}); err != nil {
		return err
	}
	af := &adminFlags{addr: addr, cacert: d.bundlePath, tokenFile: d.tokenPath, output: "text", getenv: func(string) string { return "" }}
	var c *adminClient
	if err := waitUntil(ctx, 10*time.Second, "the trust bundle to be readable", func() bool {
		c, err = af.client()
		return err == nil
	}); err != nil {
		return fmt.Errorf("admin client: %w", err)
	}
	d.admin = c
	d.https = c.http
	return waitUntil(ctx, 30*time.Second, "the server to be ready", func() bool {
		resp, err := d.https.Get(d.issuer + "/readyz")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == 200
	})
}

// waitUntil polls cond every 50 ms until it holds, the timeout passes or
// ctx ends.
func waitUntil(ctx context.Context, timeout time.Duration, what string, cond func() bool) error {
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			return fmt.Errorf("timed out after %v waiting for %s", timeout, what)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
	}
	return nil
}

func (d *demo) startSidecars(ctx context.Context) error {
	type spec struct {
		name      string
		app       string   // app address behind the inbound listener, "" for none
		upstreams []string // outbound listeners to these sidecars
	}
	specs := []spec{
		{"payments", d.apps.payments, nil},
		{"orders", d.apps.orders, []string{"payments", "server"}},
		{"frontend", d.apps.frontend, []string{"orders", "payments", "server"}},
		{"reports", "", []string{"orders"}},
	}
	d.sidecars = map[string]*demoSidecar{}
	// Allocate every listener first: outbound listeners name their
	// upstream's inbound address.
	for _, s := range specs {
		sc := &demoSidecar{name: s.name, spiffeID: demoID(s.name), outbound: map[string]string{}}
		var err error
		if sc.admin, err = freeAddr(); err != nil {
			return err
		}
		if s.app != "" {
			if sc.inbound, err = freeAddr(); err != nil {
				return err
			}
		}
		for _, u := range s.upstreams {
			if sc.outbound[u], err = freeAddr(); err != nil {
				return err
			}
		}
		d.sidecars[s.name] = sc
	}
	d.apps.setOutbound(d.sidecars["frontend"].outbound["orders"], d.sidecars["orders"].outbound["payments"], d.sidecars["orders"].outbound["server"])

	for _, s := range specs {
		sc := d.sidecars[s.name]
		var jt server.JoinTokenResponse
		if err := d.admin.do(ctx, "POST", server.PathAdminJoinTokens, server.JoinTokenRequest{SPIFFEID: sc.spiffeID}, &jt); err != nil {
			return fmt.Errorf("join token for %s: %w", s.name, err)
		}
		dir := filepath.Join(d.dir, s.name)
		if err := os.MkdirAll(dir, 0o700); err != nil {
			return err
		}
		tokenFile := filepath.Join(dir, "join-token")
		if err := os.WriteFile(tokenFile, []byte(jt.Token+"\n"), 0o600); err != nil {
			return err
		}
		var b strings.Builder
		fmt.Fprintf(&b, "identity:\n  join: {server: %q, token_file: %q, server_bundle: %q, state_dir: %q}\n",
			d.serverAddr, tokenFile, d.bundlePath, filepath.Join(dir, "state"))
		fmt.Fprintf(&b, "namespace: prod\nlabels: {app: %s}\n", s.name)
		if s.app != "" {
			fmt.Fprintf(&b, "inbound:\n  - {listen: %q, app: %q, port: 8080}\n", sc.inbound, s.app)
		}
		if len(s.upstreams) > 0 {
			b.WriteString("outbound:\n")
			for _, u := range s.upstreams {
				up, id := "", ""
				if u == "server" {
					up, id = d.serverAddr, "spiffe://"+demoTrustDomain+"/moatless/server"
				} else {
					up, id = d.sidecars[u].inbound, d.sidecars[u].spiffeID
				}
				fmt.Fprintf(&b, "  - {name: %s, listen: %q, upstream: %q, spiffe_id: %q}\n", u, sc.outbound[u], up, id)
			}
		}
		fmt.Fprintf(&b, "admin: %q\ndecision_log: {allow_sample_rate: 1}\n", sc.admin)
		// Traffic records every second (the default is 5 s), so that the
		// detection step does not wait for a report.
		b.WriteString("traffic: {interval: 1s}\n")
		cfg := filepath.Join(dir, "sidecar.yaml")
		if err := os.WriteFile(cfg, []byte(b.String()), 0o600); err != nil {
			return err
		}
		logPath, err := d.start(s.name+"-sidecar", "sidecar", "-config", cfg)
		if err != nil {
			return err
		}
		sc.logPath = logPath
		d.logf("started the %s sidecar as %s (own join token; inbound %s)", s.name, sc.spiffeID, orDash(sc.inbound))
	}
	return nil
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

// demoPolicies is deny by default: STRICT mTLS mesh-wide, an ALLOW policy
// with no rules in the root namespace, then exactly the calls the shop
// needs. The gateway is the edge: what it lets in from the internet, and
// that only it may call the frontend.
const demoPolicies = `apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: default, namespace: istio-system}
spec: {mtls: {mode: STRICT}}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: allow-nothing, namespace: istio-system}
spec: {action: ALLOW}
---
apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {name: edge-users, namespace: istio-system}
spec:
  selector: {matchLabels: {istio: ingressgateway}}
  jwtRules:
  - issuer: "{{ISSUER}}"
    jwksUri: "{{ISSUER}}/.well-known/jwks.json"
    audiences: [orders, payments]
    forwardOriginalToken: true
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: edge, namespace: istio-system}
spec:
  selector: {matchLabels: {istio: ingressgateway}}
  action: ALLOW
  rules:
  - to: [{operation: {methods: [GET, POST], paths: ["/", "/checkout", "/orders/*", "/search"]}}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: frontend-from-gateway, namespace: prod}
spec:
  selector: {matchLabels: {app: frontend}}
  action: ALLOW
  rules:
  - from: [{source: {principals: ["{{TD}}/ns/istio-system/sa/gateway"]}}]
    to: [{operation: {methods: [GET, POST], paths: ["/", "/checkout", "/orders/*", "/search"]}}]
---
apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {name: users, namespace: prod}
spec:
  jwtRules:
  - issuer: "{{ISSUER}}"
    jwksUri: "{{ISSUER}}/.well-known/jwks.json"
    audiences: [orders, payments]
    forwardOriginalToken: true
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: orders, namespace: prod}
spec:
  selector: {matchLabels: {app: orders}}
  action: ALLOW
  rules:
  - from: [{source: {principals: ["{{TD}}/ns/prod/sa/frontend", "{{TD}}/ns/prod/sa/reports"]}}]
    to: [{operation: {methods: [GET], paths: ["/orders/*"]}}]
  - from: [{source: {principals: ["{{TD}}/ns/prod/sa/frontend"], requestPrincipals: ["{{ISSUER}}/*"]}}]
    to: [{operation: {methods: [POST], paths: ["/orders"]}}]
    when: [{key: "request.auth.claims[roles]", values: [buyer]}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: payments, namespace: prod}
spec:
  selector: {matchLabels: {app: payments}}
  action: ALLOW
  rules:
  - from: [{source: {principals: ["{{TD}}/ns/prod/sa/orders"], requestPrincipals: ["{{ISSUER}}/*"]}}]
    to: [{operation: {methods: [POST], paths: ["/payments"]}}]
    when:
    - {key: "request.auth.audiences", values: [payments]}
    - {key: "request.auth.claims[act][sub]", values: ["spiffe://{{TD}}/ns/prod/sa/orders"]}
`

func (d *demo) policyYAML() string {
	return strings.NewReplacer("{{ISSUER}}", d.issuer, "{{TD}}", demoTrustDomain).Replace(demoPolicies)
}

func (d *demo) applyPolicies(ctx context.Context) (uint64, error) {
	y := d.policyYAML()
	if err := os.WriteFile(filepath.Join(d.dir, "policies.yaml"), []byte(y), 0o600); err != nil {
		return 0, err
	}
	var res server.PolicyApplyResponse
	req := server.PolicyApplyRequest{Files: []server.PolicyFile{{Name: "policies.yaml", Content: y}}}
	if err := d.admin.do(ctx, "POST", server.PathAdminPolicies, req, &res); err != nil {
		return 0, fmt.Errorf("apply policies: %w", err)
	}
	d.logf("applied deny-by-default policies as version %d (%s)", res.Version, filepath.Join(d.dir, "policies.yaml"))
	return res.Version, nil
}

// waitConverged waits until every sidecar runs the policy version and
// answers ready.
func (d *demo) waitConverged(ctx context.Context, version uint64) error {
	plain := &http.Client{Timeout: 2 * time.Second}
	for _, name := range []string{"payments", "orders", "frontend", "reports", "gateway"} {
		sc := d.sidecars[name]
		want := fmt.Sprintf("policy version %d", version)
		if err := waitUntil(ctx, 60*time.Second, "the "+name+" sidecar to run "+want, func() bool {
			resp, err := plain.Get("http://" + sc.admin + "/readyz")
			if err != nil {
				return false
			}
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			return resp.StatusCode == 200 && strings.Contains(string(b), want)
		}); err != nil {
			return err
		}
	}
	var st server.PolicyStatus
	if err := d.admin.do(ctx, "GET", server.PathAdminPolicyStatus, nil, &st); err == nil {
		d.logf("policy version %d acknowledged by %d of %d connected nodes", st.Version, st.AtVersion, st.Connected)
	}
	return nil
}

// demoRow is one line of the table.
type demoRow struct {
	Step     int    `json:"step"`
	Caller   string `json:"caller"`
	Callee   string `json:"callee"`
	Method   string `json:"method"`
	Path     string `json:"path"`
	Note     string `json:"note,omitempty"`
	Expected string `json:"expected"`
	Result   string `json:"result"`
	Policy   string `json:"policy"`
	OK       bool   `json:"ok"`
}

func (d *demo) printTable(rows []demoRow) int {
	bad := 0
	for i := range rows {
		rows[i].OK = rows[i].Expected == rows[i].Result
		if !rows[i].OK {
			bad++
		}
	}
	if d.json {
		d.e.printJSON(map[string]any{"items": rows, "mismatches": bad, "containment": d.containment})
		return bad
	}
	fmt.Fprintln(d.e.Stdout)
	tw := newTable(d.e.Stdout)
	fmt.Fprintln(tw, "#\tCALLER\tCALLEE\tMETHOD\tPATH\tEXPECTED\tRESULT\tDECIDED BY\t")
	for _, r := range rows {
		mark := "✓"
		if !r.OK {
			mark = "✗ MISMATCH"
		}
		fmt.Fprintf(tw, "%d\t%s\t%s\t%s\t%s\t%s\t%s %s\t%s\t\n", r.Step, r.Caller, r.Callee, r.Method, r.Path, r.Expected, r.Result, mark, r.Policy)
	}
	tw.Flush()
	fmt.Fprintln(d.e.Stdout)
	for _, r := range rows {
		if r.Note != "" {
			fmt.Fprintf(d.e.Stdout, "  %d: %s\n", r.Step, r.Note)
		}
	}
	return bad
}

func (d *demo) printNext() {
	out := d.e.Stdout
	fe, rp := d.sidecars["frontend"], d.sidecars["reports"]
	inc := "INCIDENT_ID"
	if d.containment != nil {
		inc = d.containment.Incident
	}
	fmt.Fprintf(out, `
The mesh keeps running (Ctrl-C stops it; data and logs in %s).
In another terminal (the moatless commands need the binary on PATH: "make build" puts it in bin/), try:

  export MOATLESS_ADDR=%s MOATLESS_CACERT=%s
  export MOATLESS_TOKEN="$(cat %s)"

  curl -i http://%s/orders/7                    # as frontend → orders (allowed)
  curl -i -X DELETE http://%s/orders/7          # wrong method (denied)
  curl -i http://%s/orders/7                    # as reports (isolated by the playbook: refused)
  curl -ik https://%s/                           # through the gateway, the only way in
  curl -ik "https://%s/search?q=%%3Cscript%%3E"     # the WAF: 403 with a request ID
  curl -i http://%s/                            # the frontend's own port: STRICT mTLS, refused
  moatless revoke list                          # what is cut off
  moatless policy status                        # which sidecar runs which policy version
  moatless policy history                       # every version; "moatless policy rollback" goes back
  moatless agent list                           # the nodes and what they acknowledged
  moatless audit list                           # every decision, issuance and admin call, hash-chained
  moatless audit verify --data-dir %s
  moatless secrets kv get orders/config         # the secret orders read (the admin may read it too)
  moatless secrets policy get orders            # who may read what: orders' SPIFFE ID, three paths
  moatless secrets transit encrypt cards "5500 0000 0000 0004"   # then: moatless secrets transit decrypt cards vault:v1:...
  moatless incident list                        # the compromised reports job's incident
  moatless incident show %s      # its findings, steps and timeline; "incident export" writes the forensics bundle
  moatless incident release %s   # lift the isolation (reports is trusted again)
  moatless policy recommend --namespace prod --since 1h --out recommended.yaml   # least privilege from what the sidecars saw
  moatless policy what-if -f recommended.yaml   # replay the recorded traffic through it: what would be denied

Edit %s and "moatless policy apply -f" it: every sidecar has the new version within a second.
Decision logs: %s/logs/*-sidecar.log and gateway.log (with its access log)
`, d.dir, d.serverAddr, d.bundlePath, d.tokenPath,
		fe.outbound["orders"], fe.outbound["orders"], rp.outbound["orders"], d.gateway.addr, d.gateway.addr, fe.inbound,
		filepath.Join(d.dir, "server"), inc, inc, filepath.Join(d.dir, "policies.yaml"), d.dir)
	if d.serves("/ui") {
		fmt.Fprintf(out, "Dashboard: %s/ui (log in with the admin token in %s)\n", d.issuer, d.tokenPath)
		if d.containment != nil {
			fmt.Fprintf(out, "           %s/ui/incidents/%s: the incident, its steps and their audit records; release it there\n", d.issuer, inc)
		}
	}
}

// serves reports whether the server answers path with anything but 404.
func (d *demo) serves(path string) bool {
	resp, err := d.https.Get(d.issuer + path)
	if err != nil {
		return false
	}
	resp.Body.Close()
	return resp.StatusCode != http.StatusNotFound
}
