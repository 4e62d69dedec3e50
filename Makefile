# haagent. `make demo` runs a whole boot against local S3 and IMDS servers; `make test` installs
# and starts what the tests need and runs every check CI runs.
SHELL := /bin/bash
GO ?= go
VERSION ?= $(shell git describe --always --dirty 2>/dev/null || echo dev)
LDFLAGS := -s -w -X main.version=$(VERSION)
PEERS_BIN := $(shell scripts/peers.sh bin)

.PHONY: all build demo test peers lint unit fuzz clean ami e2e bench cover

all: build

build:
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags '$(LDFLAGS)' -o bin/haagent ./cmd/haagent

demo:
	scripts/demo.sh

peers:
	scripts/peers.sh deps
	scripts/peers.sh build

lint: peers
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi
	$(GO) vet ./...
	$(GO) mod tidy -diff
	$(PEERS_BIN)/staticcheck ./...
	shellcheck scripts/*.sh packer/*.sh examples/*.sh .ci/run
	packer fmt -check packer
	cloud-init schema --config-file examples/userdata-cloud-config.yaml

unit: peers
	HAAGENT_PEERS_BIN=$(PEERS_BIN) $(GO) test -race -count=1 -timeout 20m ./...

test: lint unit

# The nspawn tests alone: a real systemd (systemd-nspawn) booting haagent as the AMI has it, and
# the replacement run (two instances, each in a network namespace of its own).
e2e: peers
	HAAGENT_PEERS_BIN=$(PEERS_BIN) $(GO) test -count=1 -run 'TestSystemdBoot|TestSystemdReplacement' -v ./cmd/haagent

# Statement coverage of the whole suite, per package: the unit tests in-process plus the built
# binary (-cover, GOCOVERDIR) as the black-box tests and the systemd-nspawn boot test run it;
# prints the table, writes cover.out and cover.html. Not part of `make test` (it runs the suite
# once more, without -race).
cover: peers
	scripts/cover.sh

# The side-by-side table (internal/bench: fetch vs awscli and s5cmd behind a latency proxy, time
# to diagnosis vs the stock clients, the watch's footprint vs docker logs -f, start-up), printed
# and written to bench.json; then the Go benchmarks of the hot paths (settings parsing, log
# forwarding, hash-while-writing), compared by benchstat with the previous `make bench`.
bench: peers
	scripts/peers.sh benchdeps
	set -o pipefail; HAAGENT_PEERS_BIN=$(PEERS_BIN) HAAGENT_BENCH_OUT=$(CURDIR)/bench.json $(GO) test -tags bench -count=1 -timeout 30m -run TestTable -v ./internal/bench | grep -v '^=== RUN' | tee bench-table.txt
	@if [ -f bench.txt ]; then mv bench.txt bench.old.txt; fi
	$(GO) test -run '^$$' -bench . -benchmem -count 6 ./internal/settings ./internal/watch ./internal/atomicfile > bench.txt
	@if [ -f bench.old.txt ]; then $(PEERS_BIN)/benchstat bench.old.txt bench.txt; else $(PEERS_BIN)/benchstat bench.txt; fi

# A short fuzzing pass over the config decoder (CI runs the seed corpus through `go test`).
fuzz:
	$(GO) test -run '^$$' -fuzz FuzzParse -fuzztime 30s ./internal/config

# Bake the Services AMI (needs AWS credentials and a Packer with the amazon plugin).
ami: build
	cd packer && packer init . && packer build .

clean:
	rm -rf bin .cover cover.out cover.html
