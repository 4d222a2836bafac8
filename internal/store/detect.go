package store

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"strings"
	"time"
)

// SectionPlaybooks changes with the playbooks; no watch stream carries
// it, replicas reload on it.
const SectionPlaybooks Section = "detect_playbooks"

// Playbooks is the family of detect's playbooks, versioned like policies.
var Playbooks = PolicyFamily{"detect_playbook_objects", "detect_playbook_versions", "detect_playbook_version", SectionPlaybooks}

// EdgeRow is one reported aggregate of an edge in a minute.
type EdgeRow struct {
	Minute      time.Time
	Reporter    string
	Direction   string
	Source      string
	Destination string
	Port        int
	Protocol    string
	Method      string
	Path        string
	Decision    string
	Reason      string
	Status      int
	Token       string
	Requests    uint64
	ReqBytes    uint64
	RespBytes   uint64
	LatencySum  uint64 // microseconds
	LatencyMax  uint64 // microseconds
	PIISampled  uint64
	PIIMatches  uint64
}

const edgeCols = "minute, reporter, direction, source, destination, port, protocol, method, path, decision, reason, status, token, requests, req_bytes, resp_bytes, latency_sum_us, latency_max_us, pii_sampled, pii_matches"

// InsertTraffic stores one report's edge rows and sampled decisions in
// one transaction: all or none, so a report retried after a failure is
// not counted twice (its edges stored, its samples not, then both
// again).
func (s *DB) InsertTraffic(ctx context.Context, rows []EdgeRow, samples []Sample) error {
	return s.Tx(ctx, func(tx *sql.Tx) error {
		if err := insertEdges(ctx, tx, rows); err != nil {
			return err
		}
		return insertSamples(ctx, tx, samples)
	})
}

func insertEdges(ctx context.Context, q Queryer, rows []EdgeRow) error {
	const chunk = 200
	for start := 0; start < len(rows); start += chunk {
		part := rows[start:min(start+chunk, len(rows))]
		args := make([]any, 0, len(part)*20)
		for _, r := range part {
			args = append(args, ns(r.Minute), r.Reporter, r.Direction, r.Source, r.Destination, r.Port, r.Protocol, r.Method, r.Path,
				r.Decision, r.Reason, r.Status, r.Token, i64(r.Requests), i64(r.ReqBytes), i64(r.RespBytes), i64(r.LatencySum),
				i64(r.LatencyMax), i64(r.PIISampled), i64(r.PIIMatches))
		}
		if _, err := q.ExecContext(ctx, insertValues("INSERT INTO detect_edges ("+edgeCols+")", len(part), 20), args...); err != nil {
			return fmt.Errorf("store: record traffic: %w", err)
		}
	}
	return nil
}

// i64 stores a counter in a BIGINT column, saturating.
func i64(v uint64) int64 {
	if v > 1<<63-1 {
		return 1<<63 - 1
	}
	return int64(v)
}

// EdgeQuery selects edge rows: minutes in [Since, Until) (zero Until:
// no end), and, when set, one source, destination, direction or
// destination namespace (through detect_workloads).
type EdgeQuery struct {
	Since, Until time.Time
	Source       string
	Destination  string
	Direction    string
	Namespace    string
}

func (q EdgeQuery) where() (string, []any) {
	conds := []string{"e.minute >= $1"}
	args := []any{ns(q.Since)}
	add := func(cond string, v any) {
		args = append(args, v)
		conds = append(conds, strings.ReplaceAll(cond, "?", fmt.Sprintf("$%d", len(args))))
	}
	if !q.Until.IsZero() {
		add("e.minute < ?", ns(q.Until))
	}
	if q.Source != "" {
		add("e.source = ?", q.Source)
	}
	if q.Destination != "" {
		add("e.destination = ?", q.Destination)
	}
	if q.Direction != "" {
		add("e.direction = ?", q.Direction)
	}
	if q.Namespace != "" {
		add("e.destination IN (SELECT spiffe_id FROM detect_workloads WHERE namespace = ?)", q.Namespace)
	}
	return strings.Join(conds, " AND "), args
}

// EdgeTotal is an edge's rows summed over reporters and minutes; Minute
// is the first minute it was seen in, Last the last.
type EdgeTotal struct {
	EdgeRow
	Last time.Time
}

// maxEdgeTotals bounds one edge listing.
const maxEdgeTotals = 20000

