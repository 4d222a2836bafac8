package proxy

import (
	"bufio"
	"bytes"
	"errors"
	"io"
	"net/http"
	"strconv"
)

// maxResponseHeadBytes bounds what an app or upstream may send before an
// answer's body: its head and any informational (1xx) answers before
// it. net/http.ReadResponse has no bound of its own, so without one a
// peer that sends an endless field line or endless 100 Continue answers
// — a compromised service, say — grows the proxy's memory until it is
// killed. Envoy's default is 60 KiB; the transports beside the lean
// clients (MaxResponseHeaderBytes) get the same bound.
const maxResponseHeadBytes = 64 << 10

var errResponseHeadTooLarge = errors.New("proxy: the answer's head (with any 1xx answers before it) is larger than 64 KiB")

// headLimit is the reader under a connection's bufio.Reader while an
// answer's head is read: once left bytes are used up its reads fail with
// errResponseHeadTooLarge. left < 0 means no limit (a body is read).
// Bytes buffered ahead of the head count too; the buffer is far smaller
// than the limit.
type headLimit struct {
	r    io.Reader
	left int
}

func (l *headLimit) Read(p []byte) (int, error) {
	if l.left < 0 {
		return l.r.Read(p)
	}
	if l.left == 0 {
		return 0, errResponseHeadTooLarge
	}
	if len(p) > l.left {
		p = p[:l.left]
	}
	n, err := l.r.Read(p)
	l.left -= n
	return n, err
}

// readResponse reads one answer to req from br, as net/http.ReadResponse
// reads it, and returns the same *http.Response: the same Status,
// StatusCode, Proto*, Header (canonical names, values in order,
// Connection removed when it says close, Pragma's Cache-Control),
// ContentLength, TransferEncoding, Close, Trailer and Request, a Body
// that yields the same bytes and ends the same way, and br left at the
// same byte for the next answer.
//
// The common answer — HTTP/1.1, a status from 200 to 599, one
// Content-Length or no body (HEAD, 204, 304), plain field lines — is
// parsed by parseResponseHead, which allocates only the head's string,
// the header map and the Response. Everything else (informational and
// 101 answers, chunked or close-delimited bodies, HTTP/1.0, obs-fold, a
// bare LF, duplicate or comma-separated Content-Length, Content-Length
// beside Transfer-Encoding, a head larger than br's buffer, a read
// error) is read by net/http.ReadResponse itself, whose verdict stands.
// The fast parser accepts nothing ReadResponse would frame differently:
// an upstream that tries to smuggle a second answer into the body of the
// first, or the other way round, meets the same framing either way
// (FuzzReadResponseDifferential).
//
// p and scratch are the connection's, reused from answer to answer:
// parseResponseHead canonicalizes names in place, so it parses a copy of
// the head, and br's buffer is left as the upstream sent it for
// ReadResponse.
func readResponse(br *bufio.Reader, req *http.Request, p *h1Response, scratch *[]byte) (*http.Response, error) {
	resp, rest := parseAnswer(br, req, p, scratch)
	if resp != nil {
		return resp, nil
	}
	return http.ReadResponse(rest, req)
}

// parseAnswer is readResponse's fast parser: the answer, or nil and the
// reader ReadResponse must read it from (br, or after a read error the
// bytes read so far and then the same error).
func parseAnswer(br *bufio.Reader, req *http.Request, p *h1Response, scratch *[]byte) (*http.Response, *bufio.Reader) {
	head := req.Method == http.MethodHead
	for {
		buf, _ := br.Peek(br.Buffered())
		n, bad := h1HeadEnd(buf)
		if bad {
			return nil, br
		}
		if n > 0 {
			s := append((*scratch)[:0], buf[:n]...)
			*scratch = s
			if parseResponseHead(s, head, p) != h1OK || p.chunked {
				return nil, br
			}
			return newResponse(br, req, s, p), nil
		}
		if len(buf) == br.Size() {
			return nil, br // a head larger than the buffer
		}
		if _, err := br.Peek(len(buf) + 1); err != nil {
			// The connection failed or ended before a whole head. Peek
			// has taken the error out of br; ReadResponse gets the bytes
			// read so far and then the same error, so that it reports it
			// exactly as it would have.
			rest, _ := br.Peek(br.Buffered())
			er := io.MultiReader(bytes.NewReader(bytes.Clone(rest)), errReader{err})
			br.Discard(len(rest))
			return nil, bufio.NewReader(er)
		}
	}
}

// errReader fails every read with err.
type errReader struct{ err error }

func (e errReader) Read([]byte) (int, error) { return 0, e.err }

// fastResponse is an answer read by the fast parser: the Response and
// its body in one allocation.
type fastResponse struct {
	resp http.Response
	body lengthBody
}

// newResponse builds the Response of the answer parsed into p from s, a
// copy of the head at the start of br, and consumes the head from br.
// The fields ReadResponse derives from the head are derived here the
// same way: Connection removed when it holds close; for HEAD,
// ContentLength is the Content-Length field's value, -1 without one; for
// 204 and 304 it is 0 whatever the field says, the field kept.
func newResponse(br *bufio.Reader, req *http.Request, s []byte, p *h1Response) *http.Response {
	head := string(s[:p.n])
	br.Discard(p.n)
	skip := ""
	if p.close {
		skip = "Connection"
	}
	fr := &fastResponse{}
	r := &fr.resp
	*r = http.Response{
		Status:     head[9:bytes.IndexByte(s, '\r')],
		StatusCode: p.status,
		Proto:      "HTTP/1.1",
		ProtoMajor: 1,
		ProtoMinor: 1,
		Header:     fieldsHeader(head, p.fields, skip),
		Close:      p.close,
		Request:    req,
	}
	switch {
	case req.Method == http.MethodHead:
		r.ContentLength = -1
		if v := r.Header["Content-Length"]; len(v) > 0 {
			r.ContentLength, _ = strconv.ParseInt(v[0], 10, 64) // digits only (parseResponseHead)
		}
		r.Body = http.NoBody
	case p.length == 0:
		r.Body = http.NoBody
	default:
		r.ContentLength = p.length
		fr.body = lengthBody{br: br, left: p.length}
		r.Body = &fr.body
	}
	return r
}

// lengthBody is a body of Content-Length bytes read from br, as
// net/http's body over an io.LimitedReader reads it: io.EOF with the last
// bytes; any failure before the last byte io.ErrUnexpectedEOF, and
// io.EOF after that. Close does nothing: appBody decides what becomes of
// the connection.
type lengthBody struct {
	br     *bufio.Reader
	left   int64
	sawEOF bool
}

func (b *lengthBody) Read(p []byte) (int, error) {
	if b.sawEOF || b.left <= 0 {
		b.sawEOF = true
		return 0, io.EOF
	}
	if int64(len(p)) > b.left {
		p = p[:b.left]
	}
	n, err := b.br.Read(p)
	b.left -= int64(n)
	switch {
	case err != nil:
		b.sawEOF = true
		if b.left > 0 {
			err = io.ErrUnexpectedEOF
		}
	case n > 0 && b.left == 0:
		b.sawEOF, err = true, io.EOF
	}
	return n, err
}

func (b *lengthBody) Close() error { return nil }
