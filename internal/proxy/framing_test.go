package proxy

import (
	"bufio"
	"bytes"
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

	"github.com/moatless/moatless/internal/policy"
	"github.com/moatless/moatless/internal/testpki"
	"github.com/moatless/moatless/internal/wire"
)

// TestContentLengthBesideTransferEncoding: RFC 9112 §6.1 — a request with
// both Content-Length and Transfer-Encoding is refused with 400 and the
// connection closed, on both server paths (net/http's server deletes the
// Content-Length and keeps the connection open on its own), over mTLS
// and in plaintext, wherever on the connection it comes, and the app sees
// nothing of it or of what follows. What net/http's path keeps serving on
// a guarded connection it still serves: keep-alive, pipelining, the empty
// line net/http skips after a POST; a chunked request is answered and the
// connection closed after it, as the fast path's handoff does.
func TestContentLengthBesideTransferEncoding(t *testing.T) {
	forServerPaths(t, testContentLengthBesideTransferEncoding)
}

func testContentLengthBesideTransferEncoding(t *testing.T, sp serverPath) {
	ca := testpki.NewCA(t, "example.org")
	app := newRecordingApp(t)
	addr := startAttackSidecar(t, ca, attackPolicies, policy.NormalizeBase, app.addr, sp)
	const (
		post = "POST /api/x HTTP/1.1\r\nHost: orders\r\n"
		get  = "GET /api/x HTTP/1.1\r\nHost: orders\r\n\r\n"
		last = "GET /api/last HTTP/1.1\r\nHost: orders\r\nConnection: close\r\n\r\n"
		clTE = post + "Content-Length: 6\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nG"
	)
	tests := []struct {
		name string
		raw  string
		want []int    // statuses before the connection closes
		app  []string // targets the app reads
	}{
		{"cl_te", clTE + get, []int{400}, nil},
		{"te_cl", post + "Transfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n8\r\nSMUGGLED\r\n0\r\n\r\n" + get, []int{400}, nil},
		{"cl_zero_te", post + "Content-Length: 0\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n" + get, []int{400}, nil},
		{"lower_case_names", post + "content-length: 6\r\ntransfer-encoding: chunked\r\n\r\n0\r\n\r\nG" + get, []int{400}, nil},
		{"cl_te_after_keep_alive", get + clTE + get, []int{200, 400}, []string{"/api/x"}},
		{"cl_te_after_a_body", post + "Content-Length: 5\r\n\r\nhello" + clTE + get, []int{200, 400}, []string{"/api/x"}},
		{"cl_te_in_a_body_is_data", post + "Content-Length: " + fmt.Sprint(len(clTE)) + "\r\n\r\n" + clTE + last,
			[]int{200, 200}, []string{"/api/x", "/api/last"}},
		{"pipelined_keep_alive", get + get + last, []int{200, 200, 200}, []string{"/api/x", "/api/x", "/api/last"}},
		{"empty_line_after_post", post + "Content-Length: 5\r\n\r\nhello\r\n" + last, []int{200, 200}, []string{"/api/x", "/api/last"}},
		{"cl_te_after_options_asterisk", "OPTIONS * HTTP/1.1\r\nHost: orders\r\n\r\n" + clTE + get, []int{400}, nil},
		// A target policy cannot decide is refused and the connection
		// closed on both paths: what follows is not read.
		{"fragment_closes", "GET /api/x#/../internal HTTP/1.1\r\nHost: orders\r\n\r\n" + get, []int{400}, nil},
		{"dot_segment_beside_encoded_slash_closes", "GET /api/%2F../internal HTTP/1.1\r\nHost: orders\r\n\r\n" + get, []int{400}, nil},
		{"undecidable_after_keep_alive", get + "GET /api/x#f HTTP/1.1\r\nHost: orders\r\n\r\n" + get, []int{200, 400}, []string{"/api/x"}},
		{"chunked_closes_after", post + "Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n" + get, []int{200}, []string{"/api/x"}},
	}
	dials := []struct {
		name string
		conf *tls.Config
	}{
		{"plaintext", nil},
		{"mtls", &tls.Config{Certificates: []tls.Certificate{ca.SVID(t, frontendID, 0).TLSCertificate()}, RootCAs: ca.Pool(), InsecureSkipVerify: true, NextProtos: []string{"http/1.1"}}},
	}
	for _, tc := range tests {
		for _, d := range dials {
			t.Run(tc.name+"/"+d.name, func(t *testing.T) {
				app.take()
				var c net.Conn
				var err error
				if d.conf == nil {
					c, err = net.Dial("tcp", addr)
				} else {
					c, err = tls.Dial("tcp", addr, d.conf)
				}
				if err != nil {
					t.Fatal(err)
				}
				checkRawExchange(t, c, app, tc.raw, tc.want, tc.app)
			})
		}
	}
}