// EdgeTotals sums the rows q selects per edge key (every field but the
// minute and the reporter), newest last-seen first, at most 20,000.
// Sums saturate (see counterSums).
func (s *DB) EdgeTotals(ctx context.Context, q EdgeQuery) ([]EdgeTotal, error) {
	where, args := q.where()
	rows, err := s.db.QueryContext(ctx, `SELECT MIN(e.minute), MAX(e.minute), e.direction, e.source, e.destination, e.port, e.protocol,
		e.method, e.path, e.decision, e.reason, e.status, e.token, MAX(e.latency_max_us), `+counterSums+`
		FROM detect_edges e WHERE `+where+`
		GROUP BY e.direction, e.source, e.destination, e.port, e.protocol, e.method, e.path, e.decision, e.reason, e.status, e.token
		ORDER BY MAX(e.minute) DESC, e.source, e.destination, e.path LIMIT `+fmt.Sprint(maxEdgeTotals), args...)
	if err != nil {
		return nil, fmt.Errorf("store: read traffic: %w", err)
	}
	defer rows.Close()
	var out []EdgeTotal
	for rows.Next() {
		var t EdgeTotal
		var first, last, latM int64
		var sums counterTotals
		if err := rows.Scan(append([]any{&first, &last, &t.Direction, &t.Source, &t.Destination, &t.Port, &t.Protocol, &t.Method, &t.Path,
			&t.Decision, &t.Reason, &t.Status, &t.Token, &latM}, sums.dest()...)...); err != nil {
			return nil, fmt.Errorf("store: read traffic: %w", err)
		}
		t.Minute, t.Last, t.LatencyMax = fromNS(first), fromNS(last), uint64(max(latM, 0))
		sums.set(&t.EdgeRow)
		out = append(out, t)
	}
	return out, rows.Err()
}

// EdgeMinutes calls fn with the rows q selects, oldest minute first, one
// row per edge key and minute (reporters summed, saturating): what
// baselines are rebuilt from after a restart.
func (s *DB) EdgeMinutes(ctx context.Context, q EdgeQuery, fn func(EdgeRow) error) error {
	where, args := q.where()
	rows, err := s.db.QueryContext(ctx, `SELECT e.minute, e.direction, e.source, e.destination, e.port, e.protocol, e.method, e.path,
		e.decision, e.reason, e.status, e.token, MAX(e.latency_max_us), `+counterSums+`
		FROM detect_edges e WHERE `+where+`
		GROUP BY e.minute, e.direction, e.source, e.destination, e.port, e.protocol, e.method, e.path, e.decision, e.reason, e.status, e.token
		ORDER BY e.minute`, args...)
	if err != nil {
		return fmt.Errorf("store: read traffic: %w", err)
	}
	defer rows.Close()
	for rows.Next() {
		var r EdgeRow
		var m, latM int64
		var sums counterTotals
		if err := rows.Scan(append([]any{&m, &r.Direction, &r.Source, &r.Destination, &r.Port, &r.Protocol, &r.Method, &r.Path,
			&r.Decision, &r.Reason, &r.Status, &r.Token, &latM}, sums.dest()...)...); err != nil {
			return fmt.Errorf("store: read traffic: %w", err)
		}
		r.Minute, r.LatencyMax = fromNS(m), uint64(max(latM, 0))
		sums.set(&r)
		if err := fn(r); err != nil {
			return err
		}
	}
	return rows.Err()
}

// counterCols are the edge counters that are summed, in the order of
// counterTotals.
var counterCols = []string{"e.requests", "e.req_bytes", "e.resp_bytes", "e.latency_sum_us", "e.pii_sampled", "e.pii_matches"}

// counterSums is the SQL that sums counterCols without overflowing: each
// column's high and low 32 bits are summed apart. A plain SUM fails the
// whole read once a group passes 2^63-1, which two rows saturated at
// ingest (i64) do: SQLite's SUM raises "integer overflow" (TOTAL is a
// float and loses the low digits), PostgreSQL's returns a numeric that
// does not fit the int64 scanned. Split, a sum overflows only past 2^31
// rows of saturated counters in one group (2^43 rows of counters the
// server accepts), and counterTotals joins the halves saturating.
var counterSums = func() string {
	parts := make([]string, 0, 2*len(counterCols))
	for _, c := range counterCols {
		parts = append(parts, "SUM("+c+" / 4294967296)", "SUM("+c+" % 4294967296)")
	}
	return strings.Join(parts, ", ")
}()

// counterTotals scans counterSums: high and low halves per counter.
type counterTotals [12]int64

func (c *counterTotals) dest() []any {
	out := make([]any, len(c))
	for i := range c {
		out[i] = &c[i]
	}
	return out
}

