package detect

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"regexp"
	"sort"
	"strings"
	"sync"
	"time"

	"sigs.k8s.io/yaml"

	"github.com/moatless/moatless/internal/config"
	"github.com/moatless/moatless/internal/wire"
)

// Playbook documents are YAML (or JSON) in the shape of a Kubernetes
// object, several per file separated by "---":
//
//	apiVersion: moatless.io/v1alpha1
//	kind: Playbook
//	metadata: {name: contain-exfiltration}
//	spec:
//	  trigger:
//	    risk: 0.75                       # run when an identity's risk reaches 0.75
//	    detectors: [exfiltration, probing]
//	    identities: ["spiffe://example.org/ns/prod/*"]
//	  steps:
//	  - action: notify
//	  - action: isolate
//	  - {action: block-pair, duration: 24h}
//
// A playbook without a trigger risk runs only by hand.
const (
	PlaybookAPIVersion = "moatless.io/v1alpha1"
	PlaybookKind       = "Playbook"
)

// Actions a playbook step may take.
const (
	// ActionIsolate revokes the identity's SPIFFE ID (every sidecar
	// refuses it and closes its connections; its own sidecar cuts its
	// egress), refuses every token naming it (subject, client, actor) and,
	// through the secrets service, revokes its leases.
	ActionIsolate = "isolate"
	// ActionBlockPair blocks the identity from calling each destination
	// its findings name, for Duration (default 24h), then releases the
	// block unless an admin confirmed it.
	ActionBlockPair = "block-pair"
	// ActionRevokeCertificate revokes one certificate: the identity's
	// newest unexpired one.
	ActionRevokeCertificate = "revoke-certificate"
	// ActionQuarantine is a dry run: it records what isolate and
	// block-pair would refuse, and changes nothing.
	ActionQuarantine = "quarantine"
	// ActionNotify sends the incident to the configured alert sinks.
	ActionNotify = "notify"
	// ActionRelease undoes what the incident's earlier steps did: lifts
	// the revocation of the identity and the blocks (a revoked
	// certificate stays revoked).
	ActionRelease = "release"
)

// DefaultBlockDuration is how long block-pair blocks when the step says
// nothing.
const DefaultBlockDuration = 24 * time.Hour

// Playbook is one parsed playbook.
type Playbook struct {
	Name    string  `json:"name"`
	Trigger Trigger `json:"trigger"`
	Steps   []Step  `json:"steps"`
}

// Trigger says when a playbook runs by itself.
type Trigger struct {
	// Risk: the playbook runs when an identity's risk reaches it (0 <
	// Risk <= 1). Zero: only by hand.
	Risk float64 `json:"risk,omitempty"`
	// Detectors, when set, require an open finding of one of them; the
	// destructive steps (Destructive) also a corroborated one
	// (Corroboration.Reaches), else they are held. Unset, the destructive
	// steps need a corroborated finding that is more than an anomaly
	// (Finding.Anomaly): anomalies alone alert.
	Detectors []string `json:"detectors,omitempty"`
	// Identities, when set, limit the playbook to identities matching one
	// of these SPIFFE IDs or patterns ("*" stands for any run of
	// characters).
	Identities []string `json:"identities,omitempty"`
	// Witnesses is how many distinct nodes, other than the identity's
	// own, must have reported findings about it for the playbook to
	// contain it on their word (see Corroborate): 0 means
	// DefaultWitnesses (2); 1 trusts any single node, so that one node
	// an attacker holds can get any identity contained. Findings the
	// server observed itself, or that the identity's own records bear
	// out, need no witness. Until the findings are corroborated, the
	// incident opens with its destructive steps held (Incident.Held) for
	// an admin's confirm.
	Witnesses int `json:"witnesses,omitempty"`
}

// Step is one action.
type Step struct {
	Action string `json:"action"`
	// Duration is block-pair's block length (default 24h).
	Duration wire.Duration `json:"duration,omitempty"`
}

