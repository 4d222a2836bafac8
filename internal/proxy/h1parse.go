package proxy

import (
	"bytes"
	"encoding/binary"
	"net/http"
	"net/url"
	"strconv"
	"unsafe"

	"golang.org/x/net/http/httpguts"
)

// The HTTP/1.1 fast path reads message heads with the parsers in this
// file instead of net/http's. They parse in place, into offsets of the
// connection's buffer, and allocate nothing.
//
// A request parser is where request smuggling lives, so the request
// parser is built to one rule: a head it accepts is one net/http's server
// accepts, read the same way (method, target, Host, every header field,
// where the body ends) — FuzzH1RequestDifferential checks it against
// net/http.ReadRequest. What it does not accept it either hands to
// net/http's server (valid shapes the fast path does not serve: another
// HTTP version, an upgrade, Expect) or refuses with 400 and a closed
// connection. It refuses more than net/http, on purpose, everything that
// two parsers have been known to read differently (RFC 9112 §11.2):
//
//   - Content-Length next to Transfer-Encoding, in either order;
//   - more than one Content-Length field, even with equal values, and a
//     value that is not digits ("5, 5", "+5", "");
//   - a Transfer-Encoding other than exactly one "chunked";
//   - obs-fold (a field line starting with SP or HTAB), which net/http
//     unfolds and others read as a new field;
//   - a line ending in a bare LF, and a CR anywhere but before LF;
//   - whitespace or any other non-token byte between a field name and
//     its colon;
//   - NUL and every other control byte except HTAB in a field value, and
//     any control byte in the request line;
//   - an absolute-form target whose authority is not the Host field;
//   - an expectation with two readings (417, as net/http answers an
//     Expect it cannot meet): more than one Expect field, whose values
//     RFC 9110 §5.3 makes one list while net/http's server acts on the
//     first field alone (an app's server may act on the list, or on the
//     last: "Expect: 100-continue" then "Expect: x" is honoured by one
//     and refused by the other), and an Expect that Connection names,
//     which the client both sends to every hop (Expect is end to end,
//     §10.1.1) and takes back from all but the first (§7.6.1 forbids
//     nominating such a field). curl and other clients retry a 417
//     without the expectation.
//
// The response parser reads what the app or the upstream sidecar answers.
// It has no refusals of its own: what it does not take (an informational
// or close-delimited answer, obs-fold, a bare LF...) is read by
// net/http.ReadResponse instead, whose verdict stands
// (FuzzH1ResponseDifferential).

// span is the byte range [off, end) of a message head.
type span struct{ off, end int }

// h1Field is one field line: its name, canonicalized in place as
// net/textproto canonicalizes it, and its value without the whitespace
// around it.
type h1Field struct{ name, value span }

// h1Verdict is what reading a head concluded.
type h1Verdict uint8

const (
	// h1More: no complete head yet.
	h1More h1Verdict = iota
	// h1OK: a head of a shape the fast path serves.
	h1OK
	// h1Handoff: a valid message the fast path leaves to net/http (a
	// request to its server, a response to ReadResponse).
	h1Handoff
	// h1Refuse: refuse the request (h1Request.refuse says how) and close
	// the connection.
	h1Refuse
)

// tokenByte marks RFC 9110 tchar, the bytes of methods and field names.
var tokenByte = func() (t [256]bool) {
	for c := '0'; c <= '9'; c++ {
		t[c] = true
	}
	for c := 'a'; c <= 'z'; c++ {
		t[c], t[c-'a'+'A'] = true, true
	}
	for _, c := range "!#$%&'*+-.^_`|~" {
		t[c] = true
	}
	return t
}()

// fieldValueByte reports whether c may appear in a field value: HTAB, SP,
// VCHAR and obs-text, as net/textproto accepts.
func fieldValueByte(c byte) bool { return c == '\t' || c >= 0x20 && c != 0x7f }

