// Package policy is Moatless's Istio-compatible policy engine: the loader
// for security.istio.io AuthorizationPolicy, PeerAuthentication and
// RequestAuthentication documents, the compiler that turns one version of
// them into indexes, and the one decision function that the sidecar, the
// gateway and "moatless policy check" all call.
//
// # Lifecycle
//
// Parse (YAML, several documents) or ParseJSON (one JSON document, as the
// watch stream carries them) validates documents strictly: unknown kinds
// and fields, bad values and duplicate names are errors that name the
// document, the field path and the line. Compile turns a validated set
// into a *Set once per policy version. A *Set is immutable and safe for
// concurrent use; replacing policies means compiling a new Set and
// swapping a pointer.
//
// # Decisions
//
// Decide is pure: no I/O, no clock, no goroutines, no allocations on the
// common path. Its order is Istio's: PeerAuthentication (a plaintext peer
// on a STRICT port is refused), then CUSTOM, DENY and ALLOW authorization
// policies, with AUDIT and istio.io/dry-run policies evaluated alongside
// and reported, never enforced. Evaluate runs RequestAuthentication first
// through a JWTVerifier and then Decide. Every Decision names the policy
// and rule that produced it.
//
// # Rego, and executables without it
//
// A CUSTOM policy whose provider is a RegoProvider document is decided by
// the executable's Rego evaluator, prepared once per policy version
// (rego_engine.go, regoprovider.go, input.go). The evaluator is OPA's,
// in package regoopa, and it is linked by importing that package
// (regoengine has the seam): cmd/moatless does, moatless-sidecar does
// not, so a plain "go build" of the sidecar links no OPA. Without an
// evaluator modules and data are checked as far as they can be and kept,
// RegoAvailable() is false, and such a provider denies with result
// "unavailable" (ErrRegoUnavailable) — the same decision function, the
// rest of the policy unchanged. This package's tests run both ways:
// "go test" registers OPA's evaluator (rego_engine_test.go), "go test
// -tags norego" does not.
//
// docs/policy.md lists every Istio field, whether it is supported, and
// every deliberate difference.
package policy