type playbookDoc struct {
	APIVersion string `json:"apiVersion"`
	Kind       string `json:"kind"`
	Metadata   struct {
		Name        string            `json:"name"`
		Labels      map[string]string `json:"labels,omitempty"`
		Annotations map[string]string `json:"annotations,omitempty"`
	} `json:"metadata"`
	Spec struct {
		Trigger Trigger `json:"trigger"`
		Steps   []Step  `json:"steps"`
	} `json:"spec"`
}

// Compiled on first use, not at start: a bounded repetition such as {0,61}
// compiles to tens of KB, and every role of the one binary (the sidecar
// too) would otherwise allocate and keep it.
var nameRE = sync.OnceValue(func() *regexp.Regexp { return regexp.MustCompile(`^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$`) })

// MaxPlaybookSize bounds one playbook file.
const MaxPlaybookSize = 1 << 20

// ParsePlaybooks reads playbook documents from a YAML or JSON stream.
// Parsing is strict: unknown fields, a wrong kind or apiVersion, an
// unknown action or detector, and a name used twice are errors naming
// the document (by position and name) and the field.
func ParsePlaybooks(data []byte) ([]Playbook, error) {
	if len(data) > MaxPlaybookSize {
		return nil, fmt.Errorf("detect: playbooks: larger than %d bytes", MaxPlaybookSize)
	}
	var out []Playbook
	seen := map[string]bool{}
	for i, chunk := range splitDocs(data) {
		pb, err := parsePlaybook(chunk)
		if err != nil {
			return nil, fmt.Errorf("detect: playbook document %d: %w", i+1, err)
		}
		if seen[pb.Name] {
			return nil, fmt.Errorf("detect: playbook document %d: metadata.name %q used twice", i+1, pb.Name)
		}
		seen[pb.Name] = true
		out = append(out, pb)
	}
	if len(out) == 0 {
		return nil, errors.New("detect: playbooks: no document")
	}
	return out, nil
}

// splitDocs splits a YAML stream on "---" lines, dropping empty
// documents.
func splitDocs(data []byte) [][]byte {
	var out [][]byte
	var cur bytes.Buffer
	flush := func() {
		if len(bytes.TrimSpace(stripComments(cur.Bytes()))) > 0 {
			out = append(out, append([]byte(nil), cur.Bytes()...))
		}
		cur.Reset()
	}
	for _, line := range bytes.SplitAfter(data, []byte("\n")) {
		if t := bytes.TrimRight(line, " \t\r\n"); bytes.Equal(t, []byte("---")) || bytes.HasPrefix(t, []byte("--- ")) {
			flush()
			continue
		}
		cur.Write(line)
	}
	flush()
	return out
}

func stripComments(b []byte) []byte {
	var out []byte
	for _, line := range bytes.Split(b, []byte("\n")) {
		if t := bytes.TrimSpace(line); len(t) > 0 && t[0] != '#' {
			out = append(out, line...)
		}
	}
	return out
}

// ParsePlaybookJSON reads one playbook document from its JSON form (as
// the store keeps it).
func ParsePlaybookJSON(raw []byte) (Playbook, error) { return parsePlaybook(raw) }

func parsePlaybook(doc []byte) (Playbook, error) {
	js, err := yaml.YAMLToJSON(doc)
	if err != nil {
		return Playbook{}, fmt.Errorf("not YAML: %w", err)
	}
	dec := json.NewDecoder(bytes.NewReader(js))
	dec.DisallowUnknownFields()
	var d playbookDoc
	if err := dec.Decode(&d); err != nil {
		return Playbook{}, fmt.Errorf("%s", strings.TrimPrefix(err.Error(), "json: "))
	}
	if dec.More() {
		return Playbook{}, errors.New("more than one value")
	}
	if d.APIVersion != PlaybookAPIVersion {
		return Playbook{}, fmt.Errorf("apiVersion %q: want %s", d.APIVersion, PlaybookAPIVersion)
	}
	if d.Kind != PlaybookKind {
		return Playbook{}, fmt.Errorf("kind %q: want %s", d.Kind, PlaybookKind)
	}
	pb := Playbook{Name: d.Metadata.Name, Trigger: d.Spec.Trigger, Steps: d.Spec.Steps}
	if !nameRE().MatchString(pb.Name) {
		return pb, fmt.Errorf("metadata.name %q: lower-case letters, digits and '-', at most 63", pb.Name)
	}
	if err := pb.validate(); err != nil {
		return pb, fmt.Errorf("playbook %s: %w", pb.Name, err)
	}
	return pb, nil
}

