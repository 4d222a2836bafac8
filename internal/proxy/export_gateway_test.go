package proxy

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"net/http/httptest"
	"reflect"
	"strings"
	"testing"
)

// TestFramingVerdict: the gateway's view of the guard gives, per request,
// what framed acts on: a guarded connection's verdicts in order, nothing
// for HTTP/2 or a request on a connection without a guard.
func TestFramingVerdict(t *testing.T) {
	const get = "GET / HTTP/1.1\r\nHost: o\r\n\r\n"
	const clTE = "POST / HTTP/1.1\r\nHost: o\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n"
	tests := []struct {
		name  string
		in    string // fed to a guard; "" for no guard
		proto int
		want  []string
	}{
		{"keep_alive", get + get, 1, []string{"0/false", "0/false"}},
		{"cl_te_after_get", get + clTE, 1, []string{"0/false", "400/true"}},
		{"chunked_closes", "POST / HTTP/1.1\r\nHost: o\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 1, []string{"0/true"}},
		{"no_guard", "", 1, []string{"0/false"}},
		{"http2_is_not_asked", clTE, 2, []string{"0/false"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			a, b := net.Pipe()
			defer a.Close()
			defer b.Close()
			ctx := context.Background()
			if tc.in != "" {
				gc := GuardFraming(a, 1024, 0)
				ctx = FramingContext(ctx, gc)
				go func() {
					b.Write([]byte(tc.in))
					b.Close()
				}()
				// What net/http would read: a refused head comes out as
				// its stand-in, of another length.
				if _, err := io.Copy(io.Discard, gc); err != nil {
					t.Fatal(err)
				}
			}
			var got []string
			for range tc.want {
				r := httptest.NewRequest("GET", "/", nil).WithContext(ctx)
				r.ProtoMajor = tc.proto
				s, c := FramingVerdict(r)
				got = append(got, fmt.Sprintf("%d/%v", s, c))
			}
			if strings.Join(got, " ") != strings.Join(tc.want, " ") {
				t.Errorf("verdicts %v, want %v", got, tc.want)
			}
		})
	}
}

// FuzzParseH1Head: a head ParseH1Head gives the gateway's fast path to
// serve is one net/http's server reads the same way: method, target,
// Host, header, Content-Length and Connection: close. (Everything else
// goes to net/http's server itself.)
func FuzzParseH1Head(f *testing.F) {
	for _, s := range []string{
		"GET / HTTP/1.1\r\nHost: o\r\n\r\n",
		"POST /a?b=c HTTP/1.1\r\nHost: o:8443\r\nContent-Length: 3\r\nConnection: close\r\n\r\nabc",
		"GET /x HTTP/1.1\r\nhost: o\r\nx-a: 1\r\nX-A: 2\r\nPragma: no-cache\r\n\r\n",
		"GET http://o/ HTTP/1.1\r\nHost: o\r\n\r\n",
		"POST / HTTP/1.1\r\nHost: o\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
		"GET / HTTP/1.0\r\n\r\n",
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, in []byte) {
		h, v := ParseH1Head(in)
		// A connection's parser, used before for a head of more fields,
		// reads the same.
		var p H1Parser
		p.Parse([]byte("POST /p HTTP/1.1\r\nHost: h\r\nA: 1\r\nB: 2\r\nC: 3\r\nD: 4\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"))
		if rh, rv := p.Parse(bytes.Clone(in)); rv != v || !reflect.DeepEqual(rh, h) {
			t.Fatalf("%q: a reused parser reads %v %+v, a new one %v %+v", in, rv, rh, v, h)
		}
		if v != H1Serve {
			return
		}
		// As net/http's server reads it (netHTTPRequest: the server's
		// Host and field checks too), since the fast path stands in for it.
		req, n, err := netHTTPRequest(in[:h.N])
		if err != nil || n != h.N {
			t.Fatalf("net/http's server refuses a head the fast path serves (%v), or reads %d bytes of its %d\n%q", err, n, h.N, in[:h.N])
		}
		if req.Method != h.Method || req.RequestURI != h.Target || req.Host != h.Host ||
			req.ContentLength != h.ContentLength || req.Close != h.Close || !reflect.DeepEqual(req.Header, h.Header) {
			t.Fatalf("net/http: %s %s host %q length %d close %v %v\nfast path: %s %s host %q length %d close %v %v",
				req.Method, req.RequestURI, req.Host, req.ContentLength, req.Close, req.Header,
				h.Method, h.Target, h.Host, h.ContentLength, h.Close, h.Header)
		}
	})
}
