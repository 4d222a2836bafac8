package secrets

import (
	"errors"
	"net/http"
	"strings"
	"testing"
)

// stallingBody is a request body that delivers a few bytes and then
// fails, as a client that announced a large Content-Length and stopped
// sending does when its connection times out; it records the largest
// buffer the server offered it.
type stallingBody struct {
	sent    bool
	maxRead int
}

func (b *stallingBody) Read(p []byte) (int, error) {
	b.maxRead = max(b.maxRead, len(p))
	if b.sent {
		return 0, errors.New("read timeout")
	}
	b.sent = true
	return copy(p, `{"a":`), nil
}

func (b *stallingBody) Close() error { return nil }

// TestAnnouncedBodySizeIsNotAllocatedUpFront: the body is read before
// the token is checked, so anyone can announce Content-Length: MaxBody
// and send nothing. Over HTTP/2 each of a connection's ~250 streams is
// such a request: with the announced size allocated up front, one
// connection's headers held 500 MB until the read timeout. The buffer
// now grows with what arrives. The parent offered the body a 2 MiB
// buffer at once; this fails there.
func TestAnnouncedBodySizeIsNotAllocatedUpFront(t *testing.T) {
	for _, n := range []int64{MaxBody, 1 << 20, 256 << 10} {
		body := &stallingBody{}
		r, err := http.NewRequest("POST", "http://127.0.0.1/v1/secret/data/x", body)
		if err != nil {
			t.Fatal(err)
		}
		r.ContentLength = n
		rq := &req{r: r}
		if err := rq.readBody(); err == nil || !strings.Contains(err.Error(), "read body") {
			t.Fatalf("Content-Length %d, body cut short: %v, want a read error", n, err)
		}
		if body.maxRead > maxBodyChunk {
			t.Errorf("Content-Length %d with 5 bytes sent: the server offered a %d-byte buffer, want at most %d", n, body.maxRead, maxBodyChunk)
		}
	}
}

// TestBodyReadAgainstContentLength: a body shorter or longer than its
// Content-Length is an error; one of exactly its length, read in any
// pieces, is read whole.
func TestBodyReadAgainstContentLength(t *testing.T) {
	big := `{"data":{"v":"` + strings.Repeat("x", 3*maxBodyChunk) + `"}}`
	for _, tc := range []struct {
		name string
		body string
		cl   int64
		ok   bool
	}{
		{"exact", `{"a":1}`, 7, true},
		{"exact, several chunks", big, int64(len(big)), true},
		{"shorter than announced", `{"a":1}`, 8, false},
		{"longer than announced", `{"a":1} `, 7, false},
		{"big, shorter than announced", big, int64(len(big)) + 1, false},
		{"no length (chunked)", `{"a":1}`, -1, true},
		{"over MaxBody without a length", `"` + strings.Repeat("x", MaxBody) + `"`, -1, false},
	} {
		r, err := http.NewRequest("POST", "http://127.0.0.1/v1/secret/data/x", strings.NewReader(tc.body))
		if err != nil {
			t.Fatal(err)
		}
		r.ContentLength = tc.cl
		rq := &req{r: r}
		err = rq.readBody()
		if (err == nil) != tc.ok {
			t.Errorf("%s: %v, want ok=%v", tc.name, err, tc.ok)
		}
		if err == nil && len(rq.body.m) != 1 {
			t.Errorf("%s: %d members, want 1", tc.name, len(rq.body.m))
		}
	}
}

// countingBody counts the bytes read from it.
type countingBody struct {
	r    *strings.Reader
	read int
}

func (b *countingBody) Read(p []byte) (int, error) {
	n, err := b.r.Read(p)
	b.read += n
	return n, err
}

func (b *countingBody) Close() error { return nil }

// TestBodyAnnouncedOverMaxBodyIsNotRead: a body whose Content-Length is
// over MaxBody is refused (413) before a byte of it is read. It was read
// up to MaxBody+1 bytes first, into a buffer grown to 2 MiB, before
// anything was authenticated, to reach the answer its header gave.
func TestBodyAnnouncedOverMaxBodyIsNotRead(t *testing.T) {
	body := &countingBody{r: strings.NewReader(`"` + strings.Repeat("x", MaxBody+10) + `"`)}
	r, err := http.NewRequest("POST", "http://127.0.0.1/v1/secret/data/x", body)
	if err != nil {
		t.Fatal(err)
	}
	r.ContentLength = MaxBody + 12
	rq := &req{r: r}
	err = rq.readBody()
	var ae *apiError
	if !errors.As(err, &ae) || ae.status != http.StatusRequestEntityTooLarge {
		t.Fatalf("readBody: %v, want a 413", err)
	}
	if body.read > 0 {
		t.Errorf("%d bytes read of a body announced over MaxBody", body.read)
	}
}
