#!/usr/bin/env bash
# How to publish the edge: requests/s and latency through each way Incus offers to
# put a host port in front of a container, with the same bounded wrk load, and
# whether each keeps the client's address.
#
#   direct      the edge's bridge address, no publishing (the floor)
#   proxy       proxy device, listen 127.0.0.1, proxy_protocol=true (what cul8er uses)
#   proxy-bare  proxy device, listen 127.0.0.1, no PROXY header (client address lost)
#   nat         proxy device with nat=true (DNAT): listen on the host's bridge address
#   nat-lo      nat=true with listen 127.0.0.1 (refused or not: printed)
#   forward     network forward on the bridge (printed whether Incus accepts it)
#
# The edge runs the static cul8er-proxy answering 503 itself ("no healthy backend"),
# so the figures are the publishing path and the proxy, not a backend.
# Environment: BENCH_SECONDS (default 5), BENCH_CONNECTIONS (default 8),
# CUL8ER_PROXY_BINARY (default: the static build). Traffic goes to loopback and to the
# bridge this script creates only; everything is removed on exit.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
seconds="${BENCH_SECONDS:-5}"
connections="${BENCH_CONNECTIONS:-8}"
binary="${CUL8ER_PROXY_BINARY:-$root/target/x86_64-unknown-linux-gnu/release/cul8er-proxy}"
image="${CUL8ER_TEST_IMAGE:-cul8er-busybox}"
tag="$$"
net="c8b${tag: -5}"
edge="cul8er-t-bench-edge-$tag"
subnet_host="10.231.$((tag % 200)).1"
edge_ip="10.231.$((tag % 200)).10"
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

cleanup() {
    incus delete --force "$edge" >/dev/null 2>&1 || true
    incus network forward delete "$net" "$subnet_host" >/dev/null 2>&1 || true
    incus network forward delete "$net" 127.0.0.1 >/dev/null 2>&1 || true
    incus network delete "$net" >/dev/null 2>&1 || true
}
trap cleanup EXIT

command -v wrk >/dev/null || { echo "wrk is missing: apt-get install wrk" >&2; exit 2; }
[ -x "$binary" ] || { echo "no static cul8er-proxy at $binary: run 'just proxy-static'" >&2; exit 2; }

incus network create "$net" ipv4.address="$subnet_host/24" ipv4.nat=false ipv6.address=none >/dev/null
incus init "$image" "$edge" >/dev/null
incus config device add "$edge" eth0 nic network="$net" name=eth0 ipv4.address="$edge_ip" >/dev/null
incus start "$edge"
incus file push -p "$binary" "$edge/usr/local/bin/cul8er-proxy" --mode 0755 >/dev/null
cat > /tmp/cul8er-bench-edge-$tag.json <<EOF
{"listeners": [
  {"name": "plain", "bind": "0.0.0.0:18090", "routes": [{"service": "none"}]},
  {"name": "pp", "bind": "0.0.0.0:18091", "proxy_protocol": true, "routes": [{"service": "none"}]}
 ],
 "services": [{"name": "none"}]}
EOF
incus file push /tmp/cul8er-bench-edge-$tag.json "$edge/etc/edge.json" >/dev/null
rm -f /tmp/cul8er-bench-edge-$tag.json
# Runs until the instance is deleted on exit.
incus exec "$edge" -- /usr/local/bin/cul8er-proxy run --config /etc/edge.json --admin-socket /run/a.sock >/dev/null 2>&1 &
for _ in $(seq 1 100); do
    if curl -s -o /dev/null "http://$edge_ip:18090/"; then break; fi
    sleep 0.1
done

