#!/usr/bin/env bash
# The real Incus test environment of cul8er: brings it up, tears it down, reports on it.
#
#   scripts/incus-env.sh up [--with-debian] [--with-openrc]   idempotent; `just setup` and `just test` run it
#   scripts/incus-env.sh down [--cluster]     the matching teardown (--cluster: daemons 2, 3 only)
#   scripts/incus-env.sh status               one line per piece, ready or not
#
# `up` ends in the same ready state whether Incus is absent, installed but stopped, or
# running with leftovers from an earlier run:
#   1. Incus 6.0.x and incus-extra (Debian: bookworm-backports; Ubuntu: its own package),
#      busybox-static, jq and curl are installed when missing.
#   2. The main daemon (/var/lib/incus) is started when it is not running.
#   3. It has the `default` dir pool and the root disk in the default profile.
#   4. The test images, built locally from the host's packages (fixtures/images/), are
#      imported under fixed aliases: cul8er-busybox always, cul8er-debian (systemd) on
#      request (`--with-debian` or CUL8ER_DEBIAN_IMAGE=1), cul8er-debian-openrc
#      (sysvinit + OpenRC) on request (`--with-openrc` or CUL8ER_OPENRC_IMAGE=1). An
#      image is rebuilt only when its inputs change: their hash is the image property
#      cul8er.build_hash.
#   5. The main daemon listens for TLS on 127.0.0.1:8443.
#   6. Daemons 2 and 3 (/var/lib/incus2, /var/lib/incus3, on 127.0.0.2:8443 and
#      127.0.0.3:8443) form a two-member Incus cluster, members member2 and member3,
#      with a `default` dir pool and cul8er-busybox.
#   7. Test instances named cul8er-t-* that are older than CUL8ER_ENV_STALE_MINUTES
#      (default 60) are deleted: leftovers of runs that died before their cleanup; so are
#      the lease, rollout and pause profiles of those test topologies
#      (cul8er-{lease,rollout,pause}-cul8er-t-*) whose record is that old.
#   8. The facts tests need are written to /run/cul8er-test-env (see write_env_file).
#
# Runs as root. Daemon logs: /var/log/incus/incusd.log (main, when started here) and
# /var/log/cul8er/incusd-member{2,3}.log.
set -Eeuo pipefail

readonly MAIN_DIR=/var/lib/incus
readonly MAIN_ADDRESS=127.0.0.1:8443
readonly MEMBERS=(member2 member3)
declare -rA MEMBER_DIR=([member2]=/var/lib/incus2 [member3]=/var/lib/incus3)
declare -rA MEMBER_ADDRESS=([member2]=127.0.0.2:8443 [member3]=127.0.0.3:8443)
readonly POOL=default
readonly BUSYBOX_ALIAS=cul8er-busybox
readonly DEBIAN_ALIAS=cul8er-debian
readonly OPENRC_ALIAS=cul8er-debian-openrc
readonly TEST_PREFIX=cul8er-t-
readonly ENV_FILE=/run/cul8er-test-env
readonly LOG_DIR=/var/log/cul8er
readonly CACHE_DIR=/var/cache/cul8er/images
readonly LOCK_FILE=/run/cul8er-incus-env.lock
readonly STALE_MINUTES="${CUL8ER_ENV_STALE_MINUTES:-60}"

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
readonly repo
readonly BUSYBOX_BUILDER="$repo/fixtures/images/busybox"
readonly DEBIAN_BUILDER="$repo/fixtures/images/debian"
readonly OPENRC_BUILDER="$repo/fixtures/images/debian-openrc"

current_step="start"
step_hint=""
step_log=""
started_at=$SECONDS

# --- output and failure -------------------------------------------------------------

say() { printf 'incus-env [%3ss]: %s\n' "$((SECONDS - started_at))" "$*" >&2; }

# Names the step in progress, so that a failure says where it happened and what to do.
step() {
    current_step="$1"
    step_hint="${2:-}"
    step_log="${3:-}"
}

die() {
    say "error in step '$current_step': $*"
    [ -n "$step_hint" ] && say "what to do: $step_hint"
    [ -n "$step_log" ] && say "log: $step_log"
    exit 1
}

# shellcheck disable=SC2317  # called through the ERR trap
on_error() {
    local status=$1 line=$2 command=$3
    trap - ERR
    say "error in step '$current_step': \`$command\` failed with status $status (scripts/incus-env.sh line $line)"
    [ "$status" = 124 ] && say "it timed out: the daemon did not answer within 10 minutes"
    [ -n "$step_hint" ] && say "what to do: $step_hint"
    [ -n "$step_log" ] && say "log: $step_log"
    exit "$status"
}
trap 'on_error $? $LINENO "$BASH_COMMAND"' ERR

# The incus client against one daemon, chosen by its INCUS_DIR. A daemon that stops
# answering fails the step after 10 minutes instead of hanging the run.
incus_at() {
    local dir=$1
    shift
    INCUS_DIR="$dir" INCUS_SOCKET="$dir/unix.socket" timeout 600 incus "$@"
}

# --- 1. packages ----------------------------------------------------------------------

os_id() { (. /etc/os-release && echo "${ID:-unknown}"); }
os_codename() { (. /etc/os-release && echo "${VERSION_CODENAME:-unknown}"); }

