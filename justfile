# cul8er's developer and CI entry points. On a fresh machine, run them through ./dev,
# which installs `just` first: `./dev demo`, `./dev test`.

set shell := ["bash", "-euo", "pipefail", "-c"]

# List the recipes.
default:
    @just --list

# Bring up the real test environment: Incus, pool, images, TLS, cluster (--with-debian: systemd image too; --with-openrc: OpenRC image too).
setup *args:
    bash scripts/incus-env.sh up {{args}}

# Remove everything `setup` created that the tests use (daemons, cluster, images).
teardown:
    bash scripts/incus-env.sh down

# Deploy examples/demo.kdl on the local Incus for real (every published port listens on
# 127.0.0.1 only), then show its status. `cul8er destroy examples/demo.kdl` removes it.
demo: setup proxy-static
    cargo build --quiet -p cul8er-cli
    CUL8ER_PROXY_BINARY=target/x86_64-unknown-linux-gnu/release/cul8er-proxy target/debug/cul8er apply examples/demo.kdl --auto-approve
    CUL8ER_PROXY_BINARY=target/x86_64-unknown-linux-gnu/release/cul8er-proxy target/debug/cul8er status examples/demo.kdl
    @echo "The api answers on http://127.0.0.1:18081/ and web on http://127.0.0.1:18080/ (through the edge)."
    @echo "Remove it with: CUL8ER_PROXY_BINARY=target/x86_64-unknown-linux-gnu/release/cul8er-proxy target/debug/cul8er destroy examples/demo.kdl --auto-approve"

# Every test: unit, decoding, and live against the real Incus environment (CUL8ER_TEST_* variables).
test: setup proxy-static
    #!/usr/bin/env bash
    set -euo pipefail
    set -a
    . /run/cul8er-test-env
    set +a
    # Edges (live tests, the CLI) push the static proxy built by proxy-static.
    export CUL8ER_PROXY_BINARY="${CUL8ER_PROXY_BINARY:-$PWD/target/x86_64-unknown-linux-gnu/release/cul8er-proxy}"
    # Both suites always run; the recipe fails when either does.
    failed=0
    if cargo nextest --version >/dev/null 2>&1; then
        cargo nextest run --workspace --no-fail-fast || failed=1
    else
        cargo test --workspace --no-fail-fast --lib --bins --tests || failed=1
    fi
    cargo test --workspace --doc || failed=1
    exit "$failed"

# The static cul8er-proxy (probe and edge) that cul8er pushes into instances of any x86_64 image.
proxy-static:
    RUSTFLAGS="-C target-feature=+crt-static" cargo build --release --target x86_64-unknown-linux-gnu -p cul8er-proxy

# Formatting, lints and docs, as CI checks them.
lint:
    cargo fmt --all -- --check
    cargo clippy --workspace --all-targets -- -D warnings
    RUSTDOCFLAGS="-D warnings" cargo doc --workspace --no-deps

# The benchmarks, each printed side by side with its peers and as ratios.
bench: setup bench-proxy bench-topology bench-incus-api bench-apply bench-edge bench-rollout
    @echo "every benchmark ran; each printed its own comparison above"

# GET /1.0 and instance-list latency, and launching/deleting 20 containers: incus-api vs
# incus query, curl, a kept-alive Python client, incus-benchmark and an incus launch loop.
bench-incus-api:
    cargo bench -p incus-api --bench incus_api

# Requests/s, p50/p99 and memory per 1,000 idle connections: cul8er-proxy, nginx, HAProxy.
bench-proxy:
    bash bench/proxy/run.sh

# User-space instructions per proxied request (callgrind): cul8er-proxy vs nginx, one worker each.
bench-proxy-instructions:
    bash bench/proxy/instructions.sh

# Topology parse + validate of 50, 500 and 5,000 resources: time, peak memory, ratio.
bench-topology:
    cargo bench -p cul8er-core --bench topology

# Fuzz topology parse + validate + fmt for SECONDS (default 5 minutes); grows fuzz/corpus.
fuzz SECONDS="300":
    command -v cargo-fuzz >/dev/null 2>&1 || cargo install cargo-fuzz --locked
    cd fuzz && cargo +nightly fuzz run topology -- -max_total_time={{SECONDS}} -max_len=4096

# Apply from nothing (30 instances, then with a release on each) against incus-benchmark
# and a sequential `incus launch` loop, and the planner alone on 1,000 and 10,000 resources.
bench-apply: proxy-static
    bash bench/apply/run.sh

# Nothing -> 3 replicas serving through the edge (time, share waiting on Incus), and a
# rolling update of 3 replicas against a scripted replay of the same calls (ratio).
bench-rollout: proxy-static
    #!/usr/bin/env bash
    set -euo pipefail
    set -a
    . /run/cul8er-test-env
    set +a
    cargo bench -p cul8er-core --bench rollout

# Publishing the edge: req/s and latency through a proxy device (with and without the
# PROXY protocol), nat=true and a network forward; loopback and a test bridge only.
bench-edge: setup proxy-static
    bash bench/edge/run.sh
