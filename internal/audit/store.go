package audit

import (
	"bytes"
	"context"
	"database/sql"
	"encoding/json"
	"fmt"
	"math"
	"sync"
	"time"

	"github.com/moatless/moatless/internal/store"
)

// StoreSink appends events to the store's audit log, chained.
//
// AppendTx writes inside a caller's transaction, so a change and its audit
// record commit together or not at all. Append (the Sink method) is for
// events with no change of their own (reads, refusals, issuance): it
// group-commits, so concurrent callers share one transaction and one
// fsync, and returns once its event is durable.
//
// Every append locks the chain head (PostgreSQL: SELECT ... FOR UPDATE;
// SQLite: the database write lock), so appends from several server
// replicas serialize into one chain. Safe for concurrent use.
type StoreSink struct {
	db *store.DB
	// Now is the clock for events without a time; time.Now when nil.
	Now func() time.Time
	// MaxBatch bounds a group commit; 256 when 0.
	MaxBatch int
	// OnAppend, when set, is told the events of every group commit
	// (Append, AppendWith) once they are durable, on the committing
	// goroutine: it must not block. Detection reads the token service's,
	// the agent API's and the reporters' events from here. Events of
	// AppendTx are not passed: the caller's transaction may still roll
	// back.
	OnAppend func([]Event)

	mu      sync.Mutex
	pending []*pendingEvent
	leading bool
}

type pendingEvent struct {
	evs  []Event
	with func(ctx context.Context, tx *sql.Tx) error
	done chan error
}

// NewStoreSink returns a sink writing to db.
func NewStoreSink(db *store.DB) *StoreSink { return &StoreSink{db: db} }

func (s *StoreSink) now() time.Time {
	if s.Now != nil {
		return s.Now()
	}
	return time.Now()
}

// AppendTx chains evs after the current head inside tx. The head stays
// locked until tx ends.
func (s *StoreSink) AppendTx(ctx context.Context, tx *sql.Tx, evs ...Event) error {
	if len(evs) == 0 {
		return nil
	}
	seq, prev, err := s.db.LockAuditHead(ctx, tx)
	if err != nil {
		return fmt.Errorf("audit: %w", err)
	}
	rows := make([]store.AuditRow, 0, len(evs))
	for _, ev := range evs {
		ev = normalize(ev, s.now)
		seq++
		r := store.AuditRow{
			Seq: int64(seq), At: ev.Time.UnixNano(), Kind: ev.Kind, Actor: ev.Actor, Subject: ev.Subject,
			Outcome: ev.Outcome, Details: encodeDetails(ev.Details), PrevHash: prev,
		}
		r.Hash = Hash(seq, r.At, r.Kind, r.Actor, r.Subject, r.Outcome, r.Details, r.PrevHash)
		rows = append(rows, r)
		prev = r.Hash
	}
	if err := s.db.AppendAuditRows(ctx, tx, rows); err != nil {
		return fmt.Errorf("audit: %w", err)
	}
	return nil
}

// Append records ev durably, batching with concurrent callers. If ctx ends
// before the batch is written, Append returns ctx's error, but the event
// may still be written.
func (s *StoreSink) Append(ctx context.Context, ev Event) error {
	return s.AppendWith(ctx, nil, ev)
}

// AppendWith is Append for several events plus writes of the caller's own
// (with, which may be nil) that must commit together with them, such as
// the record of an issued certificate. with runs inside the group
// transaction; if it fails, every event of that batch fails with it, so it
// should only do writes that cannot conflict (inserts under fresh keys).
func (s *StoreSink) AppendWith(ctx context.Context, with func(ctx context.Context, tx *sql.Tx) error, evs ...Event) error {
	now := s.now()
	evs = append([]Event(nil), evs...)
	for i := range evs {
		if evs[i].Time.IsZero() {
			evs[i].Time = now
		}
	}
	p := &pendingEvent{evs: evs, with: with, done: make(chan error, 1)}
	s.mu.Lock()
	s.pending = append(s.pending, p)
	lead := !s.leading
	if lead {
		s.leading = true
	}
	s.mu.Unlock()
	if lead {
		// The leader writes batches until none are pending, then steps
		// down; followers only wait. Detached from the leader's ctx so one
		// caller's cancellation cannot fail everybody else's events.
		s.lead(context.WithoutCancel(ctx))
	}
	select {
	case err := <-p.done:
		return err
	case <-ctx.Done():
		return ctx.Err()
	}
}