// set stores the totals in r's counters.
func (c *counterTotals) set(r *EdgeRow) {
	for i, f := range []*uint64{&r.Requests, &r.ReqBytes, &r.RespBytes, &r.LatencySum, &r.PIISampled, &r.PIIMatches} {
		*f = joinSum(c[2*i], c[2*i+1])
	}
}

// joinSum is hi·2^32 + lo, saturating at the largest uint64; counters
// are stored non-negative, so a negative half (a row not written by
// InsertEdges) counts as 0.
func joinSum(hi, lo int64) uint64 {
	if hi < 0 || lo < 0 {
		return 0
	}
	if hi >= 1<<32 {
		return math.MaxUint64
	}
	v := uint64(hi) << 32
	if v+uint64(lo) < v {
		return math.MaxUint64
	}
	return v + uint64(lo)
}

// PruneTraffic deletes edge rows and samples older than before.
func (s *DB) PruneTraffic(ctx context.Context, before time.Time) (int64, error) {
	var total int64
	for _, q := range []string{"DELETE FROM detect_edges WHERE minute < $1", "DELETE FROM detect_samples WHERE at < $1"} {
		res, err := s.db.ExecContext(ctx, q, ns(before))
		if err != nil {
			return total, fmt.Errorf("store: prune traffic: %w", err)
		}
		n, _ := res.RowsAffected()
		total += n
	}
	return total, nil
}

// Sample is one sampled decision: the reporter's wire.AuditEvent as JSON.
type Sample struct {
	At       time.Time       `json:"at"`
	Reporter string          `json:"reporter"`
	Source   string          `json:"source"`
	Decision string          `json:"decision"`
	Event    json.RawMessage `json:"event"`
}

func insertSamples(ctx context.Context, q Queryer, samples []Sample) error {
	const chunk = 100
	for start := 0; start < len(samples); start += chunk {
		part := samples[start:min(start+chunk, len(samples))]
		args := make([]any, 0, len(part)*5)
		for _, x := range part {
			args = append(args, ns(x.At), x.Reporter, x.Source, x.Decision, string(x.Event))
		}
		if _, err := q.ExecContext(ctx, insertValues("INSERT INTO detect_samples (at, reporter, source, decision, event)", len(part), 5), args...); err != nil {
			return fmt.Errorf("store: record decision samples: %w", err)
		}
	}
	return nil
}

// SampleQuery selects samples: of Source, or reported by Reporter, when
// set; at or after Since and before Before (zero: now); newest first, at
// most Limit.
type SampleQuery struct {
	Source, Reporter string
	Since, Before    time.Time
	Limit            int
}

// Samples lists sampled decisions as q says.
func (s *DB) Samples(ctx context.Context, q SampleQuery) ([]Sample, error) {
	conds, args := []string{"at >= $1"}, []any{ns(q.Since)}
	if !q.Before.IsZero() {
		args = append(args, ns(q.Before))
		conds = append(conds, fmt.Sprintf("at < $%d", len(args)))
	}
	if q.Source != "" || q.Reporter != "" {
		args = append(args, q.Source, q.Reporter)
		conds = append(conds, fmt.Sprintf("(source = $%d OR reporter = $%d)", len(args)-1, len(args)))
	}
	rows, err := s.db.QueryContext(ctx, "SELECT at, reporter, source, decision, event FROM detect_samples WHERE "+strings.Join(conds, " AND ")+
		fmt.Sprintf(" ORDER BY at DESC, id DESC LIMIT %d", max(q.Limit, 1)), args...)
	if err != nil {
		return nil, fmt.Errorf("store: read decision samples: %w", err)
	}
	defer rows.Close()
	out := []Sample{}
	for rows.Next() {
		var x Sample
		var at int64
		var ev string
		if err := rows.Scan(&at, &x.Reporter, &x.Source, &x.Decision, &ev); err != nil {
			return nil, fmt.Errorf("store: read decision samples: %w", err)
		}
		x.At, x.Event = fromNS(at), json.RawMessage(ev)
		out = append(out, x)
	}
	return out, rows.Err()
}

// Workload is what a reporter said about its workload.
type Workload struct {
	SPIFFEID  string            `json:"spiffe_id"`
	Component string            `json:"component"`
	Namespace string            `json:"namespace"`
	Labels    map[string]string `json:"labels,omitempty"`
	Ports     []int             `json:"ports,omitempty"`
	LastSeen  time.Time         `json:"last_seen"`
}

