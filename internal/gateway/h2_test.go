package gateway

import (
	"bytes"
	"crypto/tls"
	"fmt"
	"io"
	"strings"
	"testing"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"

	"github.com/moatless/moatless/internal/config"
	"github.com/moatless/moatless/internal/wire"
)

// hf is one HTTP/2 header field as a client writes it.
type hf struct{ k, v string }

// h2raw sends one request on a fresh HTTP/2 connection, written frame by
// frame (pseudo-headers, names and methods as given: what Go's client
// would refuse to send), and returns ":status body", with "[GOAWAY code]"
// where the server sent one and "RST code" when it reset the stream.
func h2raw(t *testing.T, tg *testGateway, headers []hf, body string, trailers []hf) string {
	t.Helper()
	c, err := tls.Dial("tcp", tg.addr, &tls.Config{RootCAs: tg.ca.Pool(), ServerName: "localhost", NextProtos: []string{"h2"}})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(3 * time.Second))
	io.WriteString(c, http2.ClientPreface)
	fr := http2.NewFramer(c, c)
	fr.WriteSettings()
	enc := func(hs []hf) []byte {
		var b bytes.Buffer
		e := hpack.NewEncoder(&b)
		for _, h := range hs {
			e.WriteField(hpack.HeaderField{Name: h.k, Value: h.v})
		}
		return b.Bytes()
	}
	fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: enc(headers), EndHeaders: true, EndStream: body == "" && trailers == nil})
	if body != "" {
		fr.WriteData(1, trailers == nil, []byte(body))
	}
	if trailers != nil {
		fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: enc(trailers), EndHeaders: true, EndStream: true})
	}
	var out strings.Builder
	dec := hpack.NewDecoder(4096, func(f hpack.HeaderField) {
		if f.Name == ":status" {
			fmt.Fprintf(&out, "%s ", f.Value)
		}
	})
	for {
		f, err := fr.ReadFrame()
		if err != nil {
			return out.String() + " err:" + err.Error()
		}
		switch f := f.(type) {
		case *http2.SettingsFrame:
			if !f.IsAck() {
				fr.WriteSettingsAck()
			}
		case *http2.HeadersFrame:
			dec.Write(f.HeaderBlockFragment())
		case *http2.DataFrame:
			out.Write(f.Data())
			if f.StreamEnded() {
				return out.String()
			}
		case *http2.RSTStreamFrame:
			return out.String() + " RST " + f.ErrCode.String()
		case *http2.GoAwayFrame:
			fmt.Fprintf(&out, "[GOAWAY %s] ", f.ErrCode)
		}
	}
}

// TestGatewayHTTP2Oddities: requests Go's HTTP/2 client would not send,
// written as frames. Each gets the same answer as its HTTP/1.1 twin, or
// the HTTP/2 server refuses it; none reaches the app as something policy
// did not decide on.
func TestGatewayHTTP2Oddities(t *testing.T) {
	tg := startGateway(t, nil)
	req := func(method, path string, extra ...hf) []hf {
		return append([]hf{{":method", method}, {":scheme", "https"}, {":authority", "localhost"}, {":path", path}}, extra...)
	}
	tests := []struct {
		name string
		h    []hf
		want string // prefix of h2raw's answer, after any GOAWAY
		body string // the request body
	}{
		{"fragment_in_path", req("GET", "/orders/1#x"), `400 {"status":400,"error":"malformed request target"`, ""},
		{"path_parameter", req("GET", "/orders/..;/admin"), `400 {"status":400,"error":"malformed request path`, ""},
		{"asterisk_form", req("OPTIONS", "*"), `400 {"status":400,"error":"malformed request target"`, ""},
		{"absolute_path", req("GET", "https://evil.example/orders/1"), `400 {"status":400,"error":"malformed request target"`, ""},
		// The DENY on DELETE: "delete" is not let through as another token.
		{"method_lower_case", req("delete", "/orders/1"), `400 {"status":400,"error":"method must be upper case"`, ""},
		{"method_upper_case_denied", req("DELETE", "/orders/1"), `403 `, ""},
		{"connect", []hf{{":method", "CONNECT"}, {":authority", "localhost:443"}}, `405 `, ""},
		{"extended_connect", []hf{{":method", "CONNECT"}, {":protocol", "websocket"}, {":scheme", "https"}, {":authority", "localhost"}, {":path", "/ws"}}, ` RST PROTOCOL_ERROR`, ""},
		{"h2c_upgrade", req("GET", "/orders/1", hf{"upgrade", "h2c"}, hf{"http2-settings", "AAMAAABkAAQAoAAAAAIAAAAA"}), `400 `, ""},
		{"authority_userinfo", []hf{{":method", "GET"}, {":scheme", "https"}, {":authority", "user@localhost"}, {":path", "/orders/1"}}, ` RST PROTOCOL_ERROR`, ""},
		// A field value padded with whitespace is malformed in HTTP/2 (RFC
		// 9113 section 8.2.1): " admin" would not match what policy or a
		// rate limit compares while the app, which trims, reads "admin".
		{"value_leading_space", req("GET", "/orders/1", hf{"x-api-key", " spent"}), `400 {"status":400,"error":"malformed HTTP/2 field value`, ""},
		{"value_trailing_tab", req("GET", "/orders/1", hf{"x-role", "admin\t"}), `400 {"status":400,"error":"malformed HTTP/2 field value`, ""},
		{"value_inner_space", req("GET", "/orders/1", hf{"x-note", "a b"}), `200 `, ""},
		// Spoofable identity under "_" spellings: dropped, the app sees the
		// gateway's own X-Forwarded-For.
		{"underscore_identity", req("GET", "/orders/1", hf{"x_forwarded_for", "6.6.6.6"}, hf{"x-moatless_principal", "evil"}, hf{"x_forwarded_client_cert", "By=evil"}),
			`200 {"method":"GET","path":"/orders/1","query":"","headers":{"X-Forwarded-Client-Cert":["By=spiffe://moatless.local/ns/prod/sa/orders;`, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := h2raw(t, tg, tt.h, tt.body, nil)
			// One refused stream does not end the connection: no GOAWAY.
			if strings.Contains(got, "[GOAWAY") {
				t.Errorf("the refusal ended the connection: %.100q", got)
			}
			if !strings.HasPrefix(got, tt.want) {
				t.Fatalf("answer %.300q, want %q...", got, tt.want)
			}
			for _, leak := range []string{"6.6.6.6", "evil"} {
				if strings.Contains(got, leak) {
					t.Errorf("the app saw %q: %.300s", leak, got)
				}
			}
		})
	}
}

