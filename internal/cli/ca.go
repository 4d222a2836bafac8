package cli

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/moatless/moatless/internal/ca"
	"github.com/moatless/moatless/internal/server"
	"github.com/moatless/moatless/internal/wire"
)

// runCA is "moatless ca show|rotate|prepare|activate|taint|revoke|bundle|issue-admin".
func runCA(ctx context.Context, e *Env, args []string) int {
	return e.subcommand(ctx, "ca", []command{
		{"show", "show the CA's authorities (prepared, active, retired, tainted, revoked) and the trust bundle sequence", runCAShow},
		{"rotate", "prepare new X.509 and JWT authorities now (activated after the publication delay)", runCARotate},
		{"prepare", "prepare a new authority of one kind (--kind x509|jwt), published in the bundle now", runCAPrepare},
		{"activate", "activate the prepared authority now, without the publication delay (emergency)", runCAActivate},
		{"taint", "mark a retired authority compromised: every holder replaces what it signed", runCATaint},
		{"revoke", "remove a tainted authority from the bundle for good", runCARevoke},
		{"bundle", "print the trust bundle (PEM, or -o json for the SPIFFE form)", runCABundle},
		{"issue-admin", "get an admin client certificate: key made here, CSR signed by the server", runCAIssueAdmin},
	}, args)
}

func printCAStatus(e *Env, st server.CAStatus) {
	tw := newTable(e.Stdout)
	fmt.Fprintf(tw, "Trust domain\t%s\n", st.TrustDomain)
	fmt.Fprintf(tw, "Bundle sequence\t%d\n\n", st.BundleSequence)
	fmt.Fprintln(tw, "KIND\tID\tSTATE\tNOT BEFORE\tNOT AFTER\tACTIVATE AT")
	for _, a := range st.Authorities {
		act := "-"
		if !a.ActivateAt.IsZero() {
			act = a.ActivateAt.Local().Format(time.RFC3339)
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", a.Kind, a.ID, a.State, a.NotBefore.Local().Format(time.RFC3339), a.NotAfter.Local().Format(time.RFC3339), act)
	}
	tw.Flush()
}

func runCAShow(ctx context.Context, e *Env, args []string) int {
	return e.caStatus(ctx, "ca show", "GET", server.PathAdminCA, "", args)
}

func runCARotate(ctx context.Context, e *Env, args []string) int {
	return e.caStatus(ctx, "ca rotate", "POST", server.PathAdminCARotate,
		"\nThe new authorities are in the bundle now and start signing after the publication delay.", args)
}

// caStatus runs a command whose answer is the CA's status (show, rotate):
// it prints the status, then note (if any) in text output.
func (e *Env) caStatus(ctx context.Context, name, method, path, note string, args []string) int {
	cmd := e.newAdminCommand(name)
	c, code, ok := cmd.connect(args)
	if !ok {
		return code
	}
	var st server.CAStatus
	if err := c.do(ctx, method, path, nil, &st); err != nil {
		return e.fail(err)
	}
	if cmd.json() {
		return e.printJSON(st)
	}
	printCAStatus(e, st)
	if note != "" {
		fmt.Fprintln(e.Stdout, note)
	}
	return ExitOK
}

// caStepCmd is one of the operator's steps on an authority: prepare,
// activate, taint, revoke (docs/ca.md "Compromised key").
type caStepCmd struct {
	name, path, usage string
	// idArg: 0 no ID, 1 an optional ID, 2 a required ID.
	idArg int
	// kindRequired: --kind must be given (prepare, activate).
	kindRequired bool
	note         string
}

var caSteps = map[string]caStepCmd{
	"prepare": {name: "prepare", path: server.PathAdminCAPrepare, usage: "--kind x509|jwt", kindRequired: true,
		note: "\nThe new authority is in the trust bundle now and signs after the publication delay, or at once with `moatless ca activate`."},
	"activate": {name: "activate", path: server.PathAdminCAActivate, usage: "--kind x509|jwt [ID]", idArg: 1, kindRequired: true,
		note: "\nThe authority signs from now on; the one it replaces is retired (still trusted until its NotAfter, or until you taint and revoke it).\n" +
			"Activated before its publication delay: an agent or federated peer that has not yet received the bundle with it refuses\n" +
			"the SVIDs it signs until the bundle reaches it (connected agents get it within seconds)."},
	"taint": {name: "taint", path: server.PathAdminCATaint, usage: "[--kind x509|jwt] ID", idArg: 2,
		note: "\nThe bundle now marks this authority tainted: agents re-issue every SVID whose chain contains it and drop JWT-SVIDs it signed.\n" +
			"It is still trusted until you revoke it (`moatless ca revoke ID`), once agents have replaced what it signed."},
	"revoke": {name: "revoke", path: server.PathAdminCARevoke, usage: "[--kind x509|jwt] ID", idArg: 2,
		note: "\nThe authority is out of the trust bundle and bundle.pem, and nothing it signed is accepted any more:\n" +
			"connections authenticated with such an SVID are refused from their next request, and agents still holding one must attest again."},
}

func runCAPrepare(ctx context.Context, e *Env, args []string) int {
	return e.caStep(ctx, caSteps["prepare"], args)
}
func runCAActivate(ctx context.Context, e *Env, args []string) int {
	return e.caStep(ctx, caSteps["activate"], args)
}
func runCATaint(ctx context.Context, e *Env, args []string) int {
	return e.caStep(ctx, caSteps["taint"], args)
}
func runCARevoke(ctx context.Context, e *Env, args []string) int {
	return e.caStep(ctx, caSteps["revoke"], args)
}

// caStep runs one step: flags may come before or after the ID; the kind
// and the ID are checked here before any credential is read, and again by
// the server.
func (e *Env) caStep(ctx context.Context, st caStepCmd, args []string) int {
	cmd := e.newAdminCommand("ca " + st.name)
	fs := cmd.fs
	kind := fs.String("kind", "", "authority `kind`: x509 or jwt")
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), "Usage: moatless ca %s %s\n", st.name, st.usage)
		fs.PrintDefaults()
	}
	flagArgs, pos := splitCAStepArgs(fs, args)
	if code, ok := e.parseFlagSet(fs, flagArgs); !ok {
		return code
	}
	usage := func(format string, a ...any) int {
		return e.errorf(ExitUsage, "ca %s: %s (usage: moatless ca %s %s)", st.name, fmt.Sprintf(format, a...), st.name, st.usage)
	}
	maxArgs := map[int]int{0: 0, 1: 1, 2: 1}[st.idArg]
	switch {
	case len(pos) > maxArgs:
		return usage("unexpected argument %q", pos[maxArgs])
	case st.idArg == 2 && len(pos) == 0:
		return usage("the authority ID is required (see `moatless ca show`)")
	}
	switch *kind {
	case "x509", "jwt":
	case "":
		if st.kindRequired {
			return usage("--kind is required")
		}
	default:
		return usage("--kind must be x509 or jwt, not %q", *kind)
	}
	req := server.CAStepRequest{Kind: *kind}
	if len(pos) == 1 {
		req.ID = pos[0]
		if err := checkAuthorityID(req.ID, *kind); err != nil {
			return usage("%v", err)
		}
	}
	c, code, ok := cmd.client()
	if !ok {
		return code
	}
	var resp server.CAStepResponse
	if err := c.do(ctx, "POST", st.path, req, &resp); err != nil {
		return e.fail(err)
	}
	if cmd.json() {
		return e.printJSON(resp)
	}
	a := resp.Authority
	fmt.Fprintf(e.Stdout, "%s authority %s is now %s.\n\n", a.Kind, a.ID, a.State)
	printCAStatus(e, resp.CAStatus)
	fmt.Fprintln(e.Stdout, st.note)
	return ExitOK
}