// validFieldValue reports whether every byte of v is a fieldValueByte (as
// httpguts.ValidHeaderFieldValue judges a value), eight bytes at a time:
// a bearer token is hundreds of bytes, and each sidecar checks it once
// parsing and once composing. A word with no byte below 0x20 and none
// equal to 0x7f is valid whole; a word with one (a HTAB, or a bad byte) is
// checked byte by byte. The word tests never miss such a byte (Bit
// Twiddling Hacks' hasless and haszero; bytes of obs-text, 0x80 and up,
// are masked out by ^w).
func validFieldValue(v []byte) bool {
	// Four words at a time, resliced (one bounds check per 32 bytes), the
	// two tests of each word OR-ed into one: a block with a suspect byte
	// anywhere is checked byte by byte.
	for len(v) >= 32 {
		if suspectWord(binary.LittleEndian.Uint64(v))|suspectWord(binary.LittleEndian.Uint64(v[8:]))|
			suspectWord(binary.LittleEndian.Uint64(v[16:]))|suspectWord(binary.LittleEndian.Uint64(v[24:])) != 0 && !validFieldBytes(v[:32]) {
			return false
		}
		v = v[32:]
	}
	for len(v) >= 8 {
		if suspectWord(binary.LittleEndian.Uint64(v)) != 0 && !validFieldBytes(v[:8]) {
			return false
		}
		v = v[8:]
	}
	return validFieldBytes(v)
}

// suspectWord is not 0 when a byte of w is below 0x20 or is 0x7f (Bit
// Twiddling Hacks' hasless and haszero; bytes of obs-text, 0x80 and up,
// are masked out by ^w). It is never 0 for such a word; it may be for a
// valid one (an HTAB), which is then checked byte by byte.
func suspectWord(w uint64) uint64 {
	const ones, highs = 0x0101010101010101, 0x8080808080808080
	del := w ^ (ones * 0x7f)
	return ((w-ones*0x20)&^w | (del-ones)&^del) & highs
}

// validFieldBytes is validFieldValue a byte at a time.
func validFieldBytes(v []byte) bool {
	for _, c := range v {
		if !fieldValueByte(c) {
			return false
		}
	}
	return true
}

// validFieldString is validFieldValue of a string's bytes, in place.
func validFieldString(v string) bool {
	return validFieldValue(unsafe.Slice(unsafe.StringData(v), len(v)))
}

// h1HeadEnd returns the length of the head at the start of b, through the
// empty line that ends it, or 0 when b holds no complete head yet. bad
// reports a line ending in a bare LF: HTTP/1.1 lines end in CRLF (RFC
// 9112 §2.2), and a parser that accepts LF alone (net/http does) reads
// the message differently from one that does not.
func h1HeadEnd(b []byte) (n int, bad bool) {
	i := 0
	for {
		j := bytes.IndexByte(b[i:], '\n')
		if j < 0 {
			return 0, false
		}
		j += i
		if j == 0 || b[j-1] != '\r' {
			return 0, true
		}
		if j == i+1 { // "\r\n" alone: the empty line
			return j + 1, false
		}
		i = j + 1
	}
}

// canonicalizeName rewrites a field name (token bytes only) in place as
// net/textproto.CanonicalMIMEHeaderKey does: upper case first and after
// each '-', lower case elsewhere.
func canonicalizeName(b []byte) {
	upper := true
	for i, c := range b {
		if upper && 'a' <= c && c <= 'z' {
			c -= 'a' - 'A'
		} else if !upper && 'A' <= c && c <= 'Z' {
			c += 'a' - 'A'
		}
		b[i] = c
		upper = c == '-'
	}
}

// parseFields reads the field lines of a head, b[i:n] (n is the head's
// end, empty line included), into fields. ok is false for a line net/http
// refuses or this parser refuses on purpose (obs-fold, a non-token byte
// before the colon, a control byte in a value).
func parseFields(b []byte, i, n int, fields []h1Field) ([]h1Field, bool) {
	for i < n-2 {
		j := i + bytes.IndexByte(b[i:n], '\n') // every line ends in CRLF (h1HeadEnd)
		line := b[i : j-1]
		if line[0] == ' ' || line[0] == '\t' {
			return fields, false // obs-fold, or whitespace before the first field
		}
		colon := 0
		for colon < len(line) && line[colon] != ':' {
			if !tokenByte[line[colon]] {
				return fields, false
			}
			colon++
		}
		if colon == 0 || colon == len(line) {
			return fields, false
		}
		canonicalizeName(line[:colon])
		vs, ve := i+colon+1, j-1
		for vs < ve && (b[vs] == ' ' || b[vs] == '\t') {
			vs++
		}
		for ve > vs && (b[ve-1] == ' ' || b[ve-1] == '\t') {
			ve--
		}
		if !validFieldValue(b[vs:ve]) {
			return fields, false
		}
		fields = append(fields, h1Field{name: span{i, i + colon}, value: span{vs, ve}})
		i = j + 1
	}
	return fields, true
}

