package cli

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strings"
	"time"

	"github.com/moatless/moatless/internal/authn"
	"github.com/moatless/moatless/internal/policy"
)

// policyCommands is the "moatless policy" table. check is offline and
// lives here; the others talk to the server (policy_admin.go).
var policyCommands = []command{
	{"check", "evaluate a request against policy files offline, exactly as a sidecar would", runPolicyCheck},
	{"lint", "report every error and warning in policy files at once, for CI (exit 2 on errors)", runPolicyLint},
	{"test", "run the Rego unit tests (test_* rules) of policy files, as opa test does", runPolicyTest},
	{"apply", "validate and apply policies (multi-document YAML) as a new version", runPolicyApply},
	{"get", "show the policies in force", runPolicyGet},
	{"delete", "delete policies", runPolicyDelete},
	{"history", "list policy versions", runPolicyHistory},
	{"rollback", "make an earlier policy version current again", runPolicyRollback},
	{"status", "show which sidecar runs which policy version", runPolicyStatus},
	{"networkpolicy", "print Kubernetes NetworkPolicies that fence at L4 what the ALLOW policies allow", runPolicyNetworkPolicy},
	{"recommend", "write AuthorizationPolicies allowing exactly the traffic recorded in a namespace", runPolicyRecommend},
	{"what-if", "replay recorded traffic through other policies: what would be newly denied or allowed", runPolicyWhatIf},
}

func runPolicy(ctx context.Context, e *Env, args []string) int {
	return e.subcommand(ctx, "policy", policyCommands, args)
}

// jwksFetchTimeout bounds fetching jwksUri key sets during a check.
const jwksFetchTimeout = 10 * time.Second

const policyCheckUsage = `Usage: moatless policy check -f FILE_OR_DIR [-f ...] --request REQ.json [flags]

Evaluates one request against Istio security policies (AuthorizationPolicy,
PeerAuthentication, RequestAuthentication), Rego modules and RegoProviders the
way a sidecar does, and prints the decision with the policy and rule that made
it. A directory contributes its *.yaml, *.yml and *.json documents, its *.rego
modules and its data.json / data.yaml data. "-" reads standard input.

REQ.json:
  {"source": {"principal": "spiffe://td/ns/prod/sa/orders", "ip": "10.1.2.3"},
   "destination": {"namespace": "prod", "labels": {"app": "payments"}, "port": 8080},
   "request": {"protocol": "http", "method": "POST", "path": "/api/v1/payments/42",
               "host": "payments.prod", "headers": {"authorization": "Bearer ..."}}}
  "principal": "" is a plaintext caller; "protocol": "tcp" is raw TCP.

Exit status: 0 when the check ran (whatever the decision; with --expect, only when
the decision is the expected one, else 1), 2 on bad input.

Flags:
`

