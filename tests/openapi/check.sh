#!/usr/bin/env bash
# Checks docs/openapi.yaml against the live daemon with schemathesis.
#
#   tests/openapi/check.sh [ROOMHOOK_BINARY]     (default target/debug/roomhook)
#
# Builds nothing. Starts the given binary on a temporary config (admin listener on
# 127.0.0.1 with a token, webhooks to an HTTPS receiver behind a private CA and one to a
# closed port, one MQTT source on a broker stub: tests/openapi/peers.py), waits for
# /readyz, runs schemathesis (tests/openapi/requirements.txt; `schemathesis` on PATH, or
# $SCHEMATHESIS) with a bounded number of examples ($MAX_EXAMPLES per operation, 30) and
# the checks: no 5xx, every status, content type and body as documented, and what the
# document calls invalid refused. Then stops the daemon (it must exit cleanly, without a
# panic) and exits with schemathesis's status. The seed is printed; SEED=N repeats a run.
# Needs python3, openssl and curl.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/../.." && pwd)
binary=${1:-target/debug/roomhook}
schemathesis=${SCHEMATHESIS:-schemathesis}
max_examples=${MAX_EXAMPLES:-30}

[[ -x $binary ]] || { echo "check.sh: $binary is not an executable (build it first: cargo build)" >&2; exit 2; }
binary=$(cd "$(dirname "$binary")" && pwd)/$(basename "$binary")
command -v "$schemathesis" >/dev/null || { echo "check.sh: $schemathesis not found (python3 -m venv /tmp/st && /tmp/st/bin/pip install -r tests/openapi/requirements.txt; SCHEMATHESIS=/tmp/st/bin/schemathesis)" >&2; exit 2; }

work=$(mktemp -d "${TMPDIR:-/tmp}/roomhook-openapi.XXXXXX")
peers_pid=
daemon_pid=
cleanup() {
    local pid
    # (A clean stop is checked at the end; here only nothing may be left running.)
    for pid in $daemon_pid $peers_pid; do
        kill -KILL "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
    if [[ ${KEEP_WORK:-} == 1 ]]; then echo "check.sh: left $work" >&2; else rm -rf "$work"; fi
}
trap cleanup EXIT

# Waits up to $1 seconds for the command that follows to succeed.
wait_for() {
    local deadline=$((SECONDS + $1))
    shift
    until "$@"; do
        if ((SECONDS >= deadline)); then return 1; fi
        sleep 0.2
    done
}

# A private CA and a certificate for 127.0.0.1 (the daemon refuses self-signed receivers).
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 \
    -subj "/CN=roomhook openapi check CA" -keyout "$work/ca.key" -out "$work/ca.pem" \
    -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" 2>/dev/null
openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
    -subj "/CN=127.0.0.1" -keyout "$work/receiver.key" -out "$work/receiver.csr" 2>/dev/null
printf 'subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\nbasicConstraints=CA:FALSE\n' >"$work/receiver.ext"
openssl x509 -req -in "$work/receiver.csr" -CA "$work/ca.pem" -CAkey "$work/ca.key" -CAcreateserial \
    -days 2 -extfile "$work/receiver.ext" -out "$work/receiver.pem" 2>/dev/null

python3 "$here/peers.py" "$work/receiver.pem" "$work/receiver.key" "$work/ports" &
peers_pid=$!
wait_for 10 test -s "$work/ports" || { echo "check.sh: the receiver and broker stub did not start" >&2; exit 1; }
read -r receiver_port mqtt_port <"$work/ports"