func (s *StoreSink) lead(ctx context.Context) {
	maxBatch := s.MaxBatch
	if maxBatch <= 0 {
		maxBatch = 256
	}
	for {
		s.mu.Lock()
		if len(s.pending) == 0 {
			s.leading = false
			s.mu.Unlock()
			return
		}
		n, count := 0, 0
		for n < len(s.pending) && (n == 0 || count+len(s.pending[n].evs) <= maxBatch) {
			count += len(s.pending[n].evs)
			n++
		}
		batch := s.pending[:n:n]
		s.pending = s.pending[n:]
		s.mu.Unlock()

		evs := make([]Event, 0, count)
		for _, p := range batch {
			evs = append(evs, p.evs...)
		}
		var err error
		for attempt := 0; attempt < 3; attempt++ {
			// A retry covers the one benign race: two replicas creating
			// the chain head of an empty log at once.
			err = s.db.Tx(ctx, func(tx *sql.Tx) error {
				for _, p := range batch {
					if p.with != nil {
						if err := p.with(ctx, tx); err != nil {
							return err
						}
					}
				}
				return s.AppendTx(ctx, tx, evs...)
			})
			if err == nil {
				break
			}
		}
		if err == nil && s.OnAppend != nil {
			s.OnAppend(evs)
		}
		for _, p := range batch {
			p.done <- err
		}
	}
}

// FromRow converts a stored row of the chain (seq >= 1) to a Record.
func FromRow(r store.AuditRow) (Record, error) {
	if r.Seq < 1 {
		return Record{}, fmt.Errorf("audit: record %d is outside the chain (sequence numbers start at 1)", r.Seq)
	}
	rec := Record{Seq: uint64(r.Seq), PrevHash: r.PrevHash, Hash: r.Hash, Event: Event{
		Time: time.Unix(0, r.At).UTC(), Kind: r.Kind, Actor: r.Actor, Subject: r.Subject, Outcome: r.Outcome,
	}}
	if len(rec.PrevHash) == 0 {
		rec.PrevHash = nil
	}
	if err := json.Unmarshal([]byte(r.Details), &rec.Details); err != nil {
		return rec, fmt.Errorf("audit: record %d: details are not a JSON object of strings: %w", r.Seq, err)
	}
	return rec, nil
}

// List returns up to limit records of the chain, newest first, older than
// before (0: from the newest). Only records 1 to the chain head are
// listed: a row stored outside that range was not written by the audit
// sink (audit verify names it) and is never shown as a record.
func List(ctx context.Context, db *store.DB, before uint64, limit int) ([]Record, error) {
	return ListKinds(ctx, db, before, limit, nil)
}

// ListKinds is List for the records whose kind starts with one of
// prefixes (all records when there are none).
func ListKinds(ctx context.Context, db *store.DB, before uint64, limit int, prefixes []string) ([]Record, error) {
	head, _, err := db.AuditHead(ctx)
	if err != nil {
		return nil, fmt.Errorf("audit: %w", err)
	}
	upTo := head
	if before > 0 {
		upTo = min(upTo, before-1)
	}
	rows, err := db.AuditRowsDescKinds(ctx, upTo, limit, prefixes)
	if err != nil {
		return nil, fmt.Errorf("audit: %w", err)
	}
	return records(rows)
}

// ListRange returns up to limit records with from <= seq <= upTo whose
// kind starts with one of prefixes (all with none), newest first.
func ListRange(ctx context.Context, db *store.DB, from, upTo uint64, limit int, prefixes []string) ([]Record, error) {
	rows, err := db.AuditRowsRangeKinds(ctx, from, upTo, limit, prefixes)
	if err != nil {
		return nil, fmt.Errorf("audit: %w", err)
	}
	return records(rows)
}

func records(rows []store.AuditRow) ([]Record, error) {
	out := make([]Record, 0, len(rows))
	for _, r := range rows {
		rec, err := FromRow(r)
		if err != nil {
			return nil, err
		}
		out = append(out, rec)
	}
	return out, nil
}

