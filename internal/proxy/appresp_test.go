package proxy

import (
	"bufio"
	"bytes"
	"errors"
	"io"
	"net/http"
	"reflect"
	"strings"
	"testing"
)

// appRespCases are upstream answers, the common ones the fast parser
// reads (fast) and the shapes a hostile upstream uses to make two
// parsers disagree on where an answer ends, which go to ReadResponse.
var appRespCases = []struct {
	name   string
	raw    string
	method string
	fast   bool // the first answer is read by the fast parser
}{
	{"length", "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Type: text/plain\r\n\r\nhello", "GET", true},
	{"length_then_next", "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhiHTTP/1.1 404 Not Found\r\nContent-Length: 1\r\n\r\nx", "GET", true},
	{"zero_length", "HTTP/1.1 201 Created\r\nContent-Length: 0\r\nLocation: /o/1\r\n\r\n", "POST", true},
	{"no_reason", "HTTP/1.1 200\r\nContent-Length: 1\r\n\r\nx", "GET", true},
	{"odd_reason", "HTTP/1.1 404 Not  Here \r\nContent-Length: 0\r\n\r\n", "GET", true},
	{"repeated_and_mixed_case_names", "HTTP/1.1 200 OK\r\nset-cookie: a=1\r\nX-Custom-HEADER: v\r\nSET-COOKIE: b=2\r\nContent-Length: 0\r\n\r\n", "GET", true},
	{"values_trimmed", "HTTP/1.1 200 OK\r\nX-A: \t v w \t\r\nX-B:\r\nContent-Length: 0\r\n\r\n", "GET", true},
	{"pragma_no_cache", "HTTP/1.1 200 OK\r\nPragma: no-cache\r\nContent-Length: 0\r\n\r\n", "GET", true},
	{"connection_close", "HTTP/1.1 200 OK\r\nConnection: keep-alive\r\nConnection: Upgrade, CLOSE\r\nContent-Length: 1\r\n\r\nx", "GET", true},
	{"connection_keep_alive", "HTTP/1.1 200 OK\r\nConnection: keep-alive\r\nContent-Length: 0\r\n\r\n", "GET", true},
	{"head_with_length", "HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", "HEAD", true},
	{"head_without_length", "HTTP/1.1 200 OK\r\nDate: x\r\n\r\n", "HEAD", true},
	{"no_content_with_length", "HTTP/1.1 204 No Content\r\nContent-Length: 7\r\n\r\nsmuggle", "DELETE", true},
	{"not_modified", "HTTP/1.1 304 Not Modified\r\nContent-Length: 10\r\n\r\n", "GET", true},
	{"trailer_without_chunking", "HTTP/1.1 200 OK\r\nTrailer: X-T\r\nContent-Length: 0\r\n\r\n", "GET", true},
	{"host_field_kept", "HTTP/1.1 200 OK\r\nHost: a\r\nContent-Length: 0\r\n\r\n", "GET", true},
	{"short_body", "HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nhello", "GET", true},
	{"more_than_length", "HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nxHTTP/1.1 200 OK\r\n", "GET", true},
	{"huge_length", "HTTP/1.1 200 OK\r\nContent-Length: 999999999999999999\r\n\r\nabc", "GET", true},

	{"chunked", "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: X-T\r\n\r\n5\r\nhello\r\n0\r\nX-T: 1\r\n\r\n", "GET", false},
	{"huge_chunk_size", "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nffffffffffffffffff\r\nx\r\n0\r\n\r\n", "GET", false},
	{"chunk_size_semicolon_lf", "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1;a\nx\r\n0\r\n\r\n", "GET", false},
	{"continue_then_answer", "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nx", "POST", false},
	{"early_hints", "HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", "GET", false},
	{"switching", "HTTP/1.1 101 Switching Protocols\r\nUpgrade: h2c\r\nConnection: Upgrade\r\n\r\nrest", "GET", false},
	{"http10", "HTTP/1.0 200 OK\r\nContent-Length: 1\r\n\r\nx", "GET", false},
	{"http10_keep_alive", "HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 1\r\n\r\nx", "GET", false},
	{"close_delimited", "HTTP/1.1 200 OK\r\n\r\nhello", "GET", false},
	{"cl_then_te", "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", "GET", false},
	{"te_then_cl", "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n0\r\n\r\n", "GET", false},
	{"two_equal_cl", "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\nhello", "GET", false},
	{"two_different_cl", "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!", "GET", false},
	{"comma_cl", "HTTP/1.1 200 OK\r\nContent-Length: 5, 5\r\n\r\nhello", "GET", false},
	{"plus_cl", "HTTP/1.1 200 OK\r\nContent-Length: +5\r\n\r\nhello", "GET", false},
	{"cl_space_before_colon", "HTTP/1.1 200 OK\r\nContent-Length : 5\r\n\r\nhello", "GET", false},
	{"te_gzip_chunked", "HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n", "GET", false},
	{"te_identity", "HTTP/1.1 200 OK\r\nTransfer-Encoding: identity\r\nContent-Length: 1\r\n\r\nx", "GET", false},
	{"te_kelvin_sign", "HTTP/1.1 200 OK\r\nTransfer-Encoding: chun\xe2\x84\xaaed\r\n\r\n0\r\n\r\n", "GET", false},
	{"te_underscore", "HTTP/1.1 200 OK\r\nTransfer_Encoding: chunked\r\nContent-Length: 1\r\n\r\nx", "GET", true},
	{"obs_fold", "HTTP/1.1 200 OK\r\nContent-Length: 1\r\nX-A: a\r\n b\r\n\r\nx", "GET", false},
	{"obs_fold_cl", "HTTP/1.1 200 OK\r\nX-A: a\r\n Content-Length: 1\r\n\r\nx", "GET", false},
	{"bare_lf", "HTTP/1.1 200 OK\nContent-Length: 1\n\nx", "GET", false},
	{"bare_cr", "HTTP/1.1 200 OK\r\nX-A: a\rContent-Length: 9\r\nContent-Length: 1\r\n\r\nx", "GET", false},
	{"nul_in_value", "HTTP/1.1 200 OK\r\nContent-Length: 0\r\nX-A: \x00\r\n\r\n", "GET", false},
	{"status_600", "HTTP/1.1 600 X\r\nContent-Length: 0\r\n\r\n", "GET", false},
	{"bad_status", "HTTP/1.1 2x0 OK\r\nContent-Length: 0\r\n\r\n", "GET", false},
	{"no_content_chunked", "HTTP/1.1 204 No Content\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", "GET", false},
	{"head_chunked", "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n", "HEAD", false},
	{"truncated_head", "HTTP/1.1 200 OK\r\nContent-Length: 0\r\n", "GET", false},
	{"empty", "", "GET", false},
	{"garbage", "SSH-2.0-OpenSSH\r\n\r\n", "GET", false},
}

