package cli

import "github.com/moatless/moatless/internal/cli/dataplane"

// tokenLimit bounds a token or secret read from a file or standard input.
const tokenLimit = dataplane.TokenLimit

// readTokenFile reads a token kept in a file: its content without
// surrounding white space.
func readTokenFile(path string) (string, error) { return dataplane.ReadTokenFile(path) }

// readInput reads a small input named on the command line: a file, or
// "-" for standard input. More than limit bytes is an error from either:
// input cut short would send another token or password than the one given.
func (e *Env) readInput(path string, limit int64) ([]byte, error) {
	if path == "-" {
		return dataplane.ReadLimited(e.Stdin, "standard input", limit)
	}
	return readSmallFile(path, limit)
}

// readSmallFile reads the file at path; more than limit bytes is an
// error that names it.
func readSmallFile(path string, limit int64) ([]byte, error) {
	return dataplane.ReadSmallFile(path, limit)
}