// TestOutboundUndecidableTargetCloses: the outbound listener (HTTP/1.1 to
// the upstream, so that the fast path serves it) refuses a
// target the upstream's policy could not decide (400) and closes the
// connection, on both server paths, and the upstream sees none of it.
func TestOutboundUndecidableTargetCloses(t *testing.T) {
	forServerPaths(t, func(t *testing.T, sp serverPath) {
		app := newRecordingApp(t)
		p := newPairWith(t, allowPrincipals(policy.ModePermissive, "example.org/ns/prod/sa/frontend"), app.addr, HTTP, true, sp.edit)
		const get = "GET /api/x HTTP/1.1\r\nHost: orders\r\n\r\n"
		tests := []struct {
			name string
			raw  string
			want []int
			app  []string
		}{
			{"fragment", "GET /api/x#/../internal HTTP/1.1\r\nHost: orders\r\n\r\n" + get, []int{400}, nil},
			{"dot_segment_beside_encoded_slash", "GET /api/%2F../internal HTTP/1.1\r\nHost: orders\r\n\r\n" + get, []int{400}, nil},
			{"after_keep_alive", get + "GET /a#b HTTP/1.1\r\nHost: orders\r\n\r\n" + get, []int{200, 400}, []string{"/api/x"}},
		}
		for _, tc := range tests {
			t.Run(tc.name, func(t *testing.T) {
				app.take()
				c, err := net.Dial("tcp", strings.TrimPrefix(p.outboundURL, "http://"))
				if err != nil {
					t.Fatal(err)
				}
				checkRawExchange(t, c, app, tc.raw, tc.want, tc.app)
			})
		}
	})
}

// checkRawExchange writes raw on c and reads the answers until c ends,
// then checks their statuses against want and the targets app read since
// its last take against wantApp. It closes c.
func checkRawExchange(t *testing.T, c net.Conn, app *recordingApp, raw string, want []int, wantApp []string) {
	t.Helper()
	defer c.Close()
	got, err := exchangeRaw(c, raw)
	if errors.Is(err, os.ErrDeadlineExceeded) {
		t.Errorf("the sidecar kept the connection open after %v", got)
	}
	var seen []string
	for _, r := range app.take() {
		seen = append(seen, r.uri)
	}
	if fmt.Sprint(got) != fmt.Sprint(want) || fmt.Sprint(seen) != fmt.Sprint(wantApp) {
		t.Errorf("statuses %v, app saw %q; want %v and %q", got, seen, want, wantApp)
	}
}

