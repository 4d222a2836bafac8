package server

import (
	"net/http/httptest"
	"strings"
	"testing"
	"time"
	"unicode"

	"github.com/moatless/moatless/internal/wire"
)

// FuzzRecordReport feeds arbitrary bodies through the records endpoint's
// strict decoder and validation: no panic, every error a badRequest, and
// whatever is accepted is attributed to the reporter and holds no
// control character in the caller-controlled fields.
func FuzzRecordReport(f *testing.F) {
	const reporter = "spiffe://example.org/ns/prod/sa/orders"
	now := time.Date(2026, 12, 6, 12, 0, 0, 0, time.UTC)
	f.Add(`{"component":"sidecar","namespace":"prod","labels":{"app":"orders"},"ports":[8080],"start":"2026-12-06T11:59:55Z","end":"2026-12-06T12:00:00Z",
		"edges":[{"direction":"inbound","source":"spiffe://example.org/ns/prod/sa/reports","protocol":"http","method":"GET","path":"/orders/{*}","decision":"allow","status":2,"requests":3,"resp_bytes":10,"pii":{"sampled":1,"cards":2}}],
		"samples":[{"time":"2026-12-06T11:59:58Z","listener":"in","source":"","source_ip":"10.0.0.1","destination":"prod:8080","protocol":"http","decision":"deny","rule":-1,"reason":"x","reason_code":"no_allow_match","policy_version":1}]}`)
	f.Add(`{"component":"gateway","start":"2026-12-06T11:59:55Z","end":"2026-12-06T12:00:00Z","edges":[{"direction":"outbound","destination":"spiffe://example.org/x","protocol":"tcp","decision":"refused","reason":"revoked","status":0,"requests":1}]}`)
	f.Add(`{"edges":null}`)
	f.Fuzz(func(t *testing.T, body string) {
		r := httptest.NewRequest("POST", wire.PathRecords, strings.NewReader(body))
		var in wire.RecordReport
		if err := decodeJSON(r, wire.MaxBodySize, &in); err != nil {
			if _, ok := err.(*badRequest); !ok {
				t.Fatalf("decode error is not a badRequest: %v", err)
			}
			return
		}
		rows, samples, err := validRecords(&in, reporter, now)
		if err != nil {
			if _, ok := err.(*badRequest); !ok {
				t.Fatalf("validation error is not a badRequest: %v", err)
			}
			return
		}
		for _, row := range rows {
			if row.Reporter != reporter || row.Direction == "inbound" && row.Destination != reporter || row.Direction == "outbound" && row.Source != reporter {
				t.Fatalf("row not attributed to the reporter: %+v", row)
			}
			if strings.IndexFunc(row.Path+row.Method, unicode.IsControl) >= 0 || len(row.Path) > maxRecordPath {
				t.Fatalf("stored path %q method %q", row.Path, row.Method)
			}
			if !row.Minute.Equal(row.Minute.Truncate(time.Minute)) {
				t.Fatalf("minute %v not a minute", row.Minute)
			}
		}
		for _, s := range samples {
			if s.Reporter != reporter || len(s.Event) == 0 {
				t.Fatalf("sample %+v", s)
			}
		}
	})
}
