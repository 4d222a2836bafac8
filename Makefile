# The two commands: "make demo" runs the main job on the embedded store;
# "make test" runs the whole test suite (what .ci/run calls).
GO ?= go
GOFLAGS_BUILD = -tags grpcnotrace -trimpath
export CGO_ENABLED ?= 0

.PHONY: build demo test bench fuzz vet dist

# The release version "make dist" stamps: the tag on HEAD without its v,
# else 0.0.0-dev+<commit>.
VERSION ?= $(shell v=$$(git describe --tags --exact-match 2>/dev/null) && echo $${v#v} || echo 0.0.0-dev+$$(git rev-parse --short HEAD 2>/dev/null || echo unknown))

# bin/moatless (every command) and bin/moatless-sidecar (the sidecar
# alone, and version, without OPA: it does not import the evaluator, so
# no tag is needed; docs/sidecar.md#which-executable).
build:
	$(GO) build $(GOFLAGS_BUILD) -o bin/moatless ./cmd/moatless
	$(GO) build $(GOFLAGS_BUILD) -o bin/moatless-sidecar ./cmd/moatless-sidecar

# One build for "make demo", "make build" and the README's go run and go
# build lines: the same tags and flags, so they share the build cache.
demo:
	@[ -x bin/moatless ] || echo "compiling moatless into bin/ (the first build takes a few minutes; later ones are cached)..."
	@$(GO) build $(GOFLAGS_BUILD) -o bin/moatless ./cmd/moatless
	bin/moatless demo

# Static linux/amd64 and linux/arm64 binaries (moatless and
# moatless-sidecar), a .deb of each arch (both binaries, systemd units, a
# moatless system user, /var/lib/moatless) and SHA256SUMS, in
# dist/. deploy/dist is its own module: the packager's dependencies stay
# out of the binary's.
dist:
	cd deploy/dist && $(GO) run . -repo ../.. -out ../../dist -version $(VERSION)

# Tests of the packages that behave differently without a Rego evaluator
# (moatless-sidecar links none) run again without one: the test-only tag
# norego leaves out their rego_engine_test.go, which registers OPA's.
# No executable is built with it; it changes nothing outside tests.
NOREGO_PKGS = ./internal/policy/ ./internal/opaapi/
vet:
	$(GO) vet ./...
	$(GO) vet -tags norego ./internal/proxy/ $(NOREGO_PKGS)
	cd deploy/dist && $(GO) vet ./...
	@test -z "$$(gofmt -l cmd internal test fieldcrypt deploy 2>/dev/null)" || (gofmt -l cmd internal test fieldcrypt deploy; echo "gofmt needed"; exit 1)

# -race needs cgo; everything else is built without it.
test: vet
	CGO_ENABLED=1 $(GO) test -race -count=1 -timeout 20m ./...
	$(GO) test -count=1 -tags norego $(NOREGO_PKGS)
	$(GO) test -count=1 -tags norego -run 'Rego' ./internal/proxy/
	# The gateway's tests once more on net/http's server alone (HTTP/2
	# clients included): the run above takes the HTTP/1.1 fast path.
	# Skipped here: the WAF corpus (the same verdicts on either path,
	# run above and below) and the differential test, which runs both
	# paths itself.
	MOATLESS_GATEWAY_HTTP1_FAST=0 CGO_ENABLED=1 $(GO) test -race -count=1 -skip '^(TestCorpus|TestFastPathSameAsNetHTTP)$$' ./internal/gateway/
	$(GO) test -count=1 -run 'TestCorpus|TestDetectOnlyAndExclusions|TestSetPrefilterSameVerdicts' ./internal/gateway/ ./internal/gateway/waf/
	cd deploy/dist && $(GO) test -count=1 -timeout 10m ./...

# Every fuzz target in the module, one at a time (FUZZTIME each; FUZZ
# narrows them by a regular expression, FUZZFLAGS adds flags: make fuzz
# FUZZ=H1 FUZZTIME=3m FUZZFLAGS="-parallel 1").
# Not part of "make test" (the instrumented builds cost minutes); their
# seed corpora and testdata/fuzz inputs run there as normal tests.
# Minimizing each new input is capped at FUZZMINIMIZETIME: at Go's
# default of 60s, targets whose inputs are large (policy YAML, config,
# audit segments, form bodies) spent whole runs minimizing after a few
# dozen executions.
FUZZTIME ?= 10s
FUZZMINIMIZETIME ?= 5s
FUZZ ?= .
fuzz:
	@grep -rl --include='*_test.go' '^func Fuzz' cmd internal fieldcrypt | sort | while read -r f; do \
		tags=; grep -q '^//go:build norego' "$$f" && tags='-tags norego'; \
		for t in $$(sed -n 's/^func \(Fuzz[A-Za-z0-9_]*\)(.*/\1/p' "$$f" | grep -E '$(FUZZ)'); do \
			echo "== $$t ($$(dirname $$f))"; \
			$(GO) test $$tags -run '^$$' -fuzz "^$$t\$$" -fuzztime $(FUZZTIME) -fuzzminimizetime $(FUZZMINIMIZETIME) $(FUZZFLAGS) ./$$(dirname $$f)/ || exit 1; \
		done; \
	done

bench:
	$(GO) test -run '^$$' -bench . -benchmem ./...
