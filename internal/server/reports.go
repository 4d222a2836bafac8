package server

import (
	"fmt"
	"math"
	"net/http"
	"net/netip"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/moatless/moatless/internal/audit"
	"github.com/moatless/moatless/internal/wire"
)

// Bounds on a reported decision's fields. Fields the reporter itself
// decides (listener, destination, policy names, reason code) are refused
// when they break them: only a broken or hostile reporter sends such
// values. Fields the caller of the denied request controls (method, path,
// reason text, which may quote them) are escaped and clipped instead: a
// refusal would drop the whole report, so an attacker could otherwise hide
// its denied requests by adding one with a poisoned path to each batch.
const (
	maxReportName   = 256  // listener, destination, policy, audit_policy
	maxReportMethod = 64   // clipped
	maxReportPath   = 2048 // clipped
	maxReportReason = 1024 // clipped
	maxReportRule   = 1 << 20
)

// Compiled on first use, not at start: a bounded repetition such as {0,61}
// compiles to tens of KB, and every role of the one binary (the sidecar
// too) would otherwise allocate and keep it.
var reasonCodeRE = sync.OnceValue(func() *regexp.Regexp { return regexp.MustCompile(`^[a-z][a-z0-9_]{0,63}$`) })

// inputDigestRE is a reported Rego input digest: hex SHA-256.
var inputDigestRE = sync.OnceValue(func() *regexp.Regexp { return regexp.MustCompile(`^[0-9a-f]{64}$`) })

// traceIDRE is a W3C trace-context trace ID.
var traceIDRE = sync.OnceValue(func() *regexp.Regexp { return regexp.MustCompile(`^[0-9a-f]{32}$`) })

// handleAuditReport records the security decisions a data-plane process
// reports (wire.PathAudit): every deny, and every request an AUDIT policy
// matched. The caller is authenticated like every agent API call (its node
// SVID) and becomes each record's actor; nothing in the body can name
// another. The report is validated whole (strict JSON, at most
// wire.MaxAuditEvents events, every field checked, errors naming
// events[i].field) and then charged to the caller's budget
// (audit_report_rate events per second up to audit_report_burst, per node
// and server): a report that does not fit is refused whole with 429 and
// Retry-After, so a compromised sidecar cannot flood the audit log, and
// its reporter retries it later. An accepted report's records are one
// group commit, durable before the 204.
func (s *Server) handleAuditReport(w http.ResponseWriter, r *http.Request) {
	const endpoint = "audit"
	c, ok := s.authNode(w, r, endpoint)
	if !ok {
		return
	}
	var in wire.AuditReport
	if err := decodeJSON(r, wire.MaxBodySize, &in); err != nil {
		s.agentErr(w, endpoint, err)
		return
	}
	if len(in.Events) == 0 || len(in.Events) > wire.MaxAuditEvents {
		s.agentErr(w, endpoint, badf("events: want 1 to %d", wire.MaxAuditEvents))
		return
	}
	actor := c.id.String()
	evs := make([]audit.Event, len(in.Events))
	for i := range in.Events {
		ev, err := reportedEvent(i, &in.Events[i])
		if err != nil {
			s.agentErr(w, endpoint, err)
			return
		}
		ev.Actor = actor
		ev.Details["remote"] = remoteHost(r)
		evs[i] = ev
	}
	if ok, wait := s.reports.take(actor, s.now(), float64(len(evs))); !ok {
		s.metrics.reportEvents.WithLabelValues("rate_limited").Add(float64(len(evs)))
		s.metrics.agentRequests.WithLabelValues(endpoint, "rate_limited").Inc()
		w.Header().Set("Retry-After", strconv.Itoa(int(math.Ceil(max(wait, time.Second).Seconds()))))
		writeErrors(w, http.StatusTooManyRequests, fmt.Sprintf("%s reported more decisions than its budget allows (%g per second, at most %d at once); retry later",
			actor, s.cfg.AuditReportRate, s.cfg.AuditReportBurst))
		if s.overBudgetLog.allow(s.now()) {
			s.log.Warn("audit report refused: over the node's budget (lines paced; see moatless_audit_report_events_total{outcome=\"rate_limited\"})", "spiffe_id", actor, "events", len(evs))
		}
		return
	}
	if err := s.audit.AppendWith(r.Context(), nil, evs...); err != nil {
		s.metrics.reportEvents.WithLabelValues("error").Add(float64(len(evs)))
		s.agentErr(w, endpoint, err)
		return
	}
	s.metrics.reportEvents.WithLabelValues("recorded").Add(float64(len(evs)))
	s.agentOK(w, endpoint, http.StatusNoContent, nil)
}

