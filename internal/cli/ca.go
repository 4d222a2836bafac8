package cli

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/moatless/moatless/internal/server"
	"github.com/moatless/moatless/internal/wire"
)

// runCA is "moatless ca show|rotate|bundle|issue-admin".
func runCA(ctx context.Context, e *Env, args []string) int {
	return e.subcommand(ctx, "ca", []command{
		{"show", "show the CA's authorities and the trust bundle sequence", runCAShow},
		{"rotate", "prepare new X.509 and JWT authorities now (activated after the publication delay)", runCARotate},
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