// UpsertWorkload records a reporter's description of its workload.
func (s *DB) UpsertWorkload(ctx context.Context, w Workload) error {
	labels, _ := json.Marshal(w.Labels)
	ports, _ := json.Marshal(w.Ports)
	_, err := s.db.ExecContext(ctx, `INSERT INTO detect_workloads (spiffe_id, component, namespace, labels, ports, last_seen)
		VALUES ($1,$2,$3,$4,$5,$6) ON CONFLICT (spiffe_id) DO UPDATE SET component = excluded.component,
		namespace = excluded.namespace, labels = excluded.labels, ports = excluded.ports, last_seen = excluded.last_seen`,
		w.SPIFFEID, w.Component, w.Namespace, string(labels), string(ports), ns(w.LastSeen))
	if err != nil {
		return fmt.Errorf("store: record workload: %w", err)
	}
	return nil
}

// Workloads lists every reporter's workload, by SPIFFE ID.
func (s *DB) Workloads(ctx context.Context) ([]Workload, error) {
	rows, err := s.db.QueryContext(ctx, "SELECT spiffe_id, component, namespace, labels, ports, last_seen FROM detect_workloads ORDER BY spiffe_id")
	if err != nil {
		return nil, fmt.Errorf("store: read workloads: %w", err)
	}
	defer rows.Close()
	out := []Workload{}
	for rows.Next() {
		var w Workload
		var labels, ports string
		var seen int64
		if err := rows.Scan(&w.SPIFFEID, &w.Component, &w.Namespace, &labels, &ports, &seen); err != nil {
			return nil, fmt.Errorf("store: read workloads: %w", err)
		}
		if err := json.Unmarshal([]byte(labels), &w.Labels); err != nil {
			return nil, fmt.Errorf("store: workload %s: labels: %w", w.SPIFFEID, err)
		}
		if err := json.Unmarshal([]byte(ports), &w.Ports); err != nil {
			return nil, fmt.Errorf("store: workload %s: ports: %w", w.SPIFFEID, err)
		}
		w.LastSeen = fromNS(seen)
		out = append(out, w)
	}
	return out, rows.Err()
}

// KnownEdge is an edge the new-edge detector has seen.
type KnownEdge struct {
	Source, Destination, Method, Path string
	FirstSeen                         time.Time
}

// AddKnownEdges records edges as seen; ones already known keep their
// first sighting.
func (s *DB) AddKnownEdges(ctx context.Context, edges []KnownEdge) error {
	conflict := " ON CONFLICT (source, destination, method, path) DO NOTHING"
	// One statement may not name a row twice (SQLite refuses it).
	seen := make(map[KnownEdge]bool, len(edges))
	uniq := edges[:0:0]
	for _, e := range edges {
		k := e
		k.FirstSeen = time.Time{}
		if !seen[k] {
			seen[k] = true
			uniq = append(uniq, e)
		}
	}
	edges = uniq
	const chunk = 200
	for start := 0; start < len(edges); start += chunk {
		part := edges[start:min(start+chunk, len(edges))]
		args := make([]any, 0, len(part)*5)
		for _, e := range part {
			args = append(args, e.Source, e.Destination, e.Method, e.Path, ns(e.FirstSeen))
		}
		if _, err := s.db.ExecContext(ctx, insertValues("INSERT INTO detect_known_edges (source, destination, method, path, first_seen)", len(part), 5)+conflict, args...); err != nil {
			return fmt.Errorf("store: record known edges: %w", err)
		}
	}
	return nil
}

// KnownEdges lists every edge seen.
func (s *DB) KnownEdges(ctx context.Context) ([]KnownEdge, error) {
	rows, err := s.db.QueryContext(ctx, "SELECT source, destination, method, path, first_seen FROM detect_known_edges")
	if err != nil {
		return nil, fmt.Errorf("store: read known edges: %w", err)
	}
	defer rows.Close()
	var out []KnownEdge
	for rows.Next() {
		var e KnownEdge
		var at int64
		if err := rows.Scan(&e.Source, &e.Destination, &e.Method, &e.Path, &at); err != nil {
			return nil, fmt.Errorf("store: read known edges: %w", err)
		}
		e.FirstSeen = fromNS(at)
		out = append(out, e)
	}
	return out, rows.Err()
}

// FindingRow is a stored finding; Body is detect's JSON of it.
type FindingRow struct {
	ID          string
	At, LastAt  time.Time
	Detector    string
	Severity    string
	Identity    string
	Destination string
	Count       uint64
	IncidentID  string
	Body        json.RawMessage
}

