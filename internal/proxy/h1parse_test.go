package proxy

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"net/http"
	"reflect"
	"strings"
	"testing"
	_ "unsafe" // go:linkname, for net/http's readRequest

	"golang.org/x/net/http/httpguts"
)

// h1RequestCases are request heads and what the fast path does with them.
// The refusals are the request smuggling and desync patterns of RFC 9112
// §11.2 and of the public write-ups (CL.TE, TE.CL, TE.TE obfuscations);
// each also goes through real sidecars in TestSmugglingThroughSidecars.
var h1RequestCases = []struct {
	name string
	raw  string
	want h1Verdict
}{
	{"get", "GET /a?b=c HTTP/1.1\r\nHost: orders\r\nUser-Agent: x\r\n\r\n", h1OK},
	{"post_with_length", "POST /a HTTP/1.1\r\nHost: orders\r\nContent-Length: 5\r\n\r\nhello", h1OK},
	{"repeated_field", "GET / HTTP/1.1\r\nHost: o\r\nAccept: a\r\nAccept: b\r\n\r\n", h1OK},
	{"whitespace_around_value", "GET / HTTP/1.1\r\nHost: o\r\nX-A: \t v w \t\r\n\r\n", h1OK},
	{"empty_value", "GET / HTTP/1.1\r\nHost: o\r\nX-A:\r\n\r\n", h1OK},
	{"obs_text_value", "GET / HTTP/1.1\r\nHost: o\r\nX-A: caf\xc3\xa9\r\n\r\n", h1OK},
	{"underscore_name", "GET / HTTP/1.1\r\nHost: o\r\nx_user: a\r\n\r\n", h1OK},
	{"absolute_form_same_host", "GET http://orders/a HTTP/1.1\r\nHost: orders\r\n\r\n", h1OK},
	{"asterisk", "OPTIONS * HTTP/1.1\r\nHost: o\r\n\r\n", h1OK},
	{"connection_close", "GET / HTTP/1.1\r\nHost: o\r\nConnection: keep-alive, close\r\n\r\n", h1OK},
	{"incomplete", "GET / HTTP/1.1\r\nHost: o\r\n", h1More},
	{"incomplete_line", "GET / HTTP/1.1\r\nHost: o\r", h1More},

	{"http10", "GET / HTTP/1.0\r\nHost: o\r\n\r\n", h1Handoff},
	{"chunked", "POST / HTTP/1.1\r\nHost: o\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", h1Handoff},
	{"expect", "POST / HTTP/1.1\r\nHost: o\r\nContent-Length: 1\r\nExpect: 100-continue\r\n\r\n", h1Handoff},
	{"expect_http10", "POST / HTTP/1.0\r\nHost: o\r\nContent-Length: 1\r\nExpect: 100-continue\r\n\r\n", h1Handoff},
	{"connection_names_expect_without_one", "GET / HTTP/1.1\r\nHost: o\r\nConnection: expect\r\n\r\n", h1OK},
	{"connect", "CONNECT orders:443 HTTP/1.1\r\nHost: orders:443\r\n\r\n", h1Handoff},
	{"h2_preface", "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", h1Handoff},

	{"cl_te", "POST / HTTP/1.1\r\nHost: o\r\nContent-Length: 6\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nG", h1Refuse},
	{"te_cl", "POST / HTTP/1.1\r\nHost: o\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n8\r\nSMUGGLED\r\n0\r\n\r\n", h1Refuse},
	{"te_te_two_fields", "POST / HTTP/1.1\r\nHost: o\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: x\r\n\r\n", h1Refuse},
	{"te_list", "POST / HTTP/1.1\r\nHost: o\r\nTransfer-Encoding: gzip, chunked\r\n\r\n", h1Refuse},
	{"te_xchunked", "POST / HTTP/1.1\r\nHost: o\r\nTransfer-Encoding: xchunked\r\n\r\n", h1Refuse},
	{"te_identity", "POST / HTTP/1.1\r\nHost: o\r\nTransfer-Encoding: identity\r\n\r\n", h1Refuse},
	{"te_space_before_colon", "POST / HTTP/1.1\r\nHost: o\r\nTransfer-Encoding : chunked\r\n\r\n", h1Refuse},
	{"te_tab_before_value", "POST / HTTP/1.1\r\nHost: o\r\nContent-Length: 4\r\nTransfer-Encoding:\tchunked\r\n\r\n", h1Refuse},
	{"te_obs_fold", "POST / HTTP/1.1\r\nHost: o\r\nTransfer-Encoding:\r\n chunked\r\n\r\n", h1Refuse},
	{"te_vertical_tab", "POST / HTTP/1.1\r\nHost: o\r\nTransfer-Encoding: \x0bchunked\r\n\r\n", h1Refuse},
	{"te_on_http10", "POST / HTTP/1.0\r\nHost: o\r\nTransfer-Encoding: chunked\r\n\r\n", h1Refuse},
	// What net/http takes as chunked (one field, "chunked" in any case,
	// OWS around it) is handed off as chunked; every other value net/http
	// answers 501 to is refused (checkRequestAgainstNetHTTP).
	{"te_chunked_upper_case", "POST / HTTP/1.1\r\nHost: o\r\nTransfer-Encoding: CHUNKED\r\n\r\n0\r\n\r\n", h1Handoff},
	{"te_chunked_mixed_case_name", "POST / HTTP/1.1\r\nHost: o\r\ntransfer-ENCODING: Chunked\r\n\r\n0\r\n\r\n", h1Handoff},
	{"te_chunked_ows", "POST / HTTP/1.1\r\nHost: o\r\nTransfer-Encoding: \t chunked \t\r\n\r\n0\r\n\r\n", h1Handoff},
	{"te_empty", "POST / HTTP/1.1\r\nHost: o\r\nTransfer-Encoding: \r\n\r\n", h1Refuse},
	{"te_chunked_twice_in_a_list", "POST / HTTP/1.1\r\nHost: o\r\nTransfer-Encoding: chunked, chunked\r\n\r\n", h1Refuse},
	{"te_chunked_trailing_comma", "POST / HTTP/1.1\r\nHost: o\r\nTransfer-Encoding: chunked,\r\n\r\n", h1Refuse},
	{"te_chunked_parameter", "POST / HTTP/1.1\r\nHost: o\r\nTransfer-Encoding: chunked;q=1\r\n\r\n", h1Refuse},
	{"te_chunked_quoted", "POST / HTTP/1.1\r\nHost: o\r\nTransfer-Encoding: \"chunked\"\r\n\r\n", h1Refuse},
	{"te_chunked_twice", "POST / HTTP/1.1\r\nHost: o\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n", h1Refuse},
	{"te_chunked_obs_text", "POST / HTTP/1.1\r\nHost: o\r\nTransfer-Encoding: chunked\xff\r\n\r\n", h1Refuse},
	{"te_kelvin_sign", "POST / HTTP/1.1\r\nHost: o\r\nTransfer-Encoding: chun\xe2\x84\xaaed\r\n\r\n", h1Refuse},
	// HTTP/1.2 is at least 1.1 to net/http: Host is required.
	{"http12_without_host", "GET / HTTP/1.2\r\n\r\n", h1Refuse},
	{"http12_with_host", "GET / HTTP/1.2\r\nHost: o\r\n\r\n", h1Handoff},
	{"duplicate_cl_equal", "POST / HTTP/1.1\r\nHost: o\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\nhello", h1Refuse},
	{"duplicate_cl_different", "POST / HTTP/1.1\r\nHost: o\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!", h1Refuse},
	{"comma_joined_cl", "POST / HTTP/1.1\r\nHost: o\r\nContent-Length: 5, 5\r\n\r\nhello", h1Refuse},
	{"signed_cl", "POST / HTTP/1.1\r\nHost: o\r\nContent-Length: +5\r\n\r\nhello", h1Refuse},
	{"empty_cl", "POST / HTTP/1.1\r\nHost: o\r\nContent-Length:\r\n\r\n", h1Refuse},
	{"huge_cl", "POST / HTTP/1.1\r\nHost: o\r\nContent-Length: 99999999999999999999\r\n\r\n", h1Refuse},
	{"obs_fold", "GET / HTTP/1.1\r\nHost: o\r\nX-A: a\r\n b\r\n\r\n", h1Refuse},
	{"leading_whitespace_first_field", "GET / HTTP/1.1\r\n Host: o\r\n\r\n", h1Refuse},
	{"bare_lf_line", "GET / HTTP/1.1\nHost: o\r\n\r\n", h1Refuse},
	{"bare_lf_end", "GET / HTTP/1.1\r\nHost: o\n\n", h1Refuse},
	{"bare_cr_in_value", "GET / HTTP/1.1\r\nHost: o\r\nX-A: a\rX-B: b\r\n\r\n", h1Refuse},
	{"bare_cr_in_target", "GET /a\rb HTTP/1.1\r\nHost: o\r\n\r\n", h1Refuse},
	{"space_before_colon", "GET / HTTP/1.1\r\nHost: o\r\nX-A : a\r\n\r\n", h1Refuse},
	{"nul_in_value", "GET / HTTP/1.1\r\nHost: o\r\nX-A: a\x00b\r\n\r\n", h1Refuse},
	{"nul_in_name", "GET / HTTP/1.1\r\nHost: o\r\nX\x00A: a\r\n\r\n", h1Refuse},
	{"control_in_target", "GET /a\x01 HTTP/1.1\r\nHost: o\r\n\r\n", h1Refuse},
	{"del_in_target", "GET /a\x7f HTTP/1.1\r\nHost: o\r\n\r\n", h1Refuse},
	{"no_colon", "GET / HTTP/1.1\r\nHost: o\r\nX-A\r\n\r\n", h1Refuse},
	{"empty_name", "GET / HTTP/1.1\r\nHost: o\r\n: a\r\n\r\n", h1Refuse},
	{"no_host", "GET / HTTP/1.1\r\nX-A: a\r\n\r\n", h1Refuse},
	{"two_hosts", "GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", h1Refuse},
	{"bad_host", "GET / HTTP/1.1\r\nHost: a b\r\n\r\n", h1Refuse},
	{"absolute_form_other_host", "GET http://admin/a HTTP/1.1\r\nHost: orders\r\n\r\n", h1Refuse},
	{"bad_escape", "GET /a%zz HTTP/1.1\r\nHost: o\r\n\r\n", h1Refuse},
	{"truncated_escape", "GET /a%2 HTTP/1.1\r\nHost: o\r\n\r\n", h1Refuse},
	{"double_space", "GET  / HTTP/1.1\r\nHost: o\r\n\r\n", h1Refuse},
	{"space_in_target", "GET /a b HTTP/1.1\r\nHost: o\r\n\r\n", h1Refuse},
	{"bad_version", "GET / HTTP/1.x\r\nHost: o\r\n\r\n", h1Refuse},
	{"lower_case_version", "GET / http/1.1\r\nHost: o\r\n\r\n", h1Refuse},
	{"bad_method", "G(T / HTTP/1.1\r\nHost: o\r\n\r\n", h1Refuse},
	{"empty_line_first", "\r\nGET / HTTP/1.1\r\nHost: o\r\n\r\n", h1Refuse},
	{"relative_target", "GET a HTTP/1.1\r\nHost: o\r\n\r\n", h1Refuse},
	// An expectation read two ways (417): net/http's server acts on the
	// first Expect field, RFC 9110 on the list of all of them.
	{"expect_two_fields", "POST / HTTP/1.1\r\nHost: o\r\nContent-Length: 1\r\nExpect: 100-continue\r\nExpect: 100-continue\r\n\r\n", h1Refuse},
	{"expect_empty_then_continue", "POST / HTTP/1.1\r\nHost: o\r\nContent-Length: 1\r\nExpect:\r\nExpect: 100-continue\r\n\r\n", h1Refuse},
	{"expect_continue_then_other", "POST / HTTP/1.1\r\nHost: o\r\nContent-Length: 1\r\nExpect: 100-continue\r\nexpect: x\r\n\r\n", h1Refuse},
	{"expect_named_by_connection", "POST / HTTP/1.1\r\nHost: o\r\nContent-Length: 1\r\nConnection: Expect\r\nExpect: 100-continue\r\n\r\n", h1Refuse},
	{"expect_named_by_connection_list", "POST / HTTP/1.0\r\nHost: o\r\nContent-Length: 1\r\nExpect: 100-continue\r\nConnection: keep-alive, EXPECT\r\n\r\n", h1Refuse},
}