// reportedEvent validates the i-th reported decision and turns it into an
// audit event without actor: kind decision.deny, decision.unauthenticated
// or (an allowed request an AUDIT policy matched) decision.audit; the
// subject is the caller of the decided request (its SPIFFE ID, else its
// IP); the reporter's own time of the decision goes into details
// ("decision_time"), the record's time is the server's.
func reportedEvent(i int, e *wire.AuditEvent) (audit.Event, error) {
	field := func(name string) string { return fmt.Sprintf("events[%d].%s", i, name) }
	ev := audit.Event{Outcome: audit.Denied}
	switch e.Decision {
	case "deny":
		ev.Kind = audit.KindDecisionDeny
	case "unauthenticated":
		ev.Kind = audit.KindDecisionUnauthenticated
	case "allow":
		if e.AuditPolicy == "" {
			return ev, badf("%s: an allowed request is reported only when an AUDIT policy matched it (audit_policy)", field("decision"))
		}
		ev.Kind, ev.Outcome = audit.KindDecisionAudit, audit.Success
	default:
		return ev, badf("%s %q: want deny, unauthenticated or allow", field("decision"), e.Decision)
	}
	if e.Time.IsZero() {
		return ev, badf("%s: required", field("time"))
	}
	for _, n := range []struct {
		name, v  string
		required bool
	}{
		{"listener", e.Listener, true}, {"destination", e.Destination, true},
		{"policy", e.Policy, false}, {"audit_policy", e.AuditPolicy, false},
	} {
		switch {
		case n.v == "" && n.required:
			return ev, badf("%s: required", field(n.name))
		case len(n.v) > maxReportName:
			return ev, badf("%s: longer than %d bytes", field(n.name), maxReportName)
		case !printable(n.v):
			return ev, badf("%s %q: control characters are not allowed", field(n.name), n.v)
		}
	}
	if e.Source != "" {
		if _, err := spiffeid.FromString(e.Source); err != nil {
			return ev, badf("%s %q: not a SPIFFE ID: %v", field("source"), clipReported(e.Source, 256), err)
		}
	}
	if e.SourceIP != "" {
		if _, err := netip.ParseAddr(e.SourceIP); err != nil {
			return ev, badf("%s %q: not an IP address", field("source_ip"), clipReported(e.SourceIP, 64))
		}
	}
	switch e.Protocol {
	case "http", "http2", "tcp":
	default:
		return ev, badf("%s %q: want http, http2 or tcp", field("protocol"), clipReported(e.Protocol, 64))
	}
	if !reasonCodeRE().MatchString(e.ReasonCode) {
		return ev, badf("%s %q: want a short snake_case code such as deny_rule", field("reason_code"), clipReported(e.ReasonCode, 64))
	}
	if e.InputSHA256 != "" && !inputDigestRE().MatchString(e.InputSHA256) {
		return ev, badf("%s: want 64 lower-case hex digits", field("input_sha256"))
	}
	if e.TraceID != "" && (!traceIDRE().MatchString(e.TraceID) || strings.Trim(e.TraceID, "0") == "") {
		return ev, badf("%s: want a W3C trace ID, 32 lower-case hex digits, not all zero", field("trace_id"))
	}
	if len(e.RegoQuery) > maxReportName || !printable(e.RegoQuery) {
		return ev, badf("%s: want a Rego query of at most %d printable bytes", field("rego_query"), maxReportName)
	}
	if e.Rule < -1 || e.Rule > maxReportRule {
		return ev, badf("%s %d: want -1 (no rule) to %d", field("rule"), e.Rule, maxReportRule)
	}
	d := map[string]string{
		"decision":       e.Decision,
		"decision_time":  e.Time.UTC().Format(time.RFC3339Nano),
		"listener":       e.Listener,
		"destination":    e.Destination,
		"protocol":       e.Protocol,
		"reason_code":    e.ReasonCode,
		"rule":           strconv.Itoa(e.Rule),
		"policy_version": strconv.FormatUint(e.PolicyVersion, 10),
	}
	for k, v := range map[string]string{
		"source": e.Source, "source_ip": e.SourceIP, "policy": e.Policy, "audit_policy": e.AuditPolicy,
		"method": clipReported(e.Method, maxReportMethod), "path": clipReported(e.Path, maxReportPath),
		"reason":     clipReported(e.Reason, maxReportReason),
		"rego_query": e.RegoQuery, "input_sha256": e.InputSHA256, "trace_id": e.TraceID,
	} {
		if v != "" {
			d[k] = v
		}
	}
	// The issuer and subject of the request's token whose signature
	// verified (the one it was authenticated with, or one refused after
	// verifying: revoked, of a revoked identity): the issuer signed them,
	// but a foreign issuer may have put anything there, so they are
	// clipped and escaped like the caller's own text. Detection reads
	// them only on an unauthenticated decision refused as revoked.
	for k, v := range map[string]string{"token_issuer": e.TokenIssuer, "token_subject": e.TokenSubject} {
		if v != "" {
			d[k] = clipReported(v, maxReportName)
		}
	}
	ev.Details = d
	ev.Subject = e.Source
	if ev.Subject == "" {
		ev.Subject = e.SourceIP
	}
	return ev, nil
}

// printable reports whether s has no control characters.
func printable(s string) bool {
	return strings.IndexFunc(s, unicode.IsControl) < 0
}

// clipReported makes a reported free-text value safe to store and show:
// control characters (and bytes that are not UTF-8) become %XX escapes, so
// a logged path cannot forge lines or terminal escapes in "audit list",
// and the result is cut to at most limit bytes with a marker.
func clipReported(s string, limit int) string {
	const marker = "…[truncated]"
	var b strings.Builder
	for i := 0; i < len(s); {
		r, size := utf8.DecodeRuneInString(s[i:])
		if (r == utf8.RuneError && size == 1) || unicode.IsControl(r) {
			for _, c := range []byte(s[i : i+size]) {
				fmt.Fprintf(&b, "%%%02X", c)
			}
		} else {
			b.WriteString(s[i : i+size])
		}
		i += size
		if b.Len() > limit {
			break
		}
	}
	out := b.String()
	if len(out) <= limit {
		return out
	}
	cut := limit - len(marker)
	for cut > 0 && !utf8.RuneStart(out[cut]) {
		cut--
	}
	return out[:cut] + marker
}
