package cli

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"os"
	"strings"
	"time"

	"github.com/moatless/moatless/internal/detect"
	"github.com/moatless/moatless/internal/policy"
	"github.com/moatless/moatless/internal/server"
)

// policy recommend and policy what-if: least privilege from the traffic
// the server recorded.

// fetchTraffic reads the recorded inbound traffic since (a duration or an
// RFC 3339 time) in namespace ("" for all).
func fetchTraffic(ctx context.Context, c *adminClient, since, namespace string) (server.TrafficSnapshot, error) {
	q := url.Values{"since": {since}}
	setIf(q, "namespace", namespace)
	var snap server.TrafficSnapshot
	err := c.do(ctx, "GET", server.PathAdminTraffic+"?"+q.Encode(), nil, &snap)
	return snap, err
}

func runPolicyRecommend(ctx context.Context, e *Env, args []string) int {
	cmd := e.newAdminCommand("policy recommend")
	fs := cmd.fs
	ns := fs.String("namespace", "", "the `namespace` whose workloads get policies (required)")
	since := fs.String("since", "24h", "the traffic to learn from: a duration back from now, or an RFC 3339 time")
	out := fs.String("out", "-", "write the policies to this `file` (- for standard output)")
	root := fs.String("root-namespace", policy.DefaultRootNamespace, "root `namespace` of the mesh (no recommendation for it)")
	withIncidents := fs.Bool("include-incidents", false, "learn from identities under an open or contained incident too (left out by default)")
	fs.Usage = func() {
		fmt.Fprintln(fs.Output(), "Usage: moatless policy recommend --namespace NS [--since 24h] [--out FILE] [--include-incidents] [-o json]")
		fmt.Fprintln(fs.Output(), "\nWrites Istio AuthorizationPolicies that allow exactly the edges and operations the sidecars of")
		fmt.Fprintln(fs.Output(), "namespace NS recorded as allowed (paths that varied by an identifier as {*} templates), and an")
		fmt.Fprintln(fs.Output(), "allow-nothing policy that denies the rest. Traffic of identities under an open or contained")
		fmt.Fprintln(fs.Output(), "incident is left out. Check them with \"moatless policy what-if\" first.")
		fs.PrintDefaults()
	}
	if code, ok := cmd.parse(args); !ok {
		return code
	}
	if *ns == "" {
		return e.errorf(ExitUsage, "policy recommend: --namespace is required")
	}
	if *ns == *root {
		return e.errorf(ExitUsage, "policy recommend: %s is the root namespace: its allow-nothing policy would deny every workload of the mesh", *ns)
	}
	c, code, ok := cmd.client()
	if !ok {
		return code
	}
	snap, err := fetchTraffic(ctx, c, *since, *ns)
	if err != nil {
		return e.fail(err)
	}
	exclude := map[string]string{}
	if !*withIncidents {
		// What a compromised workload did is not what it should be
		// allowed to do.
		for _, st := range []string{detect.IncidentOpen, detect.IncidentContained} {
			q := url.Values{"state": {st}, "limit": {"1000"}}
			for {
				var page server.Page[detect.Incident]
				if err := c.do(ctx, "GET", server.PathAdminIncidents+"?"+q.Encode(), nil, &page); err != nil {
					return e.fail(err)
				}
				for _, inc := range page.Items {
					exclude[inc.Identity] = fmt.Sprintf("under incident %s, %s; --include-incidents to learn from it", inc.ID, inc.State)
				}
				if page.Next == "" {
					break
				}
				q.Set("before", page.Next)
			}
		}
	}
	edges, ws := snap.Detect()
	rec := detect.Recommend(edges, ws, *ns, snap.Since, snap.Until, exclude)
	if rec.Edges == 0 {
		return e.errorf(ExitFailure, "policy recommend: no allowed traffic recorded in namespace %s since %s (are its sidecars in join mode, with traffic.disabled unset?)", *ns, *since)
	}
	if cmd.json() {
		return e.printJSON(rec)
	}
	if *out == "-" {
		fmt.Fprint(e.Stdout, rec.YAML)
	} else {
		if err := os.WriteFile(*out, []byte(rec.YAML), 0o644); err != nil {
			return e.errorf(ExitFailure, "policy recommend: %v", err)
		}
	}
	fmt.Fprintf(e.Stderr, "%d policies for %d edges (%d requests)", rec.Policies, rec.Edges, rec.Requests)
	if len(rec.Skipped) > 0 {
		fmt.Fprintf(e.Stderr, "; not included: %s", strings.Join(rec.Skipped, "; "))
	}
	fmt.Fprintln(e.Stderr)
	return ExitOK
}