printf '%-11s %10s %9s %9s %12s  %s\n' way req/s p50 p99 "req/s close" "client address the edge sees"
measure() { # name url what-happens-to-the-client-address
    local name="$1" url="$2" out rps p50 p99 closed
    out="$(wrk -t1 -c"$connections" -d"${seconds}s" --latency "$url" 2>&1)" || { printf '%-11s %s\n' "$name" "wrk failed"; return; }
    rps="$(awk '/Requests\/sec/ {print $2}' <<<"$out")"
    p50="$(awk '$1=="50%" {print $2}' <<<"$out")"
    p99="$(awk '$1=="99%" {print $2}' <<<"$out")"
    # A new connection per request: what the publishing layer costs per connection.
    closed="$(wrk -t1 -c"$connections" -d"${seconds}s" -H 'Connection: close' "$url" 2>&1 | awk '/Requests\/sec/ {print $2}')"
    printf '%-11s %10s %9s %9s %12s  %s\n' "$name" "$rps" "$p50" "$p99" "$closed" "${3:-}"
}

# The client address column says how each way works; the live edge test checks it
# for the way cul8er uses (X-Forwarded-For from a client bound to the bridge address).
measure direct "http://$edge_ip:18090/" "kept (no publishing)"

p1="$(free_port)"
incus config device add "$edge" pub-pp proxy listen="tcp:127.0.0.1:$p1" connect="tcp:127.0.0.1:18091" proxy_protocol=true >/dev/null
measure proxy "http://127.0.0.1:$p1/" "kept, by the PROXY header"
incus config device remove "$edge" pub-pp >/dev/null

p2="$(free_port)"
incus config device add "$edge" pub-bare proxy listen="tcp:127.0.0.1:$p2" connect="tcp:127.0.0.1:18090" >/dev/null
measure proxy-bare "http://127.0.0.1:$p2/" "lost (the device's own connection)"
incus config device remove "$edge" pub-bare >/dev/null

p3="$(free_port)"
if incus config device add "$edge" pub-nat proxy listen="tcp:$subnet_host:$p3" connect="tcp:$edge_ip:18090" nat=true >/dev/null 2>/tmp/cul8er-bench-nat-$tag; then
    measure nat "http://$subnet_host:$p3/" "kept (DNAT)"
    incus config device remove "$edge" pub-nat >/dev/null
else
    printf '%-11s refused: %s\n' nat "$(tr '\n' ' ' </tmp/cul8er-bench-nat-$tag)"
fi
if incus config device add "$edge" pub-natlo proxy listen="tcp:127.0.0.1:$p3" connect="tcp:$edge_ip:18090" nat=true >/dev/null 2>/tmp/cul8er-bench-nat-$tag; then
    if curl -s -m 2 -o /dev/null "http://127.0.0.1:$p3/"; then
        measure nat-lo "http://127.0.0.1:$p3/" "kept (DNAT)"
    else
        printf '%-11s accepted by Incus, but 127.0.0.1:%s does not answer (DNAT of loopback traffic)\n' nat-lo "$p3"
    fi
    incus config device remove "$edge" pub-natlo >/dev/null
else
    printf '%-11s refused: %s\n' nat-lo "$(tr '\n' ' ' </tmp/cul8er-bench-nat-$tag)"
fi
rm -f /tmp/cul8er-bench-nat-$tag

p4="$(free_port)"
for listen in 127.0.0.1 "$subnet_host"; do
    if incus network forward create "$net" "$listen" >/dev/null 2>/tmp/cul8er-bench-fwd-$tag; then
        incus network forward port add "$net" "$listen" tcp "$p4" "$edge_ip" 18090 >/dev/null
        if curl -s -m 2 -o /dev/null "http://$listen:$p4/"; then
            measure "forward" "http://$listen:$p4/" "kept (DNAT), listen $listen"
        else
            printf '%-11s accepted on %s, but %s:%s does not answer\n' forward "$listen" "$listen" "$p4"
        fi
        incus network forward delete "$net" "$listen" >/dev/null 2>&1 || true
    else
        printf '%-11s refused on %s: %s\n' forward "$listen" "$(tr '\n' ' ' </tmp/cul8er-bench-fwd-$tag)"
    fi
done
rm -f /tmp/cul8er-bench-fwd-$tag