installed() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q '^install ok installed$'; }

# The first URI of the host's own apt source for SUITE (deb822 .sources files first,
# then one-line .list files): the mirror the host already uses.
apt_mirror() {
    local suite=$1 file uri
    for file in /etc/apt/sources.list.d/*.sources; do
        [ -f "$file" ] || continue
        uri="$(awk -v suite="$suite" '
            function flush() {
                if (types ~ /(^|[ \t])deb([ \t]|$)/ && (" " suites " ") ~ ("[ \t]" suite "[ \t]") && uris != "" && !found) {
                    split(uris, u, /[ \t]+/); print u[1]; found = 1
                }
                types = ""; suites = ""; uris = ""
            }
            /^[ \t]*$/ { flush(); next }
            /^[ \t]*#/ { next }
            tolower($1) == "types:" { sub(/^[^:]*:[ \t]*/, ""); types = $0 }
            tolower($1) == "suites:" { sub(/^[^:]*:[ \t]*/, ""); suites = $0 }
            tolower($1) == "uris:" { sub(/^[^:]*:[ \t]*/, ""); uris = $0 }
            END { flush() }' "$file")"
        if [ -n "$uri" ]; then
            echo "$uri"
            return 0
        fi
    done
    for file in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
        [ -f "$file" ] || continue
        uri="$(awk -v suite="$suite" '
            $1 == "deb" {
                i = 2
                if ($i ~ /^\[/) { while ($i !~ /\]$/) i++; i++ }
                if ($(i + 1) == suite) { print $i; exit }
            }' "$file")"
        if [ -n "$uri" ]; then
            echo "$uri"
            return 0
        fi
    done
    return 1
}

apt_quiet() {
    local log="$LOG_DIR/apt.log"
    step_log="$log"
    if ! DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=300 -y "$@" >>"$log" 2>&1; then
        tail -n 20 "$log" >&2
        die "apt-get $* failed"
    fi
}

ensure_backports_source() {
    if grep -Eqs '(^|[[:space:]])bookworm-backports([[:space:]]|$)' /etc/apt/sources.list /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources; then
        return 0
    fi
    local mirror
    mirror="$(apt_mirror bookworm)" ||
        die "no apt source for bookworm found to derive the backports mirror from"
    say "adding the bookworm-backports apt source (mirror $mirror)"
    cat >/etc/apt/sources.list.d/cul8er-backports.sources <<EOF
Types: deb
URIs: $mirror
Suites: bookworm-backports
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOF
}

ensure_packages() {
    local with_debian=$1 os codename
    step "install packages" "check the apt sources and network access to the distribution mirror, then rerun"
    os="$(os_id)"
    codename="$(os_codename)"
    local base=(busybox-static jq curl)
    [ "$with_debian" = 1 ] && base+=(debootstrap)
    local incus_pkgs=(incus incus-extra)
    local missing=() pkg
    for pkg in "${incus_pkgs[@]}" "${base[@]}"; do
        installed "$pkg" || missing+=("$pkg")
    done
    if [ ${#missing[@]} -eq 0 ]; then
        return 0
    fi
    say "installing ${missing[*]} (about a minute on a fresh machine)"
    mkdir -p "$LOG_DIR"
    case "$os:$codename" in
        debian:bookworm)
            ensure_backports_source
            apt_quiet update
            apt_quiet install -t bookworm-backports "${incus_pkgs[@]}"
            apt_quiet install "${base[@]}"
            ;;
        debian:* | ubuntu:*)
            apt_quiet update
            if ! apt-cache show incus-extra >/dev/null 2>&1; then
                say "incus-extra is not packaged here: incus-benchmark and incus-simplestreams will be missing"
                incus_pkgs=(incus)
            fi
            apt_quiet install "${incus_pkgs[@]}" "${base[@]}"
            ;;
        *)
            die "unsupported system $os $codename: install Incus 6.0.x, busybox-static, jq and curl by hand"
            ;;
    esac
    command -v incus >/dev/null || die "the incus client is still missing after the install"
}

# The client's version: asks no daemon, so it cannot hang on a busy one.
incus_version() { incus --version 2>/dev/null; }

# --- 2. daemons -----------------------------------------------------------------------

incusd_binary() {
    local candidate
    for candidate in /usr/libexec/incus/incusd /usr/lib/incus/incusd /usr/sbin/incusd /usr/bin/incusd; do
        if [ -x "$candidate" ]; then
            echo "$candidate"
            return 0
        fi
    done
    return 1
}

# Probes the daemon of DIR: prints "up" (it answers GET /1.0), "busy" (a process
# listens on its socket but does not answer within 5 s) or "down" (nothing listens).
daemon_state() {
    local dir=$1 status=0
    if [ ! -S "$dir/unix.socket" ]; then
        echo down
        return 0
    fi
    curl -sf -o /dev/null --unix-socket "$dir/unix.socket" --max-time 5 http://incus/1.0 || status=$?
    case "$status" in
        0) echo up ;;
        7) echo down ;;
        *) echo busy ;;
    esac
}

daemon_answers() { [ "$(daemon_state "$1")" = up ]; }

