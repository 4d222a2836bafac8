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
// docs/policy.md lists every Istio field, whether it is supported, and
// every deliberate difference.
package policy
