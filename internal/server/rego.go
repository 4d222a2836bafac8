package server

// The control plane checks and compiles the Rego modules and data it
// stores and serves OPA's Data API, whoever links it: with OPA's
// evaluator registered here, a module OPA refuses can never be stored
// because the executable lacked a parser (internal/policy/regoengine).
import _ "github.com/moatless/moatless/internal/policy/regoopa"
