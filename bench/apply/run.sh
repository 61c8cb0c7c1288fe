#!/usr/bin/env bash
# Apply benchmark, side by side in one run, on the local test Incus:
#   1. `cul8er apply` of a 30-instance topology (no releases) from nothing, against
#      `incus-benchmark launch --count 30` at its best parallelism (upstream's Go
#      client: the daemon is the floor) and a sequential `incus launch` loop.
#   2. The same topology with a release on every instance: the total, and the share of
#      step time spent waiting on Incus operations (from `--output json` events).
#   3. The planner alone on 1,000 and 10,000 synthetic resources (cargo bench).
# Everything it makes is named cul8er-t-bench-*; every run deletes what it made.
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$repo"
count=${CUL8ER_BENCH_COUNT:-30}
image=${CUL8ER_TEST_IMAGE:-cul8er-busybox}
work="$(mktemp -d)"
cul8er="$repo/target/release/cul8er"
export CUL8ER_PROXY_BINARY="${CUL8ER_PROXY_BINARY:-$repo/target/x86_64-unknown-linux-gnu/release/cul8er-proxy}"
export NO_COLOR=1

cargo build --quiet --release -p cul8er-cli

now() { date +%s.%N; }
elapsed() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.3f", b - a }'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", a / b }'; }
less() { awk -v a="$1" -v b="$2" 'BEGIN { exit !(a < b) }'; }

cleanup() {
    for name in $(incus list --format csv -c n | grep '^cul8er-t-bench-' || true); do
        incus delete --force "$name" >/dev/null 2>&1 || true
    done
    incus-benchmark delete >/dev/null 2>&1 || true
    for p in $(incus profile list --format csv | cut -d, -f1 | grep '^cul8er-lease-cul8er-t-bench-' || true); do
        incus profile delete "$p" >/dev/null 2>&1 || true
    done
    rm -rf "$work"
}
trap cleanup EXIT
cleanup_instances() {
    for name in $(incus list --format csv -c n | grep "^$1" || true); do
        incus delete --force "$name" >/dev/null 2>&1 || true
    done
}

topology() { # name, with-release
    {
        echo "topology $1 {"
        echo "    resource app {"
        echo "        image \"$image\""
        echo "        replicas $count"
        if [ "$2" = yes ]; then
            echo "        release app version=\"1\" {"
            echo "            start \"httpd -f -p 8080 -h /tmp\""
            echo "        }"
        fi
        echo "    }"
        echo "}"
    } >"$work/$1.kdl"
}

echo "apply benchmark: $count instances of $image"

# 1. cul8er apply from nothing, no releases.
topology cul8er-t-bench-plain no
start=$(now)
"$cul8er" apply "$work/cul8er-t-bench-plain.kdl" --auto-approve --parallelism 8 >/dev/null 2>"$work/plain.log"
cul8er_plain=$(elapsed "$start" "$(now)")
"$cul8er" destroy "$work/cul8er-t-bench-plain.kdl" --auto-approve >/dev/null 2>&1

# incus-benchmark at several parallelisms: its best.
best_bench=""
best_parallel=""
for parallel in 4 8 16; do
    start=$(now)
    incus-benchmark launch --count "$count" --parallel "$parallel" "$image" >/dev/null 2>&1
    took=$(elapsed "$start" "$(now)")
    incus-benchmark delete >/dev/null 2>&1
    if [ -z "$best_bench" ] || less "$took" "$best_bench"; then
        best_bench=$took
        best_parallel=$parallel
    fi
done

# A sequential `incus launch` loop (what the original design did).
start=$(now)
for i in $(seq 1 "$count"); do
    incus launch "$image" "cul8er-t-bench-seq-$i" >/dev/null
done
loop=$(elapsed "$start" "$(now)")
cleanup_instances cul8er-t-bench-seq-

printf '  cul8er apply (parallelism 8):          %6.2f s\n' "$cul8er_plain"
printf '  incus-benchmark launch (best, -p %2s):  %6.2f s\n' "$best_parallel" "$best_bench"
printf '  sequential incus launch loop:          %6.2f s\n' "$loop"
printf '  cul8er / incus-benchmark: %sx (goal: within 1.2x)\n' "$(ratio "$cul8er_plain" "$best_bench")"
printf '  sequential loop / cul8er: %sx faster\n' "$(ratio "$loop" "$cul8er_plain")"

# 2. With a release on every instance.
topology cul8er-t-bench-release yes
start=$(now)
"$cul8er" apply "$work/cul8er-t-bench-release.kdl" --auto-approve --parallelism 8 --output json \
    >"$work/release.jsonl" 2>/dev/null
with_release=$(elapsed "$start" "$(now)")
"$cul8er" destroy "$work/cul8er-t-bench-release.kdl" --auto-approve >/dev/null 2>&1
share=$(jq -s '[.[] | select(.event == "step-done")] as $d
    | (($d | map(.waiting_millis) | add) / ($d | map(.millis) | add) * 100)' "$work/release.jsonl")
printf '  with a release on each instance:       %6.2f s, %.0f%% of step time waiting on Incus operations\n' \
    "$with_release" "$share"

# 3. The planner alone.
cargo bench --quiet -p cul8er-core --bench plan 2>/dev/null | sed 's/^/  /'