func TestParseRequestHead(t *testing.T) {
	for _, tc := range h1RequestCases {
		t.Run(tc.name, func(t *testing.T) {
			var req h1Request
			b := []byte(tc.raw)
			if got := parseRequestHead(b, &req); got != tc.want {
				t.Fatalf("verdict %d, want %d (refuse %d)", got, tc.want, req.refuse)
			}
			checkRequestAgainstNetHTTP(t, []byte(tc.raw))
		})
	}
}

// netReadRequest is the function net/http's server reads requests with
// (http.ReadRequest is it, then the Host field deleted). net/http marks
// it for linkname.
//
//go:linkname netReadRequest net/http.readRequest
func netReadRequest(b *bufio.Reader) (*http.Request, error)

// netHTTPRequest reads b as net/http's server reads a request: readRequest,
// then the checks the server adds (a supported version, one valid Host
// for HTTP/1.1, valid field names and values; net/http's server.go,
// conn.readRequest). n is the head's length.
func netHTTPRequest(b []byte) (req *http.Request, n int, err error) {
	rd := bytes.NewReader(b)
	br := bufio.NewReader(rd)
	req, err = netReadRequest(br)
	if err != nil {
		return nil, 0, err
	}
	n = len(b) - br.Buffered() - rd.Len()
	if req.ProtoMajor != 1 && !(req.Method == "PRI" && req.RequestURI == "*") {
		return nil, 0, io.ErrUnexpectedEOF
	}
	hosts, ok := req.Header["Host"]
	if req.ProtoAtLeast(1, 1) && (!ok || len(hosts) == 0) && req.Method != "CONNECT" && req.Method != "PRI" {
		return nil, 0, io.ErrUnexpectedEOF
	}
	if len(hosts) == 1 && !httpguts.ValidHostHeader(hosts[0]) {
		return nil, 0, io.ErrUnexpectedEOF
	}
	for k, vv := range req.Header {
		if !httpguts.ValidHeaderFieldName(k) {
			return nil, 0, io.ErrUnexpectedEOF
		}
		for _, v := range vv {
			if !httpguts.ValidHeaderFieldValue(v) {
				return nil, 0, io.ErrUnexpectedEOF
			}
		}
	}
	delete(req.Header, "Host")
	return req, n, nil
}

