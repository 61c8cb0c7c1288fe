# Shared by the proxy benchmarks (sourced after `scratch` is set): the processes they
# start are ended by PID on exit, ports are checked free, and a listener is awaited.

pids=()

cleanup() {
    for pid in "${pids[@]}"; do
        kill "$pid" 2>/dev/null || true
    done
    for pid in "${pids[@]}"; do
        wait "$pid" 2>/dev/null || true
    done
    rm -rf "$scratch"
}
trap cleanup EXIT

ports_free() { # port...: fails, saying which, when something already listens on one
    local port
    for port in "$@"; do
        if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
            echo "port $port is already in use on 127.0.0.1; stop what holds it first" >&2
            return 1
        fi
    done
}

wait_port() { # port: waits up to 30 s (a proxy under callgrind starts slowly)
    for _ in $(seq 1 300); do
        if (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; then return 0; fi
        sleep 0.1
    done
    echo "nothing listens on 127.0.0.1:$1" >&2
    return 1
}
