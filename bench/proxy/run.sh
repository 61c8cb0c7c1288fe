#!/usr/bin/env bash
# The proxy benchmark: requests/s and p50/p99 latency through cul8er-proxy, nginx and
# HAProxy, each in front of the same two fast backends, with the same wrk load on
# loopback, then each proxy's memory for 1,000 idle keep-alive connections.
#
# Environment: BENCH_SECONDS (default 10), BENCH_ROUNDS (default 5),
# BENCH_CONNECTIONS (default 64).
#
# The three run one after another inside each round, so a burst of other load on the
# machine falls on all of them alike; the ratios are taken within each round (paired),
# and their median is the result. The machine's load average is printed with it.
# Every process started here binds loopback only and is ended by its PID on exit.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
seconds="${BENCH_SECONDS:-10}"
rounds="${BENCH_ROUNDS:-5}"
connections="${BENCH_CONNECTIONS:-64}"
threads="$(nproc)"
scratch="$(mktemp -d /tmp/cul8er-bench-proxy.XXXXXX)"
chmod 755 "$scratch" # nginx workers run as an unprivileged user
. "$here/common.sh"

install_missing() {
    local missing=()
    command -v nginx >/dev/null || missing+=(nginx)
    command -v haproxy >/dev/null || missing+=(haproxy)
    command -v wrk >/dev/null || missing+=(wrk)
    [ ${#missing[@]} -eq 0 ] && return
    echo "installing ${missing[*]}" >&2
    # Keep the packages' init scripts from starting system-wide daemons on port 80.
    local policy=/usr/sbin/policy-rc.d created=0
    if [ ! -e "$policy" ]; then
        printf '#!/bin/sh\nexit 101\n' > "$policy"
        chmod +x "$policy"
        created=1
    fi
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
    [ "$created" = 1 ] && rm -f "$policy"
}

rss_kib() { # the summed resident memory of a process and its children
    local total=0 pid
    for pid in "$1" $(ps --ppid "$1" -o pid= 2>/dev/null); do
        total=$((total + $(awk '/^VmRSS/ {print $2}' "/proc/$pid/status" 2>/dev/null || echo 0)))
    done
    echo "$total"
}

to_ms() { # wrk latency text (e.g. 512.00us, 1.20ms, 2.00s) to milliseconds
    awk -v v="$1" 'BEGIN {
        n = v + 0
        if (v ~ /us$/) n = n / 1000; else if (v ~ /ms$/) n = n; else if (v ~ /s$/) n = n * 1000
        printf "%.3f", n }'
}

install_missing
ports_free 18081 18082 18090 18091 18092 || exit 1
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

echo "building (release)..." >&2
(cd "$root" && cargo build --release --quiet -p cul8er-proxy --bin cul8er-proxy \
    --example bench_backend --example idle_connections)
bin="$root/target/release"

"$bin/examples/bench_backend" 127.0.0.1:18081 127.0.0.1:18082 &
pids+=($!)
wait_port 18081
wait_port 18082

sed "s#@DIR@#$scratch#g" "$here/nginx.conf" > "$scratch/nginx.conf"
mkdir -p "$scratch"/nginx-{body,proxy,fastcgi,uwsgi,scgi}

start_proxy() { # prints the PID; the proxy's own output goes to files, not the caller's pipe
    case "$1" in
        cul8er-proxy)
            "$bin/cul8er-proxy" run --config "$here/cul8er-proxy.toml" \
                --admin-socket "$scratch/admin.sock" --threads "$threads" \
                >"$scratch/cul8er.log" 2>&1 &
            ;;
        nginx) nginx -c "$scratch/nginx.conf" >"$scratch/nginx.log" 2>&1 & ;;
        haproxy) haproxy -f "$here/haproxy.cfg" -db >"$scratch/haproxy.log" 2>&1 & ;;
    esac
    echo $!
}

declare -A port=([cul8er-proxy]=18090 [nginx]=18091 [haproxy]=18092)
declare -A rps p50 p99 mem cpu

measure() { # proxy pid round: one wrk run; appends "rps p50 p99 cpu_us_per_request"
    local proxy="$1" pid="$2" url="http://127.0.0.1:${port[$1]}/" out before after requests
    before="$(cpu_ticks "$pid")"
    out="$(wrk -t2 -c"$connections" -d"${seconds}s" --latency "$url")"
    after="$(cpu_ticks "$pid")"
    echo "$out" > "$scratch/wrk-$proxy-$3.txt"
    if echo "$out" | grep -q "Non-2xx\|Socket errors"; then
        echo "$out" >&2
        echo "$proxy: wrk saw errors" >&2
        exit 1
    fi
    requests="$(echo "$out" | awk '/requests in/ {print $1}')"
    echo "$(echo "$out" | awk '/^Requests\/sec:/ {printf "%.0f", $2}')" \
        "$(to_ms "$(echo "$out" | awk '$1 == "50%" {print $2}')")" \
        "$(to_ms "$(echo "$out" | awk '$1 == "99%" {print $2}')")" \
        "$(awk -v t="$((after - before))" -v n="$requests" -v hz="$(getconf CLK_TCK)" \
            'BEGIN {printf "%.1f", t / hz * 1e6 / n}')" >> "$scratch/rounds-$proxy"
}