// TestGatewayTrailersCannotCarryIdentity: trailer fields are headers an
// app may merge with the head (Go's Request.Trailer, gRPC metadata): the
// identity and forwarding headers the gateway owns are dropped from them,
// declared or not, in HTTP/1.1 chunked bodies and in HTTP/2 trailers; an
// ordinary declared trailer goes through.
func TestGatewayTrailersCannotCarryIdentity(t *testing.T) {
	tg := startGateway(t, nil)
	forged := []string{"X-Forwarded-For", "X-Forwarded-Client-Cert", "X-Moatless-Principal", "X-Request-Id", "X-Envoy-Original-Path"}
	check := func(t *testing.T, body []byte) {
		t.Helper()
		s := decodeSeen(t, body)
		for _, h := range forged {
			if v, ok := s.Trailers[h]; ok {
				t.Errorf("the app received trailer %s: %v", h, v)
			}
		}
		if v := s.Trailers["X-Checksum"]; len(v) != 1 || v[0] != "abc" {
			t.Errorf("declared trailer X-Checksum %v, want [abc] (trailers %v)", v, s.Trailers)
		}
		if got := s.Headers["X-Forwarded-For"]; len(got) != 1 || got[0] != "127.0.0.1" {
			t.Errorf("X-Forwarded-For %v, want the gateway's", got)
		}
	}
	t.Run("http1_chunked", func(t *testing.T) {
		var tr strings.Builder
		for _, h := range forged {
			tr.WriteString(h + ": evil\r\n")
		}
		got := tg.raw(t, "POST /orders/1 HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\nTrailer: X-Checksum, X-Forwarded-For, X-Moatless-Principal\r\n\r\n"+
			"3\r\nabc\r\n0\r\nX-Checksum: abc\r\n"+tr.String()+"\r\n")
		if !strings.HasPrefix(got, "HTTP/1.1 200") {
			t.Fatalf("answer %q", firstLine(got))
		}
		check(t, []byte(got[strings.Index(got, "\r\n\r\n")+4:]))
	})
	t.Run("http2", func(t *testing.T) {
		trailers := []hf{{"x-checksum", "abc"}}
		for _, h := range forged {
			trailers = append(trailers, hf{strings.ToLower(h), "evil"})
		}
		got := h2raw(t, tg, []hf{{":method", "POST"}, {":scheme", "https"}, {":authority", "localhost"}, {":path", "/orders/1"},
			{"trailer", "x-checksum, x-forwarded-for, x-moatless-principal"}}, "abc", trailers)
		body, ok := strings.CutPrefix(got, "200 ")
		if !ok {
			t.Fatalf("answer %.300q", got)
		}
		check(t, []byte(body))
	})
}

// TestGatewayRateLimitKeyHTTP2Padding: over HTTP/2 a header-keyed limit
// is not renewed by padding the key with whitespace: " spent" was a fresh
// key to the gateway and "spent" to the app, whose HTTP/1.1 parser trims.
func TestGatewayRateLimitKeyHTTP2Padding(t *testing.T) {
	tg := startGateway(t, func(c *config.Gateway) {
		c.RateLimits = []config.GatewayRateLimit{{Name: "per-key", Key: "header:X-API-Key", Limit: 1, Window: wire.Duration(time.Hour)}}
		c.Routes[0].RateLimits = []string{"per-key"}
	})
	for i, tt := range []struct{ key, want string }{
		{"spent", "200 "}, {"spent", "429 "}, {" spent", "400 "}, {"spent\t", "400 "}, {"fresh", "200 "},
	} {
		got := h2raw(t, tg, []hf{{":method", "GET"}, {":scheme", "https"}, {":authority", "localhost"}, {":path", "/orders/1"}, {"x-api-key", tt.key}}, "", nil)
		if !strings.HasPrefix(got, tt.want) {
			t.Fatalf("request %d, key %q: %.200q, want %q...", i, tt.key, got, tt.want)
		}
	}
}
