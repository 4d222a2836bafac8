package cli

import (
	"context"
	"fmt"
	"io"
	"net/url"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"time"

	"sigs.k8s.io/yaml"

	"github.com/moatless/moatless/internal/policy"
	"github.com/moatless/moatless/internal/server"
	"github.com/moatless/moatless/internal/store"
)

// The server-backed policy commands; internal/cli/policy.go lists them in
// the "policy" table.

// readPolicyFiles reads -f arguments: files, directories (their policy
// files in name order: *.yaml, *.yml and *.json documents, *.rego
// modules, data.json or data.yaml data; see policy.PolicyFileKind) and
// "-" for standard input (documents).
func (e *Env) readPolicyFiles(cmd string, args []string) ([]server.PolicyFile, error) {
	var out []server.PolicyFile
	stdin := false
	for _, arg := range args {
		if arg == "-" {
			if stdin {
				return nil, fmt.Errorf("%s: - (standard input) given twice", cmd)
			}
			stdin = true
			b, err := io.ReadAll(io.LimitReader(e.Stdin, policy.MaxInputSize+1))
			if err != nil {
				return nil, fmt.Errorf("%s: read standard input: %v", cmd, err)
			}
			out = append(out, server.PolicyFile{Name: "<stdin>", Content: string(b)})
			continue
		}
		fi, err := os.Stat(arg)
		if err != nil {
			return nil, fmt.Errorf("%s: %v", cmd, err)
		}
		paths := []string{arg}
		if fi.IsDir() {
			entries, err := os.ReadDir(arg)
			if err != nil {
				return nil, fmt.Errorf("%s: %v", cmd, err)
			}
			paths = nil
			for _, en := range entries {
				if _, ok := policy.PolicyFileKind(en.Name()); ok && !en.IsDir() {
					paths = append(paths, filepath.Join(arg, en.Name()))
				}
			}
			if len(paths) == 0 {
				return nil, fmt.Errorf("%s: %s holds no .yaml, .yml, .json or .rego file", cmd, arg)
			}
		}
		for _, p := range paths {
			f, err := os.Open(p)
			if err != nil {
				return nil, fmt.Errorf("%s: %v", cmd, err)
			}
			b, err := io.ReadAll(io.LimitReader(f, policy.MaxInputSize+1))
			f.Close()
			if err != nil {
				return nil, fmt.Errorf("%s: read %s: %v", cmd, p, err)
			}
			if len(b) > policy.MaxInputSize {
				return nil, fmt.Errorf("%s: %s is larger than %d MiB", cmd, p, policy.MaxInputSize>>20)
			}
			out = append(out, server.PolicyFile{Name: p, Content: string(b)})
		}
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("%s: -f FILE_OR_DIR is required", cmd)
	}
	return out, nil
}

func printPolicyChanges(e *Env, res server.PolicyChangeResult, verb string) {
	for _, w := range res.Warnings {
		fmt.Fprintf(e.Stderr, "warning: %s\n", w)
	}
	if len(res.Changes) == 0 {
		fmt.Fprintf(e.Stdout, "no change: the policies in force are already these (version %d)\n", res.Version)
		return
	}
	for _, c := range res.Changes {
		fmt.Fprintf(e.Stdout, "%s %s\n", c.Op, c.PolicyRef)
	}
	if res.DryRun {
		fmt.Fprintf(e.Stdout, "dry run: nothing %s (current version %d)\n", verb, res.Version)
		return
	}
	fmt.Fprintf(e.Stdout, "policy version %d %s; see \"moatless policy status\" for its rollout\n", res.Version, verb)
}

func runPolicyApply(ctx context.Context, e *Env, args []string) int {
	cmd := e.newAdminCommand("policy apply")
	fs := cmd.fs
	var files stringList
	fs.Var(&files, "f", "policy `file or directory` (repeatable; - for stdin)")
	dry := fs.Bool("dry-run", false, "validate and show what would change, write nothing")
	fs.Usage = func() {
		fmt.Fprintln(fs.Output(), "Usage: moatless policy apply -f FILE_OR_DIR [-f ...] [--dry-run] [-o json]")
		fmt.Fprintln(fs.Output(), "\nEach document (AuthorizationPolicy, PeerAuthentication, RequestAuthentication, RegoProvider) is created")
		fmt.Fprintln(fs.Output(), "or replaces the one with its kind, namespace and name; each *.rego file is a Rego module (its base name")
		fmt.Fprintln(fs.Output(), "the module ID) and each data.json / data.yaml replaces the data documents of its top-level keys.")
		fmt.Fprintln(fs.Output(), "The change is one new policy version.")
		fs.PrintDefaults()
	}
	if code, ok := cmd.parse(args); !ok {
		return code
	}
	pf, err := e.readPolicyFiles("policy apply", files)
	if err != nil {
		return e.errorf(ExitUsage, "%v", err)
	}
	c, code, ok := cmd.client()
	if !ok {
		return code
	}
	var res server.PolicyChangeResult
	if err := c.do(ctx, "POST", server.PathAdminPolicies, server.PolicyApplyRequest{Files: pf, DryRun: *dry}, &res); err != nil {
		return e.fail(err)
	}
	if cmd.json() {
		return e.printJSON(res)
	}
	printPolicyChanges(e, res, "applied")
	return ExitOK
}

