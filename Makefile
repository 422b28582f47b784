# dotkv build, run and test entry points. `make run` and `make test` work on a
# fresh machine: they install the system packages they need (as root, apt-get).
#
# Everything builds with one cargo profile (release) into one target directory
# outside the checkout, so RocksDB's C++ (about 16 minutes on 2 cores) is compiled
# once per machine and shared by `make`, tests, benchmarks and CI.

SHELL := bash
.SHELLFLAGS := -eu -o pipefail -c

CARGO_TARGET_DIR ?= $(HOME)/.cache/dotkv-target
export CARGO_TARGET_DIR
CARGO ?= cargo
# C and C++ compile through ccache (see .cargo/config.toml); its cache lives in
# ~/.cache/ccache, outside the checkout, like the target directory.

BIN := $(CARGO_TARGET_DIR)/release/dotkv
# Every cargo command selects the same packages and targets. Cargo unifies
# dependency features per invocation, and a different selection can change the
# features of RocksDB's build-time dependencies, which rebuilds RocksDB.
# (`cargo test` leaves out --all-targets only to skip running benchmarks; it
# selects the same packages, dev-dependencies included.)
SELECT := --release --workspace --all-targets

.PHONY: deps build run test fmt bench-crdt bench-http bench-repl

## deps: install the system packages the build needs, if missing.
deps:
	@./scripts/install-deps.sh

## build: the release binaries.
build: deps
	$(CARGO) build $(SELECT)

## run: build, then start one node on the embedded default config.
run: build
	$(BIN) serve

## test: formatting, lints and every test.
test: deps
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy $(SELECT) -- -D warnings
	$(CARGO) build $(SELECT)
	$(CARGO) test --release --workspace 2>&1 | tee $(CARGO_TARGET_DIR)/last-test.log
	@# One closing line for the whole run (cargo prints one per test binary,
	@# the last of which is often a crate's empty doc-test run).
	@awk '/^test result:/ { p += $$4; f += $$6; s += $$8 } END { printf "tests: %d passed, %d failed, %d skipped\n", p, f, s }' $(CARGO_TARGET_DIR)/last-test.log

## bench-crdt: the CRDT microbenchmarks against the `crdts` crate.
bench-crdt: deps
	$(CARGO) bench -p dotkv-crdt --bench compare

## bench-http: single node over HTTP against a hello-world ceiling, and fsync group commit.
bench-http: build
	mkdir -p bench/results
	$(CARGO_TARGET_DIR)/release/dotkv-bench single-node --json bench/results/single-node-$$(date +%F).json

## bench-repl: two datacenters through WAN relays: lag, bytes per update, catch-up after a partition.
bench-repl: build
	mkdir -p bench/results
	$(CARGO_TARGET_DIR)/release/dotkv-bench replication --json bench/results/replication-$$(date +%F).json

fmt:
	$(CARGO) fmt --all
