package e2e

import (
	"bufio"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strings"
	"testing"
	"time"
)

// TestGatewaySmuggling sends the request smuggling and desync patterns
// (CL.TE, TE.CL, TE.TE obfuscations, duplicate Content-Length, obs-fold,
// bare LF, malformed chunks, requests pipelined around them) byte for
// byte over TLS to a real gateway process in front of a real sidecar and
// an app that records what it reads (the route's WAF off: it would
// refuse some of these bodies on its own). Every ambiguous head is refused with
// 400 (or net/http's own 501 for a coding it does not know) and the
// connection closed, and neither it nor anything pipelined behind it
// reaches the app: net/http's server alone would serve a CL.TE request
// by its chunked body and keep the connection (RFC 9112 §6.1 requires it
// closed), and serve duplicate Content-Length, obs-fold and bare LF. What
// is pipelined behind a complete request is a request of its own.
// The same on the gateway's HTTP/1.1 fast path (the default), which
// hands these heads to net/http's server through the same guard, and
// with disable_http1_fast_path (net/http's server alone).
func TestGatewaySmuggling(t *testing.T) {
	for _, path := range []struct{ name, conf string }{
		{"fast_path", ""},
		{"nethttp", "disable_http1_fast_path: true"},
	} {
		t.Run(path.name, func(t *testing.T) { testGatewaySmuggling(t, path.conf) })
	}
}

