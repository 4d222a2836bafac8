package cli

import (
	"bytes"
	"context"
	"strings"
	"testing"

	"github.com/moatless/moatless/internal/token"
)

// runCLIStdin is runCLI with stdin as standard input.
func runCLIStdin(t *testing.T, env map[string]string, stdin string, args ...string) (int, string, string) {
	t.Helper()
	var out, errb bytes.Buffer
	e := &Env{Stdin: strings.NewReader(stdin), Stdout: &out, Stderr: &errb, Getenv: func(k string) string { return env[k] }}
	code := e.main(context.Background(), args)
	return code, out.String(), errb.String()
}

// TestOversizedInputIsRefused: a token or password too large to be one is
// refused with the same error from "-" (standard input) as from a file,
// and nothing is sent. Before, standard input was cut at the limit without
// a word: "oauth token revoke --file -" then sent a different token and
// printed "revoked".
func TestOversizedInputIsRefused(t *testing.T) {
	env := startServer(t)
	bigToken := strings.Repeat("a", 64<<10+1)
	bigPassword := strings.Repeat("p", token.MaxPasswordLen+3) + "\n"
	cases := []struct {
		name  string
		stdin string
		file  string // content of the file named by @FILE in args
		args  []string
	}{
		{"token_revoke_stdin", bigToken, "", []string{"oauth", "token", "revoke", "--file", "-"}},
		{"token_revoke_file", "", bigToken, []string{"oauth", "token", "revoke", "--file", "@FILE"}},
		{"token_introspect_stdin", bigToken, "", []string{"oauth", "token", "introspect", "--file", "-"}},
		{"token_get_secret_stdin", bigToken, "", []string{"oauth", "token", "get", "--client-id", "c", "--client-secret-file", "-"}},
		{"user_create_password_stdin", bigPassword, "", []string{"oauth", "user", "create", "--name", "bob", "--password-file", "-"}},
		{"user_create_password_file", "", bigPassword, []string{"oauth", "user", "create", "--name", "bob", "--password-file", "@FILE"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			args := append([]string(nil), tc.args...)
			for i, a := range args {
				if a == "@FILE" {
					args[i] = writeFile(t, t.TempDir(), "input", tc.file)
				}
			}
			code, out, stderr := runCLIStdin(t, env, tc.stdin, args...)
			if code != ExitUsage || !strings.Contains(stderr, "is larger than") {
				t.Fatalf("exit %d, stdout %q, stderr %q; want exit %d and \"is larger than\"", code, out, stderr, ExitUsage)
			}
		})
	}
	// Nothing reached the server: bob was not created.
	if code, _, _ := runCLI(t, env, "oauth", "user", "show", "bob"); code != ExitNotFound {
		t.Fatalf("oauth user show bob: exit %d, want %d (not found)", code, ExitNotFound)
	}
}
