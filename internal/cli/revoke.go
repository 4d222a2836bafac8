package cli

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"time"

	"github.com/moatless/moatless/internal/server"
	"github.com/moatless/moatless/internal/store"
)

// runRevoke is "moatless revoke --spiffe-id ID | --serial S", plus
// "revoke list" and "revoke lift --spiffe-id ID".
func runRevoke(ctx context.Context, e *Env, args []string) int {
	if len(args) > 0 {
		switch args[0] {
		case "list":
			return runRevokeList(ctx, e, args[1:])
		case "lift":
			return runRevokeLift(ctx, e, args[1:])
		}
	}
	cmd := e.newAdminCommand("revoke")
	fs := cmd.fs
	id := fs.String("spiffe-id", "", "revoke this SPIFFE `ID`: no SVID for it is served or accepted any more")
	serial := fs.String("serial", "", "revoke one certificate by `serial` (hex, as the server reports it)")
	reason := fs.String("reason", "", "why (goes to the audit log)")
	force := fs.Bool("force", false, "revoke a SPIFFE ID that no entry, node or SVID has yet (ahead of time); without it such an ID is refused")
	fs.Usage = func() {
		fmt.Fprintln(fs.Output(), "Usage: moatless revoke --spiffe-id ID [--force] | --serial SERIAL [--reason TEXT] [-o json]")
		fmt.Fprintln(fs.Output(), "       moatless revoke list [-o json]")
		fmt.Fprintln(fs.Output(), "       moatless revoke lift --spiffe-id ID")
		fmt.Fprintln(fs.Output(), "\nA revocation reaches every connected agent on its watch stream at once.")
		fs.PrintDefaults()
	}
	if code, ok := cmd.parse(args); !ok {
		return code
	}
	if (*id == "") == (*serial == "") {
		return e.errorf(ExitUsage, "revoke: give exactly one of --spiffe-id and --serial")
	}
	c, code, ok := cmd.client()
	if !ok {
		return code
	}
	var out map[string]any
	if err := c.do(ctx, "POST", server.PathAdminRevocations, server.RevokeRequest{SPIFFEID: *id, Serial: *serial, Reason: *reason, Force: *force}, &out); err != nil {
		var ae *apiError
		if *id != "" && errors.As(err, &ae) && ae.Status == http.StatusNotFound {
			// An unknown ID revokes nothing: a failure, not a lookup.
			return e.errorf(ExitFailure, "revoke: %v", err)
		}
		return e.fail(err)
	}
	if cmd.json() {
		return e.printJSON(out)
	}
	if *id != "" {
		fmt.Fprintf(e.Stdout, "revoked %s\n", *id)
	} else {
		fmt.Fprintf(e.Stdout, "revoked certificate %s of %v (until it expires at %v)\n", out["serial"], out["spiffe_id"], out["expires_at"])
	}
	return ExitOK
}

func runRevokeList(ctx context.Context, e *Env, args []string) int {
	cmd := e.newAdminCommand("revoke list")
	c, code, ok := cmd.connect(args)
	if !ok {
		return code
	}
	var out store.RevocationList
	if err := c.do(ctx, "GET", server.PathAdminRevocations, nil, &out); err != nil {
		return e.fail(err)
	}
	if cmd.json() {
		return e.printJSON(out)
	}
	tw := newTable(e.Stdout)
	fmt.Fprintln(tw, "KIND\tSUBJECT\tSPIFFE ID\tUNTIL\tREVOKED BY\tREASON")
	for _, r := range out.IDs {
		fmt.Fprintf(tw, "spiffe-id\t%s\t%s\t-\t%s\t%s\n", r.SPIFFEID, r.SPIFFEID, r.RevokedBy, r.Reason)
	}
	for _, r := range out.Serials {
		fmt.Fprintf(tw, "serial\t%s\t%s\t%s\t%s\t%s\n", r.Serial, r.SPIFFEID, r.ExpiresAt.Local().Format(time.RFC3339), r.RevokedBy, r.Reason)
	}
	tw.Flush()
	return ExitOK
}

func runRevokeLift(ctx context.Context, e *Env, args []string) int {
	cmd := e.newAdminCommand("revoke lift")
	fs := cmd.fs
	id := fs.String("spiffe-id", "", "SPIFFE `ID` whose revocation to lift (required)")
	if code, ok := cmd.parse(args); !ok {
		return code
	}
	if *id == "" {
		return e.errorf(ExitUsage, "revoke lift: --spiffe-id is required")
	}
	c, code, ok := cmd.client()
	if !ok {
		return code
	}
	if err := c.do(ctx, "DELETE", server.PathAdminRevocations+"?"+url.Values{"spiffe_id": {*id}}.Encode(), nil, nil); err != nil {
		return e.fail(err)
	}
	if cmd.json() {
		return e.printJSON(map[string]string{"lifted": *id})
	}
	fmt.Fprintf(e.Stdout, "lifted the revocation of %s\n", *id)
	return ExitOK
}
