package cli

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/moatless/moatless/internal/audit"
	"github.com/moatless/moatless/internal/store"
)

// runStore is "moatless store migrate|backup|restore".
func runStore(ctx context.Context, e *Env, args []string) int {
	return e.subcommand(ctx, "store", []command{
		{"migrate", "copy a stopped server's store into another (SQLite to PostgreSQL), verifying the audit chain on both sides", runStoreMigrate},
		{"backup", "copy a store, live or not, into a new SQLite file", runStoreBackup},
		{"restore", "copy a backup into an empty store, giving it a new epoch", runStoreRestore},
	}, args)
}

// storeDSN resolves a store argument: "postgres://..." as is; an existing
// directory, or a path ending in "/", is a server's data directory and
// means DIR/moatless.db; anything else is a SQLite file. A "sqlite:"
// prefix is optional.
func storeDSN(arg string) string {
	if store.IsPostgres(arg) {
		return arg
	}
	p := strings.TrimPrefix(strings.TrimPrefix(arg, "sqlite:"), "file:")
	if fi, err := os.Stat(p); (err == nil && fi.IsDir()) || strings.HasSuffix(p, "/") {
		p = filepath.Join(p, "moatless.db")
	}
	return p
}

// redactDSN drops a password from a PostgreSQL DSN for messages.
func redactDSN(dsn string) string {
	if !store.IsPostgres(dsn) {
		return dsn
	}
	scheme, rest, _ := strings.Cut(dsn, "://")
	if at := strings.LastIndex(rest, "@"); at >= 0 {
		if user, _, hasPw := strings.Cut(rest[:at], ":"); hasPw {
			rest = user + ":***" + rest[at:]
		}
	}
	return scheme + "://" + rest
}

// copyRun is one store-to-store copy with its checks.
type copyRun struct {
	e   *Env
	cmd string
	// src and dst are resolved DSNs.
	src, dst string
	// live allows a source in use (backup reads one snapshot).
	live bool
	// newEpoch is for restores.
	newEpoch bool
	// dstMustNotExist: backups write a new file, never into one.
	dstMustNotExist bool
	json            bool
}

type copyReport struct {
	OK      bool               `json:"ok"`
	From    string             `json:"from"`
	To      string             `json:"to"`
	Tables  []store.TableCount `json:"tables"`
	Rows    int64              `json:"rows"`
	Records uint64             `json:"audit_records"`
	Head    string             `json:"audit_head"`
	Epoch   string             `json:"epoch"`
}

