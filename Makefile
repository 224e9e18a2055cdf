# bpfsup — see README.md. Every target runs as root on a Linux machine with BPF.
GO       ?= go
BIN      := bin/bpfsup
VERSION  ?= $(shell git describe --always --dirty 2>/dev/null || echo dev)
# Expanded once: the image's tag and the tests that run it must agree.
VERSION  := $(VERSION)
LDFLAGS  := -X main.version=$(VERSION)
LINTIAN  ?= 1
# The BPF tests need root, a kernel with BPF and bpffs; -p 1 keeps packages
# that create namespaces and pins from racing each other for the 2 cores.
TESTFLAGS ?= -count=1 -p 1 -timeout 40m
# Counts, not durations: a -fuzztime duration ends in a race in Go's fuzz
# coordinator that fails the target with "context deadline exceeded" now and
# then (go.dev/issue/75804, fixed in Go 1.27; it failed our CI once).
FUZZTIME ?= 50000x
FUZZMINIMIZETIME ?= 2000x

.PHONY: all build setup test fuzz bench demo lint clean kernels kernels-all deb systemd image k8s

all: build

# Without cgo: a static binary starts ~3 ms sooner (no dynamic loader, no
# libc thread set-up), which a supervisor pays on every restart. Users from
# NSS modules are looked up through getent(1) (cmd/bpfsup/cli.go).
build:
	CGO_ENABLED=0 $(GO) build -ldflags "$(LDFLAGS)" -o $(BIN) ./cmd/bpfsup

include bpf/Makefile.inc

# The native exec helper (supervisor/spawn/nativehelper/helper.c), committed as the
# binary bpfsup embeds, as the BPF objects are: `make exec-helper` rebuilds it.
# Without libc, static, without build id or symbols, so that a rebuild with
# the same clang is byte-identical (TestNativeHelperBuilt checks it).
EXEC_HELPER_CFLAGS := -O2 -Wall -Werror -static -nostdlib -ffreestanding -fno-builtin \
	-fno-stack-protector -fno-asynchronous-unwind-tables -fno-ident -fno-pie \
	-Wl,--build-id=none -Wl,-z,norelro -Wl,-z,noexecstack -Wl,-s
EXEC_HELPER ?= supervisor/spawn/nativehelper/helper_amd64.bin
.PHONY: exec-helper
exec-helper: $(EXEC_HELPER)
$(EXEC_HELPER): supervisor/spawn/nativehelper/helper.c
	$(CLANG) -target x86_64-linux-gnu $(EXEC_HELPER_CFLAGS) -o $@ $<

# The OCI image (Containerfile): FROM scratch, static bpfsup as the entrypoint,
# the xdp-counter example and the example objects. Built with Debian's podman
# (scripts/setup.sh installs it) under scripts/containers.conf; the binaries
# without symbols (-s -w: 14 MB of image instead of 20), built with the flags
# of `make build` otherwise, so that they reuse its compiled packages.
IMAGE ?= localhost/bpfsup
export CONTAINERS_CONF ?= $(CURDIR)/scripts/containers.conf

image: setup
	CGO_ENABLED=0 $(GO) build -ldflags "-s -w $(LDFLAGS)" -o bin/image/bpfsup ./cmd/bpfsup
	CGO_ENABLED=0 $(GO) build -ldflags "-s -w" -o bin/image/xdp-counter ./examples/xdp-counter
	podman build --pull=never --label org.opencontainers.image.version=$(VERSION) \
		-f Containerfile -t $(IMAGE):$(VERSION) -t $(IMAGE):latest .
	@podman image inspect --format '$(IMAGE):$(VERSION) {{.Size}} bytes' $(IMAGE):$(VERSION)

# Installs the Debian packages the tests and demo use; mounts bpffs, tracefs.
setup:
	./scripts/setup.sh

# The whole suite, against the real kernel, then each fuzz target briefly.
# examples/kubernetes/check is a module of its own (the Kubernetes API types
# stay out of bpfsup's go.mod): the manifests' strict decode, and the
# DaemonSet's container run under podman from the image `make image` built.
test: setup build image
	$(GO) vet ./...
	$(GO) test $(TESTFLAGS) ./...
	cd examples/kubernetes/check && $(GO) vet ./... && BPFSUP_IMAGE=$(IMAGE):$(VERSION) $(GO) test $(TESTFLAGS) ./...
	$(MAKE) fuzz

