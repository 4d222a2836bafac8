package secrets

import (
	"encoding/json"
	"errors"
	"io"
	"net/http/httptest"
	"reflect"
	"strings"
	"testing"

	"github.com/moatless/moatless/internal/store"
	"github.com/moatless/moatless/internal/store/storetest"
)

// TestKVKeepsNumbersAsWritten: a KV version's data is read back with its
// numbers as written, as Vault (whose decoder uses json.Number) does. The
// data was decoded into float64: a 20-digit number (an account or card
// number sent unquoted) came back rounded, 12345678901234567891 as
// 12345678901234567000, and 1e400 was refused as "not a JSON object".
// A patch keeps the numbers it does not touch. This fails on the parent.
func TestKVKeepsNumbersAsWritten(t *testing.T) {
	storetest.Each(t, func(t *testing.T, db *store.DB) {
		ts := newTestService(t, db)
		raw := func(method, path, body string) string {
			t.Helper()
			r := httptest.NewRequest(method, "/v1/"+path, strings.NewReader(body))
			r.RemoteAddr = "127.0.0.1:40000"
			r.Header.Set("X-Vault-Token", testAdminToken)
			if method == "PATCH" {
				r.Header.Set("Content-Type", "application/merge-patch+json")
			}
			w := httptest.NewRecorder()
			ts.svc.ServeHTTP(w, r)
			if w.Code/100 != 2 {
				t.Fatalf("%s %s %s: %d %s", method, path, body, w.Code, w.Body)
			}
			return w.Body.String()
		}
		nums := []string{`12345678901234567891`, `1e400`, `0.1000000000000000055511151231257827`, `-0`, `9007199254740993`}
		body := `{"data":{"a":` + nums[0] + `,"b":` + nums[1] + `,"c":` + nums[2] + `,"d":` + nums[3] + `,"e":[` + nums[4] + `]}}`
		raw("POST", "secret/data/numbers", body)
		got := raw("GET", "secret/data/numbers", "")
		for _, n := range nums {
			if !strings.Contains(got, n) {
				t.Errorf("wrote %s, read back %s", n, got)
			}
		}
		raw("PATCH", "secret/data/numbers", `{"data":{"f":1}}`)
		got = raw("GET", "secret/data/numbers", "")
		for _, n := range nums {
			if !strings.Contains(got, n) {
				t.Errorf("after a patch of another key, %s reads %s", n, got)
			}
		}
	})
}

// FuzzDecodeNumbers: decodeNumbers gives what a json.Decoder with
// UseNumber gives (the values, or a refusal) whichever of its two ways it
// takes: json.Unmarshal when the text holds no number.
func FuzzDecodeNumbers(f *testing.F) {
	for _, s := range []string{`{"a":"b"}`, `{"a":1}`, `{"a":"1"}`, `{"a":"\"1"}`, `{"a":"\\"}`, `{"a":[true,null,false]}`,
		`{"a":-0}`, `{"a":"x"} {}`, `{"a":"x"`, `null`, ` {} `, `[]`, `"s"`, `{"a\u0031":{"b":[]}}`, "{\"\xff\":\"\xfe\"}", `{"a":tru}`} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		var got, want map[string]any
		err := decodeNumbers([]byte(s), &got)
		dec := json.NewDecoder(strings.NewReader(s))
		dec.UseNumber()
		werr := dec.Decode(&want)
		if werr == nil {
			if _, terr := dec.Token(); !errors.Is(terr, io.EOF) {
				werr = errors.New("data after the value")
			}
		}
		if (err == nil) != (werr == nil) {
			t.Fatalf("%q: decodeNumbers err %v, the decoder's %v", s, err, werr)
		}
		if err == nil && !reflect.DeepEqual(got, want) {
			t.Fatalf("%q: decodeNumbers %#v, the decoder %#v", s, got, want)
		}
	})
}
