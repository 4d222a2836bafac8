package ui

import (
	"context"
	"encoding/json"
	"errors"
	"time"

	"github.com/moatless/moatless/internal/audit"
	"github.com/moatless/moatless/internal/ca"
	"github.com/moatless/moatless/internal/detect"
	"github.com/moatless/moatless/internal/store"
	"github.com/moatless/moatless/internal/wire"
)

// The dashboard reads and acts only through these interfaces; the server
// implements them with the same functions its admin API uses, so what the
// dashboard shows is what the API answers, and every change it makes is
// validated, audited and pushed to the mesh exactly as an API call is.

// Actor is who performs a dashboard action: the audit log's actor and the
// client address. The server records it as it records an admin API call.
type Actor struct {
	// Name is "admin-token" or "user:<name>".
	Name string
	// Remote is the browser's address.
	Remote string
	// Session names the dashboard session (not a secret).
	Session string
}

// ActionError is a refusal the user should read (a bad serial, a SPIFFE
// ID that is not revoked, ...). Other errors are shown as "internal
// error" and logged.
type ActionError struct {
	Status int
	Msg    string
}

func (e *ActionError) Error() string { return e.Msg }

// AsActionError returns err's ActionError, if any.
func AsActionError(err error) (*ActionError, bool) {
	var ae *ActionError
	ok := errors.As(err, &ae)
	return ae, ok
}

// Node is an attested node with its convergence.
type Node struct {
	store.Node
	// Connected: a watch stream on some replica, or heard from lately.
	Connected bool
	// RequiredVersion is the last change the node must apply; InSync
	// says it acknowledged at least that.
	RequiredVersion uint64
	InSync          bool
	// Enforcing: the node's component enforces policy (a sidecar or
	// gateway, or not yet known); only those count toward convergence.
	Enforcing bool
	// PolicyCurrent: the node runs the current policy version.
	PolicyCurrent bool
}

// Convergence is how far the policy version in force has spread, as
// "moatless policy status" reports it.
type Convergence struct {
	Version uint64
	// Connected counts the connected enforcing nodes, AtVersion those of
	// them that run Version.
	Connected, AtVersion int
	Converged            bool
}

// NodeSource lists nodes and the policy convergence.
type NodeSource interface {
	Nodes(ctx context.Context) ([]Node, Convergence, error)
}

// CAState is the CA as the inventory shows it.
type CAState struct {
	TrustDomain    string
	BundleSequence uint64
	Authorities    []ca.Authority
}

// CertSource lists what the certificate inventory shows.
type CertSource interface {
	Entries(ctx context.Context) ([]wire.Entry, error)
	// SVIDs returns up to limit unexpired certificates the server
	// issued, soonest expiry first, and how many there are in all.
	SVIDs(ctx context.Context, limit int) ([]store.IssuedSVID, int, error)
	CA(ctx context.Context) (CAState, error)
}

// PolicyObject is one stored policy object as the dashboard shows it.
type PolicyObject struct {
	store.PolicyRef
	// Text is the object as YAML (Rego modules as their source).
	Text string
}

// PolicySource reads the policy history and rolls back.
type PolicySource interface {
	// PolicyHistory returns up to limit versions older than before (0:
	// from the newest), newest first.
	PolicyHistory(ctx context.Context, before uint64, limit int) ([]store.PolicyVersion, error)
	// PolicyObjects returns the set in force at version (0: current) and
	// the version it is.
	PolicyObjects(ctx context.Context, version uint64) (uint64, []PolicyObject, error)
	// RollbackPolicy makes the set of version current again as a new
	// version, returning it and how many objects changed (none: the set
	// in force already was that one, and no version was made).
	RollbackPolicy(ctx context.Context, a Actor, version uint64) (newVersion uint64, changes int, err error)
}

// RevokedToken is a revoked access token ID.
type RevokedToken struct {
	JTI       string
	ExpiresAt time.Time
}

// RevocationSource lists and changes revocations.
type RevocationSource interface {
	Revocations(ctx context.Context) (store.RevocationList, []RevokedToken, error)
	// Revoke revokes a SPIFFE ID (serial empty) or one certificate.
	Revoke(ctx context.Context, a Actor, spiffeID, serial, reason string) error
	// Unrevoke lifts the revocation of a SPIFFE ID.
	Unrevoke(ctx context.Context, a Actor, spiffeID string) error
}