func runPolicyCheck(ctx context.Context, e *Env, args []string) int {
	fs := flag.NewFlagSet("policy check", flag.ContinueOnError)
	var (
		files   stringList
		reqFile string
		root    string
		norm    string
		output  string
		explain bool
		at      string
		expect  string
	)
	fs.Var(&files, "f", "policy `file or directory` (repeatable; - for stdin)")
	fs.StringVar(&reqFile, "request", "", "request `file` in the REQ.json format (- for stdin)")
	fs.StringVar(&root, "root-namespace", policy.DefaultRootNamespace, "root `namespace`: its policies apply mesh-wide")
	fs.StringVar(&norm, "path-normalization", "BASE", "path normalization: NONE, BASE, MERGE_SLASHES or DECODE_AND_MERGE_SLASHES")
	fs.StringVar(&output, "o", "text", "output format: text or json")
	fs.BoolVar(&explain, "explain", false, "show every applicable policy and rule and why each did or did not match")
	fs.StringVar(&at, "at", "", "decide as of this `time` (RFC 3339) instead of now: token expiry and Rego's input.time, for fixtures in CI")
	fs.StringVar(&expect, "expect", "", "`outcome` the request must get, allow, deny or unauthenticated: exit 1 if it gets another (for CI)")
	fs.Usage = func() {
		fmt.Fprint(fs.Output(), policyCheckUsage)
		fs.PrintDefaults()
	}
	if code, ok := e.parseFlags(fs, args); !ok {
		return code
	}
	switch {
	case len(files) == 0:
		return e.errorf(ExitUsage, "policy check: give policies with -f FILE_OR_DIR")
	case reqFile == "":
		return e.errorf(ExitUsage, "policy check: give the request with --request REQ.json")
	case output != "text" && output != "json":
		return e.errorf(ExitUsage, "policy check: -o must be text or json, not %q", output)
	case expect != "" && expect != "allow" && expect != "deny" && expect != "unauthenticated":
		return e.errorf(ExitUsage, "policy check: --expect must be allow, deny or unauthenticated, not %q", expect)
	}
	stdinUsers := 0
	for _, f := range append([]string{reqFile}, files...) {
		if f == "-" {
			stdinUsers++
		}
	}
	if stdinUsers > 1 {
		return e.errorf(ExitUsage, "policy check: only one of -f and --request can read standard input")
	}
	mode, err := policy.ParsePathNormalization(norm)
	if err != nil {
		return e.errorf(ExitUsage, "policy check: --path-normalization: %v", err)
	}
	now := time.Now
	if at != "" {
		t, err := time.Parse(time.RFC3339, at)
		if err != nil {
			return e.errorf(ExitUsage, "policy check: --at: %q is not an RFC 3339 time such as 2025-01-02T15:04:05Z", at)
		}
		now = func() time.Time { return t }
	}

	bundle, err := e.readPolicyBundle("policy check", files)
	if err != nil {
		return e.errorf(ExitUsage, "%v", err)
	}
	set, err := bundle.Compile(policy.Options{RootNamespace: root, PathNormalization: mode})
	if err != nil {
		if errors.Is(err, policy.ErrInvalid) {
			return e.errorf(ExitUsage, "policy check: %v", err)
		}
		return e.errorf(ExitUsage, "policy check: --root-namespace: %v", err)
	}

	req, err := e.readCheckRequest(reqFile)
	if err != nil {
		return e.errorf(ExitUsage, "policy check: %s: %v", nameOfInput(reqFile), err)
	}
	// Rego providers see the request's time (input.time, time.now_ns()):
	// --at makes a check reproducible.
	req.Time = now()

	// The sidecar's JWT verifier, with the key sets of the rules that
	// apply fetched first (a sidecar does the same before serving).
	var warnings []string
	warnings = append(warnings, set.Warnings()...)
	verifier := authn.NewVerifier(authn.Options{
		Now:    now,
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil)),
	})
	defer verifier.Close()
	if rules := set.JWTRules(req.Destination); len(rules) > 0 {
		pctx, cancel := context.WithTimeout(ctx, jwksFetchTimeout)
		if err := verifier.Prepare(pctx, rules); err != nil {
			for _, line := range strings.Split(err.Error(), "\n") {
				warnings = append(warnings, "RequestAuthentication: "+line)
			}
		}
		cancel()
	}

	ex := set.Explain(req, verifier)
	out := newCheckOutput(ex, warnings, explain)
	if explain {
		for _, c := range ex.Decision.Custom {
			if c.Query == "" {
				continue
			}
			in, err := set.RegoInput(c.Provider, req)
			if err != nil {
				continue
			}
			policy.RedactInput(in)
			ro := regoInputOut{Provider: c.Provider, Query: c.Query, Input: in}
			if c.Result != "allow" {
				ro.Failed, _ = set.RegoFailures(c.Provider, req)
			}
			out.Explain.Rego = append(out.Explain.Rego, ro)
		}
	}
	code := ExitOK
	if output == "json" {
		code = e.printJSON(out)
	} else {
		for _, w := range warnings {
			fmt.Fprintf(e.Stderr, "warning: %s\n", w)
		}
		out.writeText(e.Stdout, explain)
	}
	if got := ex.Decision.Outcome.String(); code == ExitOK && expect != "" && got != expect {
		return e.errorf(ExitFailure, "policy check: expected %s, got %s", expect, got)
	}
	return code
}

func nameOfInput(f string) string {
	if f == "-" {
		return "standard input"
	}
	return f
}

