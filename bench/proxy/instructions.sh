#!/usr/bin/env bash
# CPU cost per request without the noise of a shared machine: user-space instructions
# per proxied request, counted by valgrind's callgrind, for cul8er-proxy (one worker)
# and nginx (one worker process), each in front of the same two backends.
#
# Each proxy runs under callgrind; after a 3 s warm-up the counters are zeroed, wrk
# sends requests for BENCH_SECONDS (default 10; under callgrind that is some 20,000 to
# 30,000 requests), the counters are dumped, and the total is divided by the number of
# requests wrk completed. Kernel time (the syscalls) is not in these counts; both
# proxies make the same four per request (read and write on each side).
# Every process started here binds loopback only and is ended by its PID on exit.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
seconds="${BENCH_SECONDS:-10}"
scratch="$(mktemp -d /tmp/cul8er-bench-instructions.XXXXXX)"
chmod 755 "$scratch" # nginx's worker runs as an unprivileged user
. "$here/common.sh"

for tool in valgrind callgrind_control wrk nginx; do
    command -v "$tool" >/dev/null || { echo "$tool is needed (Debian: valgrind, wrk, nginx)" >&2; exit 1; }
done
ports_free 18181 18182 18190 18191 || exit 1

echo "building (release)..." >&2
(cd "$root" && cargo build --release --quiet -p cul8er-proxy --bin cul8er-proxy --example bench_backend)
bin="$root/target/release"

"$bin/examples/bench_backend" 127.0.0.1:18181 127.0.0.1:18182 &
pids+=($!)
wait_port 18181
wait_port 18182

sed 's/18090/18190/; s/18081/18181/; s/18082/18182/' "$here/cul8er-proxy.toml" > "$scratch/cul8er-proxy.toml"
sed "s#@DIR@#$scratch#g; s/^worker_processes auto;/worker_processes 1;\nmaster_process off;/;
     s/18091/18191/; s/18081/18181/; s/18082/18182/" "$here/nginx.conf" > "$scratch/nginx.conf"
mkdir -p "$scratch"/nginx-{body,proxy,fastcgi,uwsgi,scgi}

count() { # name port command...: prints "name instructions-per-request requests"
    local name="$1" port="$2" pid out requests dump total
    shift 2
    valgrind --tool=callgrind --callgrind-out-file="$scratch/$name.out" "$@" \
        >"$scratch/$name.log" 2>&1 &
    pid=$!
    pids+=("$pid")
    wait_port "$port"
    wrk -t1 -c8 -d3s "http://127.0.0.1:$port/" >/dev/null
    callgrind_control -z "$pid" >/dev/null
    out="$(wrk -t1 -c8 -d"${seconds}s" "http://127.0.0.1:$port/")"
    callgrind_control -d "$pid" >/dev/null
    kill "$pid"
    wait "$pid" 2>/dev/null || true
    if echo "$out" | grep -q "Non-2xx\|Socket errors"; then
        echo "$out" >&2
        echo "$name: wrk saw errors" >&2
        exit 1
    fi
    requests="$(echo "$out" | awk '/requests in/ {print $1}')"
    dump="$(ls -t "$scratch/$name.out".* | head -1)"
    total="$(awk '/^(summary|totals):/ {print $2; exit}' "$dump")"
    echo "$name $((total / requests)) $requests"
}

echo "counting cul8er-proxy (${seconds}s under callgrind)..." >&2
c="$(count cul8er-proxy 18190 "$bin/cul8er-proxy" run --config "$scratch/cul8er-proxy.toml" \
    --admin-socket "$scratch/admin.sock" --threads 1)"
echo "counting nginx (${seconds}s under callgrind)..." >&2
n="$(count nginx 18191 nginx -c "$scratch/nginx.conf")"

echo
echo "User-space instructions per proxied request (callgrind, one worker, wrk -t1 -c8)"
printf '%-14s %18s %10s\n' proxy "instructions/req" requests
printf '%-14s %18s %10s\n' $c
printf '%-14s %18s %10s\n' $n
awk -v c="$(echo "$c" | awk '{print $2}')" -v n="$(echo "$n" | awk '{print $2}')" \
    'BEGIN {printf "\ncul8er-proxy / nginx = %.2f\n", c / n}'
