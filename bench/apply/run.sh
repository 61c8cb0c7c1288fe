#!/usr/bin/env bash
# Apply benchmark, side by side in one run, on the local test Incus:
#   1. `cul8er apply` of a 30-instance topology (no releases) from nothing, against
#      `incus-benchmark launch --count 30` at its best parallelism (upstream's Go
#      client: the daemon is the floor) and a sequential `incus launch` loop.
#   2. The same topology with a release on every instance: the total, and the share of
#      step time spent waiting on Incus: operations, and the release's execs and file
#      transfers (from `--output json` events).
#   3. The planner alone on 1,000 and 10,000 synthetic resources (cargo bench).
#
# The machine is shared and noisy, so the compared runs alternate (cul8er, benchmark,
# loop, cul8er, benchmark, loop, ...) within one run, every run is printed with the
# load average it started under, and the ratios are of medians. incus-benchmark's
# best parallelism is found first by trying a few values.
#
# Knobs: CUL8ER_BENCH_COUNT (30 instances), CUL8ER_BENCH_ROUNDS (3 rounds),
# CUL8ER_BENCH_PARALLELISMS ("2 4 8 16", tried for incus-benchmark),
# CUL8ER_BENCH_CUL8ER_PARALLELISM (8, cul8er's default).
# Everything it makes is named cul8er-t-bench-*; every run deletes what it made.
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$repo"
count=${CUL8ER_BENCH_COUNT:-30}
rounds=${CUL8ER_BENCH_ROUNDS:-3}
parallelisms=${CUL8ER_BENCH_PARALLELISMS:-"2 4 8 16"}
cul8er_parallelism=${CUL8ER_BENCH_CUL8ER_PARALLELISM:-8}
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
load() { cut -d' ' -f1-3 /proc/loadavg; }
median() { # numbers as arguments
    printf '%s\n' "$@" | sort -g | awk '{ v[NR] = $1 }
        END { if (NR % 2) printf "%.3f", v[(NR + 1) / 2]; else printf "%.3f", (v[NR / 2] + v[NR / 2 + 1]) / 2 }'
}

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

# One `cul8er apply` from nothing, then destroy. Prints the wall time; leaves the JSON
# events in $work/$2.jsonl and the summary line in $work/$2.err.
cul8er_run() { # topology name, run label
    local start took
    start=$(now)
    "$cul8er" apply "$work/$1.kdl" --auto-approve --parallelism "$cul8er_parallelism" \
        --output json >"$work/$2.jsonl" 2>"$work/$2.err"
    took=$(elapsed "$start" "$(now)")
    "$cul8er" destroy "$work/$1.kdl" --auto-approve >/dev/null 2>&1
    echo "$took"
}

# Where a cul8er run's time went, from its events and summary line: the executor's own
# time (the rest is start-up, planning, the lease and the state files), the median
# and slowest step, and the share of step time waiting on Incus (operations, release
# execs and file transfers).
cul8er_detail() { # run label, wall time
    local executor
    executor=$(sed -n 's/.* in \([0-9.]*\) s\.$/\1/p' "$work/$1.err" | tail -n 1)
    jq -rs --arg wall "$2" --arg executor "${executor:-0}" '
        [.[] | select(.event == "step-done")] as $d
        | ($d | map(.millis) | sort) as $m
        | ((($wall | tonumber) - ($executor | tonumber)) * 100 | round / 100) as $outside
        | "executor \($executor) s, outside it \(if $outside < 0 then 0 else $outside end) s (±0.05); "
          + "\($d | length) steps, median \($m[($m | length) / 2 | floor] // 0) ms, slowest \($m[-1] // 0) ms; "
          + "\(if ($m | add // 0) > 0 then (($d | map(.waiting_millis) | add) / ($m | add) * 100 | round) else 0 end)% waiting on Incus"
    ' "$work/$1.jsonl"
}

echo "apply benchmark: $count instances of $image, $rounds alternating rounds, $(nproc) cores"
echo "  load average at start: $(load)"

