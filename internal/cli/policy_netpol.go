package cli

import (
	"context"
	"flag"
	"fmt"
	"strconv"
	"strings"

	"github.com/moatless/moatless/internal/netpol"
	"github.com/moatless/moatless/internal/policy"
)

// runPolicyNetworkPolicy is "moatless policy networkpolicy": ALLOW
// AuthorizationPolicies as Kubernetes NetworkPolicy YAML (internal/netpol).
func runPolicyNetworkPolicy(_ context.Context, e *Env, args []string) int {
	fs := flag.NewFlagSet("policy networkpolicy", flag.ContinueOnError)
	var files, portMaps stringList
	fs.Var(&files, "f", "policy `file` or directory (repeatable; - for standard input)")
	root := fs.String("root-namespace", policy.DefaultRootNamespace, "the mesh-wide policy `namespace`")
	saLabel := fs.String("service-account-label", "", "pod label `KEY` whose value is the pod's service account; principals then select pods, not whole namespaces")
	fs.Var(&portMaps, "port", "`POLICY:LISTEN`: a port as policies name it, and the port the sidecar listens on in front of it (repeatable)")
	strict := fs.Bool("strict", false, "exit 1 when a policy was widened or skipped")
	fs.Usage = func() {
		fmt.Fprintln(fs.Output(), "Usage: moatless policy networkpolicy -f POLICIES [--service-account-label KEY] [--port 8080:15006] [--strict]")
		fmt.Fprintln(fs.Output(), "\nPrints Kubernetes NetworkPolicies (YAML) that fence at L4 what the ALLOW AuthorizationPolicies allow:")
		fmt.Fprintln(fs.Output(), "a second layer under the sidecars. What L4 cannot express is widened, never narrowed, and named on")
		fmt.Fprintln(fs.Output(), "standard error and in each object's moatless.io/widened annotation; DENY and CUSTOM policies are")
		fmt.Fprintln(fs.Output(), "skipped. The mapping is in docs/policy.md.")
		fs.PrintDefaults()
	}
	if code, ok := e.parseFlags(fs, args); !ok {
		return code
	}
	if len(files) == 0 || fs.NArg() > 0 {
		return e.errorf(ExitUsage, "policy networkpolicy: give policies with -f (and nothing else)")
	}
	ports := map[int]int{}
	for _, m := range portMaps {
		a, b, ok := strings.Cut(m, ":")
		from, err1 := strconv.Atoi(a)
		to, err2 := strconv.Atoi(b)
		if !ok || err1 != nil || err2 != nil || from < 1 || from > 65535 || to < 1 || to > 65535 {
			return e.errorf(ExitUsage, "policy networkpolicy: --port %q: want POLICY_PORT:LISTEN_PORT, e.g. 8080:15006", m)
		}
		ports[from] = to
	}
	if *saLabel != "" && !validLabelKey(*saLabel) {
		return e.errorf(ExitUsage, "policy networkpolicy: --service-account-label %q is not a Kubernetes label key", *saLabel)
	}
	pf, err := e.readPolicyFiles("policy networkpolicy", files)
	if err != nil {
		return e.errorf(ExitUsage, "%v", err)
	}
	var docs []policy.Document
	for _, f := range pf {
		d, err := policy.ParseSource(f.Name, strings.NewReader(f.Content))
		if err != nil {
			return e.errorf(ExitUsage, "policy networkpolicy: %v", err)
		}
		docs = append(docs, d...)
	}
	res := netpol.Convert(docs, netpol.Options{RootNamespace: *root, ServiceAccountLabel: *saLabel, Ports: ports})
	out, err := netpol.YAML(res.Policies)
	if err != nil {
		return e.errorf(ExitFailure, "%v", err)
	}
	e.Stdout.Write(out)
	for _, w := range res.Warnings {
		fmt.Fprintf(e.Stderr, "moatless: warning: %s\n", w)
	}
	if *strict && len(res.Warnings) > 0 {
		return e.errorf(ExitFailure, "policy networkpolicy: %d policies widened or skipped (--strict)", len(res.Warnings))
	}
	return ExitOK
}

// validLabelKey accepts a Kubernetes label key: an optional DNS prefix and
// "/", then a name of at most 63 alphanumerics, "-", "_" and ".", starting
// and ending alphanumeric.
func validLabelKey(k string) bool {
	prefix, name, hasPrefix := strings.Cut(k, "/")
	if !hasPrefix {
		name, prefix = prefix, ""
	}
	if hasPrefix && (prefix == "" || len(prefix) > 253 || strings.Trim(prefix, "abcdefghijklmnopqrstuvwxyz0123456789-.") != "") {
		return false
	}
	if name == "" || len(name) > 63 {
		return false
	}
	alnum := func(c byte) bool { return c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' }
	if !alnum(name[0]) || !alnum(name[len(name)-1]) {
		return false
	}
	for i := 0; i < len(name); i++ {
		if c := name[i]; !alnum(c) && c != '-' && c != '_' && c != '.' {
			return false
		}
	}
	return true
}
