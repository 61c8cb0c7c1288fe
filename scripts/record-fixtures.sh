#!/usr/bin/env bash
# Records real Incus responses into fixtures/incus/ for incus-api's decoding tests.
#
# Each NAME.http file is one raw HTTP response (status line, headers, body) exactly as
# the daemon sent it, captured with curl over the unix socket (or over TLS as an
# untrusted client for the *-untrusted files). The script creates what it needs, named
# cul8er-t-fixture*, and removes it again.
#
# Usage: scripts/record-fixtures.sh            (uses CUL8ER_TEST_INCUS_SOCKET or
#                                               /var/lib/incus/unix.socket)
# Needs: curl, the incus command, an image aliased CUL8ER_TEST_IMAGE (cul8er-busybox),
# core.https_address set (for the token and untrusted-TLS fixtures).
set -euo pipefail

SOCK=${CUL8ER_TEST_INCUS_SOCKET:-/var/lib/incus/unix.socket}
IMAGE=${CUL8ER_TEST_IMAGE:-cul8er-busybox}
OUT=$(cd "$(dirname "$0")/.." && pwd)/fixtures/incus
NAME=cul8er-t-fixture
export INCUS_SOCKET=$SOCK
mkdir -p "$OUT"

cleanup() {
    incus delete --force "$NAME" >/dev/null 2>&1 || true
    incus delete --force "$NAME-bad" >/dev/null 2>&1 || true
    incus profile delete "$NAME-profile" >/dev/null 2>&1 || true
}
trap cleanup EXIT
cleanup

# rec FILE METHOD PATH [JSON BODY]: records one response.
rec() {
    local file=$1 method=$2 path=$3 body=${4:-}
    if [ -n "$body" ]; then
        curl -sS -i --unix-socket "$SOCK" -X "$method" -H 'Content-Type: application/json' \
            --data "$body" "http://incus$path" >"$OUT/$file.http"
    else
        curl -sS -i --unix-socket "$SOCK" -X "$method" "http://incus$path" >"$OUT/$file.http"
    fi
    echo "recorded $file ($method $path)"
}

# op_of FILE: the operation id of a recorded async response.
op_of() {
    sed -n 's|.*"operation":"/1.0/operations/\([0-9a-f-]*\)".*|\1|p' "$OUT/$1.http" | head -n1
}

rec server GET /1.0
rec instance-not-found GET /1.0/instances/$NAME-missing
rec instances-filter-invalid GET "/1.0/instances?recursion=1&filter=Properties.os%20eq%20x"
rec events-without-upgrade GET /1.0/events

rec instance-create-async POST /1.0/instances \
    "{\"name\":\"$NAME\",\"type\":\"container\",\"source\":{\"type\":\"image\",\"alias\":\"$IMAGE\"},\"start\":true}"
rec operation-wait-success GET "/1.0/operations/$(op_of instance-create-async)/wait?timeout=60"

rec instance GET /1.0/instances/$NAME
rec instance-full GET "/1.0/instances/$NAME?recursion=1"
rec instances-recursion1 GET "/1.0/instances?recursion=1&filter=name%20eq%20$NAME"
rec instances-recursion2 GET "/1.0/instances?recursion=2&filter=name%20eq%20$NAME"
rec instance-state-running GET /1.0/instances/$NAME/state
rec instance-put-no-etag PUT /1.0/instances/$NAME '{"config":{},"devices":{},"profiles":["default"]}'
curl -sS -i --unix-socket "$SOCK" -X PATCH -H 'If-Match: "0000"' -H 'Content-Type: application/json' \
    --data '{"config":{"user.x":"1"}}' "http://incus/1.0/instances/$NAME" >"$OUT/instance-patch-etag-mismatch.http"
echo "recorded instance-patch-etag-mismatch"
sleep 1

rec exec-record-async POST /1.0/instances/$NAME/exec \
    '{"command":["sh","-c","echo out; echo err >&2; exit 3"],"record-output":true,"wait-for-websocket":false,"interactive":false,"environment":{}}'
