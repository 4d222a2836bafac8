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
	rows := revocationRows(out)
	if cmd.json() {
		return e.printList(rows, 0)
	}
	tw := newTable(e.Stdout)
	fmt.Fprintln(tw, "KIND\tSUBJECT\tSPIFFE ID\tREVOKED AT\tUNTIL\tREVOKED BY\tREASON")
	for _, r := range rows {
		until := "-"
		if r.Until != nil {
			until = r.Until.Local().Format(time.RFC3339)
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\n", r.Kind, r.Subject, r.SPIFFEID, r.RevokedAt.Local().Format(time.RFC3339), until, r.RevokedBy, r.Reason)
	}
	tw.Flush()
	return ExitOK
}

// revocationRow is one row of "revoke list", in text and in JSON alike: a
// revoked SPIFFE ID (kind spiffe-id, revoked until lifted) or a revoked
// certificate (kind serial, kept until it expires).
type revocationRow struct {
	Kind      string     `json:"kind"`
	Subject   string     `json:"subject"`
	SPIFFEID  string     `json:"spiffe_id"`
	RevokedAt time.Time  `json:"revoked_at"`
	Until     *time.Time `json:"until,omitempty"`
	RevokedBy string     `json:"revoked_by"`
	Reason    string     `json:"reason,omitempty"`
}

func revocationRows(l store.RevocationList) []revocationRow {
	rows := make([]revocationRow, 0, len(l.IDs)+len(l.Serials))
	for _, r := range l.IDs {
		rows = append(rows, revocationRow{Kind: "spiffe-id", Subject: r.SPIFFEID, SPIFFEID: r.SPIFFEID, RevokedAt: r.RevokedAt.UTC(), RevokedBy: r.RevokedBy, Reason: r.Reason})
	}
	for _, r := range l.Serials {
		until := r.ExpiresAt.UTC()
		rows = append(rows, revocationRow{Kind: "serial", Subject: r.Serial, SPIFFEID: r.SPIFFEID, RevokedAt: r.RevokedAt.UTC(), Until: &until, RevokedBy: r.RevokedBy, Reason: r.Reason})
	}
	return rows
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