// splitCAStepArgs separates flags (with their values) from positional
// arguments anywhere on the command line. A JWT key ID may begin with "-"
// (it is base64url): an argument that is a whole authority ID is
// positional, unless it is the value of the flag before it (--token).
// After "--" everything is positional.
func splitCAStepArgs(fs *flag.FlagSet, args []string) (flags, pos []string) {
	for i := 0; i < len(args); i++ {
		a := args[i]
		_, idErr := ca.IDKind(a)
		switch {
		case a == "--":
			return flags, append(pos, args[i+1:]...)
		case !strings.HasPrefix(a, "-") || a == "-" || idErr == nil:
			pos = append(pos, a)
		default:
			flags = append(flags, a)
			name := strings.TrimLeft(a, "-")
			if f := fs.Lookup(name); f != nil && !strings.Contains(name, "=") && !isBoolFlag(f) && i+1 < len(args) {
				i++
				flags = append(flags, args[i])
			}
		}
	}
	return flags, pos
}

func isBoolFlag(f *flag.Flag) bool {
	b, ok := f.Value.(interface{ IsBoolFlag() bool })
	return ok && b.IsBoolFlag()
}

// checkAuthorityID checks the form of an authority ID (ca.IDKind), and
// that it names an authority of kind when kind is given.
func checkAuthorityID(id, kind string) error {
	k, err := ca.IDKind(id)
	switch {
	case err != nil:
		return errors.New(strings.TrimPrefix(err.Error(), ca.ErrInvalidRequest.Error()+": "))
	case kind != "" && string(k) != kind:
		return fmt.Errorf("%s is a %s authority ID, but --kind is %s", id, k, kind)
	}
	return nil
}

