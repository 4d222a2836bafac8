package config

import (
	"fmt"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/moatless/moatless/internal/wire"
)

// Bounds of the sidecar's traffic record settings.
const (
	DefaultTrafficInterval = 5 * time.Second
	DefaultPIIOneIn        = 10
	DefaultPIIMaxBytes     = 64 << 10
	MaxPIIMaxBytes         = 1 << 20
)

// SidecarTraffic configures the traffic record a sidecar in join mode
// sends to the server: per-edge counts every Interval, sampled decisions
// and, on the edges listed in PII, what sampling response bodies for
// personal data found (counts only). Example:
//
//	traffic:
//	  interval: 5s
//	  pii:
//	    - {source: "spiffe://example.org/ns/prod/sa/reports", one_in: 10, max_bytes: 65536}
type SidecarTraffic struct {
	// Disabled turns the record off.
	Disabled bool `json:"disabled,omitempty"`
	// Interval is how often a report is sent; default 5s, 1s to 1m.
	Interval wire.Duration `json:"interval,omitempty"`
	// MaxEdges bounds the distinct edges of one window (memory); default
	// 5000, at most 100000.
	MaxEdges int `json:"max_edges,omitempty"`
	// PII lists the inbound edges whose responses are sampled for
	// personal data (off for every edge not listed).
	PII []SidecarPII `json:"pii,omitempty"`
}

// SidecarPII opts the edge from Source ("*": every caller) to this
// workload in to response body sampling: one response in OneIn (default
// 10), its first MaxBytes (default 64 KiB, at most 1 MiB).
type SidecarPII struct {
	Source   string `json:"source"`
	OneIn    int    `json:"one_in,omitempty"`
	MaxBytes int    `json:"max_bytes,omitempty"`
}

// validateTraffic checks the traffic section; add reports each error.
func (c *Sidecar) validateTraffic(add func(string, ...any)) {
	t := &c.Traffic
	if iv := t.Interval.Std(); iv != 0 && (iv < time.Second || iv > time.Minute) {
		add("traffic.interval: %s: want 1s to 1m", iv)
	}
	if t.MaxEdges < 0 || t.MaxEdges > 100_000 {
		add("traffic.max_edges: %d: want 1 to 100000", t.MaxEdges)
	}
	seen := map[string]bool{}
	for i, p := range t.PII {
		f := fmt.Sprintf("traffic.pii[%d]", i)
		if p.Source != "*" {
			if _, err := spiffeid.FromString(p.Source); err != nil {
				add("%s.source: %q: want a SPIFFE ID or \"*\": %v", f, p.Source, err)
			}
		}
		if seen[p.Source] {
			add("%s.source: %q listed twice", f, p.Source)
		}
		seen[p.Source] = true
		if p.OneIn < 0 || p.OneIn > 1_000_000 {
			add("%s.one_in: %d: want 1 to 1000000", f, p.OneIn)
		}
		if p.MaxBytes < 0 || p.MaxBytes > MaxPIIMaxBytes {
			add("%s.max_bytes: %d: want 1 to %d", f, p.MaxBytes, MaxPIIMaxBytes)
		}
	}
	if len(t.PII) > 0 && c.Identity.Join == nil {
		add("traffic.pii: PII sampling reports to the server: it needs identity.join")
	}
}