// readPolicyBundle reads every -f argument (readPolicyFiles) into a
// policy.Bundle: documents, Rego modules and data.
func (e *Env) readPolicyBundle(cmd string, args []string) (*policy.Bundle, error) {
	files, err := e.readPolicyFiles(cmd, args)
	if err != nil {
		return nil, err
	}
	var b policy.Bundle
	for _, f := range files {
		if err := b.Add(f.Name, []byte(f.Content)); err != nil {
			return nil, fmt.Errorf("%s: %w", cmd, err)
		}
	}
	return &b, nil
}

func (e *Env) readCheckRequest(name string) (*policy.Request, error) {
	var r io.Reader = e.Stdin
	if name != "-" {
		f, err := os.Open(name)
		if err != nil {
			return nil, err
		}
		defer f.Close()
		r = f
	}
	return policy.ParseCheckRequest(r)
}

// checkOutput is what "policy check -o json" prints.
type checkOutput struct {
	Decision string        `json:"decision"`
	Policy   string        `json:"policy"`
	Rule     *int          `json:"rule"`
	Reason   string        `json:"reason"`
	Action   string        `json:"action,omitempty"`
	MTLS     mtlsOutput    `json:"mtls"`
	Token    string        `json:"token"`
	Audit    string        `json:"audit,omitempty"`
	Custom   []customOut   `json:"custom,omitempty"`
	DryRun   *dryRunOutput `json:"dry_run,omitempty"`
	Warnings []string      `json:"warnings,omitempty"`
	Explain  *explainOut   `json:"explain,omitempty"`
}

type mtlsOutput struct {
	Mode   string `json:"mode"`
	Policy string `json:"policy,omitempty"`
}

type dryRunOutput struct {
	Decision string `json:"decision"`
	Policy   string `json:"policy"`
	Rule     *int   `json:"rule"`
	Reason   string `json:"reason"`
}

type explainOut struct {
	Policies []policyTraceOut `json:"policies"`
	Skipped  []string         `json:"skipped,omitempty"`
	// Rego is the input document each Rego provider saw (credentials in
	// headers redacted).
	Rego []regoInputOut `json:"rego,omitempty"`
}

// customOut is one CUSTOM provider asked.
type customOut struct {
	Provider    string `json:"provider"`
	Query       string `json:"query,omitempty"`
	Result      string `json:"result"`
	InputSHA256 string `json:"input_sha256,omitempty"`
	Error       string `json:"error,omitempty"`
}

type regoInputOut struct {
	Provider string         `json:"provider"`
	Query    string         `json:"query"`
	Input    map[string]any `json:"input"`
	// Failed are the expressions that were false, "file:line: expr",
	// when the provider did not allow.
	Failed []string `json:"failed,omitempty"`
}

type policyTraceOut struct {
	Policy   string         `json:"policy"`
	Action   string         `json:"action"`
	Provider string         `json:"provider,omitempty"`
	DryRun   bool           `json:"dry_run,omitempty"`
	Matched  *int           `json:"matched_rule"`
	Note     string         `json:"note,omitempty"`
	Rules    []ruleTraceOut `json:"rules"`
}

type ruleTraceOut struct {
	Rule    int    `json:"rule"`
	Matched bool   `json:"matched"`
	Why     string `json:"why,omitempty"`
}

func ruleRef(i int) *int {
	if i < 0 {
		return nil
	}
	return &i
}

func newCheckOutput(ex policy.Explanation, warnings []string, explain bool) *checkOutput {
	d := ex.Decision
	out := &checkOutput{
		Decision: d.Outcome.String(),
		Policy:   d.Policy,
		Rule:     ruleRef(d.Rule),
		Reason:   d.Reason,
		Action:   d.Action,
		MTLS:     mtlsOutput{Mode: ex.MTLSMode.String(), Policy: ex.MTLSPolicy},
		Token:    ex.Token,
		Warnings: warnings,
	}
	if d.Audit {
		out.Audit = d.AuditPolicy
	}
	for _, c := range d.Custom {
		out.Custom = append(out.Custom, customOut{Provider: c.Provider, Query: c.Query, Result: c.Result, InputSHA256: c.InputSHA256, Error: c.Error})
	}
	if d.DryRun.Applies {
		out.DryRun = &dryRunOutput{Decision: d.DryRun.Outcome.String(), Policy: d.DryRun.Policy, Rule: ruleRef(d.DryRun.Rule), Reason: d.DryRun.Reason}
	}
	if explain {
		x := &explainOut{Policies: []policyTraceOut{}, Skipped: ex.Skipped}
		for _, p := range ex.Policies {
			pt := policyTraceOut{Policy: p.Policy, Action: p.Action, Provider: p.Provider, DryRun: p.DryRun, Matched: ruleRef(p.Matched), Note: p.Note, Rules: []ruleTraceOut{}}
			for _, r := range p.Rules {
				pt.Rules = append(pt.Rules, ruleTraceOut{Rule: r.Rule, Matched: r.Matched, Why: r.Why})
			}
			x.Policies = append(x.Policies, pt)
		}
		out.Explain = x
	}
	return out
}

