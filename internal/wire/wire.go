// Package wire holds the types the control plane and the data plane
// exchange: the agent API (attestation, SVID signing, the watch stream) and
// the objects it carries. Both sides import it; it imports neither.
//
// Transport: HTTPS on the server's listener. Attestation is TLS with the
// server verified against the trust bundle; every other agent call is
// mutual TLS with the caller's X509-SVID. Bodies are JSON (byte slices are
// base64, times RFC 3339). Errors are {"errors": ["..."]} with a 4xx/5xx
// status, as in the admin API.
package wire

import (
	"encoding/json"
	"fmt"
	"time"
)

// Agent API paths (server side). All are POST except PathWatch (GET).
const (
	// PathAttest: AttestRequest → AttestResponse. TLS without a client
	// certificate; the join token is the credential. A join token is single
	// use and bound to one SPIFFE ID, which becomes the caller's identity.
	PathAttest = "/v1/agent/attest"
	// PathRenew: RenewRequest → X509SVIDResponse. mTLS with the caller's
	// current SVID; the new SVID has the same SPIFFE ID.
	PathRenew = "/v1/agent/renew"
	// PathSignX509: SignX509Request → SignX509Response. mTLS. Signs SVIDs
	// for entries whose parent is the caller.
	PathSignX509 = "/v1/agent/x509svids"
	// PathSignJWT: SignJWTRequest → SignJWTResponse. mTLS. Signs a JWT-SVID
	// for an entry whose parent is the caller.
	PathSignJWT = "/v1/agent/jwtsvid"
	// PathWatch: GET, optionally with ?since=VERSION&epoch=EPOCH: the last
	// version the client applied and the Epoch of the stream it came from
	// (to resume after a reconnect, on the same server or another replica
	// of the same store). The answer is a stream of newline-delimited JSON
	// Update objects, flushed as they happen: first one Update that brings
	// the client to the current version, then one per later change, each
	// with a higher Version than the one before. The first Update is a
	// delta (Resumed, only the sections that changed after since) when the
	// server can tell what changed: the epoch is its store's and since is
	// not ahead of the store. Otherwise, and
	// always for a client that sends no epoch (older clients send since
	// alone), it is complete. The server sends a Heartbeat update at least
	// every HeartbeatInterval it announced in the first Update, so either
	// side notices a dead stream.
	PathWatch = "/v1/agent/watch"
	// PathAck: Ack → 204. mTLS. Records which version the caller has
	// applied, so the server knows who runs what.
	PathAck = "/v1/agent/ack"
)

// HeartbeatInterval is the longest a server that announces no heartbeat
// interval (Update.HeartbeatInterval, absent from servers before it
// existed) stays silent on a watch stream. A client that hears nothing for
// 3× the interval in force considers the stream dead and reconnects,
// to another server when it knows several.
const HeartbeatInterval = 15 * time.Second

// MaxEpochLength bounds the epoch a client echoes in ?epoch=.
const MaxEpochLength = 64

// MaxBodySize bounds every request body on the agent API.
const MaxBodySize = 1 << 20

// AttestRequest is a node (agent, or a sidecar acting as its own agent)
// proving itself with a join token. CSR is a PKCS#10 request in DER made
// with a key generated on the node; the server takes only its public key.
type AttestRequest struct {
	JoinToken string `json:"join_token"`
	CSR       []byte `json:"csr"`
}

// AttestResponse carries the node's first SVID and the trust bundle.
type AttestResponse struct {
	SVID   X509SVID `json:"svid"`
	Bundle Bundle   `json:"bundle"`
}

// RenewRequest asks for a fresh SVID for the caller's own SPIFFE ID, for a
// key generated on the node.
type RenewRequest struct {
	CSR []byte `json:"csr"`
}

// X509SVIDResponse answers PathRenew.
type X509SVIDResponse struct {
	SVID X509SVID `json:"svid"`
}

// X509SVID is a signed certificate chain, leaf first, DER encoded. The
// private key never travels.
type X509SVID struct {
	SPIFFEID  string    `json:"spiffe_id"`
	EntryID   string    `json:"entry_id,omitempty"`
	CertChain [][]byte  `json:"cert_chain"`
	Serial    string    `json:"serial"` // leaf serial, lower-case hex
	ExpiresAt time.Time `json:"expires_at"`
}

// SignX509Request asks for SVIDs for registration entries parented by the
// caller. The server ignores every subject and SAN in the CSRs: the SPIFFE
// ID and TTL come from the entry.
type SignX509Request struct {
	Requests []X509SVIDRequest `json:"requests"`
}