fuzz:
	@for t in $$(grep -rhoE '^func Fuzz[A-Za-z0-9_]+' --include='*_test.go' . | sed 's/func //' | sort -u); do \
		pkg=$$(grep -rlE "^func $$t\(" --include='*_test.go' . | head -1 | xargs dirname); \
		echo "fuzz $$pkg $$t"; \
		$(GO) test -run '^$$' -fuzz "^$$t$$" -fuzztime $(FUZZTIME) -fuzzminimizetime $(FUZZMINIMIZETIME) $$pkg || exit 1; \
	done

# The kubelet tier: the DaemonSet's pod template as a static pod of a real
# kubelet (k8s.io/kubernetes at the version examples/kubernetes/kubelet/go.mod
# pins, built from the Go module proxy) and Debian's containerd, in network
# namespaces of the test's making (examples/kubernetes/check/kubelet_test.go).
# The kubelet is built once per content of that go.mod and go.sum into
# $(K8S_CACHE), outside the checkout, with its own module and build caches.
K8S_CACHE ?= /var/cache/bpfsup-k8s
KUBELET_VERSION := $(shell sed -n 's|^require k8s.io/kubernetes ||p' examples/kubernetes/kubelet/go.mod)
KUBELET_LDFLAGS := -X k8s.io/component-base/version.gitVersion=$(KUBELET_VERSION) \
	-X k8s.io/component-base/version.gitTreeState=clean
KUBELET := $(K8S_CACHE)/kubelet-$(KUBELET_VERSION)-$(shell (cat examples/kubernetes/kubelet/go.mod examples/kubernetes/kubelet/go.sum; echo '$(KUBELET_LDFLAGS)') | sha256sum | cut -c1-16)

$(KUBELET):
	mkdir -p $(K8S_CACHE)
	cd examples/kubernetes/kubelet && GOMODCACHE=$(K8S_CACHE)/gomod GOCACHE=$(K8S_CACHE)/gocache \
		GOFLAGS=-modcacherw CGO_ENABLED=0 nice $(GO) build -trimpath -ldflags "$(KUBELET_LDFLAGS)" -o $@.tmp k8s.io/kubernetes/cmd/kubelet
	mv $@.tmp $@

k8s: setup image $(KUBELET)
	cd examples/kubernetes/check && BPFSUP_IMAGE=$(IMAGE):$(VERSION) BPFSUP_KUBELET=$(KUBELET) \
		$(GO) test $(TESTFLAGS) -run 'TestKubeletPod' -v ./...

# The BPF test suite in VMs (docs/kernels.md): every test package on the
# oldest and the newest kernels users run, bullseye's 5.10 and sid's newest
# (7.2 in December 2026), then a core of it on the two between, bookworm's
# 6.1 and 6.12 (bookworm-backports): the hooks and their probes, the
# transaction and the order, the pin store, the tcx/tc drop filter end to
# end and the order end to end. Two VMs at a time.
KERNELS_CORE := ./hooks ./converge ./pinstore ./e2e/kernels ./e2e/order ./internal/testutil
kernels:
	KERNELS="5.10 sid" ./kernels/run.sh
	KERNELS="6.1 6.12" ./kernels/run.sh $(KERNELS_CORE)

# Every test package on all four kernels (opt-in: docs/kernels.md has the
# times).
kernels-all:
	KERNELS="5.10 6.1 6.12 sid" ./kernels/run.sh

# A Debian package of bpfsup (packaging/deb/build.sh), checked by lintian.
deb:
	LINTIAN=$(LINTIAN) ./packaging/deb/build.sh

# bpfsup under systemd as PID 1 (252 and 262), in VMs (kernels/systemd.sh).
systemd:
	./kernels/systemd.sh

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

# make systemd's cases (kernels/systemdvm) build only with their tag.
lint: $(LINTDIR)/golangci-lint
	$(GO) vet ./...
	$(LINTDIR)/golangci-lint run ./...
	$(GO) vet -tags systemdvm ./kernels/systemdvm
	$(LINTDIR)/golangci-lint run --build-tags systemdvm ./kernels/systemdvm/...
	cd examples/kubernetes/check && $(GO) vet ./... && $(LINTDIR)/golangci-lint run --config ../../../.golangci.yml ./...

clean:
	rm -rf bin
