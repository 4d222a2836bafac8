package e2e

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strings"
	"sync"
	"testing"
)

// recordingApp is an app that records every request it reads whole
// (method, target, body) and answers each with 200 "ok"; a request it
// cannot read ends the connection unrecorded.
type recordingApp struct {
	addr string
	mu   sync.Mutex
	seen []string
}

func startRecordingApp(t *testing.T) *recordingApp {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	a := &recordingApp{addr: l.Addr().String()}
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				br := bufio.NewReader(c)
				for {
					req, err := http.ReadRequest(br)
					if err != nil {
						return
					}
					body, err := io.ReadAll(req.Body)
					if err != nil {
						return
					}
					a.mu.Lock()
					a.seen = append(a.seen, req.Method+" "+req.RequestURI+" "+string(body))
					a.mu.Unlock()
					io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
				}
			}()
		}
	}()
	return a
}

func (a *recordingApp) take() []string {
	a.mu.Lock()
	defer a.mu.Unlock()
	s := a.seen
	a.seen = nil
	return s
}

// TestSmugglingThroughSidecars sends the known request smuggling and
// desync patterns (RFC 9112 §11.2 and the public write-ups: CL.TE,
// TE.CL, TE.TE obfuscations, duplicate Content-Length, obs-fold, bare CR
// and LF, whitespace before the colon, control bytes, malformed chunks,
// absolute-form targets against Host, requests pipelined after a body of
// the wrong length) byte for byte to real sidecars: straight to the
// inbound listener over mTLS and in plaintext, and through an outbound
// listener. Each is refused with 400 and a closed connection, and the app
// never sees it; what is pipelined behind a complete request is a request
// of its own, decided by policy. All of it holds on both server paths:
// the HTTP/1.1 fast path (the default) and net/http's server alone
// (disable_http1_fast_path, or h2 callers), which by itself would
// serve CL.TE, duplicate Content-Length and more on a kept-alive
// connection.
func TestSmugglingThroughSidecars(t *testing.T) {
	for _, path := range []struct{ name, conf string }{
		{"fast_path", ""},
		{"nethttp", "disable_http1_fast_path: true\n"},
	} {
		t.Run(path.name, func(t *testing.T) { testSmugglingThroughSidecars(t, path.conf) })
	}
}