// X509SVIDRequest is one entry's CSR.
type X509SVIDRequest struct {
	EntryID string `json:"entry_id"`
	CSR     []byte `json:"csr"`
}

// SignX509Response holds one SVID per request, in order.
type SignX509Response struct {
	SVIDs []X509SVID `json:"svids"`
}

// SignJWTRequest asks for a JWT-SVID for an entry parented by the caller.
type SignJWTRequest struct {
	EntryID  string   `json:"entry_id"`
	Audience []string `json:"audience"`
}

// SignJWTResponse carries the signed token.
type SignJWTResponse struct {
	SPIFFEID  string    `json:"spiffe_id"`
	Token     string    `json:"token"`
	ExpiresAt time.Time `json:"expires_at"`
}

// Bundle is a SPIFFE trust bundle: the X.509 authorities (root
// certificates, DER) and the JWT authorities (public keys by key ID). The
// sequence number grows with every change.
type Bundle struct {
	TrustDomain     string         `json:"trust_domain"`
	X509Authorities [][]byte       `json:"x509_authorities"`
	JWTAuthorities  []JWTAuthority `json:"jwt_authorities"`
	RefreshHint     Duration       `json:"refresh_hint,omitempty"`
	SequenceNumber  uint64         `json:"sequence_number"`
	// TaintedX509Authorities names the X.509 authorities an operator has
	// marked compromised (`moatless ca taint`), each by its certificate's
	// subject key ID in lower-case hex; each is also in X509Authorities.
	// A tainted authority is still trusted, so that what it signed keeps
	// working for the moment it takes to replace it, but every holder of an
	// SVID whose chain contains it must replace that SVID at once, and the
	// next step (`ca revoke`) removes it from the bundle. Absent (the usual
	// case, and every server before taint existed) means none is tainted.
	TaintedX509Authorities []string `json:"tainted_x509_authorities,omitempty"`
}

// JWTAuthority is a JWT signing public key (PKIX DER).
type JWTAuthority struct {
	KeyID     string    `json:"key_id"`
	PublicKey []byte    `json:"public_key"`
	ExpiresAt time.Time `json:"expires_at,omitempty"`
	// Tainted marks a key an operator has marked compromised: tokens it
	// signed still verify until it is revoked (removed from the bundle),
	// but every holder must replace them at once.
	Tainted bool `json:"tainted,omitempty"`
}

// Selector is a type and value a workload must show to be given an entry's
// identity, e.g. {"unix", "uid:1000"}. Written "unix:uid:1000".
type Selector struct {
	Type  string `json:"type"`
	Value string `json:"value"`
}

func (s Selector) String() string { return s.Type + ":" + s.Value }

// Entry is a registration entry: which workloads under which parent get
// which SPIFFE ID, for how long, and the metadata policies select on.
type Entry struct {
	ID        string            `json:"id"`
	SPIFFEID  string            `json:"spiffe_id"`
	ParentID  string            `json:"parent_id"`
	Selectors []Selector        `json:"selectors"`
	X509TTL   Duration          `json:"x509_ttl,omitempty"` // 0: server default (1h)
	JWTTTL    Duration          `json:"jwt_ttl,omitempty"`  // 0: server default (5m)
	Namespace string            `json:"namespace,omitempty"`
	Labels    map[string]string `json:"labels,omitempty"`
	// Revision grows with every change to the entry.
	Revision  uint64    `json:"revision"`
	CreatedAt time.Time `json:"created_at"`
}

// Revocations lists what nobody may serve or accept any more. A revoked
// SPIFFE ID stays revoked until an admin lifts it; a revoked serial is
// dropped from the list once the certificate has expired.
type Revocations struct {
	SPIFFEIDs []string         `json:"spiffe_ids,omitempty"`
	Serials   []RevokedSerial  `json:"serials,omitempty"`
	TokenIDs  []RevokedTokenID `json:"token_ids,omitempty"` // OAuth access-token jti values
	// IDDetails says when and why the IDs of SPIFFEIDs were revoked, so a
	// revoked workload and its operator are told so rather than that an
	// identity is missing. SPIFFEIDs alone decides what is revoked.
	IDDetails []RevokedIDDetail `json:"id_details,omitempty"`
	// BlockedEdges are the (source, destination) pairs refused by every
	// sidecar until they lapse or are lifted (detect's block-pair).
	BlockedEdges []BlockedEdge `json:"blocked_edges,omitempty"`
}

// RevokedIDDetail is when and why a SPIFFE ID was revoked.
type RevokedIDDetail struct {
	SPIFFEID  string    `json:"spiffe_id"`
	RevokedAt time.Time `json:"revoked_at"`
	Reason    string    `json:"reason,omitempty"`
}

