package gateway

import (
	"io"
	"strconv"
	"sync"
	"time"
	"unicode/utf8"
)

// accessLog writes the access log: one JSON object per request and line,
// the object log/slog's JSONHandler writes for the same record (time in
// RFC 3339 with nanoseconds, level, msg "access", then the fields in
// order), so that log pipelines and `moatless demo` read it as before.
// It is composed by hand in a pooled buffer and written with one Write:
// through slog it was a tenth of the gateway's CPU per request
// (docs/benchmarks.md), for a line whose fields are all strings and
// numbers.
type accessLog struct {
	mu sync.Mutex // one line at a time, as slog's handler does
	w  io.Writer
}

var accessBufs = sync.Pool{New: func() any { b := make([]byte, 0, 512); return &b }}

// accessEntry is one request's line.
type accessEntry struct {
	time                                         time.Time
	requestID, client, method, host, path, proto string
	route                                        string
	status                                       int
	// bytes is the answer's body bytes written, requestBytes the
	// request's body bytes read (fewer than announced when the answer
	// came first, the forward was aborted or the client went away).
	bytes, requestBytes           int64
	duration                      time.Duration
	identity, blockReason, detail string
}

func (l *accessLog) write(e *accessEntry) {
	bp := accessBufs.Get().(*[]byte)
	b := appendAccess((*bp)[:0], e)
	l.mu.Lock()
	l.w.Write(b)
	l.mu.Unlock()
	if cap(b) <= 16<<10 {
		*bp = b
		accessBufs.Put(bp)
	}
}

func appendAccess(b []byte, e *accessEntry) []byte {
	b = append(b, `{"time":"`...)
	b = e.time.AppendFormat(b, time.RFC3339Nano)
	b = append(b, `","level":"INFO","msg":"access"`...)
	b = appendField(b, "request_id", e.requestID)
	b = appendField(b, "client", e.client)
	b = appendField(b, "method", e.method)
	b = appendField(b, "host", e.host)
	b = appendField(b, "path", e.path)
	b = appendField(b, "proto", e.proto)
	b = appendField(b, "route", e.route)
	b = append(b, `,"status":`...)
	b = strconv.AppendInt(b, int64(e.status), 10)
	b = append(b, `,"bytes":`...)
	b = strconv.AppendInt(b, e.bytes, 10)
	b = append(b, `,"request_bytes":`...)
	b = strconv.AppendInt(b, e.requestBytes, 10)
	b = append(b, `,"duration_ms":`...)
	b = strconv.AppendFloat(b, float64(e.duration.Microseconds())/1000, 'g', -1, 64)
	b = appendField(b, "identity", e.identity)
	if e.blockReason != "" {
		b = appendField(b, "block_reason", e.blockReason)
	}
	if e.detail != "" {
		b = appendField(b, "detail", e.detail)
	}
	return append(b, "}\n"...)
}

// appendField appends ,"key":"value" with value escaped as slog's JSON
// handler escapes it.
func appendField(b []byte, key, value string) []byte {
	b = append(b, `,"`...)
	b = append(b, key...)
	b = append(b, `":`...)
	return appendJSONString(b, value)
}

const hexDigits = "0123456789abcdef"

// appendJSONString quotes s as encoding/json and log/slog do without
// HTML escaping: quote, backslash and control characters escaped,
// invalid UTF-8 as U+FFFD, U+2028 and U+2029 escaped (JavaScript reads
// them as line ends). A header or path can therefore never break the
// line or forge a field.
func appendJSONString(b []byte, s string) []byte {
	b = append(b, '"')
	start := 0
	for i := 0; i < len(s); {
		c := s[i]
		if c < utf8.RuneSelf {
			if c >= 0x20 && c != '"' && c != '\\' {
				i++
				continue
			}
			b = append(b, s[start:i]...)
			switch c {
			case '"', '\\':
				b = append(b, '\\', c)
			case '\n':
				b = append(b, '\\', 'n')
			case '\r':
				b = append(b, '\\', 'r')
			case '\t':
				b = append(b, '\\', 't')
			default:
				b = append(b, '\\', 'u', '0', '0', hexDigits[c>>4], hexDigits[c&0xf])
			}
			i++
			start = i
			continue
		}
		r, size := utf8.DecodeRuneInString(s[i:])
		if r == utf8.RuneError && size == 1 {
			b = append(b, s[start:i]...)
			b = append(b, `\ufffd`...)
			i += size
			start = i
			continue
		}
		if r == '\u2028' || r == '\u2029' {
			b = append(b, s[start:i]...)
			b = append(b, '\\', 'u', '2', '0', '2', hexDigits[r&0xf])
			i += size
			start = i
			continue
		}
		i += size
	}
	b = append(b, s[start:]...)
	return append(b, '"')
}
