//go:build rego

package main

// Built with -tags rego, moatless-sidecar links OPA's evaluator and
// evaluates Rego as "moatless sidecar" does: a sidecar-only executable
// for workloads whose policies use RegoProviders, at OPA's cost in size
// and memory. Without the tag (the default, what "go build" and "go
// install" do) it links none of OPA.
import _ "github.com/moatless/moatless/internal/policy/regoopa"