// String is "spiffe://… was revoked at TIME (reason: …)".
func (d RevokedIDDetail) String() string {
	s := d.SPIFFEID + " was revoked"
	if !d.RevokedAt.IsZero() {
		s += " at " + d.RevokedAt.UTC().Format(time.RFC3339)
	}
	if d.Reason != "" {
		s += " (reason: " + d.Reason + ")"
	}
	return s
}

// Detail returns the details of id's revocation; ok is false when id is
// not revoked. An ID revoked without details gets a detail with only its
// SPIFFE ID.
func (r *Revocations) Detail(id string) (d RevokedIDDetail, ok bool) {
	if r == nil {
		return d, false
	}
	for _, x := range r.IDDetails {
		if x.SPIFFEID == id {
			return x, true
		}
	}
	for _, x := range r.SPIFFEIDs {
		if x == id {
			return RevokedIDDetail{SPIFFEID: id}, true
		}
	}
	return d, false
}

// RevokedSerial is a revoked certificate, by lower-case hex serial, with the
// certificate's expiry after which the entry is useless.
type RevokedSerial struct {
	Serial    string    `json:"serial"`
	ExpiresAt time.Time `json:"expires_at"`
}

// RevokedTokenID is a revoked OAuth token by jti, kept until it expires.
type RevokedTokenID struct {
	JTI       string    `json:"jti"`
	ExpiresAt time.Time `json:"expires_at"`
}

// Update is one message on the watch stream. Version is the global change
// version it brings the receiver to. Each section is a full replacement of
// that section. The first update of a stream carries every section
// (Policies too, at policy version 0 before any policy exists), so a
// client that connects for the first time, lost its state, or comes from
// another store is whole again from that one update, unless it is
// Resumed: then it carries only the sections that changed after the
// client's ?since (see PathWatch), possibly none. Later updates carry only
// the sections that changed since the previous update on the same stream
// (nil means "unchanged"). A receiver applies the whole update, then posts
// an Ack with its Version.
type Update struct {
	Version   uint64 `json:"version"`
	Heartbeat bool   `json:"heartbeat,omitempty"`
	// Epoch identifies the store's history (first update only). Versions
	// compare only within one epoch: a store restored from a backup gets a
	// new one, so a client that saw later versions of the old history is
	// sent everything again. A client echoes it with ?since to resume.
	Epoch string `json:"epoch,omitempty"`
	// Resumed marks a first update that is a delta against the client's
	// ?since rather than a complete snapshot.
	Resumed bool `json:"resumed,omitempty"`
	// HeartbeatInterval is the longest this server stays silent on the
	// stream (first update only; HeartbeatInterval when absent).
	HeartbeatInterval Duration     `json:"heartbeat_interval,omitempty"`
	Bundle            *Bundle      `json:"bundle,omitempty"`
	Entries           *[]Entry     `json:"entries,omitempty"` // entries parented by the caller
	Revocations       *Revocations `json:"revocations,omitempty"`
	Policies          *PolicySet   `json:"policies,omitempty"`
	// Risk is the risk score of every identity the detectors currently
	// hold at risk (servers before it existed never send it; a receiver
	// then knows no score). Like every section it is a full replacement.
	Risk *RiskScores `json:"risk,omitempty"`
}

// MaxRiskScores bounds the Risk section: a server holding more
// identities at risk sends the MaxRiskScores highest scores (ties by
// SPIFFE ID), and a receiver refuses a section with more, as it refuses
// any malformed update. At about 90 bytes an entry the section stays
// under 1 MiB.
const MaxRiskScores = 10_000

// RiskScores is the detectors' risk score per identity (internal/detect:
// the highest severity weight of its findings within the risk window,
// +0.1 per further finding, capped at 1), for the data plane to put on
// its spans. Only SPIFFE IDs with a score above zero are listed, each
// once, sorted by SPIFFE ID; a score is in (0, 1], rounded to two
// decimals. An identity not listed has score 0.
type RiskScores struct {
	Scores []RiskScore `json:"scores"`
}

// RiskScore is one identity's risk score.
type RiskScore struct {
	SPIFFEID string  `json:"spiffe_id"`
	Score    float64 `json:"score"`
}

