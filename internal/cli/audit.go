package cli

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"github.com/moatless/moatless/internal/audit"
	"github.com/moatless/moatless/internal/config"
	"github.com/moatless/moatless/internal/server"
	"github.com/moatless/moatless/internal/store"
)

// runAudit is "moatless audit verify|list".
func runAudit(ctx context.Context, e *Env, args []string) int {
	return e.subcommand(ctx, "audit", []command{
		{"verify", "check the audit log's hash chain in the store; name the first record that does not fit", runAuditVerify},
		{"list", "show audit records, newest first", runAuditList},
	}, args)
}

func runAuditVerify(ctx context.Context, e *Env, args []string) int {
	fs := flag.NewFlagSet("audit verify", flag.ContinueOnError)
	dataDir := fs.String("data-dir", "", "server data `directory` whose SQLite store to read (default $MOATLESS_DATA_DIR, else ~/.local/share/moatless)")
	dsn := fs.String("store", "", "store `DSN` (postgres://... or a SQLite path) instead of --data-dir")
	expect := fs.String("expect-head", "", "a head printed by an earlier verify (`SEQ:HASH`): catches a chain rewritten since")
	output := fs.String("o", "text", "output format: text or json")
	fs.Usage = func() {
		fmt.Fprintln(fs.Output(), "Usage: moatless audit verify [--data-dir DIR | --store DSN] [--expect-head SEQ:HASH] [-o json]")
		fmt.Fprintln(fs.Output(), "\nReads the store directly and read-only (no server needed; nothing is written, not even a migration).")
		fmt.Fprintln(fs.Output(), "Exit 0: the chain verifies; 1: it does not, or the store cannot be read.")
		fs.PrintDefaults()
	}
	if code, ok := e.parseFlags(fs, args); !ok {
		return code
	}
	if *output != "text" && *output != "json" {
		return e.errorf(ExitUsage, "audit verify: -o must be text or json")
	}
	if *dataDir != "" && *dsn != "" {
		return e.errorf(ExitUsage, "audit verify: give --data-dir or --store, not both")
	}
	src := *dsn
	if src == "" {
		dir := *dataDir
		if dir == "" {
			dir = config.DefaultDataDir(e.getenv)
		}
		src = filepath.Join(dir, "moatless.db")
		if !fileExists(src) {
			return e.errorf(ExitUsage, "audit verify: no store at %s (set --data-dir or --store)", src)
		}
	}
	var opts audit.VerifyOptions
	if *expect != "" {
		h, err := audit.ParseHead(*expect)
		if err != nil {
			return e.errorf(ExitUsage, "audit verify: --expect-head: %v", err)
		}
		opts.ExpectHead = &h
	}
	// Read-only: verifying must never change the store it judges (no
	// migration, no write), so it is safe on a stopped server's store and
	// on a copy kept as evidence.
	db, err := store.OpenWith(ctx, src, store.OpenOptions{ReadOnly: true})
	if err != nil {
		return e.errorf(ExitFailure, "audit verify: %v", err)
	}
	defer db.Close()
	res, err := audit.Verify(ctx, db, opts)
	var ve *audit.VerifyError
	if errors.As(err, &ve) {
		if *output == "json" {
			out := map[string]any{"ok": false, "records_checked": res.Records, "first_bad_record": ve.Seq, "reason": ve.Reason}
			if ve.Stored != "" {
				// Not an integer: first_bad_record cannot hold it.
				out["first_bad_record"] = nil
				out["stored_sequence_number"] = ve.Stored
			}
			e.printJSON(out)
			return ExitFailure
		}
		return e.errorf(ExitFailure, "audit log does NOT verify: record %s: %s (%d records of the chain checked before it)", ve.Record(), ve.Reason, res.Records)
	}
	if err != nil {
		return e.errorf(ExitFailure, "audit verify: %v", err)
	}
	if *output == "json" {
		return e.printJSON(map[string]any{"ok": true, "records_checked": res.Records, "head": res.Head.String()})
	}
	fmt.Fprintf(e.Stdout, "audit log verifies: %d records, head %s\n", res.Records, res.Head)
	return ExitOK
}

func runAuditList(ctx context.Context, e *Env, args []string) int {
	cmd := e.newAdminCommand("audit list")
	fs := cmd.fs
	limit := fs.Int("limit", 50, "how many records (1-1000)")
	before := fs.Uint64("before", 0, "only records older than this sequence `number` (paging)")
	if code, ok := cmd.parse(args); !ok {
		return code
	}
	path, err := pagePath(server.PathAdminAudit, *limit, *before, "sequence number")
	if err != nil {
		return e.errorf(ExitUsage, "audit list: %v", err)
	}
	c, code, ok := cmd.client()
	if !ok {
		return code
	}
	var page server.AuditPage
	if err := c.do(ctx, "GET", path, nil, &page); err != nil {
		return e.fail(err)
	}
	if cmd.json() {
		return e.printList(page.Records, page.Next)
	}
	tw := newTable(e.Stdout)
	fmt.Fprintln(tw, "SEQ\tTIME\tKIND\tOUTCOME\tACTOR\tSUBJECT\tDETAILS")
	for _, r := range page.Records {
		keys := make([]string, 0, len(r.Details))
		for k := range r.Details {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		var d []string
		for _, k := range keys {
			d = append(d, k+"="+r.Details[k])
		}
		fmt.Fprintf(tw, "%d\t%s\t%s\t%s\t%s\t%s\t%s\n", r.Seq, r.Time.Local().Format(time.RFC3339), r.Kind, r.Outcome, r.Actor, r.Subject, strings.Join(d, " "))
	}
	tw.Flush()
	if page.Next > 0 {
		fmt.Fprintf(e.Stdout, "(older: moatless audit list --before %d)\n", page.Next)
	}
	return ExitOK
}