// VerifyOptions tune Verify.
type VerifyOptions struct {
	// ExpectHead, when set, is a head saved earlier: the record with its
	// sequence number must still carry its hash. This catches a chain
	// rewritten from an edited record forward, and a tail cut off with the
	// head moved back, which the chain alone cannot.
	ExpectHead *Head
	// PageSize is how many records are read per query; 1000 when 0.
	PageSize int
	// Archived, when set, is where the archived segment files end
	// (VerifyArchive): the store's log must continue exactly there. When
	// nil, a log whose oldest records were archived is checked from its
	// archived head (the store's record of the last segment), which
	// VerifyResult.Base reports.
	Archived *Head
}

// VerifyResult summarizes a chain that verified.
type VerifyResult struct {
	Records uint64 `json:"records"`
	Head    Head   `json:"head"`
	// Base is where the checked chain starts: 0 and no hash for a log
	// that was never archived, else the last archived record.
	Base Head `json:"base"`
}

// Verify checks every row of db's audit log against the chain, reading
// one consistent snapshot (appends committed meanwhile by a running server
// are not mistaken for tampering). The log verifies only if its rows are
// exactly records 1 to the head, each once, each linking to the one before
// and carrying the hash of its own content, and the head names the last.
// Otherwise Verify returns a *VerifyError (matching ErrBroken) naming the
// first row that does not fit: one stored outside the chain (a sequence
// number below 1, above the head, twice, or not an integer), edited (its
// hash does not match its content), deleted or inserted (a gap or a broken
// link), reordered (a broken link), a truncated tail (the head names a
// record that is missing), or a second head. Other errors are I/O.
func Verify(ctx context.Context, db *store.DB, o VerifyOptions) (VerifyResult, error) {
	var res VerifyResult
	err := db.ReadAudit(ctx, func(snap *store.AuditSnapshot) error {
		var err error
		res, err = verify(ctx, snap, o)
		return err
	})
	return res, err
}