// h1Request is a request head as the fast path read it. Spans are offsets
// into the buffer the head was parsed from.
type h1Request struct {
	n      int // length of the head, through the empty line
	method span
	target span
	fields []h1Field
	// host is the Host field's value; for an absolute-form target, the
	// authority (net/http's Request.Host), which the Host field equals.
	host span
	// absolute is an absolute-form target as net/http parses it; its
	// Host, when set, is the request's host.
	absolute *url.URL
	// length is the body's length: Content-Length, 0 without one.
	length int64
	// chunked: Transfer-Encoding: chunked, and no Content-Length.
	chunked bool
	// http11 is false for another valid version (HTTP/1.0): handed off.
	http11 bool
	// close: the client asked to close after the answer (Connection:
	// close).
	close bool
	// expect: an Expect field.
	expect bool
	// clField is the index of the Content-Length field, -1 without one.
	clField int
	// refuse is the status to refuse with (400, 431).
	refuse int
}

// isField reports whether f's name (canonical) is name.
func isField(b []byte, f h1Field, name string) bool {
	return f.name.end-f.name.off == len(name) && string(b[f.name.off:f.name.end]) == name
}

// parseRequestHead parses the request head at the start of b into req
// (whose fields slice it reuses). See the comment at the top of this file
// for what it accepts.
func parseRequestHead(b []byte, req *h1Request) h1Verdict {
	fields := req.fields[:0]
	*req = h1Request{fields: fields, clField: -1}
	n, bad := h1HeadEnd(b)
	if bad {
		return req.refused(http.StatusBadRequest)
	}
	if n == 0 {
		return h1More
	}
	req.n = n
	// The request line: method SP request-target SP HTTP-version, split
	// at the first two spaces as net/http splits it.
	eol := bytes.IndexByte(b, '\n') - 1
	line := b[:eol]
	sp := bytes.IndexByte(line, ' ')
	if sp <= 0 {
		return req.refused(http.StatusBadRequest)
	}
	for _, c := range line[:sp] {
		if !tokenByte[c] {
			return req.refused(http.StatusBadRequest)
		}
	}
	req.method = span{0, sp}
	sp2 := bytes.IndexByte(line[sp+1:], ' ')
	if sp2 <= 0 { // no version, or an empty target
		return req.refused(http.StatusBadRequest)
	}
	sp2 += sp + 1
	req.target = span{sp + 1, sp2}
	for _, c := range line[sp+1 : sp2] {
		if c < 0x20 || c == 0x7f {
			return req.refused(http.StatusBadRequest)
		}
	}
	proto := line[sp2+1:]
	req.http11 = string(proto) == "HTTP/1.1"
	// hostRequired: HTTP/1.1 and any later HTTP/1.x (net/http's
	// ProtoAtLeast(1, 1)); a later major version net/http refuses anyway.
	hostRequired := req.http11
	if !req.http11 {
		major, minor, ok := http.ParseHTTPVersion(string(proto))
		if !ok {
			return req.refused(http.StatusBadRequest)
		}
		hostRequired = major == 1 && minor >= 1
	}
	connect := string(line[:sp]) == http.MethodConnect
	if !connect && !validTarget(line[sp+1:sp2], req) {
		return req.refused(http.StatusBadRequest)
	}

	var ok bool
	if req.fields, ok = parseFields(b, eol+2, n, fields); !ok {
		return req.refused(http.StatusBadRequest)
	}
	hosts, tes, expects := 0, 0, 0
	te := -1
	connExpect := false
	for i, f := range req.fields {
		switch {
		case isField(b, f, "Host"):
			hosts++
			req.host = f.value
		case isField(b, f, "Content-Length"):
			if req.clField >= 0 {
				return req.refused(http.StatusBadRequest) // a second one, equal or not
			}
			req.clField = i
			v := b[f.value.off:f.value.end]
			if len(v) == 0 || len(v) > 19 {
				return req.refused(http.StatusBadRequest)
			}
			for _, c := range v {
				if c < '0' || c > '9' {
					return req.refused(http.StatusBadRequest)
				}
			}
			l, err := strconv.ParseInt(string(v), 10, 64)
			if err != nil {
				return req.refused(http.StatusBadRequest)
			}
			req.length = l
		case isField(b, f, "Transfer-Encoding"):
			tes++
			te = i
		case isField(b, f, "Connection"):
			v := b[f.value.off:f.value.end]
			if hasToken(v, "close") {
				req.close = true
			}
			connExpect = connExpect || hasToken(v, "expect")
		case isField(b, f, "Expect"):
			req.expect = true
			expects++
		}
	}
	// One valid Host (none only where net/http does without: another
	// version, CONNECT).
	switch {
	case hosts > 1,
		hosts == 1 && !httpguts.ValidHostHeader(string(b[req.host.off:req.host.end])),
		hosts == 0 && hostRequired && !connect:
		return req.refused(http.StatusBadRequest)
	}
	if tes > 0 {
		v := b[req.fields[te].value.off:req.fields[te].value.end]
		// HTTP/1.0 has no transfer codings (RFC 9112 §6.1): such a
		// message's framing is faulty.
		if tes > 1 || req.clField >= 0 || !req.http11 || !asciiEqualFold(v, "chunked") {
			return req.refused(http.StatusBadRequest)
		}
		req.chunked = true
	}
	if req.absolute != nil && req.absolute.Host != "" {
		// net/http serves an absolute-form request for its authority and
		// ignores Host; a hop that routes by Host reads another request.
		if !asciiEqualFold(b[req.host.off:req.host.end], req.absolute.Host) {
			return req.refused(http.StatusBadRequest)
		}
	}
	// Framing first (400), then the expectation (417).
	if expects > 1 || expects > 0 && connExpect {
		return req.refused(http.StatusExpectationFailed)
	}
	// CONNECT is refused by the handler either way; net/http reads its
	// authority-form target.
	if !req.http11 || req.chunked || req.expect || connect {
		return h1Handoff
	}
	return h1OK
}