var detectors = map[string]bool{
	DetectorRate: true, DetectorNewEdge: true, DetectorProbing: true, DetectorExfiltration: true,
	DetectorToken: true, DetectorAttestation: true, DetectorRevoked: true,
}

func (pb *Playbook) validate() error {
	t := pb.Trigger
	if t.Risk < 0 || t.Risk > 1 {
		return fmt.Errorf("spec.trigger.risk %v: want 0 (by hand only) to 1", t.Risk)
	}
	if t.Witnesses < 0 || t.Witnesses > 10 {
		return fmt.Errorf("spec.trigger.witnesses %d: want 1 to 10 (0: the default, %d)", t.Witnesses, DefaultWitnesses)
	}
	for i, d := range t.Detectors {
		if !detectors[d] {
			return fmt.Errorf("spec.trigger.detectors[%d] %q: not a detector", i, d)
		}
	}
	for i, p := range t.Identities {
		if err := config.CheckIdentityPattern(p); err != nil {
			return fmt.Errorf("spec.trigger.identities[%d]: %w", i, err)
		}
	}
	if len(pb.Steps) == 0 || len(pb.Steps) > 20 {
		return errors.New("spec.steps: want 1 to 20 steps")
	}
	for i, s := range pb.Steps {
		switch s.Action {
		case ActionIsolate, ActionRevokeCertificate, ActionQuarantine, ActionNotify, ActionRelease:
			if s.Duration != 0 {
				return fmt.Errorf("spec.steps[%d].duration: only block-pair takes one", i)
			}
		case ActionBlockPair:
			if d := s.Duration.Std(); d != 0 && (d < time.Minute || d > 30*24*time.Hour) {
				return fmt.Errorf("spec.steps[%d].duration %s: want 1m to 720h", i, d)
			}
		default:
			return fmt.Errorf("spec.steps[%d].action %q: want isolate, block-pair, revoke-certificate, quarantine, notify or release", i, s.Action)
		}
	}
	return nil
}

// Document returns the playbook as its canonical JSON document.
func (pb Playbook) Document() json.RawMessage {
	var d playbookDoc
	d.APIVersion, d.Kind, d.Metadata.Name = PlaybookAPIVersion, PlaybookKind, pb.Name
	d.Spec.Trigger, d.Spec.Steps = pb.Trigger, pb.Steps
	b, _ := json.Marshal(d)
	return b
}

// Matches reports whether the playbook runs by itself for identity at
// risk, given the detectors of its open findings.
func (pb Playbook) Matches(identity string, risk float64, openDetectors []string) bool {
	t := pb.Trigger
	if t.Risk == 0 || risk < t.Risk {
		return false
	}
	if len(t.Identities) > 0 {
		ok := false
		for _, p := range t.Identities {
			ok = ok || config.MatchIdentityPattern(p, identity)
		}
		if !ok {
			return false
		}
	}
	if len(t.Detectors) > 0 {
		ok := false
		for _, d := range t.Detectors {
			for _, o := range openDetectors {
				ok = ok || d == o
			}
		}
		if !ok {
			return false
		}
	}
	return true
}

// Choose returns the playbook to run for identity at risk: of those
// whose trigger matches, the one with the highest risk threshold (the
// most specific), by name on a tie. ok is false when none matches.
func Choose(pbs []Playbook, identity string, risk float64, openDetectors []string) (Playbook, bool) {
	var cands []Playbook
	for _, pb := range pbs {
		if pb.Matches(identity, risk, openDetectors) {
			cands = append(cands, pb)
		}
	}
	if len(cands) == 0 {
		return Playbook{}, false
	}
	sort.Slice(cands, func(i, j int) bool {
		if cands[i].Trigger.Risk != cands[j].Trigger.Risk {
			return cands[i].Trigger.Risk > cands[j].Trigger.Risk
		}
		return cands[i].Name < cands[j].Name
	})
	return cands[0], true
}

