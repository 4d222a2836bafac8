// Package audit is Moatless's tamper-evident audit log: the Event every
// component records, the Sink it records through, and a hash chain over the
// stored records that Verify checks.
//
// Each record carries a sequence number (1, 2, ...), the SHA-256 of the
// record before it, and its own SHA-256 over a canonical binary encoding of
// its sequence number, time, kind, actor, subject, outcome, details and that
// previous hash. Editing, deleting, inserting or reordering any record
// breaks the chain at the first record that no longer fits, and Verify names
// it. A separate chain head (last sequence number and hash) catches a
// truncated tail. Someone who can rewrite the store can recompute the whole
// chain forward, so keep a copy of the head (audit verify prints it) where
// the store's administrators cannot change it, and compare with ExpectHead.
//
// Events never contain secrets: no token, key or password goes into Actor,
// Subject or Details; join tokens appear by their public id only.
package audit

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"time"
)

// Outcomes of an audited action.
const (
	Success = "success"
	Failure = "failure" // the action was refused on its merits (bad input, unknown token, ...)
	Denied  = "denied"  // the caller lacked the credential or permission
	Error   = "error"   // the server failed
)

// Kinds of events the server records. Other components add their own with
// the same "noun.verb" shape.
const (
	KindServerStart     = "server.start"
	KindAdminCall       = "admin.call"
	KindAgentCall       = "agent.call" // an agent API call refused for its credential; accepted ones are recorded as what they did
	KindJoinTokenCreate = "jointoken.create"
	KindJoinTokenDelete = "jointoken.delete"
	KindEntryCreate     = "entry.create"
	KindEntryUpdate     = "entry.update"
	KindEntryDelete     = "entry.delete"
	KindAttest          = "node.attest"
	KindRenew           = "node.renew"
	KindIssueX509       = "svid.x509.issue"
	KindIssueJWT        = "svid.jwt.issue"
	KindRevoke          = "revocation.create"
	KindUnrevoke        = "revocation.delete"
	KindCARotate        = "ca.rotate"
	KindBundleChange    = "ca.bundle.change"
	KindAdminCert       = "ca.admin_cert.issue"
	KindPolicyApply     = "policy.apply"
	KindPolicyDelete    = "policy.delete"
	KindPolicyRollback  = "policy.rollback"

	// Decisions a sidecar or gateway reported (wire.PathAudit); the actor
	// is the reporter's SPIFFE ID, the subject the denied caller.
	KindDecisionDeny            = "decision.deny"
	KindDecisionUnauthenticated = "decision.unauthenticated"
	KindDecisionAudit           = "decision.audit" // allowed, and an AUDIT policy matched
)

// Event is one audited action.
type Event struct {
	// Time is when it happened; the sink fills it in from its clock when
	// zero. Stored with nanosecond precision in UTC.
	Time time.Time `json:"time"`
	// Kind says what happened, e.g. "entry.create".
	Kind string `json:"kind"`
	// Actor is who did it: a SPIFFE ID, "admin-token", or
	// "anonymous" for unauthenticated callers.
	Actor string `json:"actor"`
	// Subject is what it was done to: an entry id, a SPIFFE ID, a serial.
	Subject string `json:"subject,omitempty"`
	// Outcome is Success, Failure, Denied or Error.
	Outcome string `json:"outcome"`
	// Details are further facts (remote address, reason, serial, ...).
	// Never secrets.
	Details map[string]string `json:"details,omitempty"`
}

// Sink records events. Append returns once the event is durable, or with
// an error; callers decide whether an audit failure fails the action (the
// server fails it: no unaudited change).
type Sink interface {
	Append(ctx context.Context, ev Event) error
}

// Record is a stored event with its place in the chain.
type Record struct {
	Seq uint64 `json:"seq"`
	Event
	PrevHash []byte `json:"prev_hash"`
	Hash     []byte `json:"hash"`
}

// MaxFieldLen bounds each string the sink stores; longer values are cut
// (with a marker) so a hostile input cannot bloat the log.
const MaxFieldLen = 4096

// maxDetails bounds the number of detail keys.
const maxDetails = 64

var domainTag = []byte("moatless-audit-v1\x00")

// encodeDetails is the canonical JSON of details: keys sorted (as
// encoding/json writes maps), "{}" when empty.
func encodeDetails(d map[string]string) string {
	if len(d) == 0 {
		return "{}"
	}
	b, err := json.Marshal(d)
	if err != nil { // a map[string]string always marshals
		panic(err)
	}
	return string(b)
}

