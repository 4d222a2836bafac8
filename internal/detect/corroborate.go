package detect

import (
	"fmt"
	"sort"
	"strings"
	"time"
)

// A traffic record is what one node says it saw. The server authenticates
// the node and pins the record's own end to it (an inbound record's
// destination, an outbound record's source), but the other end is the
// node's word: a node an attacker controls can report "payments called me
// ten thousand times" about an innocent payments. Findings keep who
// reported them (Finding.Reporters), and automatic containment acts only
// on findings something besides one such word bears out (Corroborate);
// the rest wait for an admin.

// maxReporters bounds a finding's Reporters.
const maxReporters = 16

// DefaultWitnesses is how many distinct nodes, other than the identity's
// own, must have reported findings about an identity before a playbook
// contains it on their word alone (Trigger.Witnesses).
const DefaultWitnesses = 2

// addReporter notes r among f's reporters (sorted, within the bound).
func (f *Finding) addReporter(r string) {
	if r == "" || len(f.Reporters) >= maxReporters {
		return
	}
	i := sort.SearchStrings(f.Reporters, r)
	if i < len(f.Reporters) && f.Reporters[i] == r {
		return
	}
	f.Reporters = append(f.Reporters, "")
	copy(f.Reporters[i+1:], f.Reporters[i:])
	f.Reporters[i] = r
}

// Witnesses are the nodes whose reports raised f: its Reporters and the
// reporters of its records (a finding stored before Reporters existed
// names them only there), sorted. None: the server observed it itself.
func (f *Finding) Witnesses() []string {
	c := Finding{Reporters: append([]string(nil), f.Reporters...)}
	for _, r := range f.Records {
		c.addReporter(r.Reporter)
	}
	return c.Reporters
}

// Destructive reports whether an action changes what the mesh lets an
// identity do (isolate, block-pair, revoke-certificate): what a playbook
// does only on corroborated findings.
func Destructive(action string) bool {
	switch action {
	case ActionIsolate, ActionBlockPair, ActionRevokeCertificate:
		return true
	}
	return false
}

// Corroboration is the judgement of an identity's findings: how much of
// its risk rests on more than one node's word.
type Corroboration struct {
	// Risk is the identity's risk from the corroborated findings only
	// (RiskOf).
	Risk float64 `json:"risk"`
	// Findings are the IDs of the corroborated findings.
	Findings []string `json:"findings,omitempty"`
	// Detectors are the detectors of the corroborated findings, sorted:
	// what a playbook's detectors filter looks at before it contains
	// (Reaches).
	Detectors []string `json:"detectors,omitempty"`
	// Evidence are the detectors of the corroborated findings that are
	// more than an anomaly (Finding.Anomaly), sorted: a playbook whose
	// trigger names no detectors contains only with one (Reaches).
	Evidence []string `json:"evidence,omitempty"`
	// Relayed are the IDs of the corroborated findings that only say
	// what a relay's clients asked for (Finding.Relayed: its probing):
	// in Risk, but neither in Detectors nor in Evidence.
	Relayed []string `json:"relayed,omitempty"`
	// Witnesses are the distinct nodes, the identity's own aside, that
	// reported findings about it.
	Witnesses []string `json:"witnesses,omitempty"`
	// Why says, in a line, what corroborated them or why nothing did.
	Why string `json:"why"`
}

// Corroborate judges fs, the findings about identity that count towards
// its risk at since. A finding is corroborated when
//
//   - the server observed it itself (no witnesses: the token service,
//     attestation, the agent API), or
//   - the identity's own node is among its witnesses, or
//   - sourceConfirms (nil: never) says the identity's own records bear it
//     out (its sidecar's outbound records to the finding's destinations
//     account for what the destinations reported), or
//   - at least need distinct nodes other than the identity's reported
//     findings about it (need < 1 counts as DefaultWitnesses): then every
//     finding is, since an attacker would have to hold that many nodes.
//
// So one node's records alone can raise an identity's risk, shown as
// reported, but not its corroborated risk: what automatic containment
// acts on.
func Corroborate(identity string, fs []Finding, since time.Time, need int, sourceConfirms func(*Finding) bool) Corroboration {
	if need < 1 {
		need = DefaultWitnesses
	}
	var c Corroboration
	others := Finding{}
	for i := range fs {
		for _, w := range fs[i].Witnesses() {
			if w != identity {
				others.addReporter(w)
			}
		}
	}
	c.Witnesses = others.Reporters
	all := len(c.Witnesses) >= need
	var ok []*Finding
	var by []string
	for i := range fs {
		f := &fs[i]
		if f.LastSeen.Before(since) {
			continue
		}
		ws := f.Witnesses()
		why := ""
		switch {
		case len(ws) == 0:
			why = "observed by the server"
		case contains(ws, identity):
			why = "reported by its own node"
		case all:
			why = fmt.Sprintf("%d nodes reported it", len(c.Witnesses))
		case sourceConfirms != nil && sourceConfirms(f):
			why = "its own records bear it out"
		default:
			continue
		}
		ok = append(ok, f)
		c.Findings = append(c.Findings, f.ID)
		if f.Relayed() {
			// Counts towards the risk, but meets no trigger's
			// detectors and is no evidence: what a relay's clients
			// did, never enough to contain it.
			c.Relayed = append(c.Relayed, f.ID)
		} else if !contains(c.Detectors, f.Detector) {
			c.Detectors = append(c.Detectors, f.Detector)
		}
		if !f.Anomaly() && !contains(c.Evidence, f.Detector) {
			c.Evidence = append(c.Evidence, f.Detector)
		}
		by = append(by, f.ID+" "+why)
	}
	c.Risk = RiskOf(ok, since)
	sort.Strings(c.Detectors)
	sort.Strings(c.Evidence)
	switch {
	case len(ok) > 0:
		c.Why = "corroborated: " + strings.Join(by, "; ")
	case len(c.Witnesses) == 0:
		c.Why = "no finding"
	default:
		c.Why = fmt.Sprintf("uncorroborated: reported only by %s (%d of the %d nodes needed), and its own records do not bear it out",
			strings.Join(c.Witnesses, ", "), len(c.Witnesses), need)
	}
	return c
}