// deliberateRefusal reports whether the request head in b is one the fast
// path refuses although net/http may accept it (see h1parse.go). It reads
// the raw lines itself: a second reading of the rules, not a copy.
func deliberateRefusal(b []byte, req *http.Request) bool {
	end := bytes.Index(b, []byte("\r\n\r\n")) + 4
	if lf := bytes.Index(b, []byte("\n\n")) + 2; end < 4 || lf >= 2 && lf < end {
		end = lf
	}
	if end < 2 {
		end = len(b)
	}
	head := b[:end]
	for i, c := range head {
		if c == '\n' && (i == 0 || head[i-1] != '\r') || c == '\r' && (i+1 >= len(head) || head[i+1] != '\n') {
			return true // bare LF or CR
		}
	}
	lines := strings.Split(string(head), "\r\n")
	cls, tes, expects := 0, 0, 0
	host, conn := "", ""
	for _, l := range lines[1:] {
		if l == "" {
			continue
		}
		if l[0] == ' ' || l[0] == '\t' {
			return true // obs-fold
		}
		name, value, _ := strings.Cut(l, ":")
		value = strings.Trim(value, " \t")
		switch strings.ToLower(name) {
		case "content-length":
			cls++
		case "transfer-encoding":
			tes++
			if !strings.EqualFold(value, "chunked") {
				return true
			}
		case "host":
			host = value
		case "expect":
			expects++
		case "connection":
			conn += "," + value
		}
	}
	if expects > 1 || expects > 0 && httpguts.HeaderValuesContainsToken([]string{conn}, "expect") {
		return true // an expectation read two ways
	}
	if cls > 1 || cls > 0 && tes > 0 || tes > 1 || tes > 0 && !req.ProtoAtLeast(1, 1) {
		return true
	}
	return req.URL.Host != "" && req.Method != "CONNECT" && !strings.EqualFold(req.URL.Host, host)
}