func TestReadResponse(t *testing.T) {
	for _, tc := range appRespCases {
		t.Run(tc.name, func(t *testing.T) {
			req := &http.Request{Method: tc.method}
			var p h1Response
			var scratch []byte
			resp, _ := parseAnswer(bufio.NewReader(strings.NewReader(tc.raw)), req, &p, &scratch)
			if got := resp != nil; got != tc.fast {
				t.Fatalf("read by the fast parser: %v, want %v", got, tc.fast)
			}
			for _, piece := range []int{0, 1, 7} {
				checkReadResponse(t, []byte(tc.raw), tc.method, piece)
			}
		})
	}
}

// TestReadResponseHeadLargerThanBuffer: a head that outgrows the
// connection's buffer is read by ReadResponse, whole.
func TestReadResponseHeadLargerThanBuffer(t *testing.T) {
	raw := "HTTP/1.1 200 OK\r\nX-Big: " + strings.Repeat("a", 5000) + "\r\nContent-Length: 1\r\n\r\nx"
	var p h1Response
	var scratch []byte
	br := bufio.NewReaderSize(strings.NewReader(raw), 4096)
	resp, err := readResponse(br, &http.Request{Method: "GET"}, &p, &scratch)
	if err != nil {
		t.Fatal(err)
	}
	if len(resp.Header.Get("X-Big")) != 5000 {
		t.Fatalf("X-Big has %d bytes", len(resp.Header.Get("X-Big")))
	}
	checkReadResponse(t, []byte(raw), "GET", 0)
}