daemon_pid() {
    timeout 10 env INCUS_DIR="$1" INCUS_SOCKET="$1/unix.socket" incus query /1.0 2>/dev/null |
        jq -r '.environment.server_pid // empty'
}

has_systemd_unit() {
    [ -d /run/systemd/system ] && systemctl cat "$1" >/dev/null 2>&1
}

# Unprivileged containers need a subordinate id range for root (the Debian package adds
# it; some systems lack it).
ensure_subids() {
    local file
    for file in /etc/subuid /etc/subgid; do
        if ! grep -qs '^root:' "$file"; then
            say "adding root:1000000:1000000000 to $file"
            echo "root:1000000:1000000000" >>"$file"
        fi
    done
}

# Starts the daemon of DIR when it does not answer, and waits until it is ready.
ensure_daemon() {
    local dir=$1 log=$2 state waited=0
    state="$(daemon_state "$dir")"
    # Never a second daemon on one dir: wait while the one that is there is busy (each
    # probe waits up to 5 s for an answer).
    while [ "$state" = busy ]; do
        step "wait for incusd ($dir)" "the daemon listens but does not answer: read its log" "$log"
        [ "$waited" = 0 ] && say "incusd for $dir listens but does not answer yet: waiting up to 10 minutes"
        waited=$((waited + 1))
        [ "$waited" -le 120 ] || die "incusd for $dir did not answer within 10 minutes"
        state="$(daemon_state "$dir")"
    done
    [ "$state" = up ] && return 0
    if [ "$dir" = "$MAIN_DIR" ] && has_systemd_unit incus.service; then
        step "start incusd ($dir)" "see \`journalctl -u incus\` and \`systemctl status incus\`"
        say "starting incus.service"
        systemctl start incus.service
    else
        local incusd
        incusd="$(incusd_binary)" || die "incusd not found (is the incus package installed?)"
        step "start incusd ($dir)" "read the daemon log below; stop any process holding $dir/unix.socket" "$log"
        say "starting incusd for $dir (log $log)"
        mkdir -p "$dir" "$(dirname "$log")"
        # A daemon started here (no service manager: a test machine) sends its outbound
        # HTTP(S) (the instance-type refresh from the public image server at start) to a
        # proxy address where nothing listens, so it looks up and reaches nothing off the
        # machine. Incus never proxies loopback: loopback image servers in tests still
        # work. A core.proxy_https setting overrides this.
        local proxy=(HTTPS_PROXY=http://127.0.0.1:9 HTTP_PROXY=http://127.0.0.1:9)
        # 9>&-: the daemon must not inherit the lock of this script (see lock()).
        env INCUS_DIR="$dir" "${proxy[@]}" setsid "$incusd" --group root --logfile "$log" \
            </dev/null >>"$log.out" 2>&1 9>&- &
    fi
    if ! incus_at "$dir" admin waitready --timeout 60 >/dev/null 2>&1; then
        [ -f "$log" ] && tail -n 20 "$log" >&2
        die "incusd for $dir did not become ready within 60 s"
    fi
}

# --- 3. pool and profile ----------------------------------------------------------------

ensure_pool() {
    local dir=$1
    step "storage pool ($dir)" "inspect with \`INCUS_DIR=$dir incus storage list\`"
    if ! incus_at "$dir" storage show "$POOL" >/dev/null 2>&1; then
        say "creating the $POOL dir pool on $dir"
        incus_at "$dir" storage create "$POOL" dir >/dev/null
    fi
    if ! incus_at "$dir" profile device get default root pool >/dev/null 2>&1; then
        say "adding the root disk to the default profile on $dir"
        incus_at "$dir" profile device add default root disk path=/ pool="$POOL" >/dev/null
    fi
}

# --- 4. images ------------------------------------------------------------------------

# Hash of a builder directory plus extra lines (host files' hashes, suite): 16 hex digits.
build_hash() {
    local builder=$1
    shift
    {
        (cd "$builder" && find . -type f -print0 | sort -z | xargs -0 sha256sum)
        printf '%s\n' "$@"
    } | sha256sum | cut -c1-16
}

busybox_hash() {
    local list inputs
    list="$(bash "$BUSYBOX_BUILDER/build.sh" --inputs)"
    mapfile -t inputs <<<"$list"
    build_hash "$BUSYBOX_BUILDER" "$(uname -m)" "$(sha256sum "${inputs[@]}")"
}

debian_suite() {
    local os codename
    os="$(os_id)"
    codename="$(os_codename)"
    case "$os" in
        debian | ubuntu) echo "$codename" ;;
        *) echo bookworm ;;
    esac
}

debian_hash() { build_hash "$DEBIAN_BUILDER" "$(uname -m)" "$(debian_suite)"; }
openrc_hash() { build_hash "$OPENRC_BUILDER" "$(uname -m)" "$(debian_suite)"; }

# The image hash recorded on the image ALIAS points to, or nothing.
image_hash() {
    local dir=$1 alias=$2
    incus_at "$dir" image get-property "$alias" cul8er.build_hash 2>/dev/null || true
}

