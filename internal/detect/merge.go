package detect

import "strings"

// Key is what repeated detections merge by: within SuppressFor, one open
// finding per detector, identity and destination. The new-edge
// detector's key leaves the destination out, so one open finding per
// identity gathers every new edge: a scan of fifty services is one
// finding, not fifty.
//
// Every engine keys its open findings so; a store shared by several
// engines (server replicas) claims the same key when it persists a
// finding, so that a burst two replicas see is one finding there too.
type Key struct{ Detector, Identity, Destination string }

// KeyOf is the key of a detection by detector about identity on dst.
func KeyOf(detector, identity, dst string) Key {
	if detector == DetectorNewEdge {
		dst = ""
	}
	return Key{detector, identity, dst}
}

// Key is the finding's merge key.
func (f *Finding) Key() Key { return KeyOf(f.Detector, f.Identity, f.Destination) }

// Bounds of what folding detections into a finding adds to its evidence.
const (
	// maxDestinations bounds the "destinations" evidence (space
	// separated), in bytes.
	maxDestinations = 2048
	// maxEvidenceKeys bounds the evidence keys a fold adds.
	maxEvidenceKeys = 64
)

// addDestination notes dst in f's "destinations" evidence (the other
// destinations a finding keyed without one has seen), within its bound.
func (f *Finding) addDestination(dst string) {
	if dst == "" || dst == f.Destination || len(f.Evidence["destinations"]) >= maxDestinations {
		return
	}
	for _, d := range strings.Fields(f.Evidence["destinations"]) {
		if d == dst {
			return
		}
	}
	f.Evidence["destinations"] += " " + dst
}

// Fold merges u, a later copy of a finding with the same Key (from this
// engine or another one's), into f: f's Count grows by u.Delta, the
// detections u adds; LastSeen becomes the later one, Time and
// FirstRecord the earlier; a more severe u upgrades f's severity and
// summary; u's evidence numbers replace f's when u was seen last (the
// "destinations" lists are joined), and u's records not already in f are
// added, all within the bounds of a finding raised by one engine. f's ID
// and incident stay; u's incident is taken only when f has none and u is
// a copy of f itself (same ID), since an incident lists the findings
// linked to it. f.Delta is left as it is.
//
// Fold is how a store shared by several engines turns a burst that
// reached more than one of them into one finding whose count is the sum
// of their detections.
func (f *Finding) Fold(u Finding) {
	f.Count += u.Delta
	later := !u.LastSeen.Before(f.LastSeen)
	if later {
		f.LastSeen = u.LastSeen
	}
	if !u.Time.IsZero() && (f.Time.IsZero() || u.Time.Before(f.Time)) {
		f.Time = u.Time
	}
	if u.Severity.Weight() > f.Severity.Weight() {
		f.Severity, f.Summary = u.Severity, u.Summary
	}
	if f.Evidence == nil {
		f.Evidence = map[string]string{}
	}
	for k, v := range u.Evidence {
		if k == "destinations" {
			continue
		}
		if _, ok := f.Evidence[k]; ok && !later {
			continue
		}
		if _, ok := f.Evidence[k]; !ok && len(f.Evidence) >= maxEvidenceKeys {
			continue
		}
		f.Evidence[k] = v
	}
	f.addDestination(u.Destination)
	for _, d := range strings.Fields(u.Evidence["destinations"]) {
		f.addDestination(d)
	}
	for _, r := range u.Records {
		if len(f.Records) >= maxEvidence {
			break
		}
		if !hasRecord(f.Records, r) {
			f.Records = append(f.Records, r)
		}
	}
	if !u.FirstRecord.IsZero() && (f.FirstRecord.IsZero() || u.FirstRecord.Before(f.FirstRecord)) {
		f.FirstRecord = u.FirstRecord
	}
	for _, r := range u.Reporters {
		f.addReporter(r)
	}
	if f.Method == "" && f.Path == "" {
		f.Method, f.Path = u.Method, u.Path
	}
	if f.IncidentID == "" && u.ID == f.ID {
		f.IncidentID = u.IncidentID
	}
}

// hasRecord reports whether rs holds r (times compared as instants: a
// record read back from JSON is the same record).
func hasRecord(rs []Record, r Record) bool {
	for _, x := range rs {
		if x.Time.Equal(r.Time) {
			x.Time = r.Time
			if x == r {
				return true
			}
		}
	}
	return false
}

// Adopt makes the engine's open finding localID follow stored, the
// finding a shared store merged it into (perhaps one another engine
// opened, with another ID): the open finding takes stored's ID, count,
// times, severity, evidence and incident, plus the detections the engine
// folded into it since the copy that was stored (its Delta), so later
// detections update the stored finding. It does nothing when the engine
// no longer holds localID open (it expired, or a newer finding of the
// key replaced it).
func (e *Engine) Adopt(localID string, stored Finding) {
	e.mu.Lock()
	defer e.mu.Unlock()
	f := e.open[stored.Key()]
	if f == nil || (f.ID != localID && f.ID != stored.ID) {
		return
	}
	n := stored
	n.Evidence = make(map[string]string, len(stored.Evidence))
	for k, v := range stored.Evidence {
		n.Evidence[k] = v
	}
	n.Records = append([]Record(nil), stored.Records...)
	n.Reporters = append([]string(nil), stored.Reporters...)
	n.Fold(*f) // adds f.Delta: the detections stored has not seen
	n.Delta = f.Delta
	*f = n
}

// Unstored tells the engine that the caller could not store f, a copy it
// returned: the detections f added count again in the next copy of its
// open finding, so a store that was briefly unavailable loses none.
func (e *Engine) Unstored(f Finding) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if o := e.open[f.Key()]; o != nil && o.ID == f.ID {
		o.Delta += f.Delta
	}
}
