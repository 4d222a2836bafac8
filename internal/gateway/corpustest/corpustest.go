// Package corpustest reads the gateway's attack and benign request
// corpora (internal/gateway/testdata/corpus), for the tests that replay
// them through a gateway or a WAF engine.
package corpustest

import (
	"bufio"
	"os"
	"strings"
	"testing"
)

// Entry is one request of a corpus.
type Entry struct {
	// Kind is the attack's class (sqli, xss, ...), "benign" for the
	// benign corpus.
	Kind, Method, Target, ContentType, Body string
}

// Read reads a corpus file: tab-separated lines (method, target, content
// type, body; an attack line starts with its kind), '#' comments.
func Read(t testing.TB, path string, attacks bool) []Entry {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var out []Entry
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		p := strings.Split(line, "\t")
		if !attacks {
			p = append([]string{"benign"}, p...)
		}
		for len(p) < 5 {
			p = append(p, "")
		}
		out = append(out, Entry{p[0], p[1], p[2], p[3], p[4]})
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	return out
}
