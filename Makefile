# dotkv build, run and test entry points. `make run` and `make test` work on a
# fresh machine: they install the system packages they need (as root, apt-get).
#
# Everything builds with one cargo profile (release) into one target directory
# outside the checkout, so RocksDB's C++ (16 to 40 minutes on 2 cores) is compiled
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

.PHONY: deps build run test fmt bench-crdt bench-http bench-repl jepsen jepsen-quick

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
	@# The Compose cluster end to end, where a Docker Engine answers.
	@if docker info >/dev/null 2>&1; then \
	  $(MAKE) --no-print-directory test-docker; \
	else \
	  echo "test: NOTICE: test-docker skipped: no Docker Engine answers ('docker info' failed)."; \
	  echo "test: NOTICE: start one (e.g. 'systemctl start docker') and run 'make test-docker'."; \
	fi

## bench-crdt: the CRDT microbenchmarks against the `crdts` crate.
bench-crdt: deps
	$(CARGO) bench -p dotkv-crdt --bench compare

## bench-http: single node over HTTP against a hello-world ceiling, and fsync group commit (over HTTP and in the storage layer).
bench-http: build
	mkdir -p bench/results
	$(CARGO_TARGET_DIR)/release/dotkv-bench single-node --json bench/results/single-node-$$(date +%F).json

## bench-repl: two datacenters through WAN relays: lag, bytes per update, catch-up after a partition.
bench-repl: build
	mkdir -p bench/results
	$(CARGO_TARGET_DIR)/release/dotkv-bench replication --json bench/results/replication-$$(date +%F).json

## bench: everything side by side in one run (about 10 minutes): dotkv over HTTP and
## over QUIC against Redis (YCSB A/B/C/F, counters, sets; closed loop, open loop at
## half of dotkv's peak, fsync), a redis-benchmark cross-check, then the replication
## cases. Writes bench/results/<date>.json and <date>-latency.png and the generated
## tables of docs/PERFORMANCE.md. Installs redis-server if missing.
.PHONY: bench
bench: build
	@./crates/bench/scripts/install-bench-deps.sh
	mkdir -p bench/results
	$(CARGO_TARGET_DIR)/release/dotkv-bench suite --date $$(date -u +%F)

## jepsen: the fault-injection matrix (every workload under the main nemesis
## combinations, 60 s each, 3 datacenters x 2 nodes; about 30 minutes), then a
## summary table. Needs root (network namespaces). Results in store/.
jepsen: build
	$(CARGO_TARGET_DIR)/release/dotkv-jepsen matrix --time-limit $${JEPSEN_TIME_LIMIT:-60} --store store

## jepsen-quick: the short suite `make test` also runs (about 5 minutes): set and
## counter under partitions and kill -9, and the fault switch caught.
jepsen-quick: build
	$(CARGO) test --release --workspace --test jepsen_quick -- --nocapture

## Docker: the dotkv image and the Compose cluster of three datacenters
## (docker-compose.yml; README, "Three datacenters with Docker").
.PHONY: image certs partition heal test-docker
IMAGE_CONTEXT := $(CARGO_TARGET_DIR)/docker-image
# Compose v2 (`docker compose`) where the Docker CLI has it, else Compose v1.
COMPOSE ?= $(shell docker compose version >/dev/null 2>&1 && echo "docker compose" || echo docker-compose)

## image: dotkv:latest, FROM scratch (nothing is pulled): the release binaries
## and what they need at run time, staged by docker/stage-rootfs.sh.
image: build
	docker/stage-rootfs.sh $(CARGO_TARGET_DIR)/release $(IMAGE_CONTEXT)
	docker build -t dotkv:latest $(IMAGE_CONTEXT)

## certs: the Compose cluster's CA and node certificates, into its `certs`
## volume, without starting it (the first `up` makes them too). Kept until
## `down -v`.
certs:
	$(COMPOSE) run --rm certs

## partition DC=N: cut datacenter dcN of the running Compose cluster off from
## the others (its WAN relays stop); heal: start every relay again.
partition:
	docker/wan.sh partition $(DC)
heal:
	docker/wan.sh heal

## test-docker: the Compose cluster end to end as its own Compose project (up,
## writes at every datacenter, a partition, kill -9, down), about a minute.
test-docker: image
	docker/test.py

fmt:
	$(CARGO) fmt --all
