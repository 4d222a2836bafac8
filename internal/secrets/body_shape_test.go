package secrets

import (
	"encoding/json"
	"strings"
	"testing"

	"github.com/moatless/moatless/internal/store"
	"github.com/moatless/moatless/internal/store/storetest"
)

// TestDocumentShapeIsBounded: a KV version's data and a fieldcrypt
// document are decoded whole into map[string]any, where a 2 MiB body of
// a million tiny values cost over 100 MB (BenchmarkBigBody); they are
// refused beyond MaxDataValues values or MaxDataDepth levels, and change
// nothing. Both were accepted.
func TestDocumentShapeIsBounded(t *testing.T) {
	storetest.Each(t, func(t *testing.T, db *store.DB) {
		ts := newTestService(t, db)
		ts.must("POST", "transit/keys/k", testAdminToken, nil)
		values := func(n int) string { return `{"a":[` + strings.Repeat("1,", n-3) + `1]}` } // n values: the object, the array, n-2 numbers
		nested := func(d int) string { return strings.Repeat(`{"a":`, d) + "1" + strings.Repeat("}", d) }
		for _, tc := range []struct {
			name, doc string
			status    int
		}{
			{"values_at_bound", values(MaxDataValues), 200},
			{"values_over_bound", values(MaxDataValues + 1), 400},
			{"depth_at_bound", nested(MaxDataDepth), 200},
			{"depth_over_bound", nested(MaxDataDepth + 1), 400},
			{"commas_in_strings_do_not_count", `{"a":"` + strings.Repeat(`,[{\"`, MaxDataValues) + `"}`, 200},
		} {
			t.Run(tc.name, func(t *testing.T) {
				path := "secret/data/shape/" + tc.name
				st, out := ts.call("POST", path, testAdminToken, `{"data":`+tc.doc+`}`)
				if st != tc.status {
					t.Errorf("kv write: %d %v, want %d", st, out, tc.status)
				}
				if st, _ := ts.call("GET", path, testAdminToken, nil); (st == 200) != (tc.status == 200) {
					t.Errorf("kv read after the write: %d", st)
				}
				st, out = ts.call("POST", "fieldcrypt/encrypt/k", testAdminToken, `{"fields":["a"],"document":`+tc.doc+`}`)
				if st != tc.status {
					t.Errorf("fieldcrypt: %d %v, want %d", st, out, tc.status)
				}
			})
		}
	})
}

// FuzzJSONShape compares checkJSONShape's single pass with a count by
// encoding/json's tokenizer on valid JSON.
func FuzzJSONShape(f *testing.F) {
	for _, s := range []string{`{}`, `{"a":[1,2,{"b":"c,]"}]}`, `[[[]]]`, `"\\\""`, `{"a":"\u0022,"}`, `[1,[2,[3]],4]`} {
		f.Add(s)
	}
	// At the bound, and one over it, both ways of counting.
	for _, n := range []int{MaxDataValues - 1, MaxDataValues} {
		f.Add("[" + strings.Repeat("0,", n-1) + "0]")
		f.Add("[" + strings.Repeat("[],", n/2-1) + "[]]")
	}
	f.Fuzz(func(t *testing.T, s string) {
		if !json.Valid([]byte(s)) {
			return
		}
		dec := json.NewDecoder(strings.NewReader(s))
		depth, maxDepth, values := 0, 0, 0
		for {
			tok, err := dec.Token()
			if err != nil {
				break
			}
			switch tok {
			case json.Delim('{'), json.Delim('['):
				depth++
				maxDepth = max(maxDepth, depth)
				values++
			case json.Delim('}'), json.Delim(']'):
				depth--
			default:
				values++
			}
		}
		// checkJSONShape counts 1 + containers + separators: at least
		// the values (keys not counted), at most twice the tokens.
		err := checkJSONShape("x", []byte(s))
		if maxDepth > MaxDataDepth && err == nil {
			t.Fatalf("%q: depth %d accepted", s, maxDepth)
		}
		if maxDepth <= MaxDataDepth && 2*values <= MaxDataValues && err != nil {
			t.Fatalf("%q: depth %d, %d values refused: %v", s, maxDepth, values, err)
		}
		// The direction the bound is for: what the decoder allocates (a
		// value per container and scalar, keys not counted) is never
		// over MaxDataValues once accepted.
		if err == nil {
			if n := decodedValues(s); n > MaxDataValues {
				t.Fatalf("%d decoded values accepted", n)
			}
		}
	})
}

// decodedValues counts what decoding s into an any allocates: one per
// container and scalar (member names not counted).
func decodedValues(s string) int {
	var v any
	if json.Unmarshal([]byte(s), &v) != nil {
		return 0
	}
	var count func(any) int
	count = func(v any) int {
		n := 1
		switch x := v.(type) {
		case []any:
			for _, e := range x {
				n += count(e)
			}
		case map[string]any:
			for _, e := range x {
				n += count(e)
			}
		}
		return n
	}
	return count(v)
}