// AuditSource pages through the audit log.
type AuditSource interface {
	// AuditRecords returns up to limit records older than before (0:
	// from the newest), newest first; with kinds, only records whose kind
	// starts with one of them. next is the "before" of the next page, 0
	// at the end.
	AuditRecords(ctx context.Context, before uint64, limit int, kinds []string) (recs []audit.Record, next uint64, err error)
}

// EventSource is an optional capability of Config.Records, found by type
// assertion: the newest records of kinds with their details undecoded and
// without their hashes. The service graph reads 5,000 records a refresh
// and needs the details of one record per edge (the newest): decoding
// every record's JSON was a fifth of a refresh.
type EventSource interface {
	// AuditEvents returns up to limit records, newest first, whose kind
	// starts with one of kinds; next is the "before" of the next page, 0
	// at the end.
	AuditEvents(ctx context.Context, limit int, kinds []string) (evs []Event, next uint64, err error)
}

// Event is an audit record as EventSource returns it: Details is the
// record's details, a JSON object of strings, still encoded.
type Event struct {
	Seq                  uint64
	Time                 time.Time
	Kind, Actor, Subject string
	Outcome              string
	Details              json.RawMessage
}

// AdminAuth checks the admin token at login.
type AdminAuth interface {
	// CheckAdminToken compares tok with the admin token in constant time.
	CheckAdminToken(tok string) bool
	// AdminTokenBinding is a value that changes when the admin token is
	// replaced (never the token or its hash); sessions made with the old
	// token end.
	AdminTokenBinding() []byte
}

// Users checks an OIDC user on every request.
type Users interface {
	// DashboardUser returns the user's name and whether they exist and
	// hold role.
	DashboardUser(ctx context.Context, userID, role string) (name string, ok bool, err error)
}

// FindingQuery selects a page of findings, newest first.
type FindingQuery struct {
	// Identity keeps the findings about one identity ("" all).
	Identity string
	// MinSeverity keeps the findings of that severity or above ("" all).
	MinSeverity detect.Severity
	// Before is the cursor of the page (zero: from the newest).
	Before time.Time
	Limit  int
}

// IncidentQuery selects a page of incidents, newest first.
type IncidentQuery struct {
	Identity string
	// State is open, contained or released ("" all).
	State  string
	Before time.Time
	Limit  int
}

// FindingSource reads what the detection engine found.
type FindingSource interface {
	// Findings returns a page of findings and the cursor of the next
	// one (zero at the end).
	Findings(ctx context.Context, q FindingQuery) ([]detect.Finding, time.Time, error)
	// Finding returns one finding (an *ActionError 404 when unknown).
	Finding(ctx context.Context, id string) (detect.Finding, error)
	// Risks returns the risk score (0–1) of every identity with open
	// findings.
	Risks(ctx context.Context) (map[string]float64, error)
}

// IncidentSource reads the incidents playbooks and admins opened, and
// acts on them. The actions run the admin API's incident handlers (POST
// /v1/admin/incidents, .../{id}/release, .../{id}/confirm), so a
// dashboard isolate is validated, audited and pushed exactly as
// "moatless incident isolate" is.
type IncidentSource interface {
	Incidents(ctx context.Context, q IncidentQuery) ([]detect.Incident, time.Time, error)
	// Incident returns one incident (an *ActionError 404 when unknown).
	Incident(ctx context.Context, id string) (detect.Incident, error)
	// IncidentAudit returns the audit records of the incident, newest
	// first, among those from sequence number from on (1: the whole log;
	// older ones were not searched).
	IncidentAudit(ctx context.Context, inc detect.Incident) (recs []audit.Record, from uint64, err error)
	// Isolate revokes identity everywhere in an incident (its open one,
	// or a new one), with finding (optional) as the cause.
	Isolate(ctx context.Context, a Actor, identity, finding, reason string) (detect.Incident, error)
	// Release undoes what the incident did and closes it.
	Release(ctx context.Context, a Actor, incident, reason string) (detect.Incident, error)
	// ConfirmBlocks keeps the incident's blocked pairs until it is
	// released (block-pair lifts them by itself otherwise).
	ConfirmBlocks(ctx context.Context, a Actor, incident string) (detect.Incident, error)
	// Export returns the incident's forensics bundle (JSON), as
	// "moatless incident export" gets it; the export is audited.
	Export(ctx context.Context, a Actor, incident string) ([]byte, error)
}