func (c *copyRun) run(ctx context.Context) int {
	e := c.e
	if c.src == c.dst {
		return e.errorf(ExitUsage, "%s: source and destination are the same store", c.cmd)
	}
	if !store.IsPostgres(c.src) && !fileExists(c.src) {
		return e.errorf(ExitUsage, "%s: no store at %s", c.cmd, c.src)
	}
	if !store.IsPostgres(c.dst) {
		if c.dstMustNotExist && fileExists(c.dst) {
			return e.errorf(ExitUsage, "%s: %s exists; a backup is written to a new file", c.cmd, c.dst)
		}
		if fi, err := os.Stat(c.dst); err == nil && fi.Size() > 0 {
			return e.errorf(ExitUsage, "%s: %s exists; copy into a new file or an empty database", c.cmd, c.dst)
		}
	}
	if !c.live {
		// A server writing while the copy runs would lose those writes
		// with the source it is about to leave.
		if err := store.InUse(ctx, c.src); err != nil {
			if errors.Is(err, store.ErrInUse) {
				return e.errorf(ExitFailure, "%s: refusing to copy a live store: %v (stop the server, then run this again)", c.cmd, err)
			}
			return e.errorf(ExitFailure, "%s: %v", c.cmd, err)
		}
	}
	src, err := store.OpenWith(ctx, c.src, store.OpenOptions{ReadOnly: true})
	if err != nil {
		return e.errorf(ExitFailure, "%s: source %s: %v", c.cmd, redactDSN(c.src), err)
	}
	defer src.Close()
	var srcHead *audit.Head
	if !c.live {
		res, err := audit.Verify(ctx, src, audit.VerifyOptions{})
		if err != nil {
			return e.errorf(ExitFailure, "%s: the source's audit log does not verify, nothing copied: %v (run moatless audit verify on it)", c.cmd, err)
		}
		srcHead = &res.Head
	}
	// A SQLite destination is locked like a server's store while the
	// copy runs, so no server starts on it half-written; if the copy
	// fails, a file this command created is removed again.
	created := !store.IsPostgres(c.dst) && !fileExists(c.dst)
	dst, err := store.OpenWith(ctx, c.dst, store.OpenOptions{Lock: !store.IsPostgres(c.dst)})
	if err != nil {
		return e.errorf(ExitFailure, "%s: destination %s: %v", c.cmd, redactDSN(c.dst), err)
	}
	ok := false
	defer func() {
		dst.Close()
		switch {
		case created && !ok:
			for _, suffix := range []string{"", "-wal", "-shm", ".lock"} {
				os.Remove(c.dst + suffix)
			}
		case c.dstMustNotExist:
			os.Remove(c.dst + ".lock") // a backup file is no server's store
		}
	}()
	counts, err := store.Copy(ctx, src, dst, store.CopyOptions{NewEpoch: c.newEpoch})
	if err != nil {
		if errors.Is(err, store.ErrNotEmpty) {
			return e.errorf(ExitFailure, "%s: %v", c.cmd, err)
		}
		return e.errorf(ExitFailure, "%s: nothing was copied: %v", c.cmd, err)
	}
	res, err := audit.Verify(ctx, dst, audit.VerifyOptions{ExpectHead: srcHead})
	if err != nil {
		return e.errorf(ExitFailure, "%s: the copy's audit log does not verify: %v (the copy is unusable: drop it and run this again)", c.cmd, err)
	}
	if !c.live {
		// Nothing moved in the source meanwhile: every table must match.
		want, err := src.RowCounts(ctx)
		if err != nil {
			return e.errorf(ExitFailure, "%s: %v", c.cmd, err)
		}
		got, err := dst.RowCounts(ctx)
		if err != nil {
			return e.errorf(ExitFailure, "%s: %v", c.cmd, err)
		}
		if fmt.Sprint(want) != fmt.Sprint(got) {
			return e.errorf(ExitFailure, "%s: row counts differ after the copy (source %v, copy %v): the copy is unusable", c.cmd, want, got)
		}
	}
	epoch, err := dst.Epoch(ctx)
	if err != nil {
		return e.errorf(ExitFailure, "%s: %v", c.cmd, err)
	}
	ok = true
	rep := copyReport{OK: true, From: redactDSN(c.src), To: redactDSN(c.dst), Tables: counts, Records: res.Records, Head: res.Head.String(), Epoch: epoch}
	for _, t := range counts {
		rep.Rows += t.Rows
	}
	if c.json {
		return e.printJSON(rep)
	}
	fmt.Fprintf(e.Stdout, "copied %d rows in %d tables from %s to %s\n", rep.Rows, len(counts), rep.From, rep.To)
	if c.live {
		fmt.Fprintf(e.Stdout, "the copy's audit log verifies: %d records, head %s\n", res.Records, res.Head)
	} else {
		fmt.Fprintf(e.Stdout, "audit log verifies on both sides: %d records, head %s\n", res.Records, res.Head)
	}
	return ExitOK
}

// storeFlags are the flags every store subcommand shares.
func storeFlags(fs *flag.FlagSet) (output *string) {
	return fs.String("o", "text", "output format: text or json")
}