// Reaches reports whether c, the judgement of identity's findings,
// reaches pb's trigger by itself: the corroborated risk reaches the
// trigger's risk and, when the trigger names detectors, a corroborated
// finding is of one of them; when it names none, a corroborated finding
// is more than an anomaly (Finding.Anomaly). What the playbook's
// destructive steps wait for; when not, Short says what is missing.
//
// Anomalies alone alert: a flash crowd, or users downloading much through
// a frontend, lifts that frontend's rate and volume as a compromise would,
// and neither the frontend's own records nor a second node tell them
// apart. With evidence of compromise (refusals by policy, personal data,
// a token replayed, a revoked credential) they still add to the risk; a
// trigger that names their detector contains on them alone.
func (c Corroboration) Reaches(pb Playbook, identity string) bool {
	return pb.Matches(identity, c.Risk, c.Detectors) && (len(pb.Trigger.Detectors) > 0 || len(c.Evidence) > 0)
}

// Anomaly reports whether f says only that its identity did more, or
// other, than it used to: a rate above its baseline, a new edge, new
// paths, more distinct edges than a traffic record keeps apart for one
// caller (record_overflow), what a relay forwarded (Relayed), a volume
// of responses, a burst of token exchanges. A workload that serves the
// mesh's users does all of these when they do (a flash crowd, a flood
// through the gateway, big downloads, paths the app forwards), so an outsider can raise them about an innocent workload.
// Refusals by policy, personal data in responses, a reused refresh token
// or code, failed attestations and revoked credentials are not anomalies.
// A finding folds detections of one key, so one that ever counted such
// evidence (its evidence keys stay) is not an anomaly either.
func (f *Finding) Anomaly() bool {
	has := func(k string) bool { _, ok := f.Evidence[k]; return ok }
	switch f.Detector {
	case DetectorRate, DetectorNewEdge:
		return true
	case DetectorProbing:
		return !has("refusals_per_minute")
	case DetectorExfiltration:
		return !has("pii_matches_per_minute")
	case DetectorToken:
		return has("exchanges_per_minute") && !has("reuse")
	case DetectorRevoked:
		// Someone presented a revoked token issued to the identity:
		// its credential leaked, which says nothing of what the
		// identity itself does (a thief replays it), and containing the
		// identity would not stop the thief (the token is refused
		// already). Unless the identity presented a revoked credential
		// itself (its own SVID, or a token by itself).
		return has("revoked_token_of") && !has("presented") && !has("refused_connections")
	}
	return false
}

// Relayed reports whether f only counts what a relay
// (config.DetectSettings.Relays: the edge gateway) forwarded for its
// clients: the refusals of their requests, the never-seen paths they
// tried, the distinct paths that overflowed a traffic record (evidence
// "relayed" names the kind; a finding stored before it has
// relayed_refusals_per_minute). Internet scanners asking the gateway
// for /.git/config or /wp-admin are refused by the upstreams' policies,
// or answered 404, in the gateway's name; counted as the gateway's own
// probing, two backends reporting them would contain the mesh's front
// door on the internet's say-so. So such a finding is an anomaly that
// meets no trigger's detectors either, not even a trigger naming
// probing: it adds to the relay's risk and opens an incident, and
// contains only beside evidence of another kind. A probing finding that
// ever folded the relay's own evidence (refusals counted while it was
// no relay, the callers its own node reported) is not relayed.
func (f *Finding) Relayed() bool {
	has := func(k string) bool { _, ok := f.Evidence[k]; return ok }
	relayed := has("relayed") || has("relayed_refusals_per_minute")
	own := has("refusals_per_minute") || has("identities_introduced")
	return f.Detector == DetectorProbing && relayed && !own
}

// Short says why c does not reach pb's trigger, in a clause ("" when it
// does).
func (c Corroboration) Short(pb Playbook, identity string) string {
	t := pb.Trigger
	switch {
	case c.Reaches(pb, identity):
		return ""
	case c.Risk < t.Risk:
		return fmt.Sprintf("corroborated risk %.2f < %.2f", c.Risk, t.Risk)
	case len(t.Detectors) > 0 && !pb.Matches(identity, c.Risk, c.Detectors):
		why := fmt.Sprintf("no corroborated finding of %s (corroborated: %s)", strings.Join(t.Detectors, ", "), c.named())
		if len(c.Relayed) > 0 {
			why += "; what a relay forwarded alone never contains"
		}
		return why
	case len(t.Detectors) == 0 && len(c.Evidence) == 0 && pb.Matches(identity, c.Risk, c.Detectors):
		return fmt.Sprintf("only anomalies corroborated (%s), which alone alert: containing needs evidence of compromise, or the detector named in the trigger's detectors", c.named())
	}
	return "the trigger does not match"
}

// named lists the corroborated findings' detectors, and the relayed
// refusals apart, for Short.
func (c Corroboration) named() string {
	l := append([]string(nil), c.Detectors...)
	if len(c.Relayed) > 0 {
		l = append(l, "probing by requests a relay forwarded (detect.relays)")
	}
	if len(l) == 0 {
		return "none"
	}
	return strings.Join(l, ", ")
}

func contains(l []string, x string) bool {
	for _, y := range l {
		if y == x {
			return true
		}
	}
	return false
}