// checkRequestAgainstNetHTTP is the differential check: a head the fast
// path accepts is accepted by net/http and read the same way; a head it
// refuses is refused by net/http or is a deliberate refusal; a head it
// waits on is incomplete for net/http too.
func checkRequestAgainstNetHTTP(t *testing.T, raw []byte) {
	t.Helper()
	b := bytes.Clone(raw) // the fast parser canonicalizes names in place
	var fr h1Request
	verdict := parseRequestHead(b, &fr)
	want, n, err := netHTTPRequest(raw)
	switch verdict {
	case h1More:
		if err == nil {
			t.Fatalf("%q: the fast path waits for more; net/http read %s %s", raw, want.Method, want.RequestURI)
		}
	case h1Handoff:
		// A chunked head is read as chunked by net/http, exactly: the
		// parser refuses no Transfer-Encoding net/http takes as chunked.
		if fr.chunked && err != nil {
			t.Fatalf("%q: the fast path reads a chunked body; net/http refuses: %v", raw, err)
		}
		if fr.chunked && (fmt.Sprint(want.TransferEncoding) != "[chunked]" || want.ContentLength != -1) {
			t.Fatalf("%q: the fast path reads a chunked body; net/http: %v, length %d", raw, want.TransferEncoding, want.ContentLength)
		}
	}
	// A Transfer-Encoding net/http refuses (with a bare 501, before any
	// handler) the parser refuses, so that the framing guard keeps the
	// head from net/http and the handler answers it.
	if err != nil && strings.Contains(err.Error(), "transfer encoding") && verdict != h1Refuse && verdict != h1More {
		t.Fatalf("%q: net/http refuses the transfer coding (%v); the fast path's verdict is %d", raw, err, verdict)
	}
	switch verdict {
	case h1Refuse:
		if err == nil && !deliberateRefusal(raw, want) {
			t.Fatalf("%q: the fast path refuses (%d); net/http accepts %s %s", raw, fr.refuse, want.Method, want.RequestURI)
		}
	case h1OK:
		if err != nil {
			t.Fatalf("%q: the fast path accepts; net/http refuses: %v", raw, err)
		}
		head := string(b[:fr.n])
		host := head[fr.host.off:fr.host.end]
		if fr.absolute != nil && fr.absolute.Host != "" {
			host = fr.absolute.Host
		}
		got := struct {
			Method, Target, Host string
			Header               http.Header
			HeadLen              int
			Length               int64
			Close                bool
		}{head[fr.method.off:fr.method.end], head[fr.target.off:fr.target.end], host, newHeader(head, fr.fields), fr.n, fr.length, fr.close}
		exp := got
		exp.Method, exp.Target, exp.Host, exp.Header, exp.HeadLen, exp.Length, exp.Close = want.Method, want.RequestURI, want.Host, want.Header, n, want.ContentLength, want.Close
		if !reflect.DeepEqual(got, exp) {
			t.Fatalf("%q:\nfast path %+v\nnet/http  %+v", raw, got, exp)
		}
	}
}

