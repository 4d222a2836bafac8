package cli

import (
	"context"
	"fmt"
	"net/url"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/moatless/moatless/internal/detect"
	"github.com/moatless/moatless/internal/server"
	"github.com/moatless/moatless/internal/store"
	"github.com/moatless/moatless/internal/wire"
)

// runIncident is "moatless incident ...": detection's findings and the
// incidents playbooks (or admins) opened, and acting on them.
func runIncident(ctx context.Context, e *Env, args []string) int {
	return e.subcommand(ctx, "incident", []command{
		{"list", "list incidents, newest first", runIncidentList},
		{"show", "show one incident: trigger, timeline, steps, findings", runIncidentShow},
		{"isolate", "act on an identity by hand: isolate it (or another action, or a playbook)", runIncidentIsolate},
		{"release", "undo what an incident did (lift its revocation and blocks) and close it", runIncidentRelease},
		{"confirm", "run an incident's held steps and keep its blocked pairs until it is released (they lapse otherwise)", runIncidentConfirm},
		{"export", "write an incident's forensics bundle (one JSON file)", runIncidentExport},
		{"findings", "list what the detectors found", runIncidentFindings},
		{"risk", "list the identities at risk", runIncidentRisk},
	}, args)
}

func runIncidentList(ctx context.Context, e *Env, args []string) int {
	cmd := e.newAdminCommand("incident list")
	fs := cmd.fs
	identity := fs.String("identity", "", "only incidents of this SPIFFE `ID`")
	state := fs.String("state", "", "only incidents in this `state`: open, contained or released")
	limit := fs.Int("limit", 50, "at most `N` incidents (1 to 1000)")
	if code, ok := cmd.parse(args); !ok {
		return code
	}
	if *limit < 1 || *limit > 1000 {
		return e.errorf(ExitUsage, "incident list: --limit must be 1 to 1000")
	}
	c, code, ok := cmd.client()
	if !ok {
		return code
	}
	q := url.Values{"limit": {strconv.Itoa(*limit)}}
	setIf(q, "identity", *identity)
	setIf(q, "state", *state)
	var page server.Page[detect.Incident]
	if err := c.do(ctx, "GET", server.PathAdminIncidents+"?"+q.Encode(), nil, &page); err != nil {
		return e.fail(err)
	}
	if cmd.json() {
		return e.printJSON(page)
	}
	if len(page.Items) == 0 {
		fmt.Fprintln(e.Stdout, "no incidents")
		return ExitOK
	}
	tw := newTable(e.Stdout)
	fmt.Fprintln(tw, "ID\tIDENTITY\tSTATE\tOPENED\tBY\tTRIGGER")
	for _, inc := range page.Items {
		by := inc.Playbook
		if by == "" {
			by = "(by hand)"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", inc.ID, inc.Identity, incidentState(inc), inc.OpenedAt.Local().Format(time.RFC3339), by, printable(inc.Trigger, ""))
	}
	tw.Flush()
	return ExitOK
}

// incidentState is the incident's state, "uncorroborated" added while its
// playbook holds containment steps for want of corroboration.
func incidentState(inc detect.Incident) string {
	if inc.Uncorroborated() {
		return inc.State + ", uncorroborated"
	}
	return inc.State
}

// reportedBy names the nodes whose reports raised f, "server" when the
// server observed it itself.
func reportedBy(f detect.Finding) string {
	ws := f.Witnesses()
	if len(ws) == 0 {
		return "server"
	}
	return printable(strings.Join(ws, ","), "")
}

func setIf(q url.Values, k, v string) {
	if v != "" {
		q.Set(k, v)
	}
}

func runIncidentShow(ctx context.Context, e *Env, args []string) int {
	id, rest := positional(args)
	cmd := e.newAdminCommand("incident show")
	if code, ok := cmd.parse(rest); !ok {
		return code
	}
	if id == "" {
		return e.errorf(ExitUsage, "incident show: the incident id is required (see \"moatless incident list\")")
	}
	c, code, ok := cmd.client()
	if !ok {
		return code
	}
	var inc detect.Incident
	if err := c.do(ctx, "GET", server.PathAdminIncidents+"/"+pathEscape(id), nil, &inc); err != nil {
		return e.fail(err)
	}
	var fs []detect.Finding
	for _, fid := range inc.Findings {
		var f detect.Finding
		if err := c.do(ctx, "GET", server.PathAdminFindings+"/"+pathEscape(fid), nil, &f); err == nil {
			fs = append(fs, f)
		}
	}
	if cmd.json() {
		return e.printJSON(struct {
			detect.Incident
			FindingDetails []detect.Finding `json:"finding_details"`
		}{inc, fs})
	}
	printIncident(e, inc, fs)
	return ExitOK
}

func printIncident(e *Env, inc detect.Incident, fs []detect.Finding) {
	tw := newTable(e.Stdout)
	by := inc.Playbook
	if by != "" {
		by += fmt.Sprintf(" (playbooks version %d)", inc.PlaybookVersion)
	} else {
		by = "by hand"
	}
	fmt.Fprintf(tw, "Incident:\t%s\n", inc.ID)
	fmt.Fprintf(tw, "Identity:\t%s\n", inc.Identity)
	fmt.Fprintf(tw, "State:\t%s\n", incidentState(inc))
	fmt.Fprintf(tw, "Playbook:\t%s\n", by)
	fmt.Fprintf(tw, "Trigger:\t%s\n", printable(inc.Trigger, ""))
	if inc.CorroboratedRisk != nil {
		fmt.Fprintf(tw, "Risk:\t%.2f (corroborated %.2f)\n", inc.Risk, *inc.CorroboratedRisk)
	} else {
		fmt.Fprintf(tw, "Risk:\t%.2f\n", inc.Risk)
	}
	if inc.Corroboration != "" {
		fmt.Fprintf(tw, "Corroboration:\t%s\n", printable(inc.Corroboration, ""))
	}
	if inc.Uncorroborated() {
		var held []string
		for _, st := range inc.Held {
			held = append(held, st.Action)
		}
		fmt.Fprintf(tw, "Held:\t%s, until corroborated or: moatless incident confirm %s\n", strings.Join(held, ", "), inc.ID)
	}
	if len(inc.HeldDestinations) > 0 && inc.State != detect.IncidentReleased {
		fmt.Fprintf(tw, "Held blocks:\t%s → %s, until a corroborated finding names them or: moatless incident confirm %s\n",
			inc.Identity, printable(strings.Join(inc.HeldDestinations, ", "), ""), inc.ID)
	}
	stamp := func(name string, t time.Time) {
		if !t.IsZero() {
			fmt.Fprintf(tw, "%s\t%s\n", name, t.Local().Format("2006-01-02T15:04:05.000Z07:00"))
		}
	}
	stamp("First record:", inc.FirstRecord)
	stamp("Detected:", inc.DetectedAt)
	stamp("Opened:", inc.OpenedAt)
	stamp("Contained:", inc.ContainedAt)
	stamp("Released:", inc.ReleasedAt)
	if !inc.FirstRecord.IsZero() && !inc.ContainedAt.IsZero() {
		fmt.Fprintf(tw, "Record to containment:\t%s\n", inc.ContainedAt.Sub(inc.FirstRecord).Round(time.Millisecond))
	}
	for _, b := range inc.Blocks {
		until := "until released"
		if !b.ExpiresAt.IsZero() {
			until = "until " + b.ExpiresAt.Local().Format(time.RFC3339) + " unless confirmed"
		}
		fmt.Fprintf(tw, "Blocked:\t%s → %s, %s\n", b.Source, b.Destination, until)
	}
	tw.Flush()
	fmt.Fprintln(e.Stdout, "\nSteps:")
	tw = newTable(e.Stdout)
	fmt.Fprintln(tw, "  AT\tACTION\tOUTCOME\tBY\tFINDING\tDETAIL")
	for _, s := range inc.Steps {
		fmt.Fprintf(tw, "  %s\t%s\t%s\t%s\t%s\t%s\n", s.At.Local().Format("15:04:05.000"), s.Action, s.Outcome, printable(s.Actor, ""), orDash(s.FindingID), printable(s.Detail, ""))
	}
	tw.Flush()
	if len(fs) > 0 {
		fmt.Fprintln(e.Stdout, "\nFindings:")
		tw = newTable(e.Stdout)
		fmt.Fprintln(tw, "  ID\tDETECTOR\tSEVERITY\tCOUNT\tREPORTED BY\tSUMMARY")
		for _, f := range fs {
			fmt.Fprintf(tw, "  %s\t%s\t%s\t%d\t%s\t%s\n", f.ID, f.Detector, f.Severity, f.Count, reportedBy(f), printable(f.Summary, ""))
		}
		tw.Flush()
	}
}

func runIncidentIsolate(ctx context.Context, e *Env, args []string) int {
	cmd := e.newAdminCommand("incident isolate")
	fs := cmd.fs
	id := fs.String("spiffe-id", "", "the identity to act on (required)")
	action := fs.String("action", detect.ActionIsolate, "isolate, block-pair, quarantine (dry run), revoke-certificate or notify")
	pb := fs.String("playbook", "", "run every step of this playbook instead of one action")
	dst := fs.String("destination", "", "block-pair: the SPIFFE `ID` it may no longer call")
	dur := fs.Duration("duration", 0, "block-pair: how long (default 24h); the block lapses then unless confirmed")
	reason := fs.String("reason", "", "why (goes to the audit log)")
	finding := fs.String("finding", "", "the finding `ID` acted on: the steps are audited with it as their cause")
	fs.Usage = func() {
		fmt.Fprintln(fs.Output(), "Usage: moatless incident isolate --spiffe-id ID [--action A] [--playbook NAME] [--destination ID --duration D] [--finding ID] [--reason TEXT] [-o json]")
		fmt.Fprintln(fs.Output(), "\nisolate revokes the identity everywhere: every sidecar refuses it and closes its connections, its own")
		fmt.Fprintln(fs.Output(), "sidecar cuts its calls, tokens naming it are refused, its secrets leases are revoked.")
		fs.PrintDefaults()
	}
	if code, ok := cmd.parse(args); !ok {
		return code
	}
	if *id == "" {
		return e.errorf(ExitUsage, "incident isolate: --spiffe-id is required")
	}
	req := server.IncidentRequest{Identity: *id, Destination: *dst, Duration: wire.Duration(*dur), Reason: *reason, Finding: *finding}
	if *pb != "" {
		req.Playbook = *pb
	} else {
		req.Action = *action
	}
	c, code, ok := cmd.client()
	if !ok {
		return code
	}
	var inc detect.Incident
	if err := c.do(ctx, "POST", server.PathAdminIncidents, req, &inc); err != nil {
		return e.fail(err)
	}
	if cmd.json() {
		return e.printJSON(inc)
	}
	last := inc.Steps[len(inc.Steps)-1]
	fmt.Fprintf(e.Stdout, "incident %s: %s %s: %s\n", inc.ID, last.Action, last.Outcome, last.Detail)
	return ExitOK
}

func runIncidentRelease(ctx context.Context, e *Env, args []string) int {
	id, rest := positional(args)
	cmd := e.newAdminCommand("incident release")
	reason := cmd.fs.String("reason", "", "why (goes to the audit log)")
	if code, ok := cmd.parse(rest); !ok {
		return code
	}
	if id == "" {
		return e.errorf(ExitUsage, "incident release: the incident id is required (see \"moatless incident list\")")
	}
	c, code, ok := cmd.client()
	if !ok {
		return code
	}
	var inc detect.Incident
	if err := c.do(ctx, "POST", server.PathAdminIncidents+"/"+pathEscape(id)+"/release", server.ReleaseRequest{Reason: *reason}, &inc); err != nil {
		return e.fail(err)
	}
	if cmd.json() {
		return e.printJSON(inc)
	}
	fmt.Fprintf(e.Stdout, "incident %s released: %s is no longer revoked or blocked by it\n", inc.ID, inc.Identity)
	return ExitOK
}

func runIncidentConfirm(ctx context.Context, e *Env, args []string) int {
	id, rest := positional(args)
	cmd := e.newAdminCommand("incident confirm")
	if code, ok := cmd.parse(rest); !ok {
		return code
	}
	if id == "" {
		return e.errorf(ExitUsage, "incident confirm: the incident id is required")
	}
	c, code, ok := cmd.client()
	if !ok {
		return code
	}
	var inc detect.Incident
	if err := c.do(ctx, "POST", server.PathAdminIncidents+"/"+pathEscape(id)+"/confirm", nil, &inc); err != nil {
		return e.fail(err)
	}
	if cmd.json() {
		return e.printJSON(inc)
	}
	fmt.Fprintf(e.Stdout, "incident %s %s: %d blocked pairs kept until the incident is released\n", inc.ID, inc.State, len(inc.Blocks))
	if n := len(inc.Steps); n > 0 && strings.Contains(inc.Steps[n-1].Detail, "held steps run") {
		fmt.Fprintln(e.Stdout, "its held steps ran: moatless incident show "+inc.ID)
	}
	return ExitOK
}

func runIncidentExport(ctx context.Context, e *Env, args []string) int {
	id, rest := positional(args)
	cmd := e.newAdminCommand("incident export")
	out := cmd.fs.String("f", "-", "write the bundle to this `file` (mode 0600; - for standard output)")
	if code, ok := cmd.parse(rest); !ok {
		return code
	}
	if id == "" {
		return e.errorf(ExitUsage, "incident export: the incident id is required")
	}
	c, code, ok := cmd.client()
	if !ok {
		return code
	}
	var b server.ForensicsBundle
	if err := c.do(ctx, "GET", server.PathAdminIncidents+"/"+pathEscape(id)+"/export", nil, &b); err != nil {
		return e.fail(err)
	}
	if *out == "-" {
		return e.printJSON(b)
	}
	f, err := os.OpenFile(*out, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return e.errorf(ExitFailure, "incident export: %v (the bundle is never written over an existing file)", err)
	}
	w := &Env{Stdout: f, Stderr: e.Stderr}
	code = w.printJSON(b)
	if err := f.Close(); err != nil && code == ExitOK {
		return e.errorf(ExitFailure, "incident export: %v", err)
	}
	if code == ExitOK {
		fmt.Fprintf(e.Stderr, "wrote %s: %d findings, %d sampled decisions, %d audit records (chain head %d), %d certificates\n",
			*out, len(b.Findings), len(b.Decisions), len(b.AuditRecords), b.AuditHead.Seq, len(b.Certificates))
	}
	return code
}

func runIncidentFindings(ctx context.Context, e *Env, args []string) int {
	cmd := e.newAdminCommand("incident findings")
	fs := cmd.fs
	identity := fs.String("identity", "", "only findings about this `identity`")
	severity := fs.String("severity", "", "only findings of this `severity` (low, medium, high, critical) or above")
	since := fs.String("since", "24h", "how far back: a duration or an RFC 3339 time")
	limit := fs.Int("limit", 50, "at most `N` findings (1 to 1000)")
	if code, ok := cmd.parse(args); !ok {
		return code
	}
	c, code, ok := cmd.client()
	if !ok {
		return code
	}
	q := url.Values{"limit": {strconv.Itoa(*limit)}, "since": {*since}}
	setIf(q, "identity", *identity)
	setIf(q, "severity", *severity)
	var page server.Page[detect.Finding]
	if err := c.do(ctx, "GET", server.PathAdminFindings+"?"+q.Encode(), nil, &page); err != nil {
		return e.fail(err)
	}
	if cmd.json() {
		return e.printJSON(page)
	}
	if len(page.Items) == 0 {
		fmt.Fprintln(e.Stdout, "no findings")
		return ExitOK
	}
	tw := newTable(e.Stdout)
	fmt.Fprintln(tw, "ID\tTIME\tDETECTOR\tSEVERITY\tCOUNT\tINCIDENT\tREPORTED BY\tSUMMARY")
	for _, f := range page.Items {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%d\t%s\t%s\t%s\n", f.ID, f.Time.Local().Format(time.RFC3339), f.Detector, f.Severity, f.Count, orDash(f.IncidentID), reportedBy(f), printable(f.Summary, ""))
	}
	tw.Flush()
	return ExitOK
}

func runIncidentRisk(ctx context.Context, e *Env, args []string) int {
	cmd := e.newAdminCommand("incident risk")
	c, code, ok := cmd.connect(args)
	if !ok {
		return code
	}
	var page server.Page[detect.IdentityRisk]
	if err := c.do(ctx, "GET", server.PathAdminRisk, nil, &page); err != nil {
		return e.fail(err)
	}
	if cmd.json() {
		return e.printJSON(page)
	}
	tw := newTable(e.Stdout)
	fmt.Fprintln(tw, "IDENTITY\tRISK\tFINDINGS")
	for _, r := range page.Items {
		fmt.Fprintf(tw, "%s\t%.2f\t%s\n", r.Identity, r.Risk, strings.Join(r.Findings, ","))
	}
	tw.Flush()
	return ExitOK
}

// runPlaybook is "moatless playbook ...": the playbooks, versioned as
// policies are.
func runPlaybook(ctx context.Context, e *Env, args []string) int {
	return e.subcommand(ctx, "playbook", []command{
		{"apply", "validate and apply playbooks (multi-document YAML) as a new version", runPlaybookApply},
		{"get", "show the playbooks in force (or at --version)", runPlaybookGet},
		{"delete", "delete one playbook by name", runPlaybookDelete},
		{"history", "list playbook versions", runPlaybookHistory},
	}, args)
}

func runPlaybookApply(ctx context.Context, e *Env, args []string) int {
	cmd := e.newAdminCommand("playbook apply")
	var files stringList
	cmd.fs.Var(&files, "f", "playbook `file or directory` (repeatable; - for stdin)")
	if code, ok := cmd.parse(args); !ok {
		return code
	}
	pf, err := e.readPolicyFiles("playbook apply", files)
	if err != nil {
		return e.errorf(ExitUsage, "%v", err)
	}
	// Checked here too, so a typo is reported before any credential is
	// read.
	for _, f := range pf {
		if _, err := detect.ParsePlaybooks([]byte(f.Content)); err != nil {
			return e.errorf(ExitUsage, "playbook apply: %s: %v", f.Name, err)
		}
	}
	c, code, ok := cmd.client()
	if !ok {
		return code
	}
	var pv store.PolicyVersion
	if err := c.do(ctx, "POST", server.PathAdminPlaybooks, server.PlaybookApplyRequest{Files: pf}, &pv); err != nil {
		return e.fail(err)
	}
	if cmd.json() {
		return e.printJSON(pv)
	}
	if len(pv.Changes) == 0 {
		fmt.Fprintf(e.Stdout, "no change: the playbooks in force are already these (version %d)\n", pv.Version)
		return ExitOK
	}
	for _, ch := range pv.Changes {
		fmt.Fprintf(e.Stdout, "%s playbook %s\n", ch.Op, ch.Name)
	}
	fmt.Fprintf(e.Stdout, "playbooks version %d applied\n", pv.Version)
	return ExitOK
}

func runPlaybookGet(ctx context.Context, e *Env, args []string) int {
	cmd := e.newAdminCommand("playbook get")
	version := cmd.fs.Uint64("version", 0, "show this playbooks `version` (default: the one in force)")
	if code, ok := cmd.parse(args); !ok {
		return code
	}
	c, code, ok := cmd.client()
	if !ok {
		return code
	}
	path := server.PathAdminPlaybooks
	if *version > 0 {
		path += "?version=" + strconv.FormatUint(*version, 10)
	}
	var set server.PlaybookSet
	if err := c.do(ctx, "GET", path, nil, &set); err != nil {
		return e.fail(err)
	}
	if cmd.json() {
		return e.printJSON(set)
	}
	fmt.Fprintf(e.Stdout, "playbooks version %d\n", set.Version)
	tw := newTable(e.Stdout)
	fmt.Fprintln(tw, "NAME\tRUNS AT RISK\tDETECTORS\tIDENTITIES\tSTEPS")
	for _, pb := range set.Items {
		risk := "by hand only"
		if pb.Trigger.Risk > 0 {
			risk = strconv.FormatFloat(pb.Trigger.Risk, 'f', -1, 64)
		}
		var steps []string
		for _, s := range pb.Steps {
			x := s.Action
			if s.Duration != 0 {
				x += " " + s.Duration.Std().String()
			}
			steps = append(steps, x)
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", pb.Name, risk, orDash(strings.Join(pb.Trigger.Detectors, ",")),
			orDash(strings.Join(pb.Trigger.Identities, ",")), strings.Join(steps, ", "))
	}
	tw.Flush()
	return ExitOK
}

func runPlaybookDelete(ctx context.Context, e *Env, args []string) int {
	name, rest := positional(args)
	cmd := e.newAdminCommand("playbook delete")
	if code, ok := cmd.parse(rest); !ok {
		return code
	}
	if name == "" {
		return e.errorf(ExitUsage, "playbook delete: the playbook name is required")
	}
	c, code, ok := cmd.client()
	if !ok {
		return code
	}
	var pv store.PolicyVersion
	if err := c.do(ctx, "DELETE", server.PathAdminPlaybooks+"/"+pathEscape(name), nil, &pv); err != nil {
		return e.fail(err)
	}
	if cmd.json() {
		return e.printJSON(pv)
	}
	fmt.Fprintf(e.Stdout, "deleted playbook %s: playbooks version %d\n", name, pv.Version)
	return ExitOK
}

func runPlaybookHistory(ctx context.Context, e *Env, args []string) int {
	cmd := e.newAdminCommand("playbook history")
	c, code, ok := cmd.connect(args)
	if !ok {
		return code
	}
	var page server.Page[store.PolicyVersion]
	if err := c.do(ctx, "GET", server.PathAdminPlaybooks+"/history", nil, &page); err != nil {
		return e.fail(err)
	}
	if cmd.json() {
		return e.printJSON(page)
	}
	tw := newTable(e.Stdout)
	fmt.Fprintln(tw, "VERSION\tWHEN\tWHO\tACTION\tCHANGES")
	for _, v := range page.Items {
		var ch []string
		for _, c := range v.Changes {
			ch = append(ch, c.Op+" "+c.Name)
		}
		fmt.Fprintf(tw, "%d\t%s\t%s\t%s\t%s\n", v.Version, v.CreatedAt.Local().Format(time.RFC3339), v.Actor, v.Action, strings.Join(ch, ", "))
	}
	tw.Flush()
	return ExitOK
}
