// Package acl is the secrets service's access control: named policies
// that grant capabilities on path globs, the subjects each policy applies
// to (SPIFFE IDs, SPIFFE ID patterns, AppRoles, JWT roles), and the
// decision for one request path. Everything is denied unless a policy
// grants it.
//
// Path rules follow Vault's: a path is exact, or ends in "*" (a prefix
// match), and "+" stands for exactly one path segment. When several rules
// match, only the most specific one applies (Vault's priority order: the
// later the first wildcard, not ending in "*", fewer "+", longer, then
// lexically greater); rules with the same path from several policies are
// merged, and "deny" in any of them wins.
package acl

import (
	"fmt"
	"path"
	"slices"
	"sort"
	"strings"
)

// Capability is a set of capabilities.
type Capability uint16

// The capabilities, as in Vault.
const (
	Create Capability = 1 << iota
	Read
	Update
	Patch
	Delete
	List
	Sudo
	Deny
)

var capNames = []struct {
	c    Capability
	name string
}{{Create, "create"}, {Read, "read"}, {Update, "update"}, {Patch, "patch"}, {Delete, "delete"}, {List, "list"}, {Sudo, "sudo"}, {Deny, "deny"}}

// ParseCapability parses one capability name.
func ParseCapability(s string) (Capability, error) {
	for _, c := range capNames {
		if c.name == s {
			return c.c, nil
		}
	}
	return 0, fmt.Errorf("unknown capability %q (want create, read, update, patch, delete, list, sudo or deny)", s)
}

// Names lists the capabilities in c ("deny" alone when c has Deny).
func (c Capability) Names() []string {
	if c&Deny != 0 {
		return []string{"deny"}
	}
	out := []string{}
	for _, n := range capNames {
		if c&n.c != 0 {
			out = append(out, n.name)
		}
	}
	return out
}

// Rule grants capabilities on a path pattern.
type Rule struct {
	Path         string   `json:"path"`
	Capabilities []string `json:"capabilities"`
}

// Subjects says whose tokens a policy applies to without being named on
// the token: a workload authenticated by SPIFFE ID (mTLS, cert or JWT
// login), one whose ID matches a pattern, an AppRole or a JWT role.
type Subjects struct {
	SPIFFEIDs        []string `json:"spiffe_ids,omitempty"`
	SPIFFEIDPatterns []string `json:"spiffe_id_patterns,omitempty"`
	AppRoles         []string `json:"approles,omitempty"`
	JWTRoles         []string `json:"jwt_roles,omitempty"`
}

func (s Subjects) empty() bool {
	return len(s.SPIFFEIDs)+len(s.SPIFFEIDPatterns)+len(s.AppRoles)+len(s.JWTRoles) == 0
}

// Policy is a named set of rules and the subjects it applies to.
type Policy struct {
	Name        string   `json:"name"`
	Description string   `json:"description,omitempty"`
	Subjects    Subjects `json:"subjects,omitzero"`
	Paths       []Rule   `json:"paths"`
}

// Identity is who a token stands for, as subjects match it.
type Identity struct {
	SPIFFEID string // "" when not a workload
	AppRole  string
	JWTRole  string
}

// Applies reports whether p's subjects include id.
func (p *Policy) Applies(id Identity) bool {
	s := &p.Subjects
	if id.SPIFFEID != "" {
		if slices.Contains(s.SPIFFEIDs, id.SPIFFEID) {
			return true
		}
		for _, pat := range s.SPIFFEIDPatterns {
			if ok, _ := path.Match(pat, id.SPIFFEID); ok {
				return true
			}
		}
	}
	return (id.AppRole != "" && slices.Contains(s.AppRoles, id.AppRole)) || (id.JWTRole != "" && slices.Contains(s.JWTRoles, id.JWTRole))
}

// Limits on policies.
const (
	MaxPolicySize  = 256 << 10
	MaxRules       = 1000
	MaxPathLen     = 1024
	maxSubjects    = 1000
	maxNameLen     = 128
	maxDescription = 1024
)

// ValidName reports whether s is a usable policy (or role) name: 1-128 of
// [A-Za-z0-9_.-], not starting with a dot.
func ValidName(s string) bool {
	if s == "" || len(s) > maxNameLen || s[0] == '.' {
		return false
	}
	for _, r := range s {
		if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '_' || r == '-' || r == '.') {
			return false
		}
	}
	return true
}

