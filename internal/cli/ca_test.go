package cli

import (
	"encoding/json"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/moatless/moatless/internal/server"
)

// TestCACompromisedKeyCommands runs the emergency procedure of docs/ca.md
// with the CLI against a real server, and every bad input: each is refused
// with the documented exit code and a message saying what is wrong, and
// leaves the CA as it was.
func TestCACompromisedKeyCommands(t *testing.T) {
	env, dir := startAdminServer(t)
	status := func() server.CAStatus {
		t.Helper()
		code, out, errOut := runCLI(t, env, "ca", "show", "-o", "json")
		var st server.CAStatus
		if code != ExitOK || json.Unmarshal([]byte(out), &st) != nil {
			t.Fatalf("ca show: %d %s %s", code, out, errOut)
		}
		return st
	}
	active := func(kind string) string {
		for _, a := range status().Authorities {
			if string(a.Kind) == kind && a.State == "active" {
				return a.ID
			}
		}
		t.Fatalf("no active %s authority", kind)
		return ""
	}
	oldX, oldJ := active("x509"), active("jwt")
	unknownX := strings.Repeat("0", 40)
	dashJWT := "-" + strings.Repeat("A", 42)

	for _, tc := range []struct {
		name string
		args []string
		code int
		want string
	}{
		// Bad input: refused before anything is sent.
		{"prepare_no_kind", []string{"ca", "prepare"}, ExitUsage, "--kind is required"},
		{"prepare_bad_kind", []string{"ca", "prepare", "--kind", "X509"}, ExitUsage, `--kind must be x509 or jwt, not "X509"`},
		{"prepare_positional", []string{"ca", "prepare", "--kind", "jwt", oldJ}, ExitUsage, "unexpected argument"},
		{"taint_no_id", []string{"ca", "taint"}, ExitUsage, "the authority ID is required"},
		{"taint_two_ids", []string{"ca", "taint", oldX, oldJ}, ExitUsage, "unexpected argument"},
		{"taint_bad_id", []string{"ca", "taint", "../x"}, ExitUsage, "is not an authority ID"},
		{"taint_kind_mismatch", []string{"ca", "taint", oldX, "--kind", "jwt"}, ExitUsage, "is a x509 authority ID, but --kind is jwt"},
		{"taint_unknown_flag", []string{"ca", "taint", "--now", oldX}, ExitUsage, "flag provided but not defined"},
		// Refused by the server, on the merits.
		{"activate_nothing_prepared", []string{"ca", "activate", "--kind", "x509"}, ExitUsage, "no x509 authority is prepared"},
		{"taint_active", []string{"ca", "taint", oldX}, ExitUsage, "is active and signs"},
		{"taint_unknown", []string{"ca", "taint", unknownX}, ExitNotFound, "no authority has ID"},
		// A JWT key ID may begin with "-": it is the ID, not a flag.
		{"taint_unknown_jwt_dash", []string{"ca", "taint", dashJWT}, ExitNotFound, "no authority has ID"},
		{"revoke_unknown_jwt_dash_kind_after", []string{"ca", "revoke", dashJWT, "--kind", "jwt"}, ExitNotFound, "no jwt authority has ID"},
		{"revoke_active", []string{"ca", "revoke", "--kind", "jwt", oldJ}, ExitUsage, "only a tainted authority can be revoked"},
		{"wrong_token", []string{"ca", "taint", oldX, "--token", "nope"}, ExitDenied, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			before := status()
			code, out, errOut := runCLI(t, env, tc.args...)
			if code != tc.code || !strings.Contains(errOut, tc.want) {
				t.Fatalf("exit %d, stdout %q, stderr %q; want exit %d, stderr containing %q", code, out, errOut, tc.code, tc.want)
			}
			after := status()
			b1, _ := json.Marshal(before)
			b2, _ := json.Marshal(after)
			if string(b1) != string(b2) {
				t.Error("a refused command changed the CA")
			}
		})
	}

	// The procedure itself.
	for _, step := range []struct {
		args []string
		want []string
	}{
		{[]string{"ca", "prepare", "--kind", "x509"}, []string{"is now prepared", "signs after the publication delay"}},
		{[]string{"ca", "activate", "--kind", "x509"}, []string{"is now active", "refuses\nthe SVIDs it signs until the bundle reaches it"}},
		{[]string{"ca", "prepare", "--kind", "jwt"}, []string{"is now prepared"}},
		{[]string{"ca", "activate", "--kind", "jwt"}, []string{"is now active"}},
		{[]string{"ca", "taint", oldX}, []string{"x509 authority " + oldX + " is now tainted", "agents re-issue every SVID"}},
		{[]string{"ca", "taint", "--kind", "jwt", oldJ}, []string{"jwt authority " + oldJ + " is now tainted"}},
		{[]string{"ca", "revoke", oldX}, []string{"is now revoked", "out of the trust bundle"}},
		{[]string{"ca", "revoke", oldJ, "-o", "json"}, []string{`"state": "revoked"`}},
		{[]string{"ca", "show"}, []string{oldX, "revoked"}},
	} {
		code, out, errOut := runCLI(t, env, step.args...)
		for _, w := range step.want {
			if code != ExitOK || !strings.Contains(out, w) {
				t.Fatalf("%v: exit %d, stdout %q, stderr %q; want %q", step.args, code, out, errOut, w)
			}
		}
	}
	pemFile, err := os.ReadFile(filepath.Join(dir, server.BundleFile))
	if err != nil {
		t.Fatal(err)
	}
	if st := status(); strings.Count(string(pemFile), "BEGIN CERTIFICATE") != 1 || st.BundlePEM != string(pemFile) {
		t.Errorf("bundle.pem after the revoke holds %d certificates", strings.Count(string(pemFile), "BEGIN CERTIFICATE"))
	}
}

// Flags and the ID may come in any order; an ID that begins with "-" (a
// JWT key ID is base64url) is the ID, unless it is the value of a flag.
func TestSplitCAStepArgs(t *testing.T) {
	dash := "-8coqRp5seuWqRqOVNvqVaO6vARGL_H-ByDylEjciwQ"
	x := strings.Repeat("ab", 20)
	for _, tc := range []struct {
		name       string
		args       []string
		flags, pos []string
	}{
		{"id_only", []string{x}, nil, []string{x}},
		{"dash_id", []string{dash}, nil, []string{dash}},
		{"kind_then_dash_id", []string{"--kind", "jwt", dash}, []string{"--kind", "jwt"}, []string{dash}},
		{"dash_id_then_kind", []string{dash, "-kind=jwt", "-o", "json"}, []string{"-kind=jwt", "-o", "json"}, []string{dash}},
		{"token_value_like_an_id", []string{"--token", dash, x}, []string{"--token", dash}, []string{x}},
		{"double_dash", []string{"--", "-o"}, nil, []string{"-o"}},
		{"help", []string{"-h"}, []string{"-h"}, nil},
		{"unknown_flag", []string{"--now", x}, []string{"--now"}, []string{x}},
		{"two_ids", []string{x, dash}, nil, []string{x, dash}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cmd := (&Env{Getenv: func(string) string { return "" }}).newAdminCommand("ca taint")
			cmd.fs.String("kind", "", "")
			flags, pos := splitCAStepArgs(cmd.fs, tc.args)
			if !slices.Equal(flags, tc.flags) || !slices.Equal(pos, tc.pos) {
				t.Errorf("flags %q, positional %q; want %q, %q", flags, pos, tc.flags, tc.pos)
			}
		})
	}
}