// TestReadResponseReadError: a connection that fails mid-head fails the
// read as ReadResponse fails it, with the connection's own error.
func TestReadResponseReadError(t *testing.T) {
	boom := errors.New("connection reset by peer")
	for _, raw := range []string{"", "HTTP/1.1 200 OK\r\n", "HTTP/1.1 200 OK\r\nContent-Length: 1\r\n"} {
		var p h1Response
		var scratch []byte
		br := bufio.NewReader(io.MultiReader(strings.NewReader(raw), errReader{boom}))
		_, err := readResponse(br, &http.Request{Method: "GET"}, &p, &scratch)
		_, want := http.ReadResponse(bufio.NewReader(io.MultiReader(strings.NewReader(raw), errReader{boom})), &http.Request{Method: "GET"})
		if err == nil || want == nil || err.Error() != want.Error() {
			t.Fatalf("%q: error %v, ReadResponse's %v", raw, err, want)
		}
	}
}

// pieceReader hands out its bytes n at a time (all at once for n <= 0),
// as a connection delivers an answer in several reads.
type pieceReader struct {
	b []byte
	n int
}

func (r *pieceReader) Read(p []byte) (int, error) {
	if len(r.b) == 0 {
		return 0, io.EOF
	}
	k := len(p)
	if r.n > 0 && k > r.n {
		k = r.n
	}
	k = copy(p, r.b[:min(k, len(r.b))])
	r.b = r.b[k:]
	return k, nil
}

// checkReadResponse reads raw as a connection's answers, up to four in a
// row, with readResponse and with net/http.ReadResponse, and fails on
// any difference: an error or not, every field of the *http.Response,
// the body's bytes and how it ends, the trailers, and the bytes left for
// the next answer (which decide whether the connection is reused and
// what is read from it next).
func checkReadResponse(t *testing.T, raw []byte, method string, piece int) {
	t.Helper()
	req := &http.Request{Method: method}
	gotBR := bufio.NewReaderSize(&pieceReader{b: bytes.Clone(raw), n: piece}, 4096)
	wantBR := bufio.NewReaderSize(&pieceReader{b: bytes.Clone(raw), n: piece}, 4096)
	var p h1Response
	var scratch []byte
	for i := range 4 {
		got, gerr := readResponse(gotBR, req, &p, &scratch)
		want, werr := http.ReadResponse(wantBR, req)
		if (gerr == nil) != (werr == nil) || gerr != nil && gerr.Error() != werr.Error() {
			t.Fatalf("%q answer %d: error %v, ReadResponse's %v", raw, i, gerr, werr)
		}
		if gerr != nil {
			return
		}
		type head struct {
			Status                 string
			StatusCode             int
			Proto                  string
			ProtoMajor, ProtoMinor int
			Header, Trailer        http.Header
			ContentLength          int64
			TransferEncoding       []string
			Close, Uncompressed    bool
			Request                *http.Request
			NoBody                 bool
		}
		headOf := func(r *http.Response) head {
			return head{r.Status, r.StatusCode, r.Proto, r.ProtoMajor, r.ProtoMinor, r.Header, r.Trailer,
				r.ContentLength, r.TransferEncoding, r.Close, r.Uncompressed, r.Request, r.Body == http.NoBody}
		}
		if g, w := headOf(got), headOf(want); !reflect.DeepEqual(g, w) {
			t.Fatalf("%q answer %d:\ngot  %+v\nwant %+v", raw, i, g, w)
		}
		gb, gerr := io.ReadAll(got.Body)
		wb, werr := io.ReadAll(want.Body)
		if !bytes.Equal(gb, wb) || (gerr == nil) != (werr == nil) || gerr != nil && gerr.Error() != werr.Error() {
			t.Fatalf("%q answer %d: body %q (%v), ReadResponse's %q (%v)", raw, i, gb, gerr, wb, werr)
		}
		// A body read to its end keeps saying how it ended.
		gn, gerr2 := got.Body.Read(make([]byte, 1))
		wn, werr2 := want.Body.Read(make([]byte, 1))
		if gn != wn || (gerr2 == nil) != (werr2 == nil) || gerr2 != nil && gerr2.Error() != werr2.Error() {
			t.Fatalf("%q answer %d: read after the end: %d, %v; ReadResponse's %d, %v", raw, i, gn, gerr2, wn, werr2)
		}
		if !reflect.DeepEqual(got.Trailer, want.Trailer) {
			t.Fatalf("%q answer %d: trailer %v, ReadResponse's %v", raw, i, got.Trailer, want.Trailer)
		}
		if gerr != nil || got.Close || got.StatusCode < 200 && got.StatusCode != 100 && got.StatusCode != 103 {
			break // the connection is not read again
		}
	}
	gl, _ := io.ReadAll(gotBR)
	wl, _ := io.ReadAll(wantBR)
	if !bytes.Equal(gl, wl) {
		t.Fatalf("%q: left for the next answer %q, ReadResponse left %q", raw, gl, wl)
	}
}

