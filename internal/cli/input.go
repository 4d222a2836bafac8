package cli

import (
	"fmt"
	"io"
	"os"
	"strings"
)

// tokenLimit bounds a token or secret read from a file or standard input:
// far above any real one, far below what would hurt to hold in memory.
const tokenLimit = 64 << 10

// readTokenFile reads a token kept in a file (the admin token, a join
// token): its content without surrounding white space.
func readTokenFile(path string) (string, error) {
	b, err := readSmallFile(path, tokenLimit)
	if err != nil {
		return "", err
	}
	return strings.TrimSpace(string(b)), nil
}

// readInput reads a small input named on the command line: a file, or
// "-" for standard input. More than limit bytes is an error from either:
// input cut short would send another token or password than the one given.
func (e *Env) readInput(path string, limit int64) ([]byte, error) {
	if path == "-" {
		return readLimited(e.Stdin, "standard input", limit)
	}
	return readSmallFile(path, limit)
}

// readSmallFile reads the file at path; more than limit bytes is an
// error that names it.
func readSmallFile(path string, limit int64) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	return readLimited(f, path, limit)
}

// readLimited reads r to the end; more than limit bytes is an error that
// names it.
func readLimited(r io.Reader, name string, limit int64) ([]byte, error) {
	b, err := io.ReadAll(io.LimitReader(r, limit+1))
	if err != nil {
		return nil, err
	}
	if int64(len(b)) > limit {
		return nil, fmt.Errorf("%s is larger than %d bytes", name, limit)
	}
	return b, nil
}