cpu_ticks() { # user+system ticks of a process, its threads and its children
    local total=0 pid task
    for pid in "$1" $(ps --ppid "$1" -o pid= 2>/dev/null); do
        for task in /proc/"$pid"/task/*; do
            total=$((total + $(awk '{print $14 + $15}' "$task/stat" 2>/dev/null || echo 0)))
        done
    done
    echo "$total"
}

median() { sort -n | awk '{v[NR] = $1} END {print v[int((NR + 1) / 2)]}'; }

load_before="$(cut -d' ' -f1-3 /proc/loadavg)"
# Rounds alternate the three proxies so that a burst of other load on the machine
# hits all of them, and each round starts with the next one, so none is always first;
# the table shows each one's median.
order=(cul8er-proxy nginx haproxy)
for round in $(seq 1 "$rounds"); do
    for turn in 0 1 2; do
        proxy="${order[$(((round - 1 + turn) % 3))]}"
        pid="$(start_proxy "$proxy")"
        pids+=("$pid")
        wait_port "${port[$proxy]}"
        wrk -t2 -c"$connections" -d2s "http://127.0.0.1:${port[$proxy]}/" >/dev/null # warm-up
        echo "round $round: measuring $proxy for ${seconds}s..." >&2
        measure "$proxy" "$pid" "$round"

        if [ "$round" = 1 ]; then
            before="$(rss_kib "$pid")"
            : > "$scratch/idle.out"
            "$bin/examples/idle_connections" "127.0.0.1:${port[$proxy]}" 1000 30 > "$scratch/idle.out" &
            idle_pid=$!
            for _ in $(seq 1 600); do grep -q '^ready' "$scratch/idle.out" && break; sleep 0.05; done
            grep -q '^ready 1000' "$scratch/idle.out" || { echo "$proxy: idle connections failed" >&2; exit 1; }
            sleep 0.5
            after="$(rss_kib "$pid")"
            kill "$idle_pid"; wait "$idle_pid" 2>/dev/null || true
            mem[$proxy]=$((after - before))
        fi

        kill "$pid"
        wait "$pid" 2>/dev/null || true
    done
done

for proxy in cul8er-proxy nginx haproxy; do
    rps[$proxy]="$(awk '{print $1}' "$scratch/rounds-$proxy" | median)"
    p50[$proxy]="$(awk '{print $2}' "$scratch/rounds-$proxy" | median)"
    p99[$proxy]="$(awk '{print $3}' "$scratch/rounds-$proxy" | median)"
    cpu[$proxy]="$(awk '{print $4}' "$scratch/rounds-$proxy" | median)"
done

echo
echo "Proxy benchmark: 2 backends, wrk -t2 -c$connections -d${seconds}s on loopback, $threads proxy threads/workers,"
echo "median of $rounds alternating rounds; CPU is the proxy's own user+system time per request"
printf '%-14s %12s %9s %9s %14s %24s\n' proxy "requests/s" "p50 ms" "p99 ms" "CPU us/req" "KiB per 1000 idle conns"
for proxy in cul8er-proxy nginx haproxy; do
    printf '%-14s %12s %9s %9s %14s %24s\n' "$proxy" "${rps[$proxy]}" "${p50[$proxy]}" "${p99[$proxy]}" \
        "${cpu[$proxy]}" "${mem[$proxy]}"
done
echo
echo "each round (requests/s p50 p99 CPU):"
for proxy in cul8er-proxy nginx haproxy; do
    printf '%-14s %s\n' "$proxy" "$(tr '\n' '|' < "$scratch/rounds-$proxy" | sed 's/|$//; s/|/ | /g')"
done
load_after="$(cut -d' ' -f1-3 /proc/loadavg)"
echo
echo "ratios within each round (throughput / nginx's, p99 / HAProxy's, CPU per request / nginx's):"
paste -d' ' "$scratch/rounds-cul8er-proxy" "$scratch/rounds-nginx" "$scratch/rounds-haproxy" |
    awk '{printf "%.2f %.2f %.2f\n", $1 / $5, $3 / $11, $4 / $8}' > "$scratch/ratios"
awk '{printf "  round %d: %s %s %s\n", NR, $1, $2, $3}' "$scratch/ratios"
printf 'median of the rounds: throughput / nginx = %s (at least 1 in %s of %s rounds), p99 / haproxy = %s (at most 1 in %s of %s), CPU per request / nginx = %s\n' \
    "$(awk '{print $1}' "$scratch/ratios" | median)" "$(awk '$1 >= 1' "$scratch/ratios" | wc -l)" "$rounds" \
    "$(awk '{print $2}' "$scratch/ratios" | median)" "$(awk '$2 <= 1' "$scratch/ratios" | wc -l)" "$rounds" \
    "$(awk '{print $3}' "$scratch/ratios" | median)"
echo "load average before: $load_before; after: $load_after"
awk -v c="${rps[cul8er-proxy]}" -v n="${rps[nginx]}" -v h="${rps[haproxy]}" \
    -v cp="${p99[cul8er-proxy]}" -v hp="${p99[haproxy]}" -v np="${p99[nginx]}" \
    -v cc="${cpu[cul8er-proxy]}" -v nc="${cpu[nginx]}" -v hc="${cpu[haproxy]}" 'BEGIN {
    printf "\nof the medians: throughput: cul8er-proxy / nginx = %.2f, cul8er-proxy / haproxy = %.2f\n", c / n, c / h
    printf "p99: cul8er-proxy / haproxy = %.2f, cul8er-proxy / nginx = %.2f\n", cp / hp, cp / np
    printf "CPU per request: cul8er-proxy / nginx = %.2f, cul8er-proxy / haproxy = %.2f\n", cc / nc, cc / hc
}'