func runCABundle(ctx context.Context, e *Env, args []string) int {
	cmd := e.newAdminCommand("ca bundle")
	c, code, ok := cmd.connect(args)
	if !ok {
		return code
	}
	if cmd.json() {
		var b wire.Bundle
		if err := c.do(ctx, "GET", server.PathAdminBundle, nil, &b); err != nil {
			return e.fail(err)
		}
		return e.printJSON(b)
	}
	var st server.CAStatus
	if err := c.do(ctx, "GET", server.PathAdminCA, nil, &st); err != nil {
		return e.fail(err)
	}
	fmt.Fprint(e.Stdout, st.BundlePEM)
	return ExitOK
}

func runCAIssueAdmin(ctx context.Context, e *Env, args []string) int {
	cmd := e.newAdminCommand("ca issue-admin")
	fs := cmd.fs
	id := fs.String("spiffe-id", "", "admin SPIFFE `ID`, one of the server's admin IDs (default spiffe://TD/moatless/admin)")
	out := fs.String("out", "", "`directory` to write admin-cert.pem, admin-key.pem (0600) and bundle.pem into (required)")
	ttl := fs.Duration("ttl", 0, "certificate lifetime (default 24h)")
	fs.Usage = func() {
		fmt.Fprintln(fs.Output(), "Usage: moatless ca issue-admin --out DIR [--spiffe-id ID] [--ttl D]")
		fmt.Fprintln(fs.Output(), "\nThe key is generated here and never leaves this machine; the server signs a CSR.")
		fmt.Fprintln(fs.Output(), "Then: export MOATLESS_CLIENT_CERT=DIR/admin-cert.pem MOATLESS_CLIENT_KEY=DIR/admin-key.pem")
		fs.PrintDefaults()
	}
	if code, ok := cmd.parse(args); !ok {
		return code
	}
	if *out == "" {
		return e.errorf(ExitUsage, "ca issue-admin: --out is required")
	}
	c, code, ok := cmd.client()
	if !ok {
		return code
	}
	if *id == "" {
		var st server.CAStatus
		if err := c.do(ctx, "GET", server.PathAdminCA, nil, &st); err != nil {
			return e.fail(err)
		}
		*id = "spiffe://" + st.TrustDomain + "/moatless/admin"
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return e.errorf(ExitFailure, "ca issue-admin: generate key: %v", err)
	}
	csr, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{}, key)
	if err != nil {
		return e.errorf(ExitFailure, "ca issue-admin: CSR: %v", err)
	}
	var resp server.AdminCertResponse
	if err := c.do(ctx, "POST", server.PathAdminCerts, server.AdminCertRequest{SPIFFEID: *id, CSR: csr, TTL: wire.Duration(*ttl)}, &resp); err != nil {
		return e.fail(err)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return e.errorf(ExitFailure, "ca issue-admin: %v", err)
	}
	var chain []byte
	for _, der := range resp.SVID.CertChain {
		chain = append(chain, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})...)
	}
	if err := os.MkdirAll(*out, 0o700); err != nil {
		return e.errorf(ExitFailure, "ca issue-admin: %v", err)
	}
	files := []struct {
		name string
		b    []byte
		mode os.FileMode
	}{
		{"admin-key.pem", pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}), 0o600},
		{"admin-cert.pem", chain, 0o644},
		{"bundle.pem", []byte(resp.BundlePEM), 0o644},
	}
	for _, f := range files {
		// A new file with its mode set before the key is written, renamed
		// over whatever is there: never an existing file's looser mode,
		// never through a link planted at that name.
		if err := writeAtomic(filepath.Join(*out, f.name), f.b, f.mode); err != nil {
			return e.errorf(ExitFailure, "ca issue-admin: %v", err)
		}
	}
	if cmd.json() {
		return e.printJSON(map[string]any{"spiffe_id": resp.SVID.SPIFFEID, "serial": resp.SVID.Serial, "expires_at": resp.SVID.ExpiresAt,
			"cert": filepath.Join(*out, "admin-cert.pem"), "key": filepath.Join(*out, "admin-key.pem"), "bundle": filepath.Join(*out, "bundle.pem")})
	}
	fmt.Fprintf(e.Stdout, "wrote %s (serial %s, expires %s)\n", filepath.Join(*out, "admin-cert.pem"), resp.SVID.Serial, resp.SVID.ExpiresAt.Local().Format(time.RFC3339))
	fmt.Fprintf(e.Stdout, "use it with:\n  export MOATLESS_CLIENT_CERT=%s MOATLESS_CLIENT_KEY=%s\n",
		filepath.Join(*out, "admin-cert.pem"), filepath.Join(*out, "admin-key.pem"))
	return ExitOK
}
