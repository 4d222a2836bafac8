package cli

import (
	"context"
	"flag"
	"fmt"
	"io"
	"net/url"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/moatless/moatless/internal/server"
	"github.com/moatless/moatless/internal/wire"
)

// runEntry is "moatless entry create|list|show|delete".
func runEntry(ctx context.Context, e *Env, args []string) int {
	return e.subcommand(ctx, "entry", []command{
		{"create", "register a workload: SPIFFE ID, parent agent, selectors", runEntryCreate},
		{"list", "list registration entries", runEntryList},
		{"show", "show one entry by id", runEntryShow},
		{"update", "change an entry: the flags given replace those fields", runEntryUpdate},
		{"delete", "delete one entry by id", runEntryDelete},
	}, args)
}

// positional takes a leading non-flag argument (an id) off args, so both
// "show ID -o json" and "show -o json ID" work.
func positional(args []string) (string, []string) {
	if len(args) > 0 && !strings.HasPrefix(args[0], "-") {
		return args[0], args[1:]
	}
	if n := len(args); n > 0 && !strings.HasPrefix(args[n-1], "-") {
		// "-o json ID": the last word is the id unless it is a flag's value.
		if n < 2 || !flagTakesValue(args[n-2]) {
			return args[n-1], args[:n-1]
		}
	}
	return "", args
}

// flagTakesValue reports whether a "-flag" word expects the next word as
// its value (the admin flags and -o do; boolean flags do not).
func flagTakesValue(w string) bool {
	if strings.Contains(w, "=") {
		return false
	}
	switch strings.TrimLeft(w, "-") {
	case "all", "h", "help":
		return false
	}
	return strings.HasPrefix(w, "-")
}

func pathEscape(s string) string { return url.PathEscape(s) }

func runEntryCreate(ctx context.Context, e *Env, args []string) int {
	cmd := e.newAdminCommand("entry create")
	fs := cmd.fs
	parent := fs.String("parent", "", "SPIFFE `ID` of the agent that may serve this identity (required)")
	id := fs.String("spiffe-id", "", "SPIFFE `ID` the workload gets (required)")
	var sels, labels stringList
	fs.Var(&sels, "selector", "`TYPE:KIND:VALUE` a workload must show, e.g. unix:uid:1000 (repeatable; all must match)")
	fs.Var(&labels, "label", "`key=value` label policies can select on (repeatable)")
	ns := fs.String("namespace", "", "`namespace` of the workload (a DNS label)")
	x509TTL := fs.Duration("x509-ttl", 0, "X509-SVID lifetime (default: the server's, 1h)")
	jwtTTL := fs.Duration("jwt-ttl", 0, "JWT-SVID lifetime (default: the server's, 5m)")
	fs.Usage = func() {
		fmt.Fprintln(fs.Output(), "Usage: moatless entry create --parent ID --spiffe-id ID --selector unix:uid:1000 [--selector ...]")
		fmt.Fprintln(fs.Output(), "         [--namespace NS] [--label k=v ...] [--x509-ttl D] [--jwt-ttl D] [-o json]")
		fmt.Fprintf(fs.Output(), "\nSelector kinds: unix:%s\n\n", strings.Join(server.SelectorKinds, ", unix:"))
		fs.PrintDefaults()
	}
	if code, ok := cmd.parse(args); !ok {
		return code
	}
	req := server.EntryRequest{SPIFFEID: *id, ParentID: *parent, Namespace: *ns, X509TTL: wire.Duration(*x509TTL), JWTTTL: wire.Duration(*jwtTTL)}
	switch {
	case *id == "":
		return e.errorf(ExitUsage, "entry create: --spiffe-id is required")
	case *parent == "":
		return e.errorf(ExitUsage, "entry create: --parent is required (the agent's SPIFFE ID)")
	case len(sels) == 0:
		return e.errorf(ExitUsage, "entry create: at least one --selector is required, e.g. --selector unix:uid:1000")
	}
	var err error
	if req.Selectors, err = parseSelectors(sels); err != nil {
		return e.errorf(ExitUsage, "entry create: %v", err)
	}
	if req.Labels, err = parseLabels(labels); err != nil {
		return e.errorf(ExitUsage, "entry create: %v", err)
	}
	c, code, ok := cmd.client()
	if !ok {
		return code
	}
	var out wire.Entry
	if err := c.do(ctx, "POST", server.PathAdminEntries, req, &out); err != nil {
		return e.fail(err)
	}
	if cmd.json() {
		return e.printJSON(out)
	}
	printEntry(e.Stdout, out)
	return ExitOK
}

