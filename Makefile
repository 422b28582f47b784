# dotkv build, run and test entry points. `make run` and `make test` work on a
# fresh machine: they install the system packages they need (as root, apt-get).
#
# Everything builds with one cargo profile (release) into one target directory
# outside the checkout, so RocksDB's C++ (about 16 minutes on 2 cores) is compiled
# once per machine and shared by `make`, tests, benchmarks and CI.

CARGO_TARGET_DIR ?= $(HOME)/.cache/dotkv-target
export CARGO_TARGET_DIR
CARGO ?= cargo
# Proptest cases per property; the suite promises at least 1,000.
PROPTEST_CASES ?= 1000
export PROPTEST_CASES

BIN := $(CARGO_TARGET_DIR)/release/dotkv

.PHONY: deps build run test fmt lint unit bench bench-crdt clean-data

## deps: install the system packages the build needs, if missing.
deps:
	@./scripts/install-deps.sh

## build: the release binaries.
build: deps
	$(CARGO) build --release --bin dotkv

## run: build, then start one node on the embedded default config.
run: build
	$(BIN) serve

## test: formatting, lints and every test.
test: deps
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --release --workspace --all-targets -- -D warnings
	$(CARGO) build --release --bin dotkv
	$(CARGO) test --release --workspace

## bench-crdt: the CRDT microbenchmarks against the `crdts` crate.
bench-crdt: deps
	$(CARGO) bench -p dotkv-crdt --bench compare

fmt:
	$(CARGO) fmt --all