// hasToken reports whether a field value, a comma-separated list, holds
// tok (case-insensitively), as httpguts.HeaderValuesContainsToken reads
// it, without allocating.
func hasToken(v []byte, tok string) bool {
	for len(v) > 0 {
		var el []byte
		if i := bytes.IndexByte(v, ','); i >= 0 {
			el, v = v[:i], v[i+1:]
		} else {
			el, v = v, nil
		}
		el = bytes.Trim(el, " \t")
		if asciiEqualFold(el, tok) {
			return true
		}
	}
	return false
}

// asciiEqualFold reports whether b equals s under ASCII case folding, as
// net/http compares header values ("chunked", "close"). bytes.EqualFold
// folds Unicode too: it reads "chun\u212aed" (a Kelvin sign) as "chunked",
// which net/http does not.
func asciiEqualFold(b []byte, s string) bool {
	if len(b) != len(s) {
		return false
	}
	for i := range len(b) {
		x, y := b[i], s[i]
		if 'A' <= x && x <= 'Z' {
			x += 'a' - 'A'
		}
		if 'A' <= y && y <= 'Z' {
			y += 'a' - 'A'
		}
		if x != y {
			return false
		}
	}
	return true
}

func (req *h1Request) refused(status int) h1Verdict {
	req.refuse = status
	return h1Refuse
}

// validTarget reports whether net/http would accept t as a request target
// (url.ParseRequestURI): no control byte (checked by the caller), and in
// the path of an origin-form target only complete percent-escapes. Any
// other form is parsed by url.ParseRequestURI itself, and an
// absolute-form target kept for the Host comparison and the outbound
// listener.
func validTarget(t []byte, req *h1Request) bool {
	if t[0] == '/' {
		for i := 0; i < len(t); i++ {
			switch t[i] {
			case '?':
				return true
			case '%':
				if i+2 >= len(t) || !isHexDigit(t[i+1]) || !isHexDigit(t[i+2]) {
					return false
				}
				i += 2
			}
		}
		return true
	}
	if len(t) == 1 && t[0] == '*' {
		return true
	}
	u, err := url.ParseRequestURI(string(t))
	if err != nil {
		return false
	}
	req.absolute = u
	return true
}

// h1Response is a response head as the fast path read it.
type h1Response struct {
	n      int
	status int
	fields []h1Field
	// length is the body's length; -1 for a chunked body.
	length  int64
	chunked bool
	// close: the server closes the connection after this answer.
	close   bool
	hasDate bool
}

