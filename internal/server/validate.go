package server

import (
	"encoding/hex"
	"fmt"
	"path"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/moatless/moatless/internal/wire"
)

// Bounds of registration input.
const (
	maxSelectors   = 32
	maxSelectorLen = 4096 + 16
	maxLabels      = 64
	minSVIDTTL     = 10 * time.Second
	maxAudiences   = 16
	maxAudienceLen = 256
)

// SelectorKinds are the unix selector kinds an entry may use (those the
// agent's unix attestor produces).
var SelectorKinds = []string{"uid", "gid", "user", "group", "supplementary_gid", "supplementary_group", "path", "sha256"}

// Compiled on first use, not at start: a bounded repetition such as {0,61}
// compiles to tens of KB, and every role of the one binary (the sidecar
// too) would otherwise allocate and keep it.
var (
	posixName   = sync.OnceValue(func() *regexp.Regexp { return regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_.-]{0,31}\$?$`) })
	labelName   = sync.OnceValue(func() *regexp.Regexp { return regexp.MustCompile(`^([A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?)$`) })
	dnsLabel    = sync.OnceValue(func() *regexp.Regexp { return regexp.MustCompile(`^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$`) })
	dnsSubLabel = sync.OnceValue(func() *regexp.Regexp { return regexp.MustCompile(`^[a-z0-9]([-a-z0-9]*[a-z0-9])?$`) })
)

// parseSPIFFEID parses an ID of our trust domain with a non-empty path.
func (s *Server) parseSPIFFEID(field, v string) (spiffeid.ID, error) {
	if v == "" {
		return spiffeid.ID{}, badf("%s: required", field)
	}
	id, err := spiffeid.FromString(v)
	if err != nil {
		return id, badf("%s %q: not a valid SPIFFE ID: %v", field, v, err)
	}
	if id.TrustDomain() != s.td {
		return id, badf("%s %q: not in trust domain %s", field, v, s.td)
	}
	if id.Path() == "" {
		return id, badf("%s %q: the bare trust domain ID cannot be a workload or node", field, v)
	}
	return id, nil
}

// checkAssignable refuses IDs that must never be handed to a workload or
// node: the server's own and the admin IDs (an SVID for one would be an
// admin credential), and /moatless and everything under it, reserved for
// the control plane. All of it is compared case-insensitively: SPIFFE
// paths are case-sensitive, so spiffe://td/Moatless/admin is another ID,
// but one that reads as an admin to a person writing policy, to a log
// search and to any consumer that folds case, so it is not handed out.
func (s *Server) checkAssignable(field string, id spiffeid.ID) error {
	first, _, _ := strings.Cut(strings.TrimPrefix(id.Path(), "/"), "/")
	reserved := strings.EqualFold(first, "moatless") || strings.EqualFold(id.String(), s.id.String())
	for a := range s.admins {
		reserved = reserved || strings.EqualFold(id.String(), a)
	}
	if reserved {
		return badf("%s %q: reserved for the control plane (the server, admin IDs and /moatless/..., in any letter case)", field, id)
	}
	return nil
}

// validateSelector checks one selector of a registration entry.
func validateSelector(i int, sel wire.Selector) error {
	field := fmt.Sprintf("selectors[%d]", i)
	if sel.Type != "unix" {
		return badf("%s: unknown selector type %q (known: unix)", field, sel.Type)
	}
	if len(sel.Value) > maxSelectorLen || strings.ContainsRune(sel.Value, 0) {
		return badf("%s: value too long or contains NUL", field)
	}
	kind, val, ok := strings.Cut(sel.Value, ":")
	if !ok || val == "" {
		return badf("%s %q: want unix:KIND:VALUE, KIND one of %s", field, sel.String(), strings.Join(SelectorKinds, ", "))
	}
	switch kind {
	case "uid", "gid", "supplementary_gid":
		if n, err := strconv.ParseUint(val, 10, 32); err != nil || strconv.FormatUint(n, 10) != val {
			return badf("%s %q: %s must be a decimal number", field, sel.String(), kind)
		}
	case "user", "group", "supplementary_group":
		if !posixName().MatchString(val) {
			return badf("%s %q: %s must be a POSIX user or group name", field, sel.String(), kind)
		}
	case "path":
		if !path.IsAbs(val) || path.Clean(val) != val || len(val) > 4096 {
			return badf("%s %q: path must be an absolute, clean path", field, sel.String())
		}
	case "sha256":
		if b, err := hex.DecodeString(val); err != nil || len(b) != 32 || strings.ToLower(val) != val {
			return badf("%s %q: sha256 must be 64 lower-case hex digits", field, sel.String())
		}
	default:
		return badf("%s %q: unknown unix selector kind %q (known: %s)", field, sel.String(), kind, strings.Join(SelectorKinds, ", "))
	}
	return nil
}

// ParseSelector parses "type:value", e.g. "unix:uid:1000", and validates it.
func ParseSelector(s string) (wire.Selector, error) {
	t, v, ok := strings.Cut(s, ":")
	if !ok {
		return wire.Selector{}, fmt.Errorf("selector %q: want TYPE:VALUE such as unix:uid:1000", s)
	}
	sel := wire.Selector{Type: t, Value: v}
	if err := validateSelector(0, sel); err != nil {
		return sel, fmt.Errorf("%s", strings.TrimPrefix(err.Error(), "selectors[0] "))
	}
	return sel, nil
}

// validateLabels checks Kubernetes label syntax: keys [prefix/]name with a
// DNS subdomain prefix and a 63-character name; values up to 63 characters
// of the same alphabet, or empty.
func validateLabels(labels map[string]string) error {
	if len(labels) > maxLabels {
		return badf("labels: at most %d", maxLabels)
	}
	for k, v := range labels {
		name := k
		if prefix, n, ok := strings.Cut(k, "/"); ok {
			name = n
			if prefix == "" || len(prefix) > 253 {
				return badf("labels: key %q: bad prefix", k)
			}
			for _, l := range strings.Split(prefix, ".") {
				if !dnsSubLabel().MatchString(l) || len(l) > 63 {
					return badf("labels: key %q: prefix must be a DNS subdomain", k)
				}
			}
		}
		if !labelName().MatchString(name) {
			return badf("labels: key %q: name must be 1-63 characters [A-Za-z0-9-_.], starting and ending alphanumeric", k)
		}
		if v != "" && !labelName().MatchString(v) {
			return badf("labels[%q]: value %q must be at most 63 characters [A-Za-z0-9-_.], starting and ending alphanumeric", k, v)
		}
	}
	return nil
}

// validateEntry turns an EntryRequest into an entry, or a *badRequest
// naming the first bad field.
func (s *Server) validateEntry(in EntryRequest) (wire.Entry, error) {
	var e wire.Entry
	id, err := s.parseSPIFFEID("spiffe_id", in.SPIFFEID)
	if err != nil {
		return e, err
	}
	if err := s.checkAssignable("spiffe_id", id); err != nil {
		return e, err
	}
	parent, err := s.parseSPIFFEID("parent_id", in.ParentID)
	if err != nil {
		return e, err
	}
	if err := s.checkAssignable("parent_id", parent); err != nil {
		return e, err
	}
	if parent == id {
		return e, badf("parent_id: an entry cannot be its own parent")
	}
	if len(in.Selectors) == 0 {
		return e, badf("selectors: at least one is required (e.g. unix:uid:1000)")
	}
	if len(in.Selectors) > maxSelectors {
		return e, badf("selectors: at most %d", maxSelectors)
	}
	seen := map[wire.Selector]bool{}
	for i, sel := range in.Selectors {
		if err := validateSelector(i, sel); err != nil {
			return e, err
		}
		if seen[sel] {
			return e, badf("selectors[%d] %q: listed twice", i, sel.String())
		}
		seen[sel] = true
	}
	if d := in.X509TTL.Std(); d != 0 && (d < minSVIDTTL || d > s.cfg.MaxX509SVIDTTL.Std()) {
		return e, badf("x509_ttl %s: must be between %s and %s (or 0 for the default %s)", d, minSVIDTTL, s.cfg.MaxX509SVIDTTL.Std(), s.cfg.X509SVIDTTL.Std())
	}
	if d := in.JWTTTL.Std(); d != 0 && (d < minSVIDTTL || d > s.cfg.MaxJWTSVIDTTL.Std()) {
		return e, badf("jwt_ttl %s: must be between %s and %s (or 0 for the default %s)", d, minSVIDTTL, s.cfg.MaxJWTSVIDTTL.Std(), s.cfg.JWTSVIDTTL.Std())
	}
	if in.Namespace != "" && !dnsLabel().MatchString(in.Namespace) {
		return e, badf("namespace %q: must be a DNS label (lower-case letters, digits and '-', at most 63)", in.Namespace)
	}
	if err := validateLabels(in.Labels); err != nil {
		return e, err
	}
	e = wire.Entry{SPIFFEID: id.String(), ParentID: parent.String(), Selectors: in.Selectors, X509TTL: in.X509TTL,
		JWTTTL: in.JWTTTL, Namespace: in.Namespace, Labels: in.Labels}
	return e, nil
}

// validateAudience checks a JWT-SVID audience list.
func validateAudience(aud []string) error {
	if len(aud) == 0 {
		return badf("audience: at least one is required")
	}
	if len(aud) > maxAudiences {
		return badf("audience: at most %d", maxAudiences)
	}
	for i, a := range aud {
		if a == "" || len(a) > maxAudienceLen || strings.ContainsAny(a, "\x00") {
			return badf("audience[%d]: must be 1-%d characters", i, maxAudienceLen)
		}
	}
	return nil
}