// PutFinding inserts a finding or, for one already stored, replaces its
// last sighting, count, incident and body, claiming nothing: for copying
// findings in whole. The server stores its detectors' findings with
// MergeFinding, which merges them across replicas, and links them to
// incidents with LinkFinding.
func (s *DB) PutFinding(ctx context.Context, q Queryer, f FindingRow) error {
	_, err := q.ExecContext(ctx, `INSERT INTO detect_findings (id, at, last_at, detector, severity, identity, destination, count, incident_id, body)
		VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9,$10) ON CONFLICT (id) DO UPDATE SET last_at = excluded.last_at, severity = excluded.severity,
		count = excluded.count, incident_id = excluded.incident_id, body = excluded.body`,
		f.ID, ns(f.At), ns(f.LastAt), f.Detector, f.Severity, f.Identity, f.Destination, i64(f.Count), f.IncidentID, string(f.Body))
	if err != nil {
		return fmt.Errorf("store: record finding: %w", err)
	}
	return nil
}

// FindingQuery selects findings: of Identity when set, with one of
// Severities when set, first seen at or after Since and before Before
// (zero: no bound), last seen at or after SeenSince (zero: no bound),
// newest first, at most Limit.
type FindingQuery struct {
	Identity      string
	Severities    []string
	Since, Before time.Time
	SeenSince     time.Time
	Limit         int
}

// Findings lists findings as q says.
func (s *DB) Findings(ctx context.Context, q FindingQuery) ([]FindingRow, error) {
	conds, args := []string{"at >= $1"}, []any{ns(q.Since)}
	if !q.Before.IsZero() {
		args = append(args, ns(q.Before))
		conds = append(conds, fmt.Sprintf("at < $%d", len(args)))
	}
	if q.Identity != "" {
		args = append(args, q.Identity)
		conds = append(conds, fmt.Sprintf("identity = $%d", len(args)))
	}
	if !q.SeenSince.IsZero() {
		args = append(args, ns(q.SeenSince))
		conds = append(conds, fmt.Sprintf("last_at >= $%d", len(args)))
	}
	if len(q.Severities) > 0 {
		ph := make([]string, len(q.Severities))
		for i, sev := range q.Severities {
			args = append(args, sev)
			ph[i] = fmt.Sprintf("$%d", len(args))
		}
		conds = append(conds, "severity IN ("+strings.Join(ph, ", ")+")")
	}
	return s.findings(ctx, "WHERE "+strings.Join(conds, " AND ")+fmt.Sprintf(" ORDER BY at DESC, id DESC LIMIT %d", max(q.Limit, 1)), args...)
}

// Finding returns one finding; ErrNotFound.
func (s *DB) Finding(ctx context.Context, id string) (FindingRow, error) {
	l, err := s.findings(ctx, "WHERE id = $1", id)
	if err != nil {
		return FindingRow{}, err
	}
	if len(l) == 0 {
		return FindingRow{}, fmt.Errorf("%w: no finding %q", ErrNotFound, id)
	}
	return l[0], nil
}

func (s *DB) findings(ctx context.Context, tail string, args ...any) ([]FindingRow, error) {
	rows, err := s.db.QueryContext(ctx, "SELECT id, at, last_at, detector, severity, identity, destination, count, incident_id, body FROM detect_findings "+tail, args...)
	if err != nil {
		return nil, fmt.Errorf("store: read findings: %w", err)
	}
	defer rows.Close()
	out := []FindingRow{}
	for rows.Next() {
		var f FindingRow
		var at, last, n int64
		var body string
		if err := rows.Scan(&f.ID, &at, &last, &f.Detector, &f.Severity, &f.Identity, &f.Destination, &n, &f.IncidentID, &body); err != nil {
			return nil, fmt.Errorf("store: read findings: %w", err)
		}
		f.At, f.LastAt, f.Count, f.Body = fromNS(at), fromNS(last), uint64(n), json.RawMessage(body)
		out = append(out, f)
	}
	return out, rows.Err()
}

// IncidentRow is a stored incident; Body is detect's JSON of it.
type IncidentRow struct {
	ID        string
	Identity  string
	State     string
	OpenedAt  time.Time
	UpdatedAt time.Time
	Body      json.RawMessage
}

// PutIncident inserts or replaces an incident.
func (s *DB) PutIncident(ctx context.Context, q Queryer, r IncidentRow) error {
	_, err := q.ExecContext(ctx, `INSERT INTO detect_incidents (id, identity, state, opened_at, updated_at, body) VALUES ($1,$2,$3,$4,$5,$6)
		ON CONFLICT (id) DO UPDATE SET state = excluded.state, updated_at = excluded.updated_at, body = excluded.body`,
		r.ID, r.Identity, r.State, ns(r.OpenedAt), ns(r.UpdatedAt), string(r.Body))
	if err != nil {
		return fmt.Errorf("store: record incident: %w", err)
	}
	return nil
}