func testGatewaySmuggling(t *testing.T, extra string) {
	app := startRecordingApp(t)
	g, k, _ := startGatewayMeshApp(t, app.addr, extra, false)
	const (
		post    = "POST /api/x HTTP/1.1\r\nHost: localhost\r\nContent-Type: text/plain\r\n"
		get     = "GET /api/x HTTP/1.1\r\nHost: localhost\r\n\r\n"
		last    = "GET /api/last HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
		chunked = post + "Transfer-Encoding: chunked\r\n\r\n"
		clTE    = post + "Content-Length: 6\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nG"
	)
	refused := []int{400}
	tests := []struct {
		name string
		raw  string
		want []int    // statuses, in order, before the gateway closes the connection
		app  []string // what the app reads
	}{
		{"cl_te", clTE + get, refused, nil},
		{"te_cl", post + "Transfer-Encoding: chunked\r\nContent-Length: 4\r\n\r\n5c\r\nGET /api/y HTTP/1.1\r\nHost: localhost\r\n\r\n0\r\n\r\n" + get, refused, nil},
		{"cl_zero_te", post + "Content-Length: 0\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n" + get, refused, nil},
		{"lower_case_names", post + "content-length: 6\r\ntransfer-encoding: chunked\r\n\r\n0\r\n\r\nG" + get, refused, nil},
		{"te_tab_before_value", post + "Content-Length: 6\r\nTransfer-Encoding:\tchunked\r\n\r\n0\r\n\r\nG" + get, refused, nil},
		{"te_upper_case_value", post + "Content-Length: 6\r\nTransfer-Encoding: CHUNKED\r\n\r\n0\r\n\r\nG" + get, refused, nil},
		{"te_te_second_field", post + "Transfer-Encoding: chunked\r\nTransfer-Encoding: identity\r\n\r\n0\r\n\r\n" + get, refused, nil},
		{"te_te_space_before_colon", post + "Content-Length: 4\r\nTransfer-Encoding : chunked\r\n\r\n0\r\n\r\n" + get, refused, nil},
		{"te_te_xchunked", post + "Transfer-Encoding: xchunked\r\n\r\n0\r\n\r\n" + get, refused, nil},
		{"te_te_list", post + "Transfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\n" + get, refused, nil},
		{"te_te_obs_fold", post + "Transfer-Encoding:\r\n chunked\r\n\r\n0\r\n\r\n" + get, refused, nil},
		{"te_http10", "POST /api/x HTTP/1.0\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n" + get, refused, nil},
		{"duplicate_cl_equal", post + "Content-Length: 5\r\nContent-Length: 5\r\n\r\nhello" + get, refused, nil},
		{"duplicate_cl_different", post + "Content-Length: 5\r\nContent-Length: 12\r\n\r\nhello" + get, refused, nil},
		{"comma_joined_cl", post + "Content-Length: 5, 5\r\n\r\nhello" + get, refused, nil},
		{"obs_fold", "GET /api/x HTTP/1.1\r\nHost: localhost\r\nX-Custom: a\r\n X-User: admin\r\n\r\n" + get, refused, nil},
		{"bare_lf", "GET /api/x HTTP/1.1\nHost: localhost\n\n" + get, refused, nil},
		{"bare_lf_after_field", "GET /api/x HTTP/1.1\r\nHost: localhost\nX-User: admin\r\n\r\n" + get, refused, nil},
		{"whitespace_before_colon", "GET /api/x HTTP/1.1\r\nHost: localhost\r\nX-Custom : a\r\n\r\n" + get, refused, nil},
		{"nul_in_value", "GET /api/x HTTP/1.1\r\nHost: localhost\r\nX-Custom: a\x00b\r\n\r\n" + get, refused, nil},
		{"bad_chunk_size", chunked + "zz\r\nhello\r\n0\r\n\r\n" + get, refused, nil},
		{"chunk_data_longer_than_size", chunked + "3\r\nhello\r\n0\r\n\r\n" + get, refused, nil},
		{"cl_te_after_keep_alive", get + clTE + get, []int{200, 400}, []string{"GET /api/x "}},
		{"cl_te_after_a_body", post + "Content-Length: 5\r\n\r\nhello" + clTE + get, []int{200, 400}, []string{"POST /api/x hello"}},
		{"cl_te_after_options_asterisk", "OPTIONS * HTTP/1.1\r\nHost: localhost\r\n\r\n" + clTE + get, refused, nil},
		{"cl_te_in_a_body_is_data", post + "Content-Length: " + fmt.Sprint(len(clTE)) + "\r\n\r\n" + clTE + last,
			[]int{200, 200}, []string{"POST /api/x " + clTE, "GET /api/last "}},
		{"pipelined_after_short_body", post + "Content-Length: 3\r\n\r\nhello world\r\n\r\n", []int{200, 400}, []string{"POST /api/x hel"}},
		{"pipelined_keep_alive", get + get + last, []int{200, 200, 200}, []string{"GET /api/x ", "GET /api/x ", "GET /api/last "}},
		{"empty_line_after_post", post + "Content-Length: 5\r\n\r\nhello\r\n" + last, []int{200, 200}, []string{"POST /api/x hello", "GET /api/last "}},
		{"chunked_closes_after", chunked + "5\r\nhello\r\n0\r\n\r\n" + get, []int{200}, []string{"POST /api/x hello"}},
	}
	conf := &tls.Config{RootCAs: k.ca.Pool(), ServerName: "localhost", NextProtos: []string{"http/1.1"}}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			app.take()
			c, err := tls.Dial("tcp", g.addr, conf)
			if err != nil {
				t.Fatal(err)
			}
			got, err := exchangeStatuses(t, c, tc.raw)
			if errors.Is(err, os.ErrDeadlineExceeded) {
				t.Errorf("the gateway kept the connection open after %v", got)
			}
			// net/http's server refuses a transfer coding it does not
			// know before the gateway's handler runs, with the 501 RFC
			// 9112 §6.1 suggests, and closes the connection.
			if fmt.Sprint(got) == "[501]" && strings.HasPrefix(tc.name, "te_te_") {
				got = refused
			}
			if seen := app.take(); fmt.Sprint(got) != fmt.Sprint(tc.want) || strings.Join(seen, "|") != strings.Join(tc.app, "|") {
				t.Errorf("statuses %v, app saw %q; want %v and %q", got, seen, tc.want, tc.app)
			}
		})
	}
}

// exchangeStatuses writes raw to c and reads responses until c ends or 5 s
// pass (the error is then os.ErrDeadlineExceeded: the server kept the
// connection open); it returns their statuses and closes c.
func exchangeStatuses(t *testing.T, c net.Conn, raw string) ([]int, error) {
	t.Helper()
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.WriteString(c, raw); err != nil {
		t.Fatal(err)
	}
	br := bufio.NewReader(c)
	var got []int
	for {
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			return got, err
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		got = append(got, resp.StatusCode)
	}
}