free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
admin_port=$(free_port)
closed_port=$(free_port)
token=$(od -An -N16 -tx1 /dev/urandom | tr -d ' \n')
# Every shape the answers can take shows up during the run: dead letters (the receiver
# refuses device dead-1), a decode error (the broker stub sends one message that is not
# JSON), drops and a last error (`stuck`: nothing listens at its URL, events expire after
# 1 s), and a kept queue (`gone` is taken out of the file and the daemon reloaded once it
# holds events).
config() {
    cat <<EOF
[gateway]
data_dir = "data"
org_id = "openapi-check"

[admin]
listen = "127.0.0.1:$admin_port"
token = "$token"

[[sources.mqtt]]
name = "sensors"
url = "mqtt://127.0.0.1:$mqtt_port"

[[sources.mqtt.subscriptions]]
topic = "openapi/+/status"
device = "{1}"
[sources.mqtt.subscriptions.fields]
"/people" = "RoomAnalytics.PeopleCount.Current"

[[webhooks]]
name = "receiver"
url = "https://127.0.0.1:$receiver_port/hook"
authorization = "Bearer receiver-token"
ca_file = "ca.pem"
devices = ["*"]
statuses = ["RoomAnalytics.PeopleCount.Current"]
batch_max_messages = 1
drain_start_jitter = "0s"

# Two more for the edits to work on (an edit may rename or break one).
[[webhooks]]
name = "spare-a"
url = "https://127.0.0.1:$receiver_port/spare-a"
auth = "none"
ca_file = "ca.pem"
statuses = ["RoomAnalytics.PeopleCount.Current"]

[[webhooks]]
name = "spare-b"
url = "https://127.0.0.1:$receiver_port/spare-b"
auth = "none"
ca_file = "ca.pem"
statuses = ["RoomAnalytics.PeopleCount.Current"]

# Disabled; nothing listens at its URL: a test or a verified enable answers 422.
[[webhooks]]
name = "unreachable"
url = "https://127.0.0.1:$closed_port/hook"
enabled = false
auth = "none"
statuses = ["RoomAnalytics.PeopleCount.Current"]

[[webhooks]]
name = "stuck"
url = "https://127.0.0.1:$closed_port/stuck"
auth = "none"
statuses = ["RoomAnalytics.PeopleCount.Current"]
max_queue_age = "1s"
retry_base = "100ms"
retry_max = "500ms"
drain_start_jitter = "0s"
EOF
    if [[ $1 == with-gone ]]; then
        cat <<EOF

[[webhooks]]
name = "gone"
url = "https://127.0.0.1:$closed_port/gone"
auth = "none"
statuses = ["RoomAnalytics.PeopleCount.Current"]
EOF
    fi
}
config with-gone >"$work/roomhook.toml"

"$binary" --log info run -c "$work/roomhook.toml" 2>"$work/roomhook.log" &
daemon_pid=$!
base=http://127.0.0.1:$admin_port
ready() {
    kill -0 "$daemon_pid" 2>/dev/null || { echo "check.sh: roomhook exited:" >&2; cat "$work/roomhook.log" >&2; exit 1; }
    [[ $(curl -s -m 5 -o /dev/null -w '%{http_code}' "$base/readyz") == 200 ]]
}
if ! wait_for 20 ready; then
    echo "check.sh: roomhook was not ready within 20 s:" >&2
    curl -s -m 5 "$base/readyz" >&2 || true
    cat "$work/roomhook.log" >&2
    exit 1
fi
# The broker stub's messages reached the receiver (one of them as a dead letter).
dead_letter() {
    curl -s -m 5 -H "Authorization: Bearer $token" "$base/v1/webhooks/receiver/dead-letters" | grep -q '"seq"'
}
wait_for 20 dead_letter || { echo "check.sh: no dead letter within 20 s" >&2; cat "$work/roomhook.log" >&2; exit 1; }
status_has() { curl -s -m 5 -H "Authorization: Bearer $token" "$base/v1/status" | grep -q "$1"; }
wait_for 20 status_has '"gone","queue":{"bytes":[0-9]*,"dead_letters":0,"dropped":{},"events":[1-9]' \
    || { echo "check.sh: webhook gone queued nothing within 20 s" >&2; exit 1; }