// IncidentQuery selects incidents: of Identity, in State, when set;
// opened before Before (zero: now); newest first, at most Limit.
type IncidentQuery struct {
	Identity, State string
	Before          time.Time
	Limit           int
}

// Incidents lists incidents as q says.
func (s *DB) Incidents(ctx context.Context, q IncidentQuery) ([]IncidentRow, error) {
	conds, args := []string{"1 = 1"}, []any{}
	if !q.Before.IsZero() {
		args = append(args, ns(q.Before))
		conds = append(conds, fmt.Sprintf("opened_at < $%d", len(args)))
	}
	if q.Identity != "" {
		args = append(args, q.Identity)
		conds = append(conds, fmt.Sprintf("identity = $%d", len(args)))
	}
	if q.State != "" {
		args = append(args, q.State)
		conds = append(conds, fmt.Sprintf("state = $%d", len(args)))
	}
	return s.incidents(ctx, s.db, "WHERE "+strings.Join(conds, " AND ")+fmt.Sprintf(" ORDER BY opened_at DESC, id DESC LIMIT %d", max(q.Limit, 1)), args...)
}

// Incident returns one incident; ErrNotFound. Inside tx (q a *sql.Tx)
// under PostgreSQL its row is locked until tx ends.
func (s *DB) Incident(ctx context.Context, q Queryer, id string) (IncidentRow, error) {
	tail := "WHERE id = $1"
	if _, ok := q.(*sql.Tx); ok {
		tail += s.forUpdate()
	}
	l, err := s.incidents(ctx, q, tail, id)
	if err != nil {
		return IncidentRow{}, err
	}
	if len(l) == 0 {
		return IncidentRow{}, fmt.Errorf("%w: no incident %q", ErrNotFound, id)
	}
	return l[0], nil
}

func (s *DB) incidents(ctx context.Context, q Queryer, tail string, args ...any) ([]IncidentRow, error) {
	rows, err := q.QueryContext(ctx, "SELECT id, identity, state, opened_at, updated_at, body FROM detect_incidents "+tail, args...)
	if err != nil {
		return nil, fmt.Errorf("store: read incidents: %w", err)
	}
	defer rows.Close()
	out := []IncidentRow{}
	for rows.Next() {
		var r IncidentRow
		var opened, updated int64
		var body string
		if err := rows.Scan(&r.ID, &r.Identity, &r.State, &opened, &updated, &body); err != nil {
			return nil, fmt.Errorf("store: read incidents: %w", err)
		}
		r.OpenedAt, r.UpdatedAt, r.Body = fromNS(opened), fromNS(updated), json.RawMessage(body)
		out = append(out, r)
	}
	return out, rows.Err()
}

// ClaimOpenIncident makes incidentID the open incident of identity,
// inside tx, unless one is open for it already: then it returns that
// incident's ID and false. The claim is a row keyed by the identity, so of
// two replicas claiming at once one wins and the other, once the winner
// commits, reads its incident: a playbook fires once per identity however
// many replicas raised findings about it. The claim lasts until
// ReleaseOpenIncident, in the transaction that releases the incident.
func (s *DB) ClaimOpenIncident(ctx context.Context, tx *sql.Tx, identity, incidentID string) (string, bool, error) {
	res, err := tx.ExecContext(ctx, `INSERT INTO detect_open_incidents (identity, incident_id) VALUES ($1, $2) ON CONFLICT (identity) DO NOTHING`,
		identity, incidentID)
	if err != nil {
		return "", false, fmt.Errorf("store: claim the open incident of %s: %w", identity, err)
	}
	if n, err := res.RowsAffected(); err != nil {
		return "", false, fmt.Errorf("store: claim the open incident of %s: %w", identity, err)
	} else if n == 1 {
		return incidentID, true, nil
	}
	cur, err := s.OpenIncidentOf(ctx, tx, identity)
	if err != nil {
		return "", false, err
	}
	if cur == "" {
		// Claimed and released between the two statements: the caller
		// retries.
		return "", false, fmt.Errorf("%w: the open incident of %s changed concurrently; retry", ErrConflict, identity)
	}
	return cur, false, nil
}

// OpenIncidentOf returns the ID of identity's open incident ("" when it
// has none): the one every replica's responder joins.
func (s *DB) OpenIncidentOf(ctx context.Context, q Queryer, identity string) (string, error) {
	var id string
	err := q.QueryRowContext(ctx, "SELECT incident_id FROM detect_open_incidents WHERE identity = $1", identity).Scan(&id)
	if errors.Is(err, sql.ErrNoRows) {
		return "", nil
	}
	if err != nil {
		return "", fmt.Errorf("store: read the open incident of %s: %w", identity, err)
	}
	return id, nil
}