func printEntry(w io.Writer, en wire.Entry) {
	tw := newTable(w)
	fmt.Fprintf(tw, "Entry ID\t%s\n", en.ID)
	fmt.Fprintf(tw, "SPIFFE ID\t%s\n", en.SPIFFEID)
	fmt.Fprintf(tw, "Parent ID\t%s\n", en.ParentID)
	for i, s := range en.Selectors {
		label := ""
		if i == 0 {
			label = "Selectors"
		}
		fmt.Fprintf(tw, "%s\t%s\n", label, s.String())
	}
	ttl := func(d wire.Duration) string {
		if d == 0 {
			return "server default"
		}
		return d.Std().String()
	}
	fmt.Fprintf(tw, "X509-SVID TTL\t%s\n", ttl(en.X509TTL))
	fmt.Fprintf(tw, "JWT-SVID TTL\t%s\n", ttl(en.JWTTTL))
	if en.Namespace != "" {
		fmt.Fprintf(tw, "Namespace\t%s\n", en.Namespace)
	}
	keys := make([]string, 0, len(en.Labels))
	for k := range en.Labels {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for i, k := range keys {
		label := ""
		if i == 0 {
			label = "Labels"
		}
		fmt.Fprintf(tw, "%s\t%s=%s\n", label, k, en.Labels[k])
	}
	fmt.Fprintf(tw, "Revision\t%d\n", en.Revision)
	fmt.Fprintf(tw, "Created\t%s\n", en.CreatedAt.Local().Format(time.RFC3339))
	tw.Flush()
}

func runEntryList(ctx context.Context, e *Env, args []string) int {
	cmd := e.newAdminCommand("entry list")
	fs := cmd.fs
	id := fs.String("spiffe-id", "", "only entries with this SPIFFE `ID`")
	parent := fs.String("parent", "", "only entries of this parent `ID`")
	ns := fs.String("namespace", "", "only entries in this `namespace`")
	sel := fs.String("selector", "", "only entries with this `selector`")
	if code, ok := cmd.parse(args); !ok {
		return code
	}
	q := url.Values{}
	for k, v := range map[string]string{"spiffe_id": *id, "parent_id": *parent, "namespace": *ns, "selector": *sel} {
		if v != "" {
			q.Set(k, v)
		}
	}
	path := server.PathAdminEntries
	if len(q) > 0 {
		path += "?" + q.Encode()
	}
	c, code, ok := cmd.client()
	if !ok {
		return code
	}
	var out []wire.Entry
	if err := c.do(ctx, "GET", path, nil, &out); err != nil {
		return e.fail(err)
	}
	if cmd.json() {
		return e.printList(out, 0)
	}
	tw := newTable(e.Stdout)
	fmt.Fprintln(tw, "ID\tSPIFFE ID\tPARENT ID\tSELECTORS\tNAMESPACE")
	for _, en := range out {
		s := make([]string, len(en.Selectors))
		for i, x := range en.Selectors {
			s[i] = x.String()
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", en.ID, en.SPIFFEID, en.ParentID, strings.Join(s, ","), en.Namespace)
	}
	tw.Flush()
	return ExitOK
}

// runEntryUpdate reads the entry, replaces the fields named by flags
// (--selector and --label replace the whole list), and writes it back at
// the revision it read, so a concurrent change is refused, not overwritten.
func runEntryUpdate(ctx context.Context, e *Env, args []string) int {
	id, rest := positional(args)
	cmd := e.newAdminCommand("entry update")
	fs := cmd.fs
	parent := fs.String("parent", "", "new parent agent SPIFFE `ID`")
	spiffeID := fs.String("spiffe-id", "", "new SPIFFE `ID`")
	var sels, labels stringList
	fs.Var(&sels, "selector", "`TYPE:KIND:VALUE` (repeatable; replaces all selectors)")
	fs.Var(&labels, "label", "`key=value` (repeatable; replaces all labels; --label - clears them)")
	ns := fs.String("namespace", "", "new `namespace` (- clears it)")
	x509TTL := fs.Duration("x509-ttl", 0, "new X509-SVID lifetime (0: the server default)")
	jwtTTL := fs.Duration("jwt-ttl", 0, "new JWT-SVID lifetime (0: the server default)")
	fs.Usage = func() {
		fmt.Fprintln(fs.Output(), "Usage: moatless entry update ID [--parent ID] [--spiffe-id ID] [--selector S ...] [--label k=v ...]")
		fmt.Fprintln(fs.Output(), "         [--namespace NS] [--x509-ttl D] [--jwt-ttl D] [-o json]")
		fs.PrintDefaults()
	}
	if code, ok := cmd.parse(rest); !ok {
		return code
	}
	if id == "" {
		return e.errorf(ExitUsage, "entry update: the entry id is required (see \"moatless entry list\")")
	}
	set := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { set[f.Name] = true })
	if !set["parent"] && !set["spiffe-id"] && !set["selector"] && !set["label"] && !set["namespace"] && !set["x509-ttl"] && !set["jwt-ttl"] {
		return e.errorf(ExitUsage, "entry update: nothing to change: give at least one of --parent, --spiffe-id, --selector, --label, --namespace, --x509-ttl, --jwt-ttl")
	}
	c, code, ok := cmd.client()
	if !ok {
		return code
	}
	var cur wire.Entry
	if err := c.do(ctx, "GET", server.PathAdminEntries+"/"+pathEscape(id), nil, &cur); err != nil {
		return e.fail(err)
	}
	req := server.EntryRequest{SPIFFEID: cur.SPIFFEID, ParentID: cur.ParentID, Selectors: cur.Selectors, X509TTL: cur.X509TTL,
		JWTTTL: cur.JWTTTL, Namespace: cur.Namespace, Labels: cur.Labels}
	if set["parent"] {
		req.ParentID = *parent
	}
	if set["spiffe-id"] {
		req.SPIFFEID = *spiffeID
	}
	var err error
	if set["selector"] {
		if req.Selectors, err = parseSelectors(sels); err != nil {
			return e.errorf(ExitUsage, "entry update: %v", err)
		}
	}
	if set["label"] {
		// "--label -" clears the labels: it adds none.
		kv := slices.DeleteFunc(slices.Clone(labels), func(l string) bool { return l == "-" })
		if req.Labels, err = parseLabels(kv); err != nil {
			return e.errorf(ExitUsage, "entry update: %v", err)
		}
	}
	if set["namespace"] {
		req.Namespace = *ns
		if *ns == "-" {
			req.Namespace = ""
		}
	}
	if set["x509-ttl"] {
		req.X509TTL = wire.Duration(*x509TTL)
	}
	if set["jwt-ttl"] {
		req.JWTTTL = wire.Duration(*jwtTTL)
	}
	var out wire.Entry
	path := server.PathAdminEntries + "/" + pathEscape(id) + "?revision=" + fmt.Sprint(cur.Revision)
	if err := c.do(ctx, "PUT", path, req, &out); err != nil {
		return e.fail(err)
	}
	if cmd.json() {
		return e.printJSON(out)
	}
	printEntry(e.Stdout, out)
	return ExitOK
}

// parseSelectors parses --selector values (TYPE:KIND:VALUE).
func parseSelectors(vals []string) ([]wire.Selector, error) {
	var out []wire.Selector
	for _, v := range vals {
		sel, err := server.ParseSelector(v)
		if err != nil {
			return nil, fmt.Errorf("--selector %v", err)
		}
		out = append(out, sel)
	}
	return out, nil
}

// parseLabels parses --label key=value values into a map, nil for none. A
// key given twice is an error: which value was meant cannot be known.
func parseLabels(vals []string) (map[string]string, error) {
	var out map[string]string
	for _, l := range vals {
		k, v, ok := strings.Cut(l, "=")
		if !ok || k == "" {
			return nil, fmt.Errorf("--label %q: want key=value", l)
		}
		if _, dup := out[k]; dup {
			return nil, fmt.Errorf("--label %q given twice", k)
		}
		if out == nil {
			out = map[string]string{}
		}
		out[k] = v
	}
	return out, nil
}

func runEntryShow(ctx context.Context, e *Env, args []string) int {
	return entryByID(ctx, e, "show", "GET", args)
}

func runEntryDelete(ctx context.Context, e *Env, args []string) int {
	return entryByID(ctx, e, "delete", "DELETE", args)
}

func entryByID(ctx context.Context, e *Env, verb, method string, args []string) int {
	id, rest := positional(args)
	cmd := e.newAdminCommand("entry " + verb)
	fs := cmd.fs
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), "Usage: moatless entry %s ID [-o json]\n", verb)
		fs.PrintDefaults()
	}
	if code, ok := cmd.parse(rest); !ok {
		return code
	}
	if id == "" {
		return e.errorf(ExitUsage, "entry %s: the entry id is required (see \"moatless entry list\")", verb)
	}
	c, code, ok := cmd.client()
	if !ok {
		return code
	}
	var out wire.Entry
	if err := c.do(ctx, method, server.PathAdminEntries+"/"+pathEscape(id), nil, &out); err != nil {
		return e.fail(err)
	}
	if cmd.json() {
		return e.printJSON(out)
	}
	if verb == "delete" {
		fmt.Fprintf(e.Stdout, "deleted entry %s (%s)\n", out.ID, out.SPIFFEID)
		return ExitOK
	}
	printEntry(e.Stdout, out)
	return ExitOK
}