# Builds (or reuses from the cache) the tarball of an image; prints its path.
image_tarball() {
    local name=$1 hash=$2 tarball
    mkdir -p "$CACHE_DIR"
    case "$name" in
        busybox)
            tarball="$CACHE_DIR/busybox-$hash.tar"
            if [ ! -f "$tarball" ]; then
                step "build image $BUSYBOX_ALIAS" "check that busybox-static is installed; rerun with bash -x for detail"
                say "building $BUSYBOX_ALIAS (build $hash)"
                find "$CACHE_DIR" -maxdepth 1 -name 'busybox-*.tar' -delete
                bash "$BUSYBOX_BUILDER/build.sh" "$tarball" "$hash" >&2
            fi
            ;;
        debian)
            tarball="$CACHE_DIR/debian-$hash.tar.gz"
            if [ ! -f "$tarball" ]; then
                local suite mirror
                suite="$(debian_suite)"
                step "build image $DEBIAN_ALIAS" "check network access to the distribution mirror; rerun"
                mirror="$(apt_mirror "$suite")" || die "no apt source for $suite to debootstrap from"
                say "building $DEBIAN_ALIAS: debootstrap $suite, about a minute (build $hash)"
                find "$CACHE_DIR" -maxdepth 1 -name 'debian-*.tar.gz' ! -name 'debian-openrc-*' -delete
                bash "$DEBIAN_BUILDER/build.sh" "$tarball" "$hash" "$suite" "$mirror" >&2
            fi
            ;;
        openrc)
            tarball="$CACHE_DIR/debian-openrc-$hash.tar.gz"
            if [ ! -f "$tarball" ]; then
                local suite mirror
                suite="$(debian_suite)"
                step "build image $OPENRC_ALIAS" "check network access to the distribution mirror; rerun"
                mirror="$(apt_mirror "$suite")" || die "no apt source for $suite to debootstrap from"
                say "building $OPENRC_ALIAS: debootstrap $suite with sysvinit and OpenRC, about a minute (build $hash)"
                find "$CACHE_DIR" -maxdepth 1 -name 'debian-openrc-*.tar.gz' -delete
                bash "$OPENRC_BUILDER/build.sh" "$tarball" "$hash" "$suite" "$mirror" >&2
            fi
            ;;
    esac
    echo "$tarball"
}

# Points ALIAS on the daemon of DIR at the image of NAME/HASH, importing it when needed,
# and deletes the images of earlier builds that no alias uses any more.
ensure_image() {
    local dir=$1 name=$2 alias=$3 hash=$4
    [ "$(image_hash "$dir" "$alias")" = "$hash" ] && return 0
    local tarball fingerprint
    tarball="$(image_tarball "$name" "$hash")"
    step "import image $alias ($dir)" "inspect with \`INCUS_DIR=$dir incus image list\`; \`$0 down\` resets the images"
    # A unified tarball's fingerprint is its SHA-256.
    fingerprint="$(sha256sum "$tarball" | cut -d' ' -f1)"
    if ! incus_at "$dir" image show "$fingerprint" >/dev/null 2>&1; then
        say "importing $alias into $dir"
        incus_at "$dir" image import "$tarball" --quiet >/dev/null
    fi
    if incus_at "$dir" image alias list --format csv | cut -d, -f1 | grep -qx "$alias"; then
        # Retarget in one request, so the alias never disappears for concurrent users.
        incus_at "$dir" query -X PUT "/1.0/images/aliases/$alias" \
            -d "{\"target\":\"$fingerprint\",\"description\":\"cul8er test image, build $hash\"}" >/dev/null
    else
        incus_at "$dir" image alias create "$alias" "$fingerprint" \
            --description "cul8er test image, build $hash" >/dev/null
    fi
    delete_unaliased_images "$dir"
}

# Our images (those carrying cul8er.build_hash) that no alias points to any more.
delete_unaliased_images() {
    local dir=$1 fp
    for fp in $(incus_at "$dir" query '/1.0/images?recursion=1' |
        jq -r '.[] | select(.properties["cul8er.build_hash"] != null and (.aliases | length) == 0) | .fingerprint'); do
        incus_at "$dir" image delete "$fp" >/dev/null 2>&1 || true
    done
}

# --- 5. TLS ---------------------------------------------------------------------------

ensure_tls() {
    step "TLS on $MAIN_ADDRESS" "inspect with \`incus config get core.https_address\`"
    local current
    current="$(incus_at "$MAIN_DIR" config get core.https_address)"
    case "$current" in
        "$MAIN_ADDRESS" | ":8443" | "0.0.0.0:8443" | "[::]:8443") ;;
        *)
            say "setting core.https_address=$MAIN_ADDRESS (was '${current}')"
            incus_at "$MAIN_DIR" config set core.https_address "$MAIN_ADDRESS"
            ;;
    esac
}

# --- 6. the cluster -------------------------------------------------------------------

member_log() { echo "$LOG_DIR/incusd-$1.log"; }

member_clustered() {
    [ "$(incus_at "${MEMBER_DIR[$1]}" query /1.0 | jq -r '.environment.server_clustered')" = true ]
}

# Lines "name,status" of the cluster as member2 sees it.
cluster_members() {
    incus_at "${MEMBER_DIR[member2]}" query '/1.0/cluster/members?recursion=1' 2>/dev/null |
        jq -r '.[] | "\(.server_name),\(.status)"'
}