// Validate checks a policy and puts it in canonical form (capabilities
// sorted and deduplicated, rules sorted by path). Errors name the field.
func (p *Policy) Validate() error {
	if !ValidName(p.Name) {
		return fmt.Errorf("name %q: want 1 to %d letters, digits, '_', '-' or '.'", p.Name, maxNameLen)
	}
	if p.Name == "root" {
		return fmt.Errorf("name \"root\" is reserved")
	}
	if len(p.Description) > maxDescription {
		return fmt.Errorf("description: longer than %d bytes", maxDescription)
	}
	if len(p.Paths) == 0 || len(p.Paths) > MaxRules {
		return fmt.Errorf("paths: want 1 to %d rules", MaxRules)
	}
	seen := map[string]bool{}
	for i := range p.Paths {
		r := &p.Paths[i]
		if err := validPath(r.Path); err != nil {
			return fmt.Errorf("paths[%d].path %q: %v", i, r.Path, err)
		}
		if seen[r.Path] {
			return fmt.Errorf("paths[%d].path %q: listed twice", i, r.Path)
		}
		seen[r.Path] = true
		if len(r.Capabilities) == 0 {
			return fmt.Errorf("paths[%d] (%s): capabilities: at least one is required", i, r.Path)
		}
		var c Capability
		for _, n := range r.Capabilities {
			x, err := ParseCapability(n)
			if err != nil {
				return fmt.Errorf("paths[%d] (%s): %v", i, r.Path, err)
			}
			c |= x
		}
		r.Capabilities = c.canonical()
	}
	sort.Slice(p.Paths, func(i, j int) bool { return p.Paths[i].Path < p.Paths[j].Path })
	s := &p.Subjects
	if len(s.SPIFFEIDs)+len(s.SPIFFEIDPatterns)+len(s.AppRoles)+len(s.JWTRoles) > maxSubjects {
		return fmt.Errorf("subjects: more than %d", maxSubjects)
	}
	for i, id := range s.SPIFFEIDs {
		if !strings.HasPrefix(id, "spiffe://") || len(id) > 2048 || strings.ContainsAny(id, "*?[") {
			return fmt.Errorf("subjects.spiffe_ids[%d] %q: want a spiffe:// ID (patterns go in spiffe_id_patterns)", i, id)
		}
	}
	for i, pat := range s.SPIFFEIDPatterns {
		if !strings.HasPrefix(pat, "spiffe://") || len(pat) > 2048 {
			return fmt.Errorf("subjects.spiffe_id_patterns[%d] %q: want a spiffe:// pattern", i, pat)
		}
		if _, err := path.Match(pat, ""); err != nil {
			return fmt.Errorf("subjects.spiffe_id_patterns[%d] %q: %v", i, pat, err)
		}
		// The trust domain must be literal: a pattern may not reach
		// across trust domains.
		if td, _, _ := strings.Cut(strings.TrimPrefix(pat, "spiffe://"), "/"); strings.ContainsAny(td, "*?[\\") {
			return fmt.Errorf("subjects.spiffe_id_patterns[%d] %q: the trust domain must be literal", i, pat)
		}
	}
	for i, n := range s.AppRoles {
		if !ValidName(n) {
			return fmt.Errorf("subjects.approles[%d] %q: not a role name", i, n)
		}
	}
	for i, n := range s.JWTRoles {
		if !ValidName(n) {
			return fmt.Errorf("subjects.jwt_roles[%d] %q: not a role name", i, n)
		}
	}
	for _, l := range [][]string{s.SPIFFEIDs, s.SPIFFEIDPatterns, s.AppRoles, s.JWTRoles} {
		slices.Sort(l)
	}
	s.SPIFFEIDs, s.SPIFFEIDPatterns = slices.Compact(s.SPIFFEIDs), slices.Compact(s.SPIFFEIDPatterns)
	s.AppRoles, s.JWTRoles = slices.Compact(s.AppRoles), slices.Compact(s.JWTRoles)
	return nil
}

func (c Capability) canonical() []string {
	if c&Deny != 0 {
		return []string{"deny"}
	}
	return c.Names()
}

// validPath checks a rule path: no leading "/", no empty, "." or ".."
// segment, "*" only at the end, "+" only as a whole segment.
func validPath(p string) error {
	switch {
	case p == "":
		return fmt.Errorf("empty")
	case len(p) > MaxPathLen:
		return fmt.Errorf("longer than %d bytes", MaxPathLen)
	case strings.HasPrefix(p, "/"):
		return fmt.Errorf("must not start with /")
	}
	if i := strings.IndexByte(p, '*'); i >= 0 && i != len(p)-1 {
		return fmt.Errorf("\"*\" may only end the path")
	}
	segs := strings.Split(strings.TrimSuffix(p, "*"), "/")
	for i, s := range segs {
		last := i == len(segs)-1
		switch {
		case s == "" && !last:
			return fmt.Errorf("empty segment")
		case s == "." || s == "..":
			return fmt.Errorf("%q segment", s)
		case strings.Contains(s, "+") && s != "+":
			return fmt.Errorf("\"+\" must be a whole segment")
		}
		for _, r := range s {
			if r < 0x20 || r == 0x7f {
				return fmt.Errorf("control character")
			}
		}
	}
	return nil
}