// FuzzH1RequestDifferential runs the fast path's request parser and
// net/http's on the same bytes (checkRequestAgainstNetHTTP). The seed
// corpus, run by every go test, is the table above.
func FuzzH1RequestDifferential(f *testing.F) {
	for _, tc := range h1RequestCases {
		f.Add([]byte(tc.raw))
	}
	f.Fuzz(func(t *testing.T, raw []byte) {
		checkRequestAgainstNetHTTP(t, raw)
	})
}

var h1ResponseCases = []struct {
	name string
	raw  string
	head bool // the request was HEAD
	want h1Verdict
}{
	{"ok", "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Type: text/plain\r\n\r\nhello", false, h1OK},
	{"no_reason", "HTTP/1.1 200\r\nContent-Length: 0\r\n\r\n", false, h1OK},
	{"odd_reason", "HTTP/1.1 404 Not  Here \r\nContent-Length: 0\r\n\r\n", false, h1OK},
	{"chunked", "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n", false, h1OK},
	{"no_content", "HTTP/1.1 204 No Content\r\nDate: x\r\n\r\n", false, h1OK},
	{"not_modified_with_length", "HTTP/1.1 304 Not Modified\r\nContent-Length: 10\r\n\r\n", false, h1OK},
	{"head_with_length", "HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n", true, h1OK},
	{"close", "HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n", false, h1OK},
	{"incomplete", "HTTP/1.1 200 OK\r\nContent-Length: 0\r\n", false, h1More},

	{"continue", "HTTP/1.1 100 Continue\r\n\r\n", false, h1Handoff},
	{"early_hints", "HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n", false, h1Handoff},
	{"switching", "HTTP/1.1 101 Switching Protocols\r\nUpgrade: h2c\r\n\r\n", false, h1Handoff},
	{"http10", "HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n", false, h1Handoff},
	{"close_delimited", "HTTP/1.1 200 OK\r\n\r\nhello", false, h1Handoff},
	{"cl_te", "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n", false, h1Handoff},
	{"two_cl", "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\nhello", false, h1Handoff},
	{"te_gzip", "HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n", false, h1Handoff},
	{"te_kelvin_sign", "HTTP/1.1 200 OK\r\nTransfer-Encoding: chun\xe2\x84\xaaed\r\n\r\n", false, h1Handoff},
	{"obs_fold", "HTTP/1.1 200 OK\r\nContent-Length: 0\r\nX-A: a\r\n b\r\n\r\n", false, h1Handoff},
	{"bare_lf", "HTTP/1.1 200 OK\nContent-Length: 0\n\n", false, h1Handoff},
	{"bad_status", "HTTP/1.1 2x0 OK\r\nContent-Length: 0\r\n\r\n", false, h1Handoff},
	{"status_600", "HTTP/1.1 600 X\r\nContent-Length: 0\r\n\r\n", false, h1Handoff},
	{"no_content_chunked", "HTTP/1.1 204 No Content\r\nTransfer-Encoding: chunked\r\n\r\n", false, h1Handoff},
	{"nul_in_value", "HTTP/1.1 200 OK\r\nContent-Length: 0\r\nX-A: \x00\r\n\r\n", false, h1Handoff},
}

