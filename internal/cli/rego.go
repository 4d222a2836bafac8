package cli

// OPA's Rego evaluator: every command of moatless evaluates Rego (the
// sidecar and gateway decide CUSTOM policies with it, "policy check"
// and "policy test" run it). moatless-sidecar, which does not import
// this package, links none of OPA (internal/policy/regoengine).
import _ "github.com/moatless/moatless/internal/policy/regoopa"