# Both members see themselves clustered and member2 sees both online. (member2's view
# alone lags: a member whose state was wiped still shows online until heartbeats miss.)
cluster_ready() {
    local members
    member_clustered member2 2>/dev/null && member_clustered member3 2>/dev/null || return 1
    members="$(cluster_members)" || return 1
    [ "$(printf '%s\n' "$members" | sort | tr '\n' ' ')" = "member2,Online member3,Online " ]
}

# The pid of the incusd serving DIR: asked from the daemon, else found among the incusd
# processes by the INCUS_DIR they were started with (a daemon that hangs).
member_daemon_pid() {
    local dir=$1 pid
    pid="$(daemon_pid "$dir" || true)"
    if [ -z "$pid" ]; then
        for pid in $(pgrep -x incusd || true); do
            if tr '\0' '\n' <"/proc/$pid/environ" 2>/dev/null | grep -qx "INCUS_DIR=$dir"; then
                echo "$pid"
                return 0
            fi
        done
        return 0
    fi
    echo "$pid"
}

stop_member() {
    local member=$1 dir=${MEMBER_DIR[$1]} pid
    [ -d "$dir" ] || return 0
    pid="$(member_daemon_pid "$dir")"
    if daemon_answers "$dir"; then
        # Stops its instances first, so no container outlives the daemon.
        timeout 60 env INCUS_DIR="$dir" INCUS_SOCKET="$dir/unix.socket" \
            incus admin shutdown --timeout 30 >/dev/null 2>&1 || true
    fi
    if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
        kill "$pid" 2>/dev/null || true
        local _
        for _ in $(seq 1 50); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.2
        done
        if kill -0 "$pid" 2>/dev/null; then kill -9 "$pid" 2>/dev/null || true; fi
    fi
    # The daemon mounts tmpfs under its dir; unmount before removing it.
    local mnt
    while read -r mnt; do
        umount -l "$mnt" 2>/dev/null || true
    done < <(awk -v root="$dir/" 'index($2, root) == 1 {print $2}' /proc/mounts | sort -r)
}

remove_member() {
    local member=$1
    stop_member "$member"
    rm -rf "${MEMBER_DIR[$member]}"
}

# member2: TLS address, pool, root disk, then clustering.
bootstrap_member2() {
    local dir=${MEMBER_DIR[member2]}
    step "cluster: bootstrap member2" "\`$0 down --cluster\` then \`$0 up\` rebuilds the cluster" "$(member_log member2)"
    say "enabling clustering on member2 (${MEMBER_ADDRESS[member2]})"
    incus_at "$dir" config set core.https_address "${MEMBER_ADDRESS[member2]}"
    ensure_pool "$dir"
    incus_at "$dir" cluster enable member2 >/dev/null
}

join_member3() {
    local dir2=${MEMBER_DIR[member2]} dir3=${MEMBER_DIR[member3]} token
    step "cluster: join member3" "\`$0 down --cluster\` then \`$0 up\` rebuilds the cluster" "$(member_log member3)"
    say "joining member3 (${MEMBER_ADDRESS[member3]}) to the cluster"
    incus_at "$dir2" cluster revoke-token member3 >/dev/null 2>&1 || true
    token="$(incus_at "$dir2" cluster add member3 --quiet)"
    incus_at "$dir3" admin init --preseed >/dev/null <<EOF
cluster:
  enabled: true
  server_name: member3
  server_address: ${MEMBER_ADDRESS[member3]}
  cluster_token: $token
  member_config:
  - entity: storage-pool
    name: $POOL
    key: source
    value: ""
EOF
}

cluster_rebuilt=0

# Removes both members and builds the cluster again, once per run.
rebuild_cluster() {
    local reason=$1
    [ "$cluster_rebuilt" = 0 ] || die "the rebuilt cluster is still inconsistent ($reason); see $LOG_DIR"
    cluster_rebuilt=1
    say "$reason: rebuilding the cluster"
    remove_member member3
    remove_member member2
    ensure_cluster
}

ensure_cluster() {
    local member
    for member in "${MEMBERS[@]}"; do
        ensure_daemon "${MEMBER_DIR[$member]}" "$(member_log "$member")"
    done
    step "cluster" "\`$0 down --cluster\` then \`$0 up\` rebuilds the cluster"
    cluster_ready && return 0

    if ! member_clustered member2; then
        # A fresh member2; a member3 left from an earlier cluster cannot join a new one.
        if member_clustered member3; then
            say "member3 belongs to an earlier cluster: resetting it"
            remove_member member3
            ensure_daemon "${MEMBER_DIR[member3]}" "$(member_log member3)"
        fi
        bootstrap_member2
    fi
    if cluster_members | grep -q '^member3,' && ! member_clustered member3; then
        # member2 still lists a member3 whose state is gone: start over.
        rebuild_cluster "member3's state is gone but member2 still lists it"
        return 0
    fi
    if ! cluster_members | grep -q '^member3,'; then
        if member_clustered member3; then
            say "member3 belongs to another cluster: resetting it"
            remove_member member3
            ensure_daemon "${MEMBER_DIR[member3]}" "$(member_log member3)"
        fi
        join_member3
    fi

    # Members just restarted take a heartbeat or two to be seen online.
    step "cluster: wait for both members online" "\`$0 down --cluster\` then \`$0 up\` rebuilds the cluster" "$LOG_DIR"
    local _
    for _ in $(seq 1 60); do
        cluster_ready && return 0
        sleep 1
    done
    if ! member_clustered member3 || ! member_clustered member2; then
        rebuild_cluster "a member lost its cluster state"
        return 0
    fi
    die "cluster members not online after 60 s: $(cluster_members | tr '\n' ' ')"
}