func TestParseResponseHead(t *testing.T) {
	for _, tc := range h1ResponseCases {
		t.Run(tc.name, func(t *testing.T) {
			var resp h1Response
			if got := parseResponseHead([]byte(tc.raw), tc.head, &resp); got != tc.want {
				t.Fatalf("verdict %d, want %d", got, tc.want)
			}
			checkResponseAgainstNetHTTP(t, []byte(tc.raw), tc.head)
		})
	}
}

// checkResponseAgainstNetHTTP: a response head the fast path reads is read
// the same way by net/http.ReadResponse (status, fields, framing, where
// the head ends); everything else goes to ReadResponse anyway.
func checkResponseAgainstNetHTTP(t *testing.T, raw []byte, head bool) {
	t.Helper()
	b := bytes.Clone(raw)
	var fr h1Response
	verdict := parseResponseHead(b, head, &fr)
	method := http.MethodGet
	if head {
		method = http.MethodHead
	}
	rd := bytes.NewReader(raw)
	br := bufio.NewReader(rd)
	want, err := http.ReadResponse(br, &http.Request{Method: method})
	switch verdict {
	case h1More:
		if err == nil {
			t.Fatalf("%q: the fast path waits for more; net/http read status %d", raw, want.StatusCode)
		}
	case h1OK:
		if err != nil {
			t.Fatalf("%q: the fast path accepts; net/http refuses: %v", raw, err)
		}
		n := len(raw) - br.Buffered() - rd.Len()
		h := http.Header{}
		for _, f := range fr.fields {
			name := string(b[f.name.off:f.name.end])
			if name == "Transfer-Encoding" {
				continue // net/http moves it to TransferEncoding
			}
			h[name] = append(h[name], string(b[f.value.off:f.value.end]))
		}
		type parsed struct {
			Status  int
			Header  http.Header
			HeadLen int
			Length  int64
			Chunked bool
			Close   bool
		}
		if fr.close {
			delete(h, "Connection") // ReadResponse removes it once read
		}
		got := parsed{fr.status, h, fr.n, fr.length, fr.chunked, fr.close}
		exp := parsed{want.StatusCode, want.Header, n, want.ContentLength, len(want.TransferEncoding) > 0, want.Close}
		if head || want.StatusCode == 204 || want.StatusCode == 304 {
			exp.Length = 0 // no body, whatever Content-Length says
		}
		if !reflect.DeepEqual(got, exp) {
			t.Fatalf("%q:\nfast path %+v\nnet/http  %+v", raw, got, exp)
		}
	}
}

