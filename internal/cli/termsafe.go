package cli

import (
	"fmt"
	"io"
	"strings"
	"unicode"
	"unicode/utf8"
)

// Text that reaches an admin's terminal may have been chosen by anyone:
// an audit record holds the path of a refused anonymous call, a finding
// the path of a request a sidecar saw. A terminal acts on control
// characters (ESC starts sequences that rewrite the screen, set the
// window title or write the clipboard, CR overwrites the line, the 8-bit
// CSI does what ESC [ does, bidi controls reorder what is shown), so text
// tables show them as escapes instead: printable for one field, termSafe
// for a whole table.

// printable returns s with every character that is not printable (Go's
// unicode.IsPrint, plus the space) written as a Go escape: \a \b \f \n \r
// \t \v, \xNN for other ASCII controls and bytes that are not UTF-8,
// \uNNNN or \UNNNNNNNN for the rest; a backslash is doubled so the
// escapes cannot be forged. Characters in keep pass unchanged.
func printable(s, keep string) string {
	i := strings.IndexFunc(s, func(r rune) bool { return r == '\\' || r == utf8.RuneError || !unicode.IsPrint(r) })
	if i < 0 {
		return s
	}
	var b strings.Builder
	b.Grow(len(s) + 8)
	b.WriteString(s[:i])
	for s = s[i:]; s != ""; {
		r, n := utf8.DecodeRuneInString(s)
		switch {
		case r == utf8.RuneError && n == 1:
			fmt.Fprintf(&b, `\x%02x`, s[0])
		case strings.ContainsRune(keep, r):
			b.WriteString(s[:n])
		case r == '\\':
			b.WriteString(`\\`)
		case unicode.IsPrint(r):
			b.WriteString(s[:n])
		default:
			switch r {
			case '\a':
				b.WriteString(`\a`)
			case '\b':
				b.WriteString(`\b`)
			case '\f':
				b.WriteString(`\f`)
			case '\n':
				b.WriteString(`\n`)
			case '\r':
				b.WriteString(`\r`)
			case '\t':
				b.WriteString(`\t`)
			case '\v':
				b.WriteString(`\v`)
			default:
				switch {
				case r < utf8.RuneSelf:
					fmt.Fprintf(&b, `\x%02x`, r)
				case r <= 0xffff:
					fmt.Fprintf(&b, `\u%04x`, r)
				default:
					fmt.Fprintf(&b, `\U%08x`, r)
				}
			}
		}
		s = s[n:]
	}
	return b.String()
}

// termSafe writes to w what it is given, through printable keeping tab
// and newline (the table's own structure) and the backslash (a field
// printable escaped already must not be escaped twice; a backslash alone
// makes a terminal do nothing). It sits under a tabwriter,
// which hands over whole cells and padding, so no character is split
// between two writes.
type termSafe struct{ w io.Writer }

func (t termSafe) Write(p []byte) (int, error) {
	if _, err := io.WriteString(t.w, printable(string(p), "\t\n\\")); err != nil {
		return 0, err
	}
	return len(p), nil
}
