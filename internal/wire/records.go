package wire

import "time"

// PathRecords: RecordReport → 204. mTLS. A data-plane process (a sidecar
// or a gateway acting as its own agent) reports the traffic it saw since
// its last report, aggregated per edge, over the connection it keeps to
// the server anyway (HTTP/2: the same connection as its watch stream).
// The server takes the reporter's SPIFFE ID from its client certificate:
// an inbound record's destination is always the reporter, an outbound
// record's source likewise; nothing in the body can claim another
// reporter. At most MaxEdgeRecords edges and MaxDecisionSamples samples
// per report; the body is bounded by MaxBodySize.
const PathRecords = "/v1/agent/records"

// Bounds of one RecordReport. A reporter with more edges in a window
// sends several reports for it.
const (
	MaxEdgeRecords     = 1000
	MaxDecisionSamples = 100
)

// RecordReport is the traffic a reporter saw in one window [Start, End),
// without request or response bodies: per-edge counters, a few sampled
// decisions, and what sampling response bodies for personal data found
// where that is enabled.
type RecordReport struct {
	// Component is "sidecar" or "gateway".
	Component string `json:"component"`
	// Namespace and Labels describe the reporter's workload as policies
	// see it; what-if replays and recommended policies use them.
	Namespace string            `json:"namespace,omitempty"`
	Labels    map[string]string `json:"labels,omitempty"`
	// Ports are the workload ports of the reporter's inbound listeners.
	Ports []int `json:"ports,omitempty"`

	Start time.Time    `json:"start"`
	End   time.Time    `json:"end"`
	Edges []EdgeRecord `json:"edges"`
	// Samples are raw decisions sampled from the window (at most
	// MaxDecisionSamples): every kind of outcome, as the decision log
	// writes them.
	Samples []AuditEvent `json:"samples,omitempty"`
	// Dropped counts requests the reporter could not attribute to an
	// edge of its own because its record table was full; they are in
	// overflow edges instead: path "{overflow}" (the table was full) or
	// "{overflow:peer}" (their peer had its share of the table), with
	// their peer, decision, reason and status, or, past a bound, in one
	// edge with decision "overflow" that names no one (see
	// traffic.OverflowPath).
	Dropped uint64 `json:"dropped,omitempty"`
}

// EdgeRecord aggregates the requests of one edge and outcome in a window.
type EdgeRecord struct {
	// Direction is "inbound" (the reporter is the destination; Source is
	// the caller it authenticated, "" for plaintext) or "outbound" (the
	// reporter is the source; Destination is the upstream's SPIFFE ID).
	Direction   string `json:"direction"`
	Source      string `json:"source,omitempty"`
	Destination string `json:"destination,omitempty"`
	// Port is the destination's workload port (inbound).
	Port     int    `json:"port,omitempty"`
	Protocol string `json:"protocol"` // http, http2, tcp
	// Method and Path are the request's method and path template (see
	// traffic.PathTemplate: identifiers replaced by {*}); empty for TCP.
	Method string `json:"method,omitempty"`
	Path   string `json:"path,omitempty"`
	// Decision is allow, deny, unauthenticated, or refused (a connection
	// turned away before any request: revoked or blocked peer, plaintext
	// under STRICT).
	Decision string `json:"decision"`
	// Reason is the decision's bounded reason code (deny_rule, blocked,
	// revoked, ...), "" for allow.
	Reason string `json:"reason,omitempty"`
	// Status is the response status class: 2, 3, 4 or 5 (0: no answer,
	// a TCP stream).
	Status int `json:"status"`

	Requests  uint64 `json:"requests"`
	ReqBytes  uint64 `json:"req_bytes"`
	RespBytes uint64 `json:"resp_bytes"`
	// LatencySumMicros and LatencyMaxMicros are the sum and the largest
	// request duration, in microseconds.
	LatencySumMicros uint64 `json:"latency_sum_us"`
	LatencyMaxMicros uint64 `json:"latency_max_us"`
	// Token is the issuer of the verified request token the requests
	// carried, "" for none.
	Token string `json:"token,omitempty"`
	// PII counts what sampling the responses of this edge for personal
	// data found (only on edges where sampling is enabled).
	PII *PIISample `json:"pii,omitempty"`
}

// PIISample is the outcome of scanning sampled response bodies.
type PIISample struct {
	// Sampled is how many responses were scanned, Bytes how many bytes.
	Sampled uint64 `json:"sampled"`
	Bytes   uint64 `json:"bytes"`
	// Matches of each kind in the scanned bytes.
	Cards       uint64 `json:"cards,omitempty"`
	Emails      uint64 `json:"emails,omitempty"`
	NationalIDs uint64 `json:"national_ids,omitempty"`
}

// BlockedEdge is one (source, destination) pair that every sidecar
// refuses, whatever the policy says: the destination's sidecar refuses
// the source's connections and closes the live ones, the source's own
// sidecar refuses its calls to the destination. It lapses at ExpiresAt
// (zero: until lifted).
type BlockedEdge struct {
	Source      string    `json:"source"`
	Destination string    `json:"destination"`
	ExpiresAt   time.Time `json:"expires_at,omitzero"`
}
