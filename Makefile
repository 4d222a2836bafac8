# The two commands: "make demo" runs the main job on the embedded store;
# "make test" runs the whole test suite (what .ci/run calls).
GO ?= go
GOFLAGS_BUILD = -tags grpcnotrace -trimpath
export CGO_ENABLED ?= 0

.PHONY: build demo test bench fuzz vet

build:
	$(GO) build $(GOFLAGS_BUILD) -o bin/moatless ./cmd/moatless

demo:
	$(GO) run $(GOFLAGS_BUILD) ./cmd/moatless demo

vet:
	$(GO) vet ./...
	@test -z "$$(gofmt -l cmd internal test fieldcrypt 2>/dev/null)" || (gofmt -l cmd internal test fieldcrypt; echo "gofmt needed"; exit 1)

# -race needs cgo; everything else is built without it.
test: vet
	CGO_ENABLED=1 $(GO) test -race -count=1 -timeout 20m ./...
	$(GO) test -count=1 -run 'TestCorpus|TestDetectOnlyAndExclusions' ./internal/gateway/ ./internal/gateway/waf/
	$(MAKE) fuzz

# The sidecar's HTTP/1.1 fast path parses requests and responses itself;
# its parsers are fuzzed against net/http's (same accept or reject, same
# fields and framing) for a bounded time on every CI run. Their seed
# corpora already ran with the tests above.
FUZZTIME ?= 10s
fuzz:
	$(GO) test -run '^$$' -fuzz '^FuzzH1RequestDifferential$$' -fuzztime $(FUZZTIME) ./internal/proxy/
	$(GO) test -run '^$$' -fuzz '^FuzzH1ResponseDifferential$$' -fuzztime $(FUZZTIME) ./internal/proxy/

bench:
	$(GO) test -run '^$$' -bench . -benchmem ./...