// ACL is the merged rules of a set of policies, ready to decide.
// Immutable; safe for concurrent use.
type ACL struct {
	root  bool
	exact map[string]Capability
	globs []globRule // highest priority first
}

type globRule struct {
	pattern string
	segs    []string // split on "/" without the trailing "*"
	prefix  bool     // ends in "*"
	caps    Capability
}

// Root is the ACL of the admin credential: everything allowed.
func Root() *ACL { return &ACL{root: true} }

// New merges policies into one ACL.
func New(policies []*Policy) *ACL {
	a := &ACL{exact: map[string]Capability{}}
	globs := map[string]Capability{}
	for _, p := range policies {
		for _, r := range p.Paths {
			var c Capability
			for _, n := range r.Capabilities {
				x, _ := ParseCapability(n) // validated
				c |= x
			}
			if strings.ContainsAny(r.Path, "*+") {
				globs[r.Path] |= c
			} else {
				a.exact[r.Path] |= c
			}
		}
	}
	for pat, c := range globs {
		a.globs = append(a.globs, globRule{pattern: pat, segs: strings.Split(strings.TrimSuffix(pat, "*"), "/"), prefix: strings.HasSuffix(pat, "*"), caps: c})
	}
	sort.Slice(a.globs, func(i, j int) bool { return higher(a.globs[i].pattern, a.globs[j].pattern) })
	return a
}

// higher reports whether pattern p outranks q (Vault's priority order).
func higher(p, q string) bool {
	wp, wq := firstWild(p), firstWild(q)
	if wp != wq {
		return wp > wq
	}
	ep, eq := strings.HasSuffix(p, "*"), strings.HasSuffix(q, "*")
	if ep != eq {
		return !ep
	}
	pp, pq := strings.Count(p, "+"), strings.Count(q, "+")
	if pp != pq {
		return pp < pq
	}
	if len(p) != len(q) {
		return len(p) > len(q)
	}
	return p > q
}

func firstWild(p string) int {
	if i := strings.IndexAny(p, "*+"); i >= 0 {
		return i
	}
	return len(p)
}

func (g *globRule) match(p string) bool {
	segs := strings.Split(p, "/")
	if !g.prefix {
		if len(segs) != len(g.segs) {
			return false
		}
		for i, s := range g.segs {
			if s != "+" && s != segs[i] {
				return false
			}
		}
		return true
	}
	// Prefix match: every segment but the last must match whole (or be
	// "+"); the last pattern segment is a prefix of the path's segment.
	if len(segs) < len(g.segs) {
		return false
	}
	for i, s := range g.segs {
		last := i == len(g.segs)-1
		switch {
		case s == "+":
			if last && segs[i] == "" && len(segs) == len(g.segs) {
				return false // "+" needs a non-empty segment
			}
		case last:
			if !strings.HasPrefix(segs[i], s) {
				return false
			}
		case s != segs[i]:
			return false
		}
	}
	return true
}

// Capabilities returns what the ACL grants on p (0 when denied or when no
// rule matches). p is a request path without "/v1/" and without a
// leading "/"; callers must have refused dot segments and empty segments
// before asking.
func (a *ACL) Capabilities(p string) Capability {
	if a.root {
		return Create | Read | Update | Patch | Delete | List | Sudo
	}
	if c, ok := a.exact[p]; ok {
		if c&Deny != 0 {
			return 0
		}
		return c
	}
	for i := range a.globs {
		if a.globs[i].match(p) {
			if c := a.globs[i].caps; c&Deny == 0 {
				return c
			}
			return 0
		}
	}
	return 0
}

// Allowed reports whether the ACL grants every capability in want on p.
func (a *ACL) Allowed(p string, want Capability) bool { return a.Capabilities(p)&want == want }

// AnyUnder reports whether the ACL grants some capability on some path
// under mount (a path's first segment): what Vault checks before it
// describes a mount to a caller (sys/internal/ui/mounts), so a caller
// learns of the mounts it can use and no others.
func (a *ACL) AnyUnder(mount string) bool {
	if a.root {
		return true
	}
	for p, c := range a.exact {
		if c != 0 && c&Deny == 0 && strings.HasPrefix(p, mount+"/") {
			return true
		}
	}
	for _, g := range a.globs {
		if g.caps == 0 || g.caps&Deny != 0 {
			continue
		}
		first := g.segs[0]
		switch {
		case first == "+", first == mount && len(g.segs) > 1:
			return true
		case g.prefix && len(g.segs) == 1 && strings.HasPrefix(mount, first): // "*", "sec*"
			return true
		}
	}
	return false
}

// IsRoot reports whether this is the admin ACL.
func (a *ACL) IsRoot() bool { return a.root }