func runPolicyGet(ctx context.Context, e *Env, args []string) int {
	// policy get [KIND [NAME]] [-n NS] [--version V] [-o text|json|yaml]
	var pos []string
	for len(args) > 0 && !strings.HasPrefix(args[0], "-") && len(pos) < 2 {
		pos, args = append(pos, args[0]), args[1:]
	}
	cmd := e.newAdminCommand("policy get")
	fs := cmd.fs
	ns := fs.String("n", "", "only this `namespace`")
	version := fs.Uint64("version", 0, "the set at this policy `version` (default: current)")
	fs.Usage = func() {
		fmt.Fprintln(fs.Output(), "Usage: moatless policy get [KIND [NAME]] [-n NAMESPACE] [--version V] [-o text|json|yaml]")
		fmt.Fprintln(fs.Output(), "\n-o yaml prints the documents as multi-document YAML that \"policy apply -f\" takes back.")
		fs.PrintDefaults()
	}
	asYAML := false
	for i, a := range args { // -o yaml is ours; adminFlags knows text and json
		if (a == "-o" || a == "--o") && i+1 < len(args) && args[i+1] == "yaml" {
			args[i+1], asYAML = "text", true
		} else if a == "-o=yaml" || a == "--o=yaml" {
			args[i], asYAML = "-o=text", true
		}
	}
	if code, ok := cmd.parse(args); !ok {
		return code
	}
	q := url.Values{}
	if len(pos) > 0 {
		kind, ok := policyKindName(pos[0])
		if !ok {
			return e.errorf(ExitUsage, "policy get: unknown kind %q (AuthorizationPolicy, PeerAuthentication, RequestAuthentication, RegoProvider, RegoModule, RegoData)", pos[0])
		}
		q.Set("kind", kind)
	}
	if len(pos) > 1 {
		q.Set("name", pos[1])
	}
	if *ns != "" {
		q.Set("namespace", *ns)
	}
	if *version > 0 {
		q.Set("version", strconv.FormatUint(*version, 10))
	}
	c, code, ok := cmd.client()
	if !ok {
		return code
	}
	path := server.PathAdminPolicies
	if len(q) > 0 {
		path += "?" + q.Encode()
	}
	var set server.PolicySetResponse
	if err := c.do(ctx, "GET", path, nil, &set); err != nil {
		return e.fail(err)
	}
	switch {
	case cmd.json():
		return e.printJSON(set)
	case asYAML:
		for i, d := range set.Documents {
			y, err := yaml.JSONToYAML(d)
			if err != nil {
				return e.errorf(ExitFailure, "policy get: %v", err)
			}
			if i > 0 {
				fmt.Fprintln(e.Stdout, "---")
			}
			e.Stdout.Write(y)
		}
		return ExitOK
	}
	tw := newTable(e.Stdout)
	fmt.Fprintf(tw, "policy version %d\n\nKIND\tNAMESPACE\tNAME\n", set.Version)
	for _, d := range set.Documents {
		doc, err := policy.ParseJSON(d)
		if err != nil {
			fmt.Fprintf(tw, "?\t?\t(unreadable: %v)\n", err)
			continue
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\n", doc.Kind, doc.Namespace, doc.Name)
	}
	for _, m := range set.Modules {
		fmt.Fprintf(tw, "%s\t\t%s\n", policy.KindRegoModule, m.ID)
	}
	for _, d := range set.Data {
		fmt.Fprintf(tw, "%s\t\t%s\n", policy.KindRegoData, d.Key)
	}
	tw.Flush()
	return ExitOK
}

// policyKindName accepts a kind in any case and the short names kubectl
// users type.
func policyKindName(s string) (string, bool) {
	switch strings.ToLower(s) {
	case "authorizationpolicy", "authorizationpolicies", "ap":
		return policy.KindAuthorizationPolicy, true
	case "peerauthentication", "peerauthentications", "pa":
		return policy.KindPeerAuthentication, true
	case "requestauthentication", "requestauthentications", "ra":
		return policy.KindRequestAuthentication, true
	case "regoprovider", "regoproviders":
		return policy.KindRegoProvider, true
	case "regomodule", "regomodules", "module", "modules":
		return policy.KindRegoModule, true
	case "regodata", "data":
		return policy.KindRegoData, true
	}
	return "", false
}

// meshWideKind reports kinds stored without a namespace.
func meshWideKind(kind string) bool {
	return kind == policy.KindRegoModule || kind == policy.KindRegoData
}

func runPolicyDelete(ctx context.Context, e *Env, args []string) int {
	var pos []string
	for len(args) > 0 && !strings.HasPrefix(args[0], "-") && len(pos) < 2 {
		pos, args = append(pos, args[0]), args[1:]
	}
	cmd := e.newAdminCommand("policy delete")
	fs := cmd.fs
	ns := fs.String("n", policy.DefaultNamespace, "`namespace` of KIND NAME")
	var files stringList
	fs.Var(&files, "f", "delete the policies named in this `file or directory` (repeatable; - for stdin)")
	fs.Usage = func() {
		fmt.Fprintln(fs.Output(), "Usage: moatless policy delete KIND NAME [-n NAMESPACE] [-o json]")
		fmt.Fprintln(fs.Output(), "       moatless policy delete -f FILE_OR_DIR [-f ...]")
		fs.PrintDefaults()
	}
	if code, ok := cmd.parse(args); !ok {
		return code
	}
	var refs []store.PolicyRef
	switch {
	case len(files) > 0 && len(pos) > 0:
		return e.errorf(ExitUsage, "policy delete: give KIND NAME or -f, not both")
	case len(files) > 0:
		pf, err := e.readPolicyFiles("policy delete", files)
		if err != nil {
			return e.errorf(ExitUsage, "%v", err)
		}
		var b policy.Bundle
		for _, f := range pf {
			if err := b.Add(f.Name, []byte(f.Content)); err != nil {
				return e.errorf(ExitUsage, "policy delete: %v", err)
			}
		}
		for _, d := range b.Docs {
			refs = append(refs, store.PolicyRef{Kind: d.Kind, Namespace: d.Namespace, Name: d.Name})
		}
		for _, m := range b.Modules {
			refs = append(refs, store.PolicyRef{Kind: policy.KindRegoModule, Name: m.ID})
		}
		for _, d := range b.Data {
			refs = append(refs, store.PolicyRef{Kind: policy.KindRegoData, Name: d.Key})
		}
	case len(pos) == 2:
		kind, ok := policyKindName(pos[0])
		if !ok {
			return e.errorf(ExitUsage, "policy delete: unknown kind %q (AuthorizationPolicy, PeerAuthentication, RequestAuthentication, RegoProvider, RegoModule, RegoData)", pos[0])
		}
		refs = []store.PolicyRef{{Kind: kind, Namespace: *ns, Name: pos[1]}}
		if meshWideKind(kind) {
			refs[0].Namespace = ""
		}
	default:
		return e.errorf(ExitUsage, "policy delete: give KIND NAME [-n NAMESPACE], or -f FILE")
	}
	c, code, ok := cmd.client()
	if !ok {
		return code
	}
	var res server.PolicyChangeResult
	if err := c.do(ctx, "POST", server.PathAdminPoliciesDelete, server.PolicyDeleteRequest{Objects: refs}, &res); err != nil {
		return e.fail(err)
	}
	if cmd.json() {
		return e.printJSON(res)
	}
	printPolicyChanges(e, res, "applied")
	return ExitOK
}

func runPolicyHistory(ctx context.Context, e *Env, args []string) int {
	cmd := e.newAdminCommand("policy history")
	fs := cmd.fs
	limit := fs.Int("limit", 20, "how many versions (1-1000)")
	before := fs.Uint64("before", 0, "only versions older than this policy `version` (paging)")
	fs.Usage = func() {
		fmt.Fprintln(fs.Output(), "Usage: moatless policy history [--limit N] [--before VERSION] [-o json]")
		fmt.Fprintln(fs.Output(), "\nLists policy versions, newest first. When more are older than the page, the text")
		fmt.Fprintln(fs.Output(), "output ends with the --before value that shows the next page.")
		fs.PrintDefaults()
	}
	if code, ok := cmd.parse(args); !ok {
		return code
	}
	path, err := pagePath(server.PathAdminPolicyHistory, *limit, *before, "policy version")
	if err != nil {
		return e.errorf(ExitUsage, "policy history: %v", err)
	}
	c, code, ok := cmd.client()
	if !ok {
		return code
	}
	var hist []store.PolicyVersion
	if err := c.do(ctx, "GET", path, nil, &hist); err != nil {
		return e.fail(err)
	}
	if cmd.json() {
		return e.printList(hist, historyNext(hist, *limit))
	}
	tw := newTable(e.Stdout)
	fmt.Fprintln(tw, "VERSION\tCREATED AT\tACTION\tACTOR\tDOCUMENTS\tCHANGES")
	for _, h := range hist {
		action := h.Action
		if h.SourceVersion > 0 {
			action += " to " + strconv.FormatUint(h.SourceVersion, 10)
		}
		var ch []string
		for _, c := range h.Changes {
			ch = append(ch, c.Op+" "+c.PolicyRef.String())
		}
		sort.Strings(ch)
		fmt.Fprintf(tw, "%d\t%s\t%s\t%s\t%d\t%s\n", h.Version, h.CreatedAt.Local().Format(time.RFC3339), action, h.Actor, h.Documents, strings.Join(ch, ", "))
	}
	tw.Flush()
	if next := historyNext(hist, *limit); next > 0 {
		fmt.Fprintf(e.Stdout, "(older: moatless policy history --before %d)\n", next)
	}
	return ExitOK
}

func runPolicyRollback(ctx context.Context, e *Env, args []string) int {
	v, rest := positional(args)
	cmd := e.newAdminCommand("policy rollback")
	fs := cmd.fs
	fs.Usage = func() {
		fmt.Fprintln(fs.Output(), "Usage: moatless policy rollback VERSION [-o json]")
		fmt.Fprintln(fs.Output(), "\nMakes the set of policies of VERSION current again, as a new version.")
		fs.PrintDefaults()
	}
	if code, ok := cmd.parse(rest); !ok {
		return code
	}
	version, err := strconv.ParseUint(v, 10, 63)
	if err != nil || version == 0 {
		return e.errorf(ExitUsage, "policy rollback: VERSION must be a policy version number (see \"moatless policy history\")")
	}
	c, code, ok := cmd.client()
	if !ok {
		return code
	}
	var res server.PolicyChangeResult
	if err := c.do(ctx, "POST", server.PathAdminPolicyRollback, server.PolicyRollbackRequest{Version: version}, &res); err != nil {
		return e.fail(err)
	}
	if cmd.json() {
		return e.printJSON(res)
	}
	printPolicyChanges(e, res, "applied")
	return ExitOK
}

func runPolicyStatus(ctx context.Context, e *Env, args []string) int {
	cmd := e.newAdminCommand("policy status")
	c, code, ok := cmd.connect(args)
	if !ok {
		return code
	}
	var st server.PolicyStatus
	if err := c.do(ctx, "GET", server.PathAdminPolicyStatus, nil, &st); err != nil {
		return e.fail(err)
	}
	if cmd.json() {
		return e.printJSON(st)
	}
	state := "converged"
	if !st.Converged {
		state = "rolling out"
	}
	fmt.Fprintf(e.Stdout, "policy version %d: %d of %d connected enforcing nodes run it (%s)\n\n", st.Version, st.AtVersion, st.Connected, state)
	if len(st.Nodes) > 0 {
		printPolicyNodes(e, st.Nodes)
	} else {
		fmt.Fprintln(e.Stdout, "no sidecar or gateway is attested")
	}
	if len(st.NotEnforcing) > 0 {
		fmt.Fprintf(e.Stdout, "\nnot counted: %d node(s) that receive policies but do not enforce them\n\n", len(st.NotEnforcing))
		printPolicyNodes(e, st.NotEnforcing)
	}
	return ExitOK
}

// printPolicyNodes prints nodes' policy state as a table.
func printPolicyNodes(e *Env, nodes []server.PolicyNodeStatus) {
	tw := newTable(e.Stdout)
	fmt.Fprintln(tw, "SPIFFE ID\tCOMPONENT\tCONNECTED\tPOLICY VERSION\tCURRENT\tLAST ACK")
	yn := map[bool]string{true: "yes", false: "no"}
	for _, n := range nodes {
		comp, ack := n.Component, "-"
		if comp == "" {
			comp = "-"
		}
		if !n.LastAck.IsZero() {
			ack = n.LastAck.Local().Format(time.RFC3339)
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%d\t%s\t%s\n", n.SPIFFEID, comp, connectedCell(n.Connected, n.Revocation), n.PolicyVersion, yn[n.Current], ack)
	}
	tw.Flush()
	for _, n := range nodes {
		if n.Revoked {
			fmt.Fprintln(e.Stdout, revokedLine(n.SPIFFEID, n.Revocation)+"; not counted")
		}
	}
}

// historyNext is the --before value of the page older than hist, 0 when
// hist is the last page. The server answers a bare list (no "next" as in
// the audit page), so it follows the server's audit paging rule: a full
// page whose oldest version is above 1 (versions count from 1) has older
// ones.
func historyNext(hist []store.PolicyVersion, limit int) uint64 {
	if n := len(hist); n == limit && hist[n-1].Version > 1 {
		return hist[n-1].Version
	}
	return 0
}
