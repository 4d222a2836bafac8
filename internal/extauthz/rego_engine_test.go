package extauthz

// The tests decide CUSTOM policies with Rego, as the gateway does in
// moatless, which links OPA's evaluator.
import _ "github.com/moatless/moatless/internal/policy/regoopa"