func runStoreMigrate(ctx context.Context, e *Env, args []string) int {
	fs := flag.NewFlagSet("store migrate", flag.ContinueOnError)
	from := fs.String("from", "", "source store: `sqlite:DIR` (a server's data directory), a SQLite file, or postgres://...")
	to := fs.String("to", "", "destination store, empty: `postgres://...` or a new SQLite file")
	output := storeFlags(fs)
	fs.Usage = func() {
		fmt.Fprintln(fs.Output(), "Usage: moatless store migrate --from sqlite:DIR --to postgres://USER@HOST/DB")
		fmt.Fprintln(fs.Output(), "\nCopies every table of a stopped server's store into an empty store at the same schema version")
		fmt.Fprintln(fs.Output(), "(start a server on it once, or create the database empty), in one transaction. It refuses a")
		fmt.Fprintln(fs.Output(), "source a server is using, verifies the audit chain before and after, and compares row counts.")
		fmt.Fprintln(fs.Output(), "The key-encryption key (DATA_DIR/kek) is not in the store: give every server the same file.")
		fs.PrintDefaults()
	}
	if code, ok := e.parseFlags(fs, args); !ok {
		return code
	}
	if *from == "" || *to == "" {
		return e.errorf(ExitUsage, "store migrate: --from and --to are required")
	}
	if *output != "text" && *output != "json" {
		return e.errorf(ExitUsage, "store migrate: -o must be text or json")
	}
	c := &copyRun{e: e, cmd: "store migrate", src: storeDSN(*from), dst: storeDSN(*to), json: *output == "json"}
	return c.run(ctx)
}

func runStoreBackup(ctx context.Context, e *Env, args []string) int {
	fs := flag.NewFlagSet("store backup", flag.ContinueOnError)
	dsn := fs.String("store", "", "store to back up: `sqlite:DIR`, a SQLite file or postgres://... (a running server is fine)")
	to := fs.String("to", "", "new SQLite `file` to write")
	output := storeFlags(fs)
	fs.Usage = func() {
		fmt.Fprintln(fs.Output(), "Usage: moatless store backup --store sqlite:DIR|postgres://... --to FILE")
		fmt.Fprintln(fs.Output(), "\nCopies the store, as of one moment (one read snapshot, so servers may keep running), into a new")
		fmt.Fprintln(fs.Output(), "SQLite file, and verifies the copy's audit chain. Keep DATA_DIR/kek with it, apart from it.")
		fs.PrintDefaults()
	}
	if code, ok := e.parseFlags(fs, args); !ok {
		return code
	}
	if *dsn == "" || *to == "" {
		return e.errorf(ExitUsage, "store backup: --store and --to are required")
	}
	if *output != "text" && *output != "json" {
		return e.errorf(ExitUsage, "store backup: -o must be text or json")
	}
	if store.IsPostgres(*to) {
		return e.errorf(ExitUsage, "store backup: --to is a file; to copy into PostgreSQL use store migrate or store restore")
	}
	c := &copyRun{e: e, cmd: "store backup", src: storeDSN(*dsn), dst: *to, live: true, dstMustNotExist: true, json: *output == "json"}
	return c.run(ctx)
}

func runStoreRestore(ctx context.Context, e *Env, args []string) int {
	fs := flag.NewFlagSet("store restore", flag.ContinueOnError)
	from := fs.String("from", "", "backup `file` written by store backup")
	to := fs.String("to", "", "empty destination store: `postgres://...`, sqlite:DIR or a new SQLite file")
	output := storeFlags(fs)
	fs.Usage = func() {
		fmt.Fprintln(fs.Output(), "Usage: moatless store restore --from FILE --to postgres://...|sqlite:DIR")
		fmt.Fprintln(fs.Output(), "\nCopies a backup into an empty store and gives it a new epoch: agents and sidecars get every")
		fmt.Fprintln(fs.Output(), "section afresh on their next connection instead of a delta against a history that moved on.")
		fs.PrintDefaults()
	}
	if code, ok := e.parseFlags(fs, args); !ok {
		return code
	}
	if *from == "" || *to == "" {
		return e.errorf(ExitUsage, "store restore: --from and --to are required")
	}
	if *output != "text" && *output != "json" {
		return e.errorf(ExitUsage, "store restore: -o must be text or json")
	}
	c := &copyRun{e: e, cmd: "store restore", src: storeDSN(*from), dst: storeDSN(*to), newEpoch: true, json: *output == "json"}
	return c.run(ctx)
}