# --- 7. leftovers ---------------------------------------------------------------------

# Deletes test instances older than MINUTES on the daemon of DIR (all when MINUTES=0).
delete_test_instances() {
    local dir=$1 minutes=$2 now instances project name
    now="$(date +%s)"
    step "delete leftover test instances ($dir)" "delete them by hand: \`INCUS_DIR=$dir incus delete --force NAME\`"
    instances="$(incus_at "$dir" query "/1.0/instances?recursion=1&all-projects=true")"
    instances="$(jq -r --arg prefix "$TEST_PREFIX" --argjson now "$now" --argjson minutes "$minutes" '
        .[] | select(.name | startswith($prefix))
            | select($minutes == 0
                or ($now - (.created_at | sub("\\.[0-9]+"; "") | sub("(Z|[+-]00:00)$"; "Z") | fromdateiso8601)) > $minutes * 60)
            | "\(.project) \(.name)"' <<<"$instances")"
    while read -r project name; do
        [ -n "$name" ] || continue
        say "deleting leftover test instance $name (project $project) on $dir"
        incus_at "$dir" delete --force --project "$project" "$name" >/dev/null 2>&1 ||
            say "could not delete $name on $dir (gone already?)"
    done <<<"$instances"
}

# Deletes the lease, rollout and pause profiles of test topologies (cul8er-t-*) on the
# daemon of DIR whose record is older than MINUTES (all of them when MINUTES=0): left by
# runs that died before their cleanup. A profile's age is its record's own time (the
# lease's expiry, a rollout's or pause request's `at`), since Incus keeps no creation
# time for profiles; one without a readable time is left to `down`. Profiles of other
# topologies are never touched.
delete_test_profiles() {
    local dir=$1 minutes=$2 now profiles project name
    now="$(date +%s)"
    step "delete leftover test profiles ($dir)" "delete them by hand: \`INCUS_DIR=$dir incus profile delete --project PROJECT NAME\`"
    profiles="$(incus_at "$dir" query "/1.0/profiles?recursion=1&all-projects=true")"
    profiles="$(jq -r --arg prefix "$TEST_PREFIX" --argjson now "$now" --argjson minutes "$minutes" '
        def record_time:
            (.config["user.cul8er.lease"] // .config["user.cul8er.rollout"] // .config["user.cul8er.pause"] // "")
            | (try fromjson catch null)
            | if type != "object" then null
              elif (.expires | type) == "number" then .expires
              elif (.at | type) == "string" then
                  (try (.at | sub("\\.[0-9]+"; "") | sub("(Z|[+-]00:00)$"; "Z") | fromdateiso8601) catch null)
              else null end;
        .[] | select(.name as $name
                | ["cul8er-lease-", "cul8er-rollout-", "cul8er-pause-"]
                | any(. as $kind | $name | startswith($kind + $prefix)))
            | record_time as $time
            | select($minutes == 0 or ($time != null and ($now - $time) > $minutes * 60))
            | "\(.project) \(.name)"' <<<"$profiles")"
    while read -r project name; do
        [ -n "$name" ] || continue
        say "deleting leftover test profile $name (project $project) on $dir"
        incus_at "$dir" profile delete --project "$project" "$name" >/dev/null 2>&1 ||
            say "could not delete profile $name on $dir (gone already, or in use?)"
    done <<<"$profiles"
}

# --- 8. the env file ------------------------------------------------------------------

# The facts tests need, as shell assignments that keep values already set in the
# environment (so a developer can point tests elsewhere). `just test` exports them.
write_env_file() {
    local debian_image="" openrc_image=""
    [ -n "$(image_hash "$MAIN_DIR" "$DEBIAN_ALIAS")" ] && debian_image=$DEBIAN_ALIAS
    [ -n "$(image_hash "$MAIN_DIR" "$OPENRC_ALIAS")" ] && openrc_image=$OPENRC_ALIAS
    cat >"$ENV_FILE.partial" <<EOF
# The cul8er test environment, written by scripts/incus-env.sh up. Source with \`set -a\`.
CUL8ER_TEST_INCUS_SOCKET="\${CUL8ER_TEST_INCUS_SOCKET:-$MAIN_DIR/unix.socket}"
CUL8ER_TEST_TLS_ADDRESS="\${CUL8ER_TEST_TLS_ADDRESS:-$MAIN_ADDRESS}"
CUL8ER_TEST_CLUSTER_SOCKET="\${CUL8ER_TEST_CLUSTER_SOCKET:-${MEMBER_DIR[member2]}/unix.socket}"
CUL8ER_TEST_CLUSTER_PEER_SOCKET="\${CUL8ER_TEST_CLUSTER_PEER_SOCKET:-${MEMBER_DIR[member3]}/unix.socket}"
CUL8ER_TEST_CLUSTER_TLS_ADDRESS="\${CUL8ER_TEST_CLUSTER_TLS_ADDRESS:-${MEMBER_ADDRESS[member2]}}"
CUL8ER_TEST_CLUSTER_MEMBERS="\${CUL8ER_TEST_CLUSTER_MEMBERS:-member2 member3}"
CUL8ER_TEST_IMAGE="\${CUL8ER_TEST_IMAGE:-$BUSYBOX_ALIAS}"
CUL8ER_TEST_DEBIAN_IMAGE="\${CUL8ER_TEST_DEBIAN_IMAGE:-$debian_image}"
CUL8ER_TEST_OPENRC_IMAGE="\${CUL8ER_TEST_OPENRC_IMAGE:-$openrc_image}"
CUL8ER_TEST_PREFIX="\${CUL8ER_TEST_PREFIX:-$TEST_PREFIX}"
EOF
    mv "$ENV_FILE.partial" "$ENV_FILE"
}

# --- commands -------------------------------------------------------------------------

require_root() {
    [ "$(id -u)" = 0 ] || { say "must run as root (it installs packages and starts daemons): sudo $0 $*"; exit 1; }
    [ "$(uname -m)" = x86_64 ] || { say "only x86_64 hosts are supported"; exit 1; }
}

lock() {
    exec 9>"$LOCK_FILE"
    if ! flock -n 9; then
        say "another incus-env.sh run holds $LOCK_FILE: waiting for it"
        flock 9
    fi
}

cmd_up() {
    local with_debian=0 with_openrc=0
    case "${CUL8ER_DEBIAN_IMAGE:-0}" in 1 | true | yes) with_debian=1 ;; esac
    case "${CUL8ER_OPENRC_IMAGE:-0}" in 1 | true | yes) with_openrc=1 ;; esac
    while [ $# -gt 0 ]; do
        case "$1" in
            --with-debian) with_debian=1 ;;
            --with-openrc) with_openrc=1 ;;
            *) say "unknown option to up: $1 (known: --with-debian, --with-openrc)"; exit 2 ;;
        esac
        shift
    done
    [[ "$STALE_MINUTES" =~ ^[0-9]+$ ]] ||
        { say "CUL8ER_ENV_STALE_MINUTES must be a whole number of minutes, not '$STALE_MINUTES'"; exit 2; }
    lock
    mkdir -p "$LOG_DIR"

    # Both Debian images need debootstrap.
    ensure_packages "$((with_debian | with_openrc))"
    # Before any daemon starts (asking a socket-activated one starts it).
    ensure_subids
    local version
    version="$(incus_version)"
    case "$version" in
        6.0.*) ;;
        *) say "warning: Incus $version is installed; cul8er is tested on 6.0.x" ;;
    esac

    ensure_daemon "$MAIN_DIR" /var/log/incus/incusd.log
    ensure_pool "$MAIN_DIR"
    ensure_tls

    local bb_hash deb_hash=""
    step "hash image inputs"
    bb_hash="$(busybox_hash)"
    ensure_image "$MAIN_DIR" busybox "$BUSYBOX_ALIAS" "$bb_hash"
    if [ "$with_debian" = 1 ]; then
        deb_hash="$(debian_hash)"
        ensure_image "$MAIN_DIR" debian "$DEBIAN_ALIAS" "$deb_hash"
    fi
    local orc_hash=""
    if [ "$with_openrc" = 1 ]; then
        orc_hash="$(openrc_hash)"
        ensure_image "$MAIN_DIR" openrc "$OPENRC_ALIAS" "$orc_hash"
    fi

    ensure_cluster
    ensure_image "${MEMBER_DIR[member2]}" busybox "$BUSYBOX_ALIAS" "$bb_hash"

    delete_test_instances "$MAIN_DIR" "$STALE_MINUTES"
    delete_test_instances "${MEMBER_DIR[member2]}" "$STALE_MINUTES"
    delete_test_profiles "$MAIN_DIR" "$STALE_MINUTES"
    delete_test_profiles "${MEMBER_DIR[member2]}" "$STALE_MINUTES"

    step "write $ENV_FILE"
    write_env_file

    say "ready in $((SECONDS - started_at)) s: Incus $version"
    say "  main daemon   $MAIN_DIR/unix.socket, TLS $MAIN_ADDRESS"
    say "  cluster       member2 ${MEMBER_DIR[member2]}/unix.socket (${MEMBER_ADDRESS[member2]}), member3 ${MEMBER_DIR[member3]}/unix.socket (${MEMBER_ADDRESS[member3]})"
    say "  images        $BUSYBOX_ALIAS (build $bb_hash)${deb_hash:+, $DEBIAN_ALIAS (build $deb_hash)}${orc_hash:+, $OPENRC_ALIAS (build $orc_hash)}"
    say "  env file      $ENV_FILE"
}