func (o *checkOutput) writeText(w io.Writer, explain bool) {
	by := "no policy decided"
	if o.Policy != "" {
		by = o.Policy
		if o.Rule != nil {
			by += fmt.Sprintf(" rule %d", *o.Rule)
		}
	}
	fmt.Fprintf(w, "%s (%s)\n", strings.ToUpper(o.Decision), by)
	fmt.Fprintf(w, "  reason:  %s\n", o.Reason)
	mtls := o.MTLS.Mode
	if o.MTLS.Policy != "" {
		mtls += " (" + o.MTLS.Policy + ")"
	} else {
		mtls += " (no PeerAuthentication: the default)"
	}
	fmt.Fprintf(w, "  mTLS:    %s\n", mtls)
	fmt.Fprintf(w, "  token:   %s\n", o.Token)
	if o.Audit != "" {
		fmt.Fprintf(w, "  audit:   yes (%s)\n", o.Audit)
	}
	for _, c := range o.Custom {
		what := c.Provider
		if c.Query != "" {
			what += " (" + c.Query + ")"
		}
		fmt.Fprintf(w, "  custom:  %s: %s", what, c.Result)
		if c.Error != "" {
			fmt.Fprintf(w, ": %s", c.Error)
		}
		if c.InputSHA256 != "" {
			fmt.Fprintf(w, " [input sha256 %s]", c.InputSHA256[:16])
		}
		fmt.Fprintln(w)
	}
	if o.DryRun != nil {
		fmt.Fprintf(w, "  dry-run: would %s: %s\n", strings.ToUpper(o.DryRun.Decision), o.DryRun.Reason)
	}
	if !explain || o.Explain == nil {
		return
	}
	fmt.Fprintln(w)
	if len(o.Explain.Policies) == 0 {
		fmt.Fprintln(w, "No AuthorizationPolicy applies to the destination.")
	} else {
		fmt.Fprintln(w, "AuthorizationPolicies that apply, in evaluation order:")
	}
	for _, p := range o.Explain.Policies {
		tags := p.Action
		if p.DryRun {
			tags += ", dry-run"
		}
		if p.Provider != "" {
			tags += ", provider " + p.Provider
		}
		status := "no rule matched"
		if p.Matched != nil {
			status = fmt.Sprintf("rule %d matched", *p.Matched)
		}
		fmt.Fprintf(w, "  %s [%s]: %s\n", p.Policy, tags, status)
		if p.Note != "" {
			fmt.Fprintf(w, "    %s\n", p.Note)
		}
		for _, r := range p.Rules {
			if r.Matched {
				fmt.Fprintf(w, "    rule %d: matched\n", r.Rule)
			} else {
				fmt.Fprintf(w, "    rule %d: %s\n", r.Rule, r.Why)
			}
		}
	}
	if len(o.Explain.Skipped) > 0 {
		fmt.Fprintln(w, "Not applied (selector does not match):")
		for _, s := range o.Explain.Skipped {
			fmt.Fprintf(w, "  %s\n", s)
		}
	}
	for _, r := range o.Explain.Rego {
		if len(r.Failed) > 0 {
			fmt.Fprintf(w, "Rego provider %s (%s): false expressions, in evaluation order:\n", r.Provider, r.Query)
			for _, f := range r.Failed {
				fmt.Fprintf(w, "  %s\n", f)
			}
		}
		fmt.Fprintf(w, "Input of Rego provider %s (%s):\n", r.Provider, r.Query)
		b, _ := json.MarshalIndent(r.Input, "  ", "  ")
		fmt.Fprintf(w, "  %s\n", b)
	}
}