// PolicySet is the whole set of security policies at one policy version:
// Istio security.istio.io documents (AuthorizationPolicy,
// PeerAuthentication, RequestAuthentication) and Moatless RegoProvider
// documents as JSON, exactly as applied, with the Rego modules and data
// documents that CUSTOM policies evaluate.
type PolicySet struct {
	Version   uint64            `json:"version"`
	Documents []json.RawMessage `json:"documents"`
	// Modules are the Rego modules in force, by ID.
	Modules []RegoModule `json:"modules,omitempty"`
	// Data are the data documents in force: each is one top-level key of
	// Rego's data (data.<key>).
	Data []DataDocument `json:"data,omitempty"`
}

// RegoModule is one Rego module: its ID (OPA's policy ID, the file name
// it was applied from) and its source, exactly as applied.
type RegoModule struct {
	ID     string `json:"id"`
	Source string `json:"source"`
}

// DataDocument is the value of data.<Key>, as JSON.
type DataDocument struct {
	Key   string          `json:"key"`
	Value json.RawMessage `json:"value"`
}

// Ack reports that the caller applied everything up to Version. Component
// says what kind of process it is ("agent", "sidecar", "gateway") and Info
// carries per-component detail such as the policy version in force.
type Ack struct {
	Version       uint64 `json:"version"`
	Component     string `json:"component"`
	PolicyVersion uint64 `json:"policy_version,omitempty"`
}

// Duration is a time.Duration that is a Go duration string in JSON
// ("1h30m") and also accepts a number of seconds.
type Duration time.Duration

func (d Duration) MarshalJSON() ([]byte, error) { return json.Marshal(time.Duration(d).String()) }

func (d *Duration) UnmarshalJSON(b []byte) error {
	var s string
	if err := json.Unmarshal(b, &s); err == nil {
		v, err := time.ParseDuration(s)
		if err != nil {
			return fmt.Errorf("wire: bad duration %q: %w", s, err)
		}
		*d = Duration(v)
		return nil
	}
	var secs int64
	if err := json.Unmarshal(b, &secs); err != nil {
		return fmt.Errorf("wire: duration must be a string like \"1h\" or a number of seconds")
	}
	*d = Duration(time.Duration(secs) * time.Second)
	return nil
}

// Std returns d as a time.Duration.
func (d Duration) Std() time.Duration { return time.Duration(d) }

// PathAudit: AuditReport → 204. mTLS. A data-plane process (a sidecar or
// a gateway acting as its own agent) reports security decisions for the
// audit log: every deny and every request an AUDIT policy matched. The
// server records the caller's SPIFFE ID (from its client certificate) as
// the reporter; nothing in the body can claim another reporter. At most
// MaxAuditEvents per report; the body is bounded by MaxBodySize.
const PathAudit = "/v1/agent/audit"

// MaxAuditEvents bounds the events of one AuditReport.
const MaxAuditEvents = 500

// AuditReport is a batch of decisions reported by a data-plane process.
type AuditReport struct {
	Events []AuditEvent `json:"events"`
}

// AuditEvent is one decision, as the sidecar's decision log writes it. Path
// never carries the query string (tokens may travel there).
type AuditEvent struct {
	Time          time.Time `json:"time"`
	Listener      string    `json:"listener"`
	Source        string    `json:"source"` // caller SPIFFE ID, "" for plaintext
	SourceIP      string    `json:"source_ip"`
	Destination   string    `json:"destination"` // "namespace:port"
	Protocol      string    `json:"protocol"`    // http, http2, tcp
	Method        string    `json:"method,omitempty"`
	Path          string    `json:"path,omitempty"`
	Decision      string    `json:"decision"` // allow, deny, unauthenticated
	Policy        string    `json:"policy,omitempty"`
	Rule          int       `json:"rule"`
	Reason        string    `json:"reason"`
	ReasonCode    string    `json:"reason_code"`
	PolicyVersion uint64    `json:"policy_version"`
	AuditPolicy   string    `json:"audit_policy,omitempty"`
	// RegoQuery and InputSHA256 name the Rego query of the CUSTOM
	// provider that decided, and the SHA-256 (hex) of the input document
	// it saw; empty when no Rego provider decided.
	RegoQuery   string `json:"rego_query,omitempty"`
	InputSHA256 string `json:"input_sha256,omitempty"`
	// TraceID is the W3C trace ID (32 lower-case hex digits) of the
	// request's sampled trace, when the reporter traces.
	TraceID string `json:"trace_id,omitempty"`
	// TokenIssuer and TokenSubject name the request's token whose
	// signature verified: the one it was authenticated with, or one
	// refused after verifying (revoked, of a revoked identity, another
	// audience): whose credential was presented (the caller may be
	// relaying it). At most 256 bytes each.
	TokenIssuer  string `json:"token_issuer,omitempty"`
	TokenSubject string `json:"token_subject,omitempty"`
}