cmd_down() {
    local cluster_only=0
    while [ $# -gt 0 ]; do
        case "$1" in
            --cluster) cluster_only=1 ;;
            *) say "unknown option to down: $1 (known: --cluster)"; exit 2 ;;
        esac
        shift
    done
    lock
    local member
    step "down: stop the cluster" "stop the daemons by hand (\`INCUS_DIR=DIR incus admin shutdown\`) and remove /var/lib/incus2 and /var/lib/incus3"
    for member in member3 member2; do
        if [ -d "${MEMBER_DIR[$member]}" ]; then
            say "stopping $member and removing ${MEMBER_DIR[$member]}"
            remove_member "$member"
        fi
    done
    if [ "$cluster_only" = 0 ] && daemon_answers "$MAIN_DIR"; then
        delete_test_instances "$MAIN_DIR" 0
        delete_test_profiles "$MAIN_DIR" 0
        step "down: delete the test images" "delete them by hand: \`incus image list\`, \`incus image delete\`"
        local alias
        for alias in "$BUSYBOX_ALIAS" "$DEBIAN_ALIAS" "$OPENRC_ALIAS"; do
            if incus_at "$MAIN_DIR" image alias list --format csv | cut -d, -f1 | grep -qx "$alias"; then
                say "deleting image $alias"
                incus_at "$MAIN_DIR" image delete "$alias" >/dev/null
            fi
        done
        delete_unaliased_images "$MAIN_DIR"
        rm -f "$ENV_FILE"
    fi
    say "down in $((SECONDS - started_at)) s"
}