// ReleaseOpenIncident ends incidentID's claim on identity (inside the
// transaction that releases it); a claim held by another incident stays.
func (s *DB) ReleaseOpenIncident(ctx context.Context, q Queryer, identity, incidentID string) error {
	if _, err := q.ExecContext(ctx, "DELETE FROM detect_open_incidents WHERE identity = $1 AND incident_id = $2", identity, incidentID); err != nil {
		return fmt.Errorf("store: release the open incident of %s: %w", identity, err)
	}
	return nil
}

// Block is a blocked (source, destination) pair.
type Block struct {
	Source      string    `json:"source"`
	Destination string    `json:"destination"`
	IncidentID  string    `json:"incident_id,omitempty"`
	Reason      string    `json:"reason,omitempty"`
	CreatedBy   string    `json:"created_by"`
	CreatedAt   time.Time `json:"created_at"`
	// ExpiresAt is when the block lapses; zero: until released.
	ExpiresAt time.Time `json:"expires_at,omitzero"`
}

// PutBlock blocks a pair, or replaces the block of a pair blocked
// already (a longer or confirmed block), and bumps the revocations
// version: blocks travel with the revocations.
func (s *DB) PutBlock(ctx context.Context, tx *sql.Tx, b Block) (uint64, error) {
	var exp int64
	if !b.ExpiresAt.IsZero() {
		exp = ns(b.ExpiresAt)
	}
	_, err := tx.ExecContext(ctx, `INSERT INTO detect_blocks (source, destination, incident_id, reason, created_by, created_at, expires_at)
		VALUES ($1,$2,$3,$4,$5,$6,$7) ON CONFLICT (source, destination) DO UPDATE SET incident_id = excluded.incident_id,
		reason = excluded.reason, created_by = excluded.created_by, created_at = excluded.created_at, expires_at = excluded.expires_at`,
		b.Source, b.Destination, b.IncidentID, b.Reason, b.CreatedBy, ns(b.CreatedAt), exp)
	if err != nil {
		return 0, fmt.Errorf("store: block pair: %w", err)
	}
	return s.BumpVersion(ctx, tx, SectionRevocations)
}

// DeleteBlock lifts the block of a pair; ErrNotFound when it is not
// blocked.
func (s *DB) DeleteBlock(ctx context.Context, tx *sql.Tx, source, destination string) (uint64, error) {
	res, err := tx.ExecContext(ctx, "DELETE FROM detect_blocks WHERE source = $1 AND destination = $2", source, destination)
	if err != nil {
		return 0, fmt.Errorf("store: lift block: %w", err)
	}
	if n, _ := res.RowsAffected(); n == 0 {
		return 0, fmt.Errorf("%w: %s → %s is not blocked", ErrNotFound, source, destination)
	}
	return s.BumpVersion(ctx, tx, SectionRevocations)
}

// Blocks lists the blocks in force at now.
func (s *DB) Blocks(ctx context.Context, now time.Time) ([]Block, error) {
	rows, err := s.db.QueryContext(ctx, `SELECT source, destination, incident_id, reason, created_by, created_at, expires_at FROM detect_blocks
		WHERE expires_at = 0 OR expires_at > $1 ORDER BY source, destination`, ns(now))
	if err != nil {
		return nil, fmt.Errorf("store: read blocks: %w", err)
	}
	defer rows.Close()
	out := []Block{}
	for rows.Next() {
		var b Block
		var at, exp int64
		if err := rows.Scan(&b.Source, &b.Destination, &b.IncidentID, &b.Reason, &b.CreatedBy, &at, &exp); err != nil {
			return nil, fmt.Errorf("store: read blocks: %w", err)
		}
		b.CreatedAt = fromNS(at)
		if exp != 0 {
			b.ExpiresAt = fromNS(exp)
		}
		out = append(out, b)
	}
	return out, rows.Err()
}