// Incident states.
const (
	IncidentOpen      = "open"      // opened; steps running or dry runs only
	IncidentContained = "contained" // isolate or block-pair in force
	IncidentReleased  = "released"  // what the incident did was undone
)

// Incident is a playbook's (or an admin's) response to one identity.
type Incident struct {
	ID       string `json:"id"`
	Identity string `json:"identity"`
	State    string `json:"state"`
	// Playbook and PlaybookVersion name what ran ("" when an admin acted
	// by hand); Trigger says why.
	Playbook        string  `json:"playbook,omitempty"`
	PlaybookVersion uint64  `json:"playbook_version,omitempty"`
	Trigger         string  `json:"trigger"`
	Risk            float64 `json:"risk"`
	// CorroboratedRisk is the risk of the corroborated findings alone
	// (Corroboration.Risk) when the playbook last judged them: at the
	// opening, and when held steps or destinations ran on corroboration.
	// Nil when an admin acted by hand (nothing was judged).
	CorroboratedRisk *float64 `json:"corroborated_risk,omitempty"`
	// Findings are the IDs of the findings about the identity while the
	// incident was open.
	Findings []string     `json:"findings"`
	Steps    []StepResult `json:"steps"`
	// Blocks are the pairs the incident blocked.
	Blocks []wire.BlockedEdge `json:"blocks,omitempty"`
	// Revoked says the incident revoked the identity (release lifts it);
	// RevokedSerials the certificates it revoked.
	Revoked        bool     `json:"revoked,omitempty"`
	RevokedSerials []string `json:"revoked_serials,omitempty"`
	// Notified says a notify step announced it: its release is announced
	// too.
	Notified bool `json:"notified,omitempty"`
	// Held are the playbook's destructive steps (isolate, block-pair,
	// revoke-certificate) not run because the findings were not
	// corroborated (Corroborate): they run when corroborating evidence
	// comes in, or when an admin confirms the incident.
	Held []Step `json:"held,omitempty"`
	// HeldDestinations are the destinations block-pair did not block
	// when the playbook ran it by itself, because only uncorroborated
	// findings name them (a node's word about calls to itself): an
	// admin's confirm blocks them, and a corroborated finding naming one
	// later does.
	HeldDestinations []string `json:"held_destinations,omitempty"`
	// Corroboration says what corroborated the findings the playbook
	// acted on, or (while steps are held) why nothing did.
	Corroboration string `json:"corroboration,omitempty"`
	// The timeline: the earliest record behind its findings, the first
	// finding, the opening, containment (the first isolate or block in
	// force) and release.
	FirstRecord time.Time `json:"first_record,omitzero"`
	DetectedAt  time.Time `json:"detected_at,omitzero"`
	OpenedAt    time.Time `json:"opened_at"`
	ContainedAt time.Time `json:"contained_at,omitzero"`
	ReleasedAt  time.Time `json:"released_at,omitzero"`
}

// StepResult is what one step did.
type StepResult struct {
	Action string    `json:"action"`
	At     time.Time `json:"at"`
	// Actor is "playbook:NAME" or the admin who acted.
	Actor string `json:"actor"`
	// FindingID is the finding that caused the step ("" for an admin's
	// step without one).
	FindingID string `json:"finding_id,omitempty"`
	// Outcome is done, dry_run, skipped or failed.
	Outcome string `json:"outcome"`
	Detail  string `json:"detail,omitempty"`
}

// Step outcomes.
const (
	OutcomeDone    = "done"
	OutcomeDryRun  = "dry_run"
	OutcomeSkipped = "skipped"
	OutcomeFailed  = "failed"
	// OutcomeHeld: a destructive step waiting for corroboration or an
	// admin's confirm (Incident.Held).
	OutcomeHeld = "held"
)

// Uncorroborated reports whether the incident holds steps for want of
// corroboration.
func (inc Incident) Uncorroborated() bool { return len(inc.Held) > 0 }