func testSmugglingThroughSidecars(t *testing.T, conf string) {
	app := startRecordingApp(t)
	m := startSidecarMeshConf(t, app.addr, attackPolicies(`{"keys": []}`), conf, nil, nil)
	e := &attackEnv{app: app.addr, inbound: m.inbound, outbound: m.outbound, pki: m.pki}
	const post = "POST /api/x HTTP/1.1\r\nHost: orders\r\n"
	const chunked = post + "Transfer-Encoding: chunked\r\n\r\n"
	refused := []int{400}
	const inner = "helloGET /internal/keys HTTP/1.1\r\nHost: orders\r\n\r\n"
	tests := []struct {
		name string
		raw  string
		want []int    // statuses, in order, before the sidecar closes the connection
		app  []string // what the app reads
	}{
		{"cl_te", post + "Content-Length: 6\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nG", refused, nil},
		{"te_cl", post + "Transfer-Encoding: chunked\r\nContent-Length: 4\r\n\r\n5c\r\nGET /internal/keys HTTP/1.1\r\nHost: orders\r\n\r\n0\r\n\r\n", refused, nil},
		{"te_te_second_field", post + "Transfer-Encoding: chunked\r\nTransfer-Encoding: identity\r\n\r\n0\r\n\r\n", refused, nil},
		{"te_te_space_before_colon", post + "Content-Length: 4\r\nTransfer-Encoding : chunked\r\n\r\n0\r\n\r\n", refused, nil},
		{"te_te_xchunked", post + "Transfer-Encoding: xchunked\r\n\r\n0\r\n\r\n", refused, nil},
		{"te_te_list", post + "Transfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\n", refused, nil},
		{"te_te_obs_fold", post + "Transfer-Encoding:\r\n chunked\r\n\r\n0\r\n\r\n", refused, nil},
		{"te_te_vertical_tab", post + "Transfer-Encoding: \x0bchunked\r\n\r\n0\r\n\r\n", refused, nil},
		{"te_te_nul", post + "Transfer-Encoding: chunked\x00\r\n\r\n0\r\n\r\n", refused, nil},
		{"duplicate_cl_equal", post + "Content-Length: 5\r\nContent-Length: 5\r\n\r\nhello", refused, nil},
		{"duplicate_cl_different", post + "Content-Length: 5\r\nContent-Length: 12\r\n\r\nhello", refused, nil},
		{"comma_joined_cl", post + "Content-Length: 5, 5\r\n\r\nhello", refused, nil},
		{"signed_cl", post + "Content-Length: +5\r\n\r\nhello", refused, nil},
		{"obs_fold", "GET /api/x HTTP/1.1\r\nHost: orders\r\nX-Custom: a\r\n X-User: admin\r\n\r\n", refused, nil},
		{"bare_cr", "GET /api/x HTTP/1.1\r\nHost: orders\r\nX-Custom: a\rX-User: admin\r\n\r\n", refused, nil},
		{"bare_lf", "GET /api/x HTTP/1.1\nHost: orders\n\n", refused, nil},
		{"bare_lf_after_field", "GET /api/x HTTP/1.1\r\nHost: orders\nX-User: admin\r\n\r\n", refused, nil},
		{"whitespace_before_colon", "GET /api/x HTTP/1.1\r\nHost: orders\r\nX-Custom : a\r\n\r\n", refused, nil},
		{"nul_in_value", "GET /api/x HTTP/1.1\r\nHost: orders\r\nX-Custom: a\x00b\r\n\r\n", refused, nil},
		{"control_byte_in_name", "GET /api/x HTTP/1.1\r\nHost: orders\r\nX\x01Custom: a\r\n\r\n", refused, nil},
		{"control_byte_in_target", "GET /api/x\x01 HTTP/1.1\r\nHost: orders\r\n\r\n", refused, nil},
		{"bad_chunk_size", chunked + "zz\r\nhello\r\n0\r\n\r\n", refused, nil},
		{"negative_chunk_size", chunked + "-5\r\nhello\r\n0\r\n\r\n", refused, nil},
		{"overflowing_chunk_size", chunked + "10000000000000005\r\nhello\r\n0\r\n\r\n", refused, nil},
		{"chunk_size_with_space", chunked + "5 ;ext\r\nhello\r\n0\r\n\r\n", refused, nil},
		{"chunk_size_bare_lf", chunked + "5\nhello\r\n0\r\n\r\n", refused, nil},
		{"chunk_data_longer_than_size", chunked + "3\r\nhello\r\n0\r\n\r\n", refused, nil},
		{"absolute_form_other_host", "GET http://admin.internal/api/x HTTP/1.1\r\nHost: orders\r\n\r\n", refused, nil},
		{"pipelined_after_short_body", post + "Content-Length: 3\r\n\r\nhello world\r\n\r\n", []int{200, 400}, []string{"POST /api/x hel"}},
		{"pipelined_request_is_decided", post + "Content-Length: 5\r\n\r\nhelloGET /internal/keys HTTP/1.1\r\nHost: orders\r\nConnection: close\r\n\r\n",
			[]int{200, 403}, []string{"POST /api/x hello"}},
		{"long_body_holds_the_next_request", post + "Connection: close\r\nContent-Length: " + fmt.Sprint(len(inner)) + "\r\n\r\n" + inner,
			[]int{200}, []string{"POST /api/x " + inner}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			for _, r := range e.attackRoutes(t) {
				app.take()
				got, err := exchangeStatuses(t, r.dial(), tc.raw)
				if errors.Is(err, os.ErrDeadlineExceeded) {
					t.Errorf("%s: the sidecar kept the connection open after %v", r.name, got)
				}
				if seen := app.take(); fmt.Sprint(got) != fmt.Sprint(tc.want) || strings.Join(seen, "|") != strings.Join(tc.app, "|") {
					t.Errorf("%s: statuses %v, app saw %q; want %v and %q", r.name, got, seen, tc.want, tc.app)
				}
			}
		})
	}
}