// parseResponseHead parses the response head at the start of b into resp,
// for a request with method head (HEAD: no body whatever the fields say).
// It returns h1More, h1OK or h1Handoff (read it with
// net/http.ReadResponse): a status outside 200-599, a version other than
// HTTP/1.1, any field line it would refuse in a request, an unusual
// framing (more than one Content-Length, Content-Length and
// Transfer-Encoding, a coding other than chunked, a body that ends when
// the connection does).
func parseResponseHead(b []byte, head bool, resp *h1Response) h1Verdict {
	fields := resp.fields[:0]
	*resp = h1Response{fields: fields}
	n, bad := h1HeadEnd(b)
	if bad {
		return h1Handoff
	}
	if n == 0 {
		return h1More
	}
	resp.n = n
	eol := bytes.IndexByte(b, '\n') - 1
	line := b[:eol]
	// "HTTP/1.1 200" or "HTTP/1.1 200 reason".
	if len(line) < 12 || string(line[:9]) != "HTTP/1.1 " || len(line) > 12 && line[12] != ' ' {
		return h1Handoff
	}
	for _, c := range line[9:12] {
		if c < '0' || c > '9' {
			return h1Handoff
		}
	}
	resp.status = int(line[9]-'0')*100 + int(line[10]-'0')*10 + int(line[11]-'0')
	if resp.status < 200 || resp.status > 599 {
		return h1Handoff
	}
	for _, c := range line[12:] {
		if c < 0x20 && c != '\t' || c == 0x7f {
			return h1Handoff
		}
	}
	var ok bool
	if resp.fields, ok = parseFields(b, eol+2, n, fields); !ok {
		return h1Handoff
	}
	cls, tes := 0, 0
	for _, f := range resp.fields {
		v := b[f.value.off:f.value.end]
		switch {
		case isField(b, f, "Content-Length"):
			cls++
			if len(v) == 0 || len(v) > 18 {
				return h1Handoff
			}
			for _, c := range v {
				if c < '0' || c > '9' {
					return h1Handoff
				}
			}
			l, _ := strconv.ParseInt(string(v), 10, 64)
			resp.length = l
		case isField(b, f, "Transfer-Encoding"):
			tes++
			if !asciiEqualFold(v, "chunked") {
				return h1Handoff
			}
		case isField(b, f, "Connection"):
			if hasToken(v, "close") {
				resp.close = true
			}
		case isField(b, f, "Date"):
			resp.hasDate = true
		}
	}
	switch {
	case cls > 1 || tes > 1 || cls > 0 && tes > 0:
		return h1Handoff
	case head || resp.status == http.StatusNoContent || resp.status == http.StatusNotModified:
		if tes > 0 {
			return h1Handoff
		}
		resp.length = 0
	case tes > 0:
		resp.chunked, resp.length = true, -1
	case cls == 0:
		return h1Handoff // the body runs to the end of the connection
	}
	return h1OK
}

// newHeader returns the fields of a request head that was copied into
// head as net/http's server hands them to a handler: names canonical,
// values trimmed and in order, Host left out (it is the request's host),
// "Pragma: no-cache" also read as "Cache-Control: no-cache" (net/http's
// fixPragmaCacheControl). Keys and values are substrings of head, which
// is immutable: whatever keeps one (a decision log record, a Rego
// result) keeps a valid string.
func newHeader(head string, fields []h1Field) http.Header {
	return fieldsHeader(head, fields, "Host")
}

// fieldsHeader is the http.Header of the fields of a head copied into
// head, as net/textproto.ReadMIMEHeader builds it (canonical names,
// values in order, all values sharing one array) plus net/http's
// fixPragmaCacheControl, without the fields named skip (canonical; ""
// skips none).
func fieldsHeader(head string, fields []h1Field, skip string) http.Header {
	h := make(http.Header, len(fields))
	vals := make([]string, 0, len(fields))
	for _, f := range fields {
		name := head[f.name.off:f.name.end]
		if name == skip {
			continue
		}
		v := head[f.value.off:f.value.end]
		if vv, ok := h[name]; ok {
			h[name] = append(vv, v)
			continue
		}
		vals = append(vals, v)
		h[name] = vals[len(vals)-1 : len(vals) : len(vals)]
	}
	if p := h["Pragma"]; len(p) > 0 && p[0] == "no-cache" {
		if _, ok := h["Cache-Control"]; !ok {
			h["Cache-Control"] = []string{"no-cache"}
		}
	}
	return h
}
