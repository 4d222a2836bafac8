package detect

import (
	"sync"
	"time"
)

// Bounds of Reports: the reports remembered per reporter and the
// reporters remembered.
const (
	reportsPerReporter = 16
	maxReportReporters = 100_000
)

// ReportState is what Reports.Begin knows of a report.
type ReportState uint8

const (
	// ReportNew: not seen; Begin marked it in flight, and the caller must
	// call Done with the outcome.
	ReportNew ReportState = iota
	// ReportTaken: the same report was taken before (its answer was
	// lost and the reporter retried it); count it no more.
	ReportTaken
	// ReportInFlight: the same report is being taken by another request;
	// the caller should answer "retry later", not count it.
	ReportInFlight
)

// Reports remembers, per reporter, the digests of the last traffic
// reports taken, so that a report retried after its answer was lost (a
// timeout after the server stored it) is not counted twice: twice the
// requests and bytes on an edge would read as a rate or volume anomaly,
// an exfiltration finding against the caller, that never happened.
//
// A reporter's windows never repeat (each report holds its window's
// start and end and, when a window is sent in parts, different edges),
// so two reports with one digest from one reporter are one report.
// Reporters are keyed by the caller's authenticated SPIFFE ID: one node
// cannot mark another's reports as taken. A digest is kept for Keep after
// it was taken (the age past which the server refuses a report anyway),
// at most reportsPerReporter per reporter (a node retries its oldest
// pending report first, so the one to match is among its last few), for
// at most maxReportReporters reporters; past that, reports of reporters not
// remembered are counted without the check. The zero value is not ready:
// use NewReports. Safe for concurrent use.
//
// The memory is one replica's: a retry that fails over to another replica
// is not recognised there.
type Reports struct {
	keep time.Duration

	mu        sync.Mutex
	by        map[string]*reporterReports
	lastSweep time.Time
}

type reporterReports struct {
	ring [reportsPerReporter]reportSeen
	next int
	last time.Time // when a report was last taken or begun
}

type reportSeen struct {
	sum      [32]byte
	at       time.Time
	inFlight bool
	used     bool
}

// NewReports returns a Reports keeping digests for keep.
func NewReports(keep time.Duration) *Reports {
	return &Reports{keep: keep, by: map[string]*reporterReports{}}
}

// Begin looks up the report of reporter with digest sum at now. For
// ReportNew it marks it in flight: call Done with the same reporter and
// sum once it was taken or refused.
func (r *Reports) Begin(reporter string, sum [32]byte, now time.Time) ReportState {
	r.mu.Lock()
	defer r.mu.Unlock()
	rr := r.by[reporter]
	if rr == nil {
		// A sweep visits every reporter: at most once a second, so a
		// full table does not cost that on every report.
		if len(r.by) >= maxReportReporters && now.Sub(r.lastSweep) >= time.Second {
			r.lastSweep = now
			r.sweep(now)
		}
		if len(r.by) >= maxReportReporters {
			return ReportNew // not remembered: Done finds nothing
		}
		rr = &reporterReports{}
		r.by[reporter] = rr
	}
	rr.last = now
	for i := range rr.ring {
		s := &rr.ring[i]
		if !s.used || s.sum != sum {
			continue
		}
		switch {
		case s.inFlight:
			return ReportInFlight
		case now.Sub(s.at) < r.keep:
			return ReportTaken
		}
		s.used = false // expired: taken again as new
	}
	rr.ring[rr.next] = reportSeen{sum: sum, at: now, inFlight: true, used: true}
	rr.next = (rr.next + 1) % reportsPerReporter
	return ReportNew
}

// Done ends what Begin began: taken, the report is remembered as taken
// at now; not taken (refused, or the store failed), it is forgotten, so
// the reporter's retry is counted.
func (r *Reports) Done(reporter string, sum [32]byte, taken bool, now time.Time) {
	r.mu.Lock()
	defer r.mu.Unlock()
	rr := r.by[reporter]
	if rr == nil {
		return
	}
	for i := range rr.ring {
		s := &rr.ring[i]
		if s.used && s.inFlight && s.sum == sum {
			if taken {
				s.inFlight, s.at = false, now
			} else {
				*s = reportSeen{}
			}
			return
		}
	}
}

// sweep forgets the reporters with nothing in flight and nothing taken
// within keep.
func (r *Reports) sweep(now time.Time) {
	for id, rr := range r.by {
		if now.Sub(rr.last) < r.keep {
			continue
		}
		busy := false
		for _, s := range rr.ring {
			busy = busy || (s.used && s.inFlight)
		}
		if !busy {
			delete(r.by, id)
		}
	}
}

// Len is the number of reporters remembered.
func (r *Reports) Len() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.by)
}