// FuzzReadResponseDifferential reads arbitrary bytes, delivered piece
// bytes at a time, as a connection's answers with readResponse and with
// net/http.ReadResponse (see checkReadResponse).
func FuzzReadResponseDifferential(f *testing.F) {
	for _, tc := range appRespCases {
		f.Add([]byte(tc.raw), tc.method == http.MethodHead, uint8(0))
		f.Add([]byte(tc.raw), tc.method == http.MethodHead, uint8(3))
	}
	for _, tc := range h1ResponseCases {
		f.Add([]byte(tc.raw), tc.head, uint8(0))
	}
	f.Fuzz(func(t *testing.T, raw []byte, head bool, piece uint8) {
		method := http.MethodGet
		if head {
			method = http.MethodHead
		}
		checkReadResponse(t, raw, method, int(piece))
	})
}

// BenchmarkReadResponse reads the upstream sidecar's answer to the
// gateway's reference POST (the app's "hello" with the fields the
// sidecar adds) with readResponse and with net/http.ReadResponse, body
// included, from a reused buffered reader as appClient does.
func BenchmarkReadResponse(b *testing.B) {
	raw := []byte("HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Type: text/plain\r\nDate: Mon, 07 Dec 2026 05:00:00 GMT\r\n" +
		"Server: nginx/1.22.1\r\nConnection: keep-alive\r\nX-Envoy-Upstream-Service-Time: 0\r\n\r\nhello")
	req := &http.Request{Method: http.MethodPost}
	for _, fast := range []bool{true, false} {
		name := "net_http"
		if fast {
			name = "parse_response_head"
		}
		b.Run(name, func(b *testing.B) {
			src := bytes.NewReader(raw)
			br := bufio.NewReaderSize(src, 4096)
			var p h1Response
			var scratch []byte
			buf := make([]byte, 64)
			b.ReportAllocs()
			for b.Loop() {
				src.Reset(raw)
				br.Reset(src)
				var resp *http.Response
				var err error
				if fast {
					resp, err = readResponse(br, req, &p, &scratch)
				} else {
					resp, err = http.ReadResponse(br, req)
				}
				if err != nil {
					b.Fatal(err)
				}
				if n, _ := io.ReadFull(resp.Body, buf[:5]); n != 5 {
					b.Fatal("short body")
				}
			}
		})
	}
}
