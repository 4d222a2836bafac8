package cli

import (
	"crypto/tls"
	"crypto/x509"
	"net/http"
	"os"
	"strings"
	"testing"
	"unicode"
	"unicode/utf8"

	"github.com/moatless/moatless/internal/server"
)

// TestAuditListIsTerminalSafe: audit records hold text that anyone could
// choose: a refused admin call is recorded with its path, sent by an
// anonymous client. "moatless audit list" prints records to an admin's
// terminal, so control characters in them (ESC starting an OSC 52
// clipboard write or erasing the line, BEL, a carriage return that
// overwrites what the row said, a tab or newline that makes a row of its
// own, the 8-bit CSI) must arrive escaped, never raw.
func TestAuditListIsTerminalSafe(t *testing.T) {
	env := startServer(t)
	pem, err := os.ReadFile(env["MOATLESS_CACERT"])
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(pem)
	c := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool, ServerName: "127.0.0.1"}}}
	const evil = "%1b]52;c;ZXZpbA==%07%1b[2K%0dok%09x%0a99%09forged%c2%9b31m%7f"
	req, err := http.NewRequest("GET", "https://"+env["MOATLESS_ADDR"]+server.PathAdminEntries+"/"+evil, nil)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Authorization", "Bearer not-the-admin-token")
	resp, err := c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusUnauthorized {
		t.Fatalf("the forged call got %d, want 401", resp.StatusCode)
	}

	out := mustCLI(t, env, "audit", "list")
	if !strings.Contains(out, "entries/") {
		t.Fatalf("the refused call is not listed:\n%s", out)
	}
	for _, bad := range []string{"\x1b", "\x07", "\r", "\x7f", "\u009b", "\n99"} {
		if strings.Contains(out, bad) {
			t.Errorf("audit list printed %q raw:\n%q", bad, out)
		}
	}
	for _, row := range strings.Split(strings.TrimSuffix(out, "\n"), "\n") {
		if strings.Contains(row, "forged") && !strings.Contains(row, "entries/") {
			t.Errorf("a path made a row of its own: %q", row)
		}
	}
	if !strings.Contains(out, `\x1b]52;c;ZXZpbA==\a\x1b[2K\rok\tx\n99\tforged\u009b31m\x7f`) {
		t.Errorf("the path is not shown escaped:\n%s", out)
	}
}

func TestPrintable(t *testing.T) {
	tests := []struct {
		name, in, keep, want string
	}{
		{"plain", "spiffe://example.org/ns/prod/sa/web", "", "spiffe://example.org/ns/prod/sa/web"},
		{"unicode_letters", "naïve café 日本", "", "naïve café 日本"},
		{"esc_and_bel", "\x1b]0;title\a", "", `\x1b]0;title\a`},
		{"cr_lf_tab", "a\rb\nc\td", "", `a\rb\nc\td`},
		{"keep_tab_newline", "a\tb\nc\rd", "\t\n", "a\tb\nc\\rd"},
		{"del", "x\x7f", "", `x\x7f`},
		{"c1_csi", "\u009b31m", "", `\u009b31m`},
		{"bidi_override", "abc\u202edef", "", `abc\u202edef`},
		{"zero_width", "a\u200bb", "", `a\u200bb`},
		{"invalid_utf8", "a\xffb\xc2", "", `a\xffb\xc2`},
		{"backslash_doubled", `C:\x1b`, "", `C:\\x1b`},
		{"backslash_kept", `a\b`, `\`, `a\b`},
		{"astral_format", "a\U000e0001b", "", `a\U000e0001b`},
		{"replacement_char_is_printable", "\ufffd", "", "\ufffd"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := printable(tt.in, tt.keep); got != tt.want {
				t.Fatalf("printable(%q, %q) = %q, want %q", tt.in, tt.keep, got, tt.want)
			}
		})
	}
}

// FuzzPrintable: whatever goes in, what comes out is valid UTF-8 with
// nothing a terminal acts on but the characters kept, and the escaped
// form of a string never equals the escaped form of another.
func FuzzPrintable(f *testing.F) {
	for _, s := range []string{"", "plain", "\x1b[2J", "a\\x1b", "\xff\xfe", "\u009b\u202e", "tab\tnl\n"} {
		f.Add(s, s+"x")
	}
	f.Fuzz(func(t *testing.T, a, b string) {
		for _, keep := range []string{"", "\t\n"} {
			out := printable(a, keep)
			if !utf8.ValidString(out) {
				t.Fatalf("printable(%q) = %q: not UTF-8", a, out)
			}
			for _, r := range out {
				if !unicode.IsPrint(r) && !strings.ContainsRune(keep, r) {
					t.Fatalf("printable(%q, %q) = %q: %U left raw", a, keep, out, r)
				}
			}
		}
		if a != b && printable(a, "") == printable(b, "") {
			t.Fatalf("%q and %q print the same: %q", a, b, printable(a, ""))
		}
	})
}