// PruneBlocks deletes the blocks that lapsed at or before now, returning
// them, and bumps the revocations version when any went.
func (s *DB) PruneBlocks(ctx context.Context, tx *sql.Tx, now time.Time) ([]Block, error) {
	rows, err := tx.QueryContext(ctx, `SELECT source, destination, incident_id, reason, created_by, created_at, expires_at FROM detect_blocks
		WHERE expires_at <> 0 AND expires_at <= $1`, ns(now))
	if err != nil {
		return nil, fmt.Errorf("store: prune blocks: %w", err)
	}
	var gone []Block
	for rows.Next() {
		var b Block
		var at, exp int64
		if err := rows.Scan(&b.Source, &b.Destination, &b.IncidentID, &b.Reason, &b.CreatedBy, &at, &exp); err != nil {
			rows.Close()
			return nil, fmt.Errorf("store: prune blocks: %w", err)
		}
		b.CreatedAt, b.ExpiresAt = fromNS(at), fromNS(exp)
		gone = append(gone, b)
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return nil, err
	}
	if len(gone) == 0 {
		return nil, nil
	}
	if _, err := tx.ExecContext(ctx, "DELETE FROM detect_blocks WHERE expires_at <> 0 AND expires_at <= $1", ns(now)); err != nil {
		return nil, fmt.Errorf("store: prune blocks: %w", err)
	}
	if _, err := s.BumpVersion(ctx, tx, SectionRevocations); err != nil {
		return nil, err
	}
	return gone, nil
}

// SVIDsOf lists the unexpired certificates issued to a SPIFFE ID at now,
// newest first (for the forensics bundle and revoke-certificate).
func (s *DB) SVIDsOf(ctx context.Context, spiffeID string, now time.Time) ([]IssuedSVID, error) {
	rows, err := s.db.QueryContext(ctx, `SELECT serial, spiffe_id, kind, entry_id, issued_to, not_after, issued_at FROM svids
		WHERE spiffe_id = $1 AND not_after > $2 ORDER BY issued_at DESC, serial`, spiffeID, ns(now))
	if err != nil {
		return nil, fmt.Errorf("store: read SVIDs: %w", err)
	}
	defer rows.Close()
	out := []IssuedSVID{}
	for rows.Next() {
		var v IssuedSVID
		var na, ia int64
		if err := rows.Scan(&v.Serial, &v.SPIFFEID, &v.Kind, &v.EntryID, &v.IssuedTo, &na, &ia); err != nil {
			return nil, fmt.Errorf("store: read SVIDs: %w", err)
		}
		v.NotAfter, v.IssuedAt = fromNS(na), fromNS(ia)
		out = append(out, v)
	}
	return out, rows.Err()
}

// RiskFinding is what a stored finding contributes to its identity's
// risk score.
type RiskFinding struct {
	ID       string
	Identity string
	Severity string
	LastAt   time.Time
}

// RiskFindings lists the findings last seen at or after since: every
// replica's, since all write the same table. They come in the order they
// were first seen (ties by ID), so every reader lists them alike.
func (s *DB) RiskFindings(ctx context.Context, since time.Time) ([]RiskFinding, error) {
	rows, err := s.db.QueryContext(ctx, "SELECT id, identity, severity, last_at FROM detect_findings WHERE last_at >= $1 ORDER BY at, id", ns(since))
	if err != nil {
		return nil, fmt.Errorf("store: read findings: %w", err)
	}
	defer rows.Close()
	var out []RiskFinding
	for rows.Next() {
		var f RiskFinding
		var last int64
		if err := rows.Scan(&f.ID, &f.Identity, &f.Severity, &last); err != nil {
			return nil, fmt.Errorf("store: read findings: %w", err)
		}
		f.LastAt = fromNS(last)
		out = append(out, f)
	}
	return out, rows.Err()
}

// riskMetaKey is where the watch stream's risk section is kept (JSON of
// wire.RiskScores).
const riskMetaKey = "detect_risk_section"

// RiskSection returns the stored risk section; ErrNotFound before the
// first PutRiskSection.
func (s *DB) RiskSection(ctx context.Context) ([]byte, error) {
	v, err := s.Meta(ctx, riskMetaKey)
	return []byte(v), err
}

// PutRiskSection stores the risk section body and bumps SectionRisk, in
// one transaction, unless the stored body is already byte for byte the
// same: replicas computing the same scores from the same findings change
// nothing, and the watch streams wake only when a score moved. It returns
// whether it changed the section.
func (s *DB) PutRiskSection(ctx context.Context, body []byte) (bool, error) {
	changed := false
	err := s.Tx(ctx, func(tx *sql.Tx) error {
		var cur string
		err := tx.QueryRowContext(ctx, "SELECT value FROM meta WHERE key = $1", riskMetaKey).Scan(&cur)
		switch {
		case errors.Is(err, sql.ErrNoRows):
		case err != nil:
			return fmt.Errorf("store: read risk section: %w", err)
		case cur == string(body):
			return nil
		}
		if err := s.SetMeta(ctx, tx, riskMetaKey, string(body)); err != nil {
			return err
		}
		if _, err := s.BumpVersion(ctx, tx, SectionRisk); err != nil {
			return err
		}
		changed = true
		return nil
	})
	return changed, err
}