// exchangeRaw writes raw to c and reads responses until c ends (or 5 s
// pass: the error is then os.ErrDeadlineExceeded).
func exchangeRaw(c net.Conn, raw string) ([]int, error) {
	c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.WriteString(c, raw); err != nil {
		return nil, err
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

// TestFramingGuardVerdicts: what the guard tells the handler of each
// request, for streams fed whole.
func TestFramingGuardVerdicts(t *testing.T) {
	const get = "GET / HTTP/1.1\r\nHost: o\r\n\r\n"
	tests := []struct {
		name string
		in   string
		want string // per request taken: status/close
	}{
		{"keep_alive", get + get, "0/false 0/false 400/true"},
		{"body_then_head", "POST / HTTP/1.1\r\nHost: o\r\nContent-Length: 3\r\n\r\nabc" + get, "0/false 0/false 400/true"},
		{"post_then_crlf", "POST / HTTP/1.1\r\nHost: o\r\nContent-Length: 3\r\n\r\nabc\r\n" + get, "0/false 0/false 400/true"},
		{"cl_te", "POST / HTTP/1.1\r\nHost: o\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n" + get, "400/true 400/true"},
		{"second_is_cl_te", get + "POST / HTTP/1.1\r\nHost: o\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n", "0/false 400/true 400/true"},
		{"chunked", "POST / HTTP/1.1\r\nHost: o\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n" + get, "0/true 400/true"},
		{"bare_lf", "GET / HTTP/1.1\nHost: o\n\n", "400/true 400/true"},
		{"head_too_long", "GET / HTTP/1.1\r\nHost: o\r\nX: " + string(bytes.Repeat([]byte("a"), 200)), "431/true 400/true"},
		{"head_not_yet_read", "GET / HTTP/1.1\r\nHost: o\r\n", "400/true"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			for _, step := range []int{len(tc.in), 1, 7} {
				g := &framingGuard{limit: 128}
				for in := []byte(tc.in); len(in) > 0; {
					k := min(step, len(in))
					g.feed(append([]byte(nil), in[:k]...))
					in = in[k:]
				}
				var got []string
				for range len(strings.Fields(tc.want)) {
					s, c := g.take()
					got = append(got, fmt.Sprintf("%d/%v", s, c))
				}
				if strings.Join(got, " ") != tc.want {
					t.Errorf("fed %d bytes at a time: %v, want %s", step, got, tc.want)
				}
			}
		})
	}
}

// TestFramingGuardStandIn: what net/http reads through the guard. A head
// the guard frames reaches it byte for byte, however the reads split it;
// a head the guard refuses — every Transfer-Encoding net/http would
// answer with its own bare 501, a head over the limit, a field net/http
// would answer with its own bare 400 — never does: net/http reads a
// stand-in it accepts (the request line and Host when they are valid),
// without a body and with Connection: close, and the handler is told to
// refuse it. Differential: for every Transfer-Encoding value, a head
// net/http.ReadRequest takes as chunked passes unchanged, and one it
// refuses is refused.
func TestFramingGuardStandIn(t *testing.T) {
	const (
		post  = "POST /api/x?a=1 HTTP/1.1\r\nHost: orders:8443\r\n"
		other = "GET /next HTTP/1.1\r\nHost: orders\r\n\r\n"
		// the stand-in of a refused post: its request line and Host
		postIn = "POST /api/x?a=1 HTTP/1.1 orders:8443"
	)
	tests := []struct {
		name   string
		in     string
		refuse int    // 0: passed on unchanged
		line   string // the stand-in's request line and Host
	}{
		{"chunked", post + "Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 0, ""},
		{"chunked_upper_case", post + "Transfer-Encoding: CHUNKED\r\n\r\n0\r\n\r\n", 0, ""},
		{"chunked_lower_case_name", post + "transfer-encoding: Chunked\r\n\r\n0\r\n\r\n", 0, ""},
		{"chunked_ows", post + "Transfer-Encoding:\t chunked \r\n\r\n0\r\n\r\n", 0, ""},
		{"content_length", post + "Content-Length: 5\r\n\r\nhello" + other, 0, ""},
		{"upgrade_then_frames", "GET /ws HTTP/1.1\r\nHost: orders\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n\x81\x05hello", 0, ""},
		{"h2c_preface", "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00", 0, ""},
		{"xchunked", post + "Transfer-Encoding: xchunked\r\n\r\n0\r\n\r\n" + other, 400, postIn},
		{"chunked_x", post + "Transfer-Encoding: chunkedx\r\n\r\n", 400, postIn},
		{"identity", post + "Transfer-Encoding: identity\r\n\r\n", 400, postIn},
		{"empty", post + "Transfer-Encoding: \r\n\r\n", 400, postIn},
		{"list", post + "Transfer-Encoding: gzip, chunked\r\n\r\n", 400, postIn},
		{"chunked_twice_in_a_list", post + "Transfer-Encoding: chunked, chunked\r\n\r\n", 400, postIn},
		{"two_fields", post + "Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n", 400, postIn},
		{"parameter", post + "Transfer-Encoding: chunked;x=1\r\n\r\n", 400, postIn},
		{"kelvin_sign", post + "Transfer-Encoding: chun\xe2\x84\xaaed\r\n\r\n", 400, postIn},
		{"vertical_tab", post + "Transfer-Encoding: \x0bchunked\r\n\r\n", 400, postIn},
		{"space_before_colon", post + "Transfer-Encoding : chunked\r\n\r\n", 400, postIn},
		{"underscore_name_is_another_field", post + "Transfer_Encoding: chunked\r\nContent-Length: 0\r\n\r\n", 0, ""},
		{"cl_te", post + "Content-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400, postIn},
		{"te_http10", "POST /api/x HTTP/1.0\r\nHost: orders\r\nTransfer-Encoding: chunked\r\n\r\n", 400, "POST /api/x HTTP/1.0 orders"},
		{"second_head", other + "POST /b HTTP/1.1\r\nHost: orders\r\nTransfer-Encoding: xchunked\r\n\r\n", 400, "POST /b HTTP/1.1 orders"},
		{"field_name_net_http_refuses", "GET /a HTTP/1.1\r\nHost: orders\r\nX\x01Y: 1\r\n\r\n", 400, "GET /a HTTP/1.1 orders"},
		{"bad_host", "GET /a HTTP/1.1\r\nHost: a b\r\n\r\n", 400, "GET / HTTP/1.1 "},
		{"bad_request_line", "GET /a\x01 HTTP/1.1\r\nHost: orders\r\n\r\n", 400, "GET / HTTP/1.1 "},
		{"not_http", "\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n", 400, "GET / HTTP/1.1 "},
		{"head_too_long", "GET /a HTTP/1.1\r\nHost: orders\r\nX: " + strings.Repeat("a", 300), 431, "GET /a HTTP/1.1 orders"},
		// What net/http's server answers itself after reading a head it
		// accepts: 417 for an Expect without 100-continue, 505 for
		// another major version (h2c's preface aside).
		{"expect_unknown", "POST /a HTTP/1.1\r\nHost: orders\r\nExpect: 200-ok\r\nContent-Length: 2\r\n\r\n{}", 417, "POST /a HTTP/1.1 orders"},
		{"expect_continue_lower_case_http10", "POST /a HTTP/1.0\r\nHost: orders\r\nExpect: 100-CONTINUE\r\nContent-Length: 2\r\n\r\n{}", 0, ""},
		{"expect_continue_among_others", "POST /a HTTP/1.1\r\nHost: orders\r\nExpect: x 100-continue,y\r\nContent-Length: 2\r\n\r\n{}", 0, ""},
		{"expect_continue_glued", "POST /a HTTP/1.1\r\nHost: orders\r\nExpect: x100-continue\r\nContent-Length: 2\r\n\r\n{}", 417, "POST /a HTTP/1.1 orders"},
		{"expect_empty", "POST /a HTTP/1.1\r\nHost: orders\r\nExpect: \r\nContent-Length: 2\r\n\r\n{}", 0, ""},
		// An expectation with two readings is refused (see h1parse.go):
		// net/http acts on the first field alone.
		{"expect_second_field", "POST /a HTTP/1.1\r\nHost: orders\r\nExpect: 100-continue\r\nExpect: x\r\nContent-Length: 2\r\n\r\n{}", 417, "POST /a HTTP/1.1 orders"},
		{"expect_named_by_connection", "POST /a HTTP/1.1\r\nHost: orders\r\nConnection: expect\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\n{}", 417, "POST /a HTTP/1.1 orders"},
		{"http2_without_preface", "GET /a HTTP/2.0\r\nHost: orders\r\n\r\n", 505, "GET / HTTP/1.1 "},
		{"http3", "GET /a HTTP/3.0\r\nHost: orders\r\n\r\n", 505, "GET / HTTP/1.1 "},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			// Differential: net/http's own reading of the first head.
			if !strings.HasPrefix(tc.name, "second_") && strings.Contains(strings.ToLower(tc.in), "transfer-encoding") {
				req, err := http.ReadRequest(bufio.NewReader(strings.NewReader(tc.in)))
				netChunked := err == nil && fmt.Sprint(req.TransferEncoding) == "[chunked]"
				if netChunked != (tc.refuse == 0) && !strings.HasPrefix(tc.name, "cl_te") && tc.name != "te_http10" {
					t.Fatalf("net/http reads it as chunked: %v (%v); the table says refuse %d", netChunked, err, tc.refuse)
				}
			}
			for _, step := range []int{len(tc.in), 1, 5} {
				g := &framingGuard{Conn: &splitConn{in: []byte(tc.in), step: step}, limit: 256}
				out, err := io.ReadAll(g)
				if err != nil {
					t.Fatal(err)
				}
				if tc.refuse == 0 {
					if string(out) != tc.in {
						t.Fatalf("read %d at a time: net/http reads %q, want it unchanged", step, out)
					}
					continue
				}
				// Every head before the refused one, unchanged; then the
				// stand-in, and nothing after it.
				br := bufio.NewReader(bytes.NewReader(out))
				for {
					req, err := http.ReadRequest(br)
					if err != nil {
						t.Fatalf("read %d at a time: net/http refuses what the guard passes on (%q): %v", step, out, err)
					}
					s, closeAfter := g.take()
					if s == 0 {
						io.Copy(io.Discard, req.Body)
						continue
					}
					if got := req.Method + " " + req.RequestURI + " " + req.Proto + " " + req.Host; s != tc.refuse || !closeAfter || got != tc.line {
						t.Fatalf("read %d at a time: stand-in %q, verdict %d/%v; want %q, %d/true", step, got, s, closeAfter, tc.line, tc.refuse)
					}
					if !req.Close || req.ContentLength != 0 || len(req.TransferEncoding) != 0 || len(req.Header) != 1 {
						t.Fatalf("read %d at a time: stand-in %q has a body or fields: %v", step, out, req.Header)
					}
					if br.Buffered() != 0 {
						t.Fatalf("read %d at a time: %q passed on after the stand-in", step, out)
					}
					break
				}
			}
		})
	}
}

// TestFramingGuardHeadTimeout: a held head shows net/http no byte until
// it is whole, so the guard bounds reading it itself, from its first byte
// (slowloris on a kept-alive connection, where net/http waits for the
// next head's first byte under IdleTimeout alone): a head cut short fails
// the read with a deadline error though net/http set none, while a
// deadline net/http sets stays in force, and a connection idle between
// heads is not bounded by the head's.
func TestFramingGuardHeadTimeout(t *testing.T) {
	const headTimeout = 100 * time.Millisecond
	read := func(g net.Conn) (time.Duration, error) {
		start := time.Now()
		_, err := g.Read(make([]byte, 4096))
		return time.Since(start), err
	}
	t.Run("head_cut_short", func(t *testing.T) {
		a, b := net.Pipe()
		defer a.Close()
		defer b.Close()
		g := guardFraming(a, 4096, headTimeout)
		g.SetReadDeadline(time.Time{}) // net/http, waiting for a kept-alive connection's next head
		go io.WriteString(b, "GET / HTTP/1.1\r\nHost: o\r\nX-Slow: ")
		took, err := read(g)
		if !errors.Is(err, os.ErrDeadlineExceeded) || took > 5*time.Second {
			t.Fatalf("after %v: %v, want a deadline error", took, err)
		}
	})
	t.Run("net_http_deadline_earlier", func(t *testing.T) {
		a, b := net.Pipe()
		defer a.Close()
		defer b.Close()
		g := guardFraming(a, 4096, time.Hour)
		go io.WriteString(b, "GET / HT")
		g.SetReadDeadline(time.Now().Add(headTimeout))
		if took, err := read(g); !errors.Is(err, os.ErrDeadlineExceeded) {
			t.Fatalf("after %v: %v, want net/http's deadline", took, err)
		}
	})
	t.Run("whole_head_then_idle", func(t *testing.T) {
		a, b := net.Pipe()
		defer a.Close()
		defer b.Close()
		g := guardFraming(a, 4096, headTimeout)
		go func() {
			io.WriteString(b, "GET / HTT")
			io.WriteString(b, "P/1.1\r\nHost: o\r\n\r\n")
		}()
		if _, err := io.ReadFull(g, make([]byte, len("GET / HTTP/1.1\r\nHost: o\r\n\r\n"))); err != nil {
			t.Fatal(err)
		}
		// Idle after the head: the head's deadline is gone; the next
		// bytes come after it would have passed.
		done := make(chan error, 1)
		go func() {
			_, err := g.Read(make([]byte, 64))
			done <- err
		}()
		time.Sleep(3 * headTimeout) // the client's pause; no clock is awaited
		io.WriteString(b, "GET / HTTP/1.1\r\nHost: o\r\n\r\n")
		select {
		case err := <-done:
			if err != nil {
				t.Fatalf("the next head after an idle pause: %v", err)
			}
		case <-time.After(5 * time.Second):
			t.Fatal("the next head was not passed on")
		}
	})
}

// splitConn is a connection whose reads return in, step bytes at a time,
// then io.EOF.
type splitConn struct {
	net.Conn
	in   []byte
	step int
}

func (c *splitConn) Read(p []byte) (int, error) {
	if len(c.in) == 0 {
		return 0, io.EOF
	}
	n := copy(p, c.in[:min(c.step, len(c.in))])
	c.in = c.in[n:]
	return n, nil
}

// FuzzFramingGuard: the guard's reading of a stream does not depend on how
// the reads split it, and what it accepts as a head net/http reads as one
// with the same body length.
func FuzzFramingGuard(f *testing.F) {
	for _, s := range []string{
		"GET / HTTP/1.1\r\nHost: o\r\n\r\nGET / HTTP/1.1\r\nHost: o\r\n\r\n",
		"POST / HTTP/1.1\r\nHost: o\r\nContent-Length: 3\r\n\r\nabc\r\nGET / HTTP/1.1\r\nHost: o\r\n\r\n",
		"POST / HTTP/1.1\r\nHost: o\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
		"POST / HTTP/1.1\r\nHost: o\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
		"GET / HTTP/1.1\nHost: o\n\n",
		"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
		"GET / HTTP/1.1\r\nHost: o\r\n\r\nGET / HT",
		"0 * HTTP/1.0\n\n0\nHost:00",
		"0000 * HTTP/1.2\r\n\r\n0",
		"POST / HTTP/1.1\r\nHost: o\r\nTransfer-Encoding: xchunked\r\n\r\n0\r\n\r\n",
		"GET /ws HTTP/1.1\r\nHost: o\r\nUpgrade: websocket\r\n\r\n\x81\x00GET / HTTP/1.1\r\nHost: o\r\n\r\n",
	} {
		f.Add([]byte(s), uint8(3))
	}
	// A head over the limit whose end comes in the read that crosses it:
	// 431 whether it is read whole or not.
	f.Add([]byte("0 \xf7 HTTP/1.0"+strings.Repeat("\xee", 600)+"\r\n\r\n0"), uint8(136))
	f.Fuzz(func(t *testing.T, in []byte, step uint8) {
		whole := &framingGuard{limit: 512}
		whole.feed(append([]byte(nil), in...))
		split := &framingGuard{limit: 512}
		k := max(int(step), 1)
		for b := in; len(b) > 0; {
			n := min(k, len(b))
			split.feed(append([]byte(nil), b[:n]...))
			b = b[n:]
		}
		if whole.heads != split.heads || whole.end != split.end || whole.refuse != split.refuse || whole.body != split.body {
			t.Fatalf("whole: %d heads, end %d (%d), body %d; split by %d: %d heads, end %d (%d), body %d",
				whole.heads, whole.end, whole.refuse, whole.body, k, split.heads, split.end, split.refuse, split.body)
		}
		checkGuardOutput(t, in, k)
		// The first head, when the guard framed it, is one net/http reads
		// with the body length the guard skips.
		if whole.heads > 0 && (whole.end == 0 || whole.end > 1) {
			req, err := http.ReadRequest(bufio.NewReader(bytes.NewReader(in)))
			if err != nil {
				t.Fatalf("the guard framed a head net/http refuses: %v", err)
			}
			// (A PRI preface is HTTP/2's: the guard's work ends there.)
			if first := firstHeadLength(in); req.ProtoMajor == 1 && req.ContentLength != first {
				t.Fatalf("net/http reads a body of %d bytes, the guard %d", req.ContentLength, first)
			}
		}
	})
}

// checkGuardOutput: what net/http reads through a guard of in (read k
// bytes at a time) is in itself, unless the guard refused a head; then it
// is the heads before that one as they came, each of which net/http
// reads, and the refused one's stand-in, which net/http reads too, and
// nothing after it. However the reads split in, net/http reads the same.
func checkGuardOutput(t *testing.T, in []byte, k int) {
	t.Helper()
	var outs [2][]byte
	var g *framingGuard
	for i, step := range []int{len(in) + 1, k} {
		g = &framingGuard{Conn: &splitConn{in: in, step: step}, limit: 512}
		out, err := io.ReadAll(g)
		if err != nil {
			t.Fatal(err)
		}
		outs[i] = out
	}
	if !bytes.Equal(outs[0], outs[1]) {
		t.Fatalf("read whole, net/http reads %q; %d bytes at a time, %q", outs[0], k, outs[1])
	}
	out := outs[0]
	if !g.drop {
		// A head cut short by the end of the connection is held back.
		if held := len(g.head); g.open && !bytes.Equal(out, in) || !g.open && !bytes.Equal(out, in[:len(in)-held]) {
			t.Fatalf("nothing refused, yet net/http reads %q for %q", out, in)
		}
		// A first head passed on whole is one net/http's server serves:
		// it does not answer it itself (400, 417, 501, 505...).
		if g.heads > 0 {
			req, _, err := netHTTPRequest(in)
			if err == nil && req.Header.Get("Expect") != "" && !boundedToken([]byte(req.Header.Get("Expect")), "100-continue") {
				err = errors.New("417 Expectation Failed")
			}
			if err != nil {
				t.Fatalf("the guard passes on %q, which net/http's server answers itself: %v", in, err)
			}
		}
		return
	}
	br := bufio.NewReader(bytes.NewReader(out))
	for i := 1; i <= g.end; i++ {
		req, err := http.ReadRequest(br)
		if err != nil {
			t.Fatalf("head %d of %q: net/http refuses what the guard passes on: %v", i, out, err)
		}
		if i == g.end && (!req.Close || req.ContentLength != 0) {
			t.Fatalf("stand-in of %q: %q", in, out)
		}
		io.Copy(io.Discard, req.Body)
		// net/http's server skips up to 4 CR or LF after a POST.
		for j := 0; j < 4 && req.Method == http.MethodPost; j++ {
			if c, err := br.Peek(1); err != nil || c[0] != '\r' && c[0] != '\n' {
				break
			}
			br.ReadByte()
		}
	}
	if br.Buffered() != 0 {
		t.Fatalf("%q passed on after the stand-in", out)
	}
}

// firstHeadLength is the body length the guard gives the first head of in.
func firstHeadLength(in []byte) int64 {
	var req h1Request
	parseRequestHead(append([]byte(nil), in...), &req)
	return req.length
}

// TestFastConnHoldsOneTokenRegistration: a fast path connection is
// registered under the jti of the token its requests carry (and the
// workloads that token names) once, not once a request; another token
// moves the registration, none drops it, and so does the connection's
// end. Revoking the jti it holds closes it, and so does revoking a
// workload its token names.
func TestFastConnHoldsOneTokenRegistration(t *testing.T) {
	s := &Sidecar{live: newTracker()}
	c := &scriptConn{}
	fc := newFastConn(s, c, func() bool { return false })
	held := func() []string {
		s.live.mu.Lock()
		defer s.live.mu.Unlock()
		var out []string
		for k, m := range s.live.byKey {
			out = append(out, fmt.Sprintf("%s×%d", k.v, m.len()))
		}
		return out
	}
	steps := []struct {
		jti  string
		want string
	}{
		{"a", "[a×1]"},
		{"a", "[a×1]"},
		{"b", "[b×1]"},
		{"", "[]"},
		{"a", "[a×1]"},
	}
	for i, st := range steps {
		d := &decidedRequest{auth: &policy.Auth{Claims: map[string]any{"jti": st.jti}}}
		if got := fc.holdToken(st.jti, d); got != (st.jti != "") {
			t.Fatalf("step %d: holdToken(%q) = %v", i, st.jti, got)
		}
		if got := fmt.Sprint(held()); got != st.want {
			t.Fatalf("step %d (%q): registered %s, want %s", i, st.jti, got, st.want)
		}
	}
	if n := s.live.sweep(&revocationSet{jtis: map[string]time.Time{"a": time.Now().Add(time.Hour)}}, "", time.Now(), nil); n != 1 || !fc.aborted.Load() {
		t.Fatalf("revoking a closed %d, aborted %v; want the connection", n, fc.aborted.Load())
	}
	fc.release()
	if got := fmt.Sprint(held()); got != "[]" {
		t.Fatalf("after release: %s registered", got)
	}
	const owner = "spiffe://example.org/ns/prod/sa/reports"
	fc = newFastConn(s, c, func() bool { return false })
	fc.holdToken("c", &decidedRequest{auth: &policy.Auth{Claims: map[string]any{"jti": "c", "sub": "alice", "azp": owner}}})
	if n := s.live.sweep(newRevocationSet(&wire.Revocations{SPIFFEIDs: []string{owner}}), "", time.Now(), nil); n != 1 || !fc.aborted.Load() {
		t.Fatalf("revoking the token's workload closed %d, aborted %v; want the connection", n, fc.aborted.Load())
	}
	fc.release()
}

// BenchmarkFramingGuard is what the guard adds to a request on net/http's
// path: following a keep-alive connection over one read per request.
func BenchmarkFramingGuard(b *testing.B) {
	req := []byte("POST /api/orders/42 HTTP/1.1\r\nHost: orders\r\nUser-Agent: bench\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}")
	g := &framingGuard{Conn: &scriptConn{request: string(req), left: 1 << 62}, limit: 64 << 10}
	p := make([]byte, 4096)
	b.ReportAllocs()
	cpu0 := cpuTime()
	defer func() { b.ReportMetric(float64(cpuTime()-cpu0)/float64(b.N), "cpu-ns/op") }()
	for b.Loop() {
		if _, err := g.Read(p); err != nil {
			b.Fatal(err)
		}
		if s, _ := g.take(); s != 0 {
			b.Fatalf("refused: %d", s)
		}
	}
}

// TestTrackerKeys: entries under one key, under two keys, removed in any
// order and swept by a revocation, are each closed once and forgotten.
func TestTrackerKeys(t *testing.T) {
	tr := newTracker()
	closed := map[string]int{}
	entry := func(name string, keys ...liveKey) *tracked {
		return tr.add(func() { closed[name]++ }, keys...)
	}
	a := entry("a", idKey("spiffe://td/x"), serialKey("1"))
	b := entry("b", idKey("spiffe://td/x"), serialKey("2"))
	entry("c", idKey("spiffe://td/x"))
	j := entry("j", jtiKey("t1"))
	tr.remove(a) // the first under idKey goes; b and c stay under it
	tr.remove(a)
	if n := tr.len(); n != 3 {
		t.Fatalf("%d entries after removing a, want 3", n)
	}
	d := entry("d", idKey("spiffe://td/x")) // the freed single slot is taken again
	rs := newRevocationSet(&wire.Revocations{SPIFFEIDs: []string{"spiffe://td/x"}})
	tr.sweep(rs, "", time.Now(), nil)
	if fmt.Sprint(closed) != "map[b:1 c:1 d:1]" || tr.len() != 1 {
		t.Fatalf("closed %v, %d left; want b, c and d closed once, j left", closed, tr.len())
	}
	tr.remove(j)
	tr.remove(b)
	tr.remove(d)
	if n, keys := tr.len(), len(tr.byKey); n != 0 || keys != 0 {
		t.Fatalf("%d entries under %d keys left, want none", n, keys)
	}

	// An entry whose SPIFFE ID and serial are both revoked is one
	// connection closed, counted once.
	entry("e", idKey("spiffe://td/y"), serialKey("3"))
	both := newRevocationSet(&wire.Revocations{SPIFFEIDs: []string{"spiffe://td/y"}, Serials: []wire.RevokedSerial{{Serial: "3", ExpiresAt: time.Now().Add(time.Hour)}}})
	counted := 0
	if n := tr.sweep(both, "", time.Now(), func(n int) { counted = n }); n != 1 || counted != 1 || closed["e"] != 1 || tr.len() != 0 {
		t.Fatalf("sweep of an entry under two revoked keys: returned %d, counted %d, closed %d times, %d left; want 1, 1, 1, 0", n, counted, closed["e"], tr.len())
	}
}