# incus-benchmark's best parallelism: one run at each value.
echo "incus-benchmark parallelism probe:"
best_bench=""
best_parallel=""
for parallel in $parallelisms; do
    before=$(load)
    start=$(now)
    incus-benchmark launch --count "$count" --parallel "$parallel" "$image" >/dev/null 2>&1
    took=$(elapsed "$start" "$(now)")
    incus-benchmark delete >/dev/null 2>&1
    printf '  -p %-2s  %6.2f s   (load %s)\n' "$parallel" "$took" "$before"
    if [ -z "$best_bench" ] || less "$took" "$best_bench"; then
        best_bench=$took
        best_parallel=$parallel
    fi
done
echo "  best: -p $best_parallel"

# 1. Alternating rounds: cul8er, incus-benchmark at its best, the sequential loop.
topology cul8er-t-bench-plain no
cul8er_times=()
bench_times=()
loop_times=()
echo "rounds (each run with the load average it started under):"
for round in $(seq 1 "$rounds"); do
    before=$(load)
    took=$(cul8er_run cul8er-t-bench-plain "plain-$round")
    cul8er_times+=("$took")
    printf '  %d  cul8er apply (-p %s)           %6.2f s   (load %s)\n' "$round" "$cul8er_parallelism" "$took" "$before"
    printf '       %s\n' "$(cul8er_detail "plain-$round" "$took")"

    before=$(load)
    start=$(now)
    incus-benchmark launch --count "$count" --parallel "$best_parallel" "$image" >/dev/null 2>&1
    took=$(elapsed "$start" "$(now)")
    incus-benchmark delete >/dev/null 2>&1
    bench_times+=("$took")
    printf '  %d  incus-benchmark launch (-p %-2s) %6.2f s   (load %s)\n' "$round" "$best_parallel" "$took" "$before"

    before=$(load)
    start=$(now)
    for i in $(seq 1 "$count"); do
        incus launch "$image" "cul8er-t-bench-seq-$i" >/dev/null 2>&1
    done
    took=$(elapsed "$start" "$(now)")
    cleanup_instances cul8er-t-bench-seq-
    loop_times+=("$took")
    printf '  %d  sequential incus launch loop   %6.2f s   (load %s)\n' "$round" "$took" "$before"
done

cul8er_median=$(median "${cul8er_times[@]}")
bench_median=$(median "${bench_times[@]}")
loop_median=$(median "${loop_times[@]}")
echo "medians of $rounds rounds:"
printf '  cul8er apply (parallelism %s):         %6.2f s\n' "$cul8er_parallelism" "$cul8er_median"
printf '  incus-benchmark launch (-p %-2s):        %6.2f s\n' "$best_parallel" "$bench_median"
printf '  sequential incus launch loop:          %6.2f s\n' "$loop_median"
printf '  cul8er / incus-benchmark: %sx (goal: within 1.2x)\n' "$(ratio "$cul8er_median" "$bench_median")"
printf '  sequential loop / cul8er: %sx faster\n' "$(ratio "$loop_median" "$cul8er_median")"

# 2. With a release on every instance.
topology cul8er-t-bench-release yes
release_times=()
shares=()
echo "with a release on each instance:"
for round in $(seq 1 "$rounds"); do
    before=$(load)
    took=$(cul8er_run cul8er-t-bench-release "release-$round")
    release_times+=("$took")
    share=$(jq -s '[.[] | select(.event == "step-done")] as $d
        | (($d | map(.waiting_millis) | add) / ($d | map(.millis) | add) * 100)' "$work/release-$round.jsonl")
    shares+=("$share")
    printf '  %d  %6.2f s   (load %s)\n' "$round" "$took" "$before"
    printf '       %s\n' "$(cul8er_detail "release-$round" "$took")"
done
printf '  median: %6.2f s, %.0f%% of step time waiting on Incus (operations, execs, file transfers)\n' \
    "$(median "${release_times[@]}")" "$(median "${shares[@]}")"

# 3. The planner alone.
cargo bench --quiet -p cul8er-core --bench plan 2>/dev/null | sed 's/^/  /'
echo "  load average at end: $(load)"
