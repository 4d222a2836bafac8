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
		{"archive", "move old records out of the store into segment files that keep the chain", runAuditArchive},
	}, args)
}

// auditStoreDSN resolves --data-dir and --store for the audit commands
// that read the store directly.
func (e *Env) auditStoreDSN(cmd, dataDir, dsn string) (string, int, bool) {
	if dataDir != "" && dsn != "" {
		return "", e.errorf(ExitUsage, "%s: give --data-dir or --store, not both", cmd), false
	}
	if dsn != "" {
		return storeDSN(dsn), 0, true
	}
	dir := dataDir
	if dir == "" {
		dir = config.DefaultDataDir(e.getenv)
	}
	src := filepath.Join(dir, "moatless.db")
	if !fileExists(src) {
		return "", e.errorf(ExitUsage, "%s: no store at %s (set --data-dir or --store)", cmd, src), false
	}
	return src, 0, true
}

func runAuditVerify(ctx context.Context, e *Env, args []string) int {
	fs := flag.NewFlagSet("audit verify", flag.ContinueOnError)
	dataDir := fs.String("data-dir", "", "server data `directory` whose SQLite store to read (default $MOATLESS_DATA_DIR, else ~/.local/share/moatless)")
	dsn := fs.String("store", "", "store `DSN` (postgres://... or a SQLite path) instead of --data-dir")
	expect := fs.String("expect-head", "", "a head printed by an earlier verify (`SEQ:HASH`): catches a chain rewritten since")
	archiveDir := fs.String("archive", "", "`directory` of archived segments (audit archive, audit_archive_dir): verify them and the store as one chain from record 1")
	output := fs.String("o", "text", "output format: text or json")
	fs.Usage = func() {
		fmt.Fprintln(fs.Output(), "Usage: moatless audit verify [--data-dir DIR | --store DSN] [--archive DIR] [--expect-head SEQ:HASH] [-o json]")
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
	src, code, ok := e.auditStoreDSN("audit verify", *dataDir, *dsn)
	if !ok {
		return code
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
	var arch, res audit.VerifyResult
	if *archiveDir != "" {
		var inArchive bool
		arch, res, inArchive, err = audit.VerifyAll(ctx, db, *archiveDir, opts)
		var ve *audit.VerifyError
		if errors.As(err, &ve) && inArchive {
			// The archive itself (not the store after it) does not fit.
			if *output == "json" {
				e.printJSON(map[string]any{"ok": false, "records_checked": arch.Records, "first_bad_record": ve.Seq, "reason": ve.Reason})
				return ExitFailure
			}
			return e.errorf(ExitFailure, "audit archive does NOT verify: record %d: %s (%d records before it are intact)", ve.Seq, ve.Reason, arch.Records)
		}
	} else {
		res, err = audit.Verify(ctx, db, opts)
	}
	res.Records += arch.Records
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
		out := map[string]any{"ok": true, "records_checked": res.Records, "head": res.Head.String()}
		if res.Base.Seq > 0 {
			out["archived_head"] = res.Base.String()
			out["archive_checked"] = *archiveDir != ""
		}
		return e.printJSON(out)
	}
	switch {
	case res.Base.Seq == 0:
		fmt.Fprintf(e.Stdout, "audit log verifies: %d records, head %s\n", res.Records, res.Head)
	case *archiveDir != "":
		fmt.Fprintf(e.Stdout, "audit log verifies from record 1: %d records (1-%d archived in %s, checked), head %s\n", res.Records, res.Base.Seq, *archiveDir, res.Head)
	default:
		fmt.Fprintf(e.Stdout, "audit log verifies: %d records after the archived head %s, head %s\n", res.Records, res.Base, res.Head)
		fmt.Fprintf(e.Stdout, "records 1-%d are archived: add --archive DIR to verify them too\n", res.Base.Seq)
	}
	return ExitOK
}

func runAuditArchive(ctx context.Context, e *Env, args []string) int {
	fs := flag.NewFlagSet("audit archive", flag.ContinueOnError)
	dataDir := fs.String("data-dir", "", "server data `directory` whose SQLite store to archive from (default $MOATLESS_DATA_DIR, else ~/.local/share/moatless)")
	dsn := fs.String("store", "", "store `DSN` (postgres://... or a SQLite path) instead of --data-dir")
	out := fs.String("out", "", "`directory` for the segment files (created 0700; keep every segment: verification needs them all)")
	older := fs.Duration("older-than", 0, "archive the records older than this `duration` (e.g. 2160h for 90 days)")
	maxRecords := fs.Int("max-records", 100000, "records per segment file")
	output := fs.String("o", "text", "output format: text or json")
	fs.Usage = func() {
		fmt.Fprintln(fs.Output(), "Usage: moatless audit archive [--data-dir DIR | --store DSN] --out DIR --older-than DURATION")
		fmt.Fprintln(fs.Output(), "\nWrites the audit records older than DURATION to segment files in DIR (the hash chain kept), reads")
		fmt.Fprintln(fs.Output(), "them back and verifies them, then deletes them from the store with an audit.archive record.")
		fmt.Fprintln(fs.Output(), "Safe while servers run. Verify later with: moatless audit verify --archive DIR.")
		fs.PrintDefaults()
	}
	if code, ok := e.parseFlags(fs, args); !ok {
		return code
	}
	if *out == "" || *older <= 0 {
		return e.errorf(ExitUsage, "audit archive: --out and --older-than are required")
	}
	if *maxRecords < 1 || *maxRecords > 10_000_000 {
		return e.errorf(ExitUsage, "audit archive: --max-records must be between 1 and 10000000")
	}
	if *output != "text" && *output != "json" {
		return e.errorf(ExitUsage, "audit archive: -o must be text or json")
	}
	src, code, ok := e.auditStoreDSN("audit archive", *dataDir, *dsn)
	if !ok {
		return code
	}
	// First read-only, which refuses a schema this binary would migrate:
	// an archiving tool must not upgrade the store under its servers.
	ro, err := store.OpenWith(ctx, src, store.OpenOptions{ReadOnly: true})
	if err != nil {
		return e.errorf(ExitFailure, "audit archive: %v", err)
	}
	ro.Close()
	// Read-write, but no lock: archiving runs beside live servers, each
	// segment in a transaction that takes the chain head's lock.
	db, err := store.Open(ctx, src)
	if err != nil {
		return e.errorf(ExitFailure, "audit archive: %v", err)
	}
	defer db.Close()
	sink := audit.NewStoreSink(db)
	segs, err := audit.Archive(ctx, db, sink, audit.ArchiveOptions{Dir: *out, Before: time.Now().Add(-*older), MaxRecords: *maxRecords, Actor: "cli"})
	if *output == "json" && err == nil {
		if segs == nil {
			segs = []store.AuditSegment{}
		}
		return e.printJSON(segs)
	}
	for _, g := range segs {
		fmt.Fprintf(e.Stdout, "archived records %d-%d to %s (sha256 %s)\n", g.FirstSeq, g.LastSeq, filepath.Join(*out, g.File), g.FileSHA256)
	}
	if err != nil {
		return e.errorf(ExitFailure, "%v", err)
	}
	if len(segs) == 0 {
		fmt.Fprintln(e.Stdout, "nothing to archive")
	}
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
			d = append(d, printable(k, "")+"="+printable(r.Details[k], ""))
		}
		fmt.Fprintf(tw, "%d\t%s\t%s\t%s\t%s\t%s\t%s\n", r.Seq, r.Time.Local().Format(time.RFC3339), printable(r.Kind, ""), printable(r.Outcome, ""),
			printable(r.Actor, ""), printable(r.Subject, ""), strings.Join(d, " "))
	}
	tw.Flush()
	if page.Next > 0 {
		fmt.Fprintf(e.Stdout, "(older: moatless audit list --before %d)\n", page.Next)
	}
	return ExitOK
}