func verify(ctx context.Context, snap *store.AuditSnapshot, o VerifyOptions) (VerifyResult, error) {
	page := o.PageSize
	if page <= 0 {
		page = 1000
	}
	var res VerifyResult
	an, err := snap.Anomalies(ctx)
	if err != nil {
		return res, fmt.Errorf("audit: %w", err)
	}
	switch {
	case an.NonInteger != "":
		return res, &VerifyError{Stored: an.NonInteger, Reason: "outside the chain: its sequence number is not an integer (written outside the audit sink)"}
	case an.HasDuplicate:
		return res, &VerifyError{Seq: an.Duplicate, Reason: "outside the chain: this sequence number is stored more than once (written outside the audit sink)"}
	case an.HasExtraHead:
		return res, &VerifyError{Seq: an.ExtraHeadSeq, Reason: fmt.Sprintf("a second chain head (id %d) names it: written outside the audit sink", an.ExtraHeadID)}
	}
	headSeq, headHash, err := snap.Head(ctx)
	if err != nil {
		return res, fmt.Errorf("audit: %w", err)
	}
	if headSeq < 0 {
		return res, &VerifyError{Seq: headSeq, Reason: "the chain head names it, but sequence numbers start at 1"}
	}
	var (
		prev      []byte
		last      int64
		sawExpect bool
		from      int64 = math.MinInt64
	)
	// Records archived out of the store (archive.go) are gone from it; the
	// chain in the store continues from the last one: its rows must be
	// exactly base+1 to the head.
	baseSeq, baseHash, err := snap.Base(ctx)
	if err != nil {
		return res, fmt.Errorf("audit: %w", err)
	}
	res.Base = Head{Seq: baseSeq, Hash: baseHash}
	if a := o.Archived; a != nil && (a.Seq != baseSeq || !bytes.Equal(a.Hash, baseHash)) {
		return res, &VerifyError{Seq: int64(min(a.Seq, math.MaxInt64-1)) + 1, Reason: fmt.Sprintf("the archived segments end at %s but the store's log continues from %s", a, res.Base)}
	}
	if baseSeq > uint64(max(headSeq, 0)) {
		return res, &VerifyError{Seq: headSeq, Reason: fmt.Sprintf("the chain head is before the archived head %s", res.Base)}
	}
	last, prev = int64(baseSeq), nilIfEmpty(baseHash)
	if o.ExpectHead != nil && o.ExpectHead.Seq <= baseSeq && o.ExpectHead.Seq > 0 {
		// The expected head was archived: only the archive's check
		// (VerifyArchive) can see its record, except the base itself.
		sawExpect = true
		if o.ExpectHead.Seq == baseSeq && !bytes.Equal(o.ExpectHead.Hash, baseHash) {
			return res, &VerifyError{Seq: int64(baseSeq), Reason: "its hash differs from the expected head (the chain was rewritten from this record or before)"}
		}
	}
walk:
	for {
		rows, err := snap.RowsFrom(ctx, from, page)
		if err != nil {
			return res, fmt.Errorf("audit: %w", err)
		}
		for _, r := range rows {
			want := last + 1
			switch {
			case r.Seq < 1:
				return res, &VerifyError{Seq: r.Seq, Reason: "outside the chain: sequence numbers start at 1 (written outside the audit sink)"}
			case r.Seq <= int64(baseSeq):
				return res, &VerifyError{Seq: r.Seq, Reason: fmt.Sprintf("outside the chain: at or before the archived head %s (an archived record left in or put back into the store)", res.Base)}
			case r.Seq > headSeq:
				return res, &VerifyError{Seq: r.Seq, Reason: fmt.Sprintf("after the chain head (%d): appended outside the audit sink", headSeq)}
			case r.Seq != want:
				return res, &VerifyError{Seq: want, Reason: fmt.Sprintf("missing: the next stored record is %d (records deleted)", r.Seq)}
			case !bytes.Equal(nilIfEmpty(r.PrevHash), prev):
				return res, &VerifyError{Seq: r.Seq, Reason: "its previous-hash does not match the record before it (a record was deleted, inserted or reordered before it)"}
			case !bytes.Equal(Hash(uint64(r.Seq), r.At, r.Kind, r.Actor, r.Subject, r.Outcome, r.Details, nilIfEmpty(r.PrevHash)), r.Hash):
				return res, &VerifyError{Seq: r.Seq, Reason: "its content does not match its hash (the record was edited)"}
			}
			if _, err := FromRow(r); err != nil {
				return res, &VerifyError{Seq: r.Seq, Reason: err.Error()}
			}
			if o.ExpectHead != nil && uint64(r.Seq) == o.ExpectHead.Seq {
				sawExpect = true
				if !bytes.Equal(r.Hash, o.ExpectHead.Hash) {
					return res, &VerifyError{Seq: r.Seq, Reason: "its hash differs from the expected head (the chain was rewritten from this record or before)"}
				}
			}
			prev, last = r.Hash, r.Seq
			res.Records++
		}
		// last <= headSeq <= MaxInt64 - 1 is not guaranteed: stop before
		// last+1 wraps.
		if len(rows) < page || last == math.MaxInt64 {
			break walk
		}
		from = last + 1
	}
	switch {
	case headSeq > last:
		return res, &VerifyError{Seq: last + 1, Reason: fmt.Sprintf("missing: the chain head says the log ends at %d (tail truncated)", headSeq)}
	case !bytes.Equal(headHash, prev):
		return res, &VerifyError{Seq: last, Reason: "its hash differs from the chain head's"}
	case an.Rows != int64(res.Records):
		// Unreachable while the checks above hold; kept so that no row can
		// escape the walk unreported whatever the schema allows.
		return res, &VerifyError{Seq: last, Reason: fmt.Sprintf("%d rows are stored but the chain has %d: rows outside the chain exist", an.Rows, res.Records)}
	}
	if o.ExpectHead != nil && !sawExpect {
		return res, &VerifyError{Seq: int64(min(o.ExpectHead.Seq, math.MaxInt64)), Reason: "the expected head record is missing"}
	}
	res.Head = Head{Seq: uint64(last), Hash: prev}
	return res, nil
}

func nilIfEmpty(b []byte) []byte {
	if len(b) == 0 {
		return nil
	}
	return b
}
