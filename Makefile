# bpfsup — see README.md. Every target runs as root on a Linux machine with BPF.
GO       ?= go
BIN      := bin/bpfsup
VERSION  ?= $(shell git describe --always --dirty 2>/dev/null || echo dev)
LDFLAGS  := -X main.version=$(VERSION)
# The BPF tests need root, a kernel with BPF and bpffs; -p 1 keeps packages
# that create namespaces and pins from racing each other for the 2 cores.
TESTFLAGS ?= -count=1 -p 1 -timeout 40m
# Counts, not durations: a -fuzztime duration ends in a race in Go's fuzz
# coordinator that fails the target with "context deadline exceeded" now and
# then (go.dev/issue/75804, fixed in Go 1.27; it failed our CI once).
FUZZTIME ?= 50000x
FUZZMINIMIZETIME ?= 2000x

.PHONY: all build setup test fuzz bench demo lint clean kernels kernels-edges

all: build

# Without cgo: a static binary starts ~3 ms sooner (no dynamic loader, no
# libc thread set-up), which a supervisor pays on every restart. Users from
# NSS modules are looked up through getent(1) (cmd/bpfsup/cli.go).
build:
	CGO_ENABLED=0 $(GO) build -ldflags "$(LDFLAGS)" -o $(BIN) ./cmd/bpfsup

include bpf/Makefile.inc

# Installs the Debian packages the tests and demo use; mounts bpffs, tracefs.
setup:
	./scripts/setup.sh

# The whole suite, against the real kernel, then each fuzz target briefly.
test: setup build
	$(GO) vet ./...
	$(GO) test $(TESTFLAGS) ./...
	$(MAKE) fuzz

fuzz:
	@for t in $$(grep -rhoE '^func Fuzz[A-Za-z0-9_]+' --include='*_test.go' . | sed 's/func //' | sort -u); do \
		pkg=$$(grep -rlE "^func $$t\(" --include='*_test.go' . | head -1 | xargs dirname); \
		echo "fuzz $$pkg $$t"; \
		$(GO) test -run '^$$' -fuzz "^$$t$$" -fuzztime $(FUZZTIME) -fuzzminimizetime $(FUZZMINIMIZETIME) $$pkg || exit 1; \
	done

# The BPF test suite in VMs on Debian's 6.1 and 6.12 kernels (docs/kernels.md).
kernels:
	./kernels/run.sh

# The oldest and the newest kernels users run: bullseye's 5.10 and sid's
# newest (7.2 in December 2026), both VMs at once. Opt-in: not part of
# `make kernels` (docs/kernels.md has the times).
kernels-edges:
	KERNELS="5.10 sid" ./kernels/run.sh

bench: setup build
	./bench/run.sh

demo: setup build
	./examples/xdp-counter/demo.sh

# golangci-lint at a pinned version (.golangci.yml says which linters and
# the import rules of the design). Built once into a cache outside the
# checkout: ~7 minutes on a fresh machine, mostly downloading modules.
GOLANGCI_LINT_VERSION := v2.15.0
LINTDIR := $(HOME)/.cache/bpfsup/golangci-lint-$(GOLANGCI_LINT_VERSION)

$(LINTDIR)/golangci-lint:
	GOBIN=$(LINTDIR) $(GO) install github.com/golangci/golangci-lint/v2/cmd/golangci-lint@$(GOLANGCI_LINT_VERSION)

lint: $(LINTDIR)/golangci-lint
	$(GO) vet ./...
	$(LINTDIR)/golangci-lint run ./...

clean:
	rm -rf bin
