package policy

import (
	"errors"
	"fmt"
	"sort"
	"sync/atomic"

	"github.com/moatless/moatless/internal/wire"
)

// DefaultRootNamespace is Istio's default root namespace: policies there
// apply to the whole mesh.
const DefaultRootNamespace = "istio-system"

// CustomFunc decides a request that matched a CUSTOM policy naming
// provider (Istio's extension providers other than a RegoProvider, such
// as an ext_authz client). It returns whether the provider allows the
// request and a short reason. It must be safe for concurrent use; a
// provider that cannot decide must deny. The engine calls it once per
// provider, request and reading of the path (parameters dropped, %2F
// decoded, slashes merged: see docs/policy.md), with req.Path that
// reading normalized, then the query: any deny denies, so no reading an
// app may serve goes unasked. It never calls it for a dry-run policy.
type CustomFunc func(provider string, req *Request) (allow bool, reason string)

// Options configure a compiled Set. The zero value is Istio's defaults.
type Options struct {
	// RootNamespace is where mesh-wide policies live. Default
	// DefaultRootNamespace ("istio-system").
	RootNamespace string
	// PathNormalization applies to paths and notPaths. Default
	// NormalizeBase, Istio's default.
	PathNormalization PathNormalization
	// Custom evaluates CUSTOM policies whose provider is not a
	// RegoProvider document of the set. Nil denies every request that
	// such a policy matches (Istio denies when a provider is not
	// configured): CUSTOM never fails open.
	Custom CustomFunc
	// Rego is the compiled Rego modules and data (CompileRego) the set's
	// RegoProvider documents prepare their queries against, once, in
	// Compile. Nil: no modules, so every Rego query is undefined and
	// denies.
	Rego *Rego
}

// Set is one compiled version of the policies: immutable, safe for
// concurrent use by any number of goroutines. Build it with Compile or
// FromWire, replace it whole when policies change.
type Set struct {
	opts     Options
	root     string
	version  uint64
	docs     []Document
	warnings []string

	authz    []*compiledAuthz // every policy, in evaluation order
	rootIdx  authzIndex       // policies in the root namespace: every namespace
	nsIdx    map[string]*authzIndex
	peer     peerIndex
	reqAuthn reqAuthnIndex
	jwtMemo  atomic.Pointer[jwtMemo] // the only mutable field: a cache

	providers regoProviders // RegoProvider documents, by name
}

// authzIndex holds the AuthorizationPolicies of one namespace so that a
// decision visits only those that can apply to the destination.
type authzIndex struct {
	all     []*compiledAuthz               // no selector: every workload
	byLabel map[labelPair][]*compiledAuthz // by one label pair of the selector
	dryRun  bool                           // some policy here is dry-run
}

type labelPair struct{ k, v string }

func (x *authzIndex) add(c *compiledAuthz) {
	if c.dryRun {
		x.dryRun = true
	}
	if len(c.selector) == 0 {
		x.all = append(x.all, c)
		return
	}
	// Index under the selector's label pair with the fewest policies so
	// far, so common labels ("version: v1") do not gather every policy.
	if x.byLabel == nil {
		x.byLabel = map[labelPair][]*compiledAuthz{}
	}
	var best labelPair
	bestN := -1
	for _, lp := range c.selector {
		if n := len(x.byLabel[lp]); bestN < 0 || n < bestN {
			best, bestN = lp, n
		}
	}
	x.byLabel[best] = append(x.byLabel[best], c)
}

// collect appends the policies of x that apply to a workload with labels.
func (x *authzIndex) collect(buf []*compiledAuthz, labels map[string]string) []*compiledAuthz {
	buf = append(buf, x.all...)
	if len(x.byLabel) == 0 {
		return buf
	}
	for k, v := range labels {
		for _, c := range x.byLabel[labelPair{k, v}] {
			if c.selector.matches(labels) {
				buf = append(buf, c)
			}
		}
	}
	return buf
}

// validateDocument is the semantic validation of one document: compiling
// it alone. It returns the document's warnings.
func validateDocument(d *Document, spec fieldPath) ([]string, *fieldError) {
	switch d.Kind {
	case KindAuthorizationPolicy:
		_, w, fe := compileAuthz(d, spec)
		return w, fe
	case KindPeerAuthentication:
		// The root namespace only changes warnings; validation does not need it.
		_, w, fe := compilePeer(d, spec, "")
		return w, fe
	case KindRequestAuthentication:
		_, w, fe := compileReqAuthn(d, spec)
		return w, fe
	}
	return nil, errAt(nil, "unsupported kind %q", d.Kind)
}