# One line per piece, "ready" or not; exits 1 when a required piece is not ready.
cmd_status() {
    # A report: a piece that is not ready is a line, not an error.
    trap - ERR
    set +e
    local failed=0
    line() {
        printf '%-16s %-9s %s\n' "$1" "$2" "${3:-}"
        case "$2" in ready | optional) ;; *) failed=1 ;; esac
    }
    if command -v incus >/dev/null; then
        line packages ready "Incus $(incus_version)"
    else
        line packages missing "run: $0 up"
    fi
    if daemon_answers "$MAIN_DIR"; then
        line daemon ready "$MAIN_DIR/unix.socket (pid $(daemon_pid "$MAIN_DIR"))"
        if incus_at "$MAIN_DIR" storage show "$POOL" >/dev/null 2>&1 &&
            incus_at "$MAIN_DIR" profile device get default root pool >/dev/null 2>&1; then
            line pool ready "$POOL, root disk in the default profile"
        else
            line pool missing
        fi
        local address
        address="$(incus_at "$MAIN_DIR" config get core.https_address)"
        if [ -n "$address" ]; then line tls ready "$address"; else line tls missing; fi
        local want have
        want="$(busybox_hash)"
        have="$(image_hash "$MAIN_DIR" "$BUSYBOX_ALIAS")"
        if [ "$have" = "$want" ]; then
            line image-busybox ready "$BUSYBOX_ALIAS build $have"
        else
            line image-busybox stale "$BUSYBOX_ALIAS build '${have}', inputs hash $want"
        fi
        have="$(image_hash "$MAIN_DIR" "$DEBIAN_ALIAS")"
        if [ -n "$have" ]; then
            line image-debian ready "$DEBIAN_ALIAS build $have"
        else
            line image-debian optional "absent (up --with-debian builds it)"
        fi
        have="$(image_hash "$MAIN_DIR" "$OPENRC_ALIAS")"
        if [ -n "$have" ]; then
            line image-openrc ready "$OPENRC_ALIAS build $have"
        else
            line image-openrc optional "absent (up --with-openrc builds it)"
        fi
    elif [ "$(daemon_state "$MAIN_DIR")" = busy ]; then
        line daemon busy "$MAIN_DIR/unix.socket accepts connections but does not answer within 5 s"
    else
        line daemon down "nothing listens on $MAIN_DIR/unix.socket"
    fi
    local member
    for member in "${MEMBERS[@]}"; do
        if daemon_answers "${MEMBER_DIR[$member]}"; then
            line "$member" ready "${MEMBER_DIR[$member]}/unix.socket (pid $(daemon_pid "${MEMBER_DIR[$member]}"))"
        else
            line "$member" down "${MEMBER_DIR[$member]}/unix.socket does not answer"
        fi
    done
    if cluster_ready; then
        line cluster ready "member2 and member3 online"
        if [ "$(image_hash "${MEMBER_DIR[member2]}" "$BUSYBOX_ALIAS")" = "$(busybox_hash)" ]; then
            line cluster-image ready "$BUSYBOX_ALIAS"
        else
            line cluster-image stale "$BUSYBOX_ALIAS"
        fi
    else
        line cluster "not ready" "$(cluster_members 2>/dev/null | tr '\n' ' ')"
    fi
    if [ -f "$ENV_FILE" ]; then line env-file ready "$ENV_FILE"; else line env-file missing "$ENV_FILE"; fi
    return "$failed"
}

usage() {
    sed -n '2,7p' "$0" | sed 's/^# \{0,1\}//'
}

main() {
    local command="${1:-}"
    [ $# -gt 0 ] && shift
    case "$command" in
        up) require_root up; cmd_up "$@" ;;
        down) require_root down; cmd_down "$@" ;;
        status) cmd_status ;;
        -h | --help | help) usage ;;
        *) usage >&2; exit 2 ;;
    esac
}

# On one line, so that bash never reads past it while the file is being replaced.
main "$@"; exit $?