// Hash computes a record's hash from its fields as stored: seq, time in
// Unix nanoseconds, the strings, the canonical details JSON and the
// previous hash, each length-prefixed so no two field lists share an
// encoding.
func Hash(seq uint64, atUnixNano int64, kind, actor, subject, outcome, details string, prev []byte) []byte {
	h := sha256.New()
	h.Write(domainTag)
	var buf [binary.MaxVarintLen64]byte
	binary.BigEndian.PutUint64(buf[:8], seq)
	h.Write(buf[:8])
	binary.BigEndian.PutUint64(buf[:8], uint64(atUnixNano))
	h.Write(buf[:8])
	for _, s := range []string{kind, actor, subject, outcome, details} {
		n := binary.PutUvarint(buf[:], uint64(len(s)))
		h.Write(buf[:n])
		h.Write([]byte(s))
	}
	n := binary.PutUvarint(buf[:], uint64(len(prev)))
	h.Write(buf[:n])
	h.Write(prev)
	return h.Sum(nil)
}

// clip bounds a field's length, keeping valid UTF-8 unimportant: the
// canonical encoding is over bytes.
func clip(s string) string {
	if len(s) <= MaxFieldLen {
		return s
	}
	return s[:MaxFieldLen] + "…[truncated]"
}

// normalize applies the size bounds and the clock.
func normalize(ev Event, now func() time.Time) Event {
	if ev.Time.IsZero() {
		ev.Time = now()
	}
	ev.Time = ev.Time.UTC()
	ev.Kind, ev.Actor, ev.Subject, ev.Outcome = clip(ev.Kind), clip(ev.Actor), clip(ev.Subject), clip(ev.Outcome)
	if len(ev.Details) > 0 {
		d := make(map[string]string, min(len(ev.Details), maxDetails))
		for k, v := range ev.Details {
			if len(d) >= maxDetails {
				d["_truncated"] = "true"
				break
			}
			d[clip(k)] = clip(v)
		}
		ev.Details = d
	}
	return ev
}

// VerifyError names the first record that does not fit the chain.
type VerifyError struct {
	// Seq is the sequence number of the first record that does not fit
	// (for a truncated tail: the first missing one). It is below 1 for a
	// row stored outside the chain's range.
	Seq int64
	// Stored is set instead of Seq for a row whose sequence number is not
	// an integer at all (SQLite keeps NULL, text or a fraction in an
	// integer column): that value as SQL text, such as 'x7' or NULL.
	Stored string
	Reason string
}

// Record names the offending record: its sequence number, or the stored
// value that is not one.
func (e *VerifyError) Record() string {
	if e.Stored != "" {
		return "with sequence number " + e.Stored
	}
	return strconv.FormatInt(e.Seq, 10)
}

func (e *VerifyError) Error() string {
	return fmt.Sprintf("audit: record %s does not fit the chain: %s", e.Record(), e.Reason)
}

// ErrBroken is what every *VerifyError matches with errors.Is.
var ErrBroken = errors.New("audit: chain broken")

func (e *VerifyError) Is(target error) bool { return target == ErrBroken }

// Head is the last record of a chain.
type Head struct {
	Seq  uint64 `json:"seq"`
	Hash []byte `json:"hash"`
}

// String is "SEQ:HEX", the form audit verify prints and --expect-head takes.
func (h Head) String() string { return fmt.Sprintf("%d:%s", h.Seq, hex.EncodeToString(h.Hash)) }

// ParseHead parses "SEQ:HEX".
func ParseHead(s string) (Head, error) {
	var h Head
	seqStr, hexStr, ok := bytes.Cut([]byte(s), []byte(":"))
	if !ok {
		return h, errors.New("audit: head must be SEQ:HEX")
	}
	var seq uint64
	if _, err := fmt.Sscan(string(seqStr), &seq); err != nil || fmt.Sprint(seq) != string(seqStr) {
		return h, fmt.Errorf("audit: head sequence %q is not a number", seqStr)
	}
	b, err := hex.DecodeString(string(hexStr))
	if err != nil || len(b) != sha256.Size {
		return h, errors.New("audit: head hash must be 64 hex digits")
	}
	return Head{Seq: seq, Hash: b}, nil
}