// Compile builds a Set from validated documents (from Parse, ParseJSON or
// ParseJSONDocuments). Documents are compiled again, so hand-built ones
// are validated too; an error wraps ErrInvalid. Order matters only where
// Istio uses age: among PeerAuthentications of one scope the first wins.
// Compile keeps docs; the caller must not modify them afterwards.
func Compile(docs []Document, opts Options) (*Set, error) {
	if opts.RootNamespace == "" {
		opts.RootNamespace = DefaultRootNamespace
	}
	if !dns1123Label.MatchString(opts.RootNamespace) {
		return nil, fmt.Errorf("policy: root namespace %q is not a valid namespace name", opts.RootNamespace)
	}
	if opts.PathNormalization > NormalizeDecodeAndMergeSlashes {
		return nil, fmt.Errorf("policy: unknown path normalization %d", opts.PathNormalization)
	}
	s := &Set{opts: opts, root: opts.RootNamespace, docs: docs, nsIdx: map[string]*authzIndex{}}
	seen := map[string]int{}
	var errs []error
	for i := range docs {
		d := &docs[i]
		fail := func(fe *fieldError) {
			errs = append(errs, &ParseError{Source: d.Source, Document: d.Index, Line: d.Line, Object: d.describe(), Path: fe.path.String(), Msg: fe.msg})
		}
		if d.Spec == nil && (d.Kind != KindRegoProvider || d.Provider == nil) {
			fail(errAt(nil, "document has no spec"))
			continue
		}
		key := d.Kind + "\x00" + d.Namespace + "\x00" + d.Name
		if j, dup := seen[key]; dup {
			fail(errAt(nil, "duplicate: %s is also document %d", d.describe(), docs[j].Index))
			continue
		}
		seen[key] = i
		spec := fieldPath{}.key("spec")
		var warnings []string
		switch d.Kind {
		case KindAuthorizationPolicy:
			c, w, fe := compileAuthz(d, spec)
			if fe != nil {
				fail(fe)
				continue
			}
			warnings = w
			if !c.targetRefs {
				s.authz = append(s.authz, c)
			}
		case KindPeerAuthentication:
			c, w, fe := compilePeer(d, spec, s.root)
			if fe != nil {
				fail(fe)
				continue
			}
			warnings = w
			if msg := s.peer.add(c, s.root); msg != "" {
				warnings = append(warnings, msg)
			}
		case KindRequestAuthentication:
			c, w, fe := compileReqAuthn(d, spec)
			if fe != nil {
				fail(fe)
				continue
			}
			warnings = w
			s.reqAuthn.add(c, s.root)
		case KindRegoProvider:
			rp, fe := compileRegoProvider(d, opts.Rego)
			if fe != nil {
				fail(fe)
				continue
			}
			if prev, dup := s.providers[rp.name]; dup {
				fail(errAt(fieldPath{}.key("metadata").key("name"), "RegoProvider %q is also defined by %s: provider names are mesh-wide", rp.name, prev.ref))
				continue
			}
			if s.providers == nil {
				s.providers = regoProviders{}
			}
			s.providers[rp.name] = rp
		default:
			fail(errAt(nil, "unsupported kind %q", d.Kind))
			continue
		}
		for _, w := range warnings {
			s.warnings = append(s.warnings, d.describe()+": "+w)
		}
		if len(errs) >= maxErrors {
			break
		}
	}
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	sortAuthz(s.authz, s.root)
	for _, c := range s.authz {
		if c.ns == s.root {
			s.rootIdx.add(c)
			continue
		}
		x := s.nsIdx[c.ns]
		if x == nil {
			x = &authzIndex{}
			s.nsIdx[c.ns] = x
		}
		x.add(c)
	}
	sort.Strings(s.warnings)
	return s, nil
}

// FromWire parses and compiles the documents of a policy version as the
// watch stream delivers them.
func FromWire(ps *wire.PolicySet, opts Options) (*Set, error) {
	if ps == nil {
		return nil, errors.New("policy: nil policy set")
	}
	docs, err := ParseJSONDocuments(ps.Documents)
	if err != nil {
		return nil, fmt.Errorf("policy: version %d: %w", ps.Version, err)
	}
	if len(ps.Modules) > 0 || len(ps.Data) > 0 {
		if opts.Rego, err = CompileRego(ps.Modules, ps.Data); err != nil {
			return nil, fmt.Errorf("policy: version %d: %w", ps.Version, err)
		}
	}
	s, err := Compile(docs, opts)
	if err != nil {
		return nil, fmt.Errorf("policy: version %d: %w", ps.Version, err)
	}
	s.version = ps.Version
	return s, nil
}

// Version is the policy version the Set was built from (FromWire), 0
// otherwise.
func (s *Set) Version() uint64 {
	if s == nil {
		return 0
	}
	return s.version
}

// RootNamespace is the root namespace in force.
func (s *Set) RootNamespace() string { return s.root }

// PathNormalization is the mode paths are normalized with before matching;
// a proxy forwards paths normalized the same way.
func (s *Set) PathNormalization() PathNormalization {
	if s == nil {
		return NormalizeBase
	}
	return s.opts.PathNormalization
}

// Documents are the documents the Set was compiled from. Read only.
func (s *Set) Documents() []Document { return s.docs }

// Rego is the compiled Rego modules and data the set was built with
// (Options.Rego), nil without.
func (s *Set) Rego() *Rego {
	if s == nil {
		return nil
	}
	return s.opts.Rego
}

// RegoProviders are the names of the set's RegoProvider documents, sorted.
func (s *Set) RegoProviders() []string {
	if s == nil {
		return nil
	}
	return s.providers.sortedNames()
}

// Warnings are every document's warnings and the set's own (policies
// that another one of the same scope shadows), "Kind ns/name: message",
// sorted.
func (s *Set) Warnings() []string { return s.warnings }