// FuzzH1ResponseDifferential runs the fast path's response parser and
// net/http.ReadResponse on the same bytes.
func FuzzH1ResponseDifferential(f *testing.F) {
	for _, tc := range h1ResponseCases {
		f.Add([]byte(tc.raw), tc.head)
	}
	f.Fuzz(func(t *testing.T, raw []byte, head bool) {
		checkResponseAgainstNetHTTP(t, raw, head)
	})
}

// FuzzValidFieldValue: the word-at-a-time check judges every value as
// httpguts.ValidHeaderFieldValue does, as a string and as bytes.
func FuzzValidFieldValue(f *testing.F) {
	for _, s := range []string{"", "Bearer abc.def.ghi", "a\tb", "abcdefgh\x7f", "abcdefg\x00", "\x1fabcdefghijklmnop", "caf\xc3\xa9 ok and more", "01234567\t9abcdef\r"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, v string) {
		want := httpguts.ValidHeaderFieldValue(v)
		if got := validFieldString(v); got != want {
			t.Fatalf("validFieldString(%q) = %v, want %v", v, got, want)
		}
		if got := validFieldValue([]byte(v)); got != want {
			t.Fatalf("validFieldValue([]byte(%q)) = %v, want %v", v, got, want)
		}
	})
}

// TestValidFieldValueEveryByte: every byte value, at every position of a
// value one 32-byte block, a word and a tail long, beside obs-text and
// HTAB, is judged as httpguts judges it.
func TestValidFieldValueEveryByte(t *testing.T) {
	const n = 32 + 8 + 3
	for _, fill := range []byte{'a', 0x80, '\t', 0xff} {
		for pos := range n {
			for c := range 256 {
				v := bytes.Repeat([]byte{fill}, n)
				v[pos] = byte(c)
				if got, want := validFieldValue(v), httpguts.ValidHeaderFieldValue(string(v)); got != want {
					t.Fatalf("fill %#x, byte %#x at %d: %v, want %v", fill, c, pos, got, want)
				}
			}
		}
	}
}