// errNewlyDenied makes what-if fail in CI when --fail-on-deny is given.
var errNewlyDenied = errors.New("newly denied edges")

func runPolicyWhatIf(ctx context.Context, e *Env, args []string) int {
	cmd := e.newAdminCommand("policy what-if")
	fs := cmd.fs
	var files stringList
	fs.Var(&files, "f", "the policies to try: `file or directory` (repeatable; - for stdin)")
	since := fs.String("since", "1h", "the traffic to replay: a duration back from now, or an RFC 3339 time")
	ns := fs.String("namespace", "", "only traffic to this `namespace`")
	root := fs.String("root-namespace", policy.DefaultRootNamespace, "root `namespace`: its policies apply mesh-wide")
	all := fs.Bool("all", false, "list unchanged edges too")
	failOnDeny := fs.Bool("fail-on-deny", false, "exit 1 when any recorded allowed edge would be denied")
	fs.Usage = func() {
		fmt.Fprintln(fs.Output(), "Usage: moatless policy what-if -f FILE_OR_DIR [-f ...] [--since 1h] [--namespace NS] [--all] [--fail-on-deny] [-o json]")
		fmt.Fprintln(fs.Output(), "\nReplays the traffic the sidecars recorded through the policies given, with the decision function the")
		fmt.Fprintln(fs.Output(), "sidecars run, and reports what would change: newly denied edges first, then newly allowed ones.")
		fs.PrintDefaults()
	}
	if code, ok := cmd.parse(args); !ok {
		return code
	}
	if len(files) == 0 {
		return e.errorf(ExitUsage, "policy what-if: -f is required")
	}
	pf, err := e.readPolicyFiles("policy what-if", files)
	if err != nil {
		return e.errorf(ExitUsage, "%v", err)
	}
	// Compiled here too, so that a mistake in the files is a usage error
	// before anything is sent.
	var bundle policy.Bundle
	for _, f := range pf {
		if err := bundle.Add(f.Name, []byte(f.Content)); err != nil {
			return e.errorf(ExitUsage, "policy what-if: %v", err)
		}
	}
	if _, err := bundle.Compile(policy.Options{RootNamespace: *root}); err != nil {
		return e.errorf(ExitUsage, "policy what-if: %v", err)
	}
	c, code, ok := cmd.client()
	if !ok {
		return code
	}
	var res server.WhatIfResponse
	req := server.WhatIfRequest{Files: pf, Since: *since, Namespace: *ns, RootNamespace: *root}
	if err := c.do(ctx, "POST", server.PathAdminWhatIf, req, &res); err != nil {
		return e.fail(err)
	}
	denied := res.NewlyDenied
	code = ExitOK
	if *failOnDeny && denied > 0 {
		code = ExitFailure
	}
	if cmd.json() {
		if c := e.printJSON(res); c != ExitOK {
			return c
		}
		return code
	}
	fmt.Fprintf(e.Stdout, "%d recorded edges since %s: %d newly denied, %d newly allowed\n", len(res.Items), res.Since.Local().Format(time.RFC3339), res.NewlyDenied, res.NewlyAllowed)
	tw := newTable(e.Stdout)
	fmt.Fprintln(tw, "CHANGE\tSOURCE\tDESTINATION\tMETHOD\tPATH\tREQUESTS\tNOW DECIDED BY")
	for _, r := range res.Items {
		if !*all && r.Change != detect.ChangeNewlyDenied && r.Change != detect.ChangeNewlyAllowed {
			continue
		}
		by := r.Reason
		if r.Policy != "" {
			by = r.Policy
			if r.Rule >= 0 {
				by += fmt.Sprintf(" (rule %d)", r.Rule)
			}
		}
		method, path := r.Method, r.Path
		if r.Protocol == "tcp" {
			method, path = "tcp", fmt.Sprintf("port %d", r.Port)
		}
		src := r.Source
		if src == "" {
			src = "(plaintext)"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%d\t%s\n", strings.ReplaceAll(r.Change, "_", " "), src, r.Destination, method, path, r.Requests, by)
	}
	tw.Flush()
	if code != ExitOK {
		fmt.Fprintf(e.Stderr, "moatless: policy what-if: %d %v\n", denied, errNewlyDenied)
	}
	return code
}