config without-gone >"$work/roomhook.toml"
curl -s -m 5 -f -o /dev/null -X POST -H "Authorization: Bearer $token" "$base/v1/reload"
checks=('"orphans":\[{"events":[1-9]' '"expired":[1-9]' '"decode_errors":[1-9]')
for c in "${checks[@]}"; do
    wait_for 20 status_has "$c" || { echo "check.sh: no $c in /v1/status within 20 s" >&2; exit 1; }
done

echo "check.sh: roomhook $("$binary" --version | head -1) ready on $base; schemathesis $("$schemathesis" --version | awk '{print $NF}'), $max_examples examples per operation"
status=0
started=$SECONDS
(cd "$work" && "$schemathesis" --config-file "$here/schemathesis.toml" run "$root/docs/openapi.yaml" \
    --url "$base" \
    -H "Authorization: Bearer $token" \
    --checks not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance,response_headers_conformance,negative_data_rejection,ignored_auth \
    --max-examples "$max_examples" \
    --seed "${SEED:-$RANDOM}" \
    --workers 2 \
    --request-timeout 15 \
    --generation-with-security-parameters false \
    --generation-database none \
    --no-color \
    ${SCHEMATHESIS_ARGS:-}) || status=$?
echo "check.sh: schemathesis took $((SECONDS - started)) s and exited $status"

# The 429 of a guessing address, which schemathesis never provokes (every right token
# clears an address's count): five wrong tokens, then the right one is refused too, and its
# answer (status, Retry-After, body) is checked against the document.
code() { curl -s -m 5 -o /dev/null -w '%{http_code}' -H "Authorization: Bearer $1" "$base/v1/status"; }
for _ in 1 2 3 4 5; do
    [[ $(code wrong-token-0123456789) == 401 ]] || { echo "check.sh: a wrong token was not answered 401" >&2; status=1; }
done
[[ $(code "$token") == 429 ]] || { echo "check.sh: the right token after 5 wrong ones was not answered 429" >&2; status=1; }
locked=0
(cd "$work" && "$schemathesis" run "$root/docs/openapi.yaml" \
    --url "$base" \
    -H "Authorization: Bearer $token" \
    --checks status_code_conformance,content_type_conformance,response_schema_conformance,response_headers_conformance \
    --include-path /v1/status --phases fuzzing --max-examples 3 \
    --generation-database none \
    --no-color >"$work/locked.out" 2>&1) || locked=$?
# Still locked out afterwards: the run saw 429s, not 200s of a lock that had run out.
[[ $(code "$token") == 429 ]] || { echo "check.sh: the lockout ended during the 429 run: it checked nothing" >&2; status=1; }
if ((locked != 0)); then
    echo "check.sh: the 429 answer does not match the document:" >&2
    cat "$work/locked.out" >&2
    status=1
fi

# The daemon survived the run and stops cleanly on SIGTERM.
if ! kill -0 "$daemon_pid" 2>/dev/null; then
    echo "check.sh: roomhook died during the run:" >&2
    cat "$work/roomhook.log" >&2
    exit 1
fi
kill -TERM "$daemon_pid"
# At most 30 s to stop; then it is killed (and the exit status says so). The watchdog
# takes its sleep with it when it is stopped.
(sleep 30 & nap=$!; trap 'kill $nap; exit 0' TERM; wait $nap; kill -KILL "$daemon_pid" 2>/dev/null) &
watchdog=$!
stopped=0
wait "$daemon_pid" || stopped=$?
daemon_pid=
kill "$watchdog" 2>/dev/null || true
wait "$watchdog" 2>/dev/null || true
if grep -q 'panicked' "$work/roomhook.log"; then
    echo "check.sh: roomhook panicked during the run:" >&2
    grep -A3 'panicked' "$work/roomhook.log" >&2
    exit 1
fi
if ((stopped != 0)); then
    echo "check.sh: roomhook exited $stopped on SIGTERM:" >&2
    tail -20 "$work/roomhook.log" >&2
    exit 1
fi
exit "$status"