rec exec-record-wait GET "/1.0/operations/$(op_of exec-record-async)/wait?timeout=30"
for url in $(sed -n 's|.*"output":{"1":"\([^"]*\)","2":"\([^"]*\)"}.*|\1 \2|p' "$OUT/exec-record-wait.http"); do
    curl -sS --unix-socket "$SOCK" -X DELETE "http://incus$url" >/dev/null
done
rec exec-websocket-async POST /1.0/instances/$NAME/exec \
    '{"command":["true"],"record-output":false,"wait-for-websocket":true,"interactive":false,"environment":{}}'
curl -sS --unix-socket "$SOCK" -X DELETE "http://incus/1.0/operations/$(op_of exec-websocket-async)" >/dev/null || true

incus exec "$NAME" -- sh -c 'mkdir -p /srv/d && echo hi > /srv/d/f && ln -sf /srv/d/f /srv/l'
rec file-directory GET "/1.0/instances/$NAME/files?path=/srv/d"
rec file-regular GET "/1.0/instances/$NAME/files?path=/srv/d/f"
rec file-symlink GET "/1.0/instances/$NAME/files?path=/srv/l"
rec file-missing GET "/1.0/instances/$NAME/files?path=/srv/nope"

rec snapshot-create-async POST /1.0/instances/$NAME/snapshots '{"name":"s0"}'
rec snapshot-wait GET "/1.0/operations/$(op_of snapshot-create-async)/wait?timeout=60"
rec snapshots GET "/1.0/instances/$NAME/snapshots?recursion=1"

rec instance-delete-running DELETE /1.0/instances/$NAME
incus stop --force "$NAME"
rec instance-state-stopped GET /1.0/instances/$NAME/state

# 6.0.4 answers /wait with HTTP 200 and an error body for a failure and for a timeout.
rec instance-create-bad-image POST /1.0/instances \
    "{\"name\":\"$NAME-bad\",\"type\":\"container\",\"source\":{\"type\":\"image\",\"alias\":\"cul8er-t-no-such-image\"}}"
if grep -q '"type":"async"' "$OUT/instance-create-bad-image.http"; then
    rec operation-wait-failure GET "/1.0/operations/$(op_of instance-create-bad-image)/wait?timeout=30"
fi
rec certificate-token-async POST /1.0/certificates "{\"name\":\"$NAME-token\",\"type\":\"client\",\"token\":true}"
TOKEN_OP=$(op_of certificate-token-async)
rec operation-wait-timeout GET "/1.0/operations/$TOKEN_OP/wait?timeout=1"
rec operation-get GET "/1.0/operations/$TOKEN_OP"
curl -sS --unix-socket "$SOCK" -X DELETE "http://incus/1.0/operations/$TOKEN_OP" >/dev/null

rec profile-create POST /1.0/profiles "{\"name\":\"$NAME-profile\",\"config\":{\"user.a\":\"1\"},\"devices\":{}}"
rec profile-create-exists POST /1.0/profiles "{\"name\":\"$NAME-profile\",\"config\":{},\"devices\":{}}"
rec profile GET /1.0/profiles/$NAME-profile
rec images GET "/1.0/images?recursion=1"
rec image-aliases GET "/1.0/images/aliases?recursion=1"
rec networks GET "/1.0/networks?recursion=1"
rec storage-pools GET "/1.0/storage-pools?recursion=1"
rec projects GET "/1.0/projects?recursion=1"
rec certificates GET "/1.0/certificates?recursion=1"
rec cluster GET /1.0/cluster
rec cluster-members-standalone GET "/1.0/cluster/members?recursion=1"
rec operations GET "/1.0/operations?recursion=1"

HTTPS=$(incus config get core.https_address || true)
if [ -n "$HTTPS" ]; then
    curl -sS -i -k "https://$HTTPS/1.0" >"$OUT/server-untrusted.http"
    curl -sS -i -k "https://$HTTPS/1.0/instances" >"$OUT/instances-untrusted.http"
    echo "recorded server-untrusted, instances-untrusted"
fi
# Token secrets (ours, and any other pending token listed) must not sit in the repository.
sed -i 's/"secret":"[0-9a-f]*"/"secret":"0000000000000000000000000000000000000000000000000000000000000000"/g' "$OUT"/*.http
echo "fixtures written to $OUT"
