#!/usr/bin/env bash
# Soak test of the EDR example (issue 4.6).
#
# Runs examples/edr/ against a redis-server of its own (loopback, a free
# port, no persistence) under constant load from tools/loadgen for
# SOAK_SECONDS, while every RESTART_EVERY seconds Redis is killed (SIGKILL),
# kept down for DOWN_SECONDS and restarted on the same port, and once per
# cycle, halfway between restarts, paused (SIGSTOP) for PAUSE_SECONDS.
# At the end it prints a summary and exits non-zero if any "must be 0"
# is violated:
#
#   - requests that got no answer (transport error or no complete response
#     within the load generator's 5 s timeout): must be 0, the server never
#     goes down;
#   - answers slower than SLOW_MS (250 ms: the limiter's 100 ms store
#     timeout plus a margin for everything else; see tools/loadgen):
#     must be 0, the timeout must cut off every store call;
#   - 5xx answers: must be 0 (telemetry never fails closed: it fails open
#     or falls back to in-process limits, and QUEUE_URL=off, so nothing in
#     the request path may answer 5xx);
#   - `panicked` in the server's log: must be 0, and the server must still
#     be alive and answer /healthz;
#   - keys in Redis database 1 without a TTL (PTTL -1), checked just before
#     each kill and at the end: must be 0.
#
# It also reports the server's resident memory (VmRSS) before the load, at
# every progress step and at the end, and the warnings and errors in the
# server's log, grouped by message.
#
# Usage: scripts/soak.sh        (10 minutes)
#        SOAK_SECONDS=60 RESTART_EVERY=20 scripts/soak.sh
#
# Settings (environment):
#   SOAK_SECONDS=600      how long the load runs
#   RESTART_EVERY=60      seconds between Redis kills
#   DOWN_SECONDS=5        how long Redis stays down after a kill
#   PAUSE_SECONDS=2       how long Redis stays paused (SIGSTOP) once a cycle
#   CONCURRENCY=32        requests in flight
#   SOAK_RATE=5000        requests per second at most (0: as fast as answered;
#                         a cap keeps the load constant and leaves CPU to spare
#                         on a small machine)
#   TOKENS=2000           agent tokens in the pool
#   FLOOD=0.1             share of requests from one flooding token
#   EVENT_COUNT=1-4       X-Event-Count range ("" to send none)
#   TELEMETRY_RATE=600/m  the telemetry limit per token
#   SLOW_MS=250           answers slower than this count as late
#   PROGRESS_SECONDS=10   a progress line (and an RSS sample) this often
#   QUIET_TAIL=10         no kill or pause in the last seconds of the load, so
#                         that the end checks see a Redis that has been serving
#   SOAK_DIR              where logs go (default: a new /tmp/soak.XXXXXX, kept)
#   SKIP_BUILD=1          use EDR_BIN and LOADGEN_BIN (default target/release/examples/edr
#                         and target/release/loadgen) instead of building
#
# The example's other settings (TELEMETRY_ALGORITHM, TELEMETRY_BLOCK_CACHE,
# TELEMETRY_FALLBACK_DIVISOR, POLICY_FILE, …) pass through from the
# environment; the summary lists those that are set. LISTEN_ADDR, REDIS_URL,
# QUEUE_URL, TELEMETRY_RATE and RUST_LOG are the script's.
#
# Everything runs on 127.0.0.1; the script touches no Redis but its own and
# stops every process it started when it exits.

set -euo pipefail

SOAK_SECONDS=${SOAK_SECONDS:-600}
RESTART_EVERY=${RESTART_EVERY:-60}
DOWN_SECONDS=${DOWN_SECONDS:-5}
PAUSE_SECONDS=${PAUSE_SECONDS:-2}
CONCURRENCY=${CONCURRENCY:-32}
SOAK_RATE=${SOAK_RATE:-5000}
TOKENS=${TOKENS:-2000}
FLOOD=${FLOOD:-0.1}
EVENT_COUNT=${EVENT_COUNT-1-4}
TELEMETRY_RATE=${TELEMETRY_RATE:-600/m}
SLOW_MS=${SLOW_MS:-250}
PROGRESS_SECONDS=${PROGRESS_SECONDS:-10}
# No kill or pause in the last seconds of the load.
QUIET_TAIL=${QUIET_TAIL:-10}

die() {
    echo "soak: $*" >&2
    exit 2
}

for name in SOAK_SECONDS RESTART_EVERY DOWN_SECONDS PAUSE_SECONDS CONCURRENCY \
    SOAK_RATE TOKENS SLOW_MS PROGRESS_SECONDS QUIET_TAIL; do
    [[ ${!name} =~ ^[0-9]+$ ]] || die "$name must be a whole number, not '${!name}'"
done
((SOAK_SECONDS >= 1)) || die "SOAK_SECONDS must be at least 1"
((RESTART_EVERY >= 2 * PAUSE_SECONDS + 2)) ||
    die "RESTART_EVERY ($RESTART_EVERY) must leave room for a pause of $PAUSE_SECONDS s"
for tool in redis-server redis-cli curl jq; do
    command -v "$tool" >/dev/null || die "$tool is required"
done

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
WORK=${SOAK_DIR:-$(mktemp -d /tmp/soak.XXXXXX)}
mkdir -p "$WORK/bin"
STOP="$WORK/stop"
rm -f "$STOP"

log() { printf 'soak: t=%4ds %s\n' "$((SECONDS - T0))" "$*"; }
T0=$SECONDS

# ------------------------------------------------------------------ build
# Copies, so that another build during the run changes nothing.
if [[ ${SKIP_BUILD:-} == 1 ]]; then
    cp "${EDR_BIN:-$ROOT/target/release/examples/edr}" "$WORK/bin/edr"
    cp "${LOADGEN_BIN:-$ROOT/target/release/loadgen}" "$WORK/bin/loadgen"
else
    echo "soak: building the EDR example and the load generator (release)…"
    (cd "$ROOT" && cargo build --release --quiet --example edr &&
        cargo build --release --quiet -p loadgen) ||
        die "build failed"
    cp "$ROOT/target/release/examples/edr" "$ROOT/target/release/loadgen" "$WORK/bin/"
fi
EDR="$WORK/bin/edr"
LOADGEN="$WORK/bin/loadgen"
T0=$SECONDS

# ------------------------------------------------------------------ processes
KEEPER_PID=""
SAMPLER_PID=""
EDR_PID=""
LOADGEN_PID=""

# shellcheck disable=SC2317  # called by the EXIT trap
cleanup() {
    local rc=$?
    touch "$STOP"
    for pid in "$LOADGEN_PID" "$SAMPLER_PID" "$KEEPER_PID"; do
        if [[ -n $pid ]]; then kill "$pid" 2>/dev/null || true; fi
    done
    if [[ -n $EDR_PID ]] && kill -0 "$EDR_PID" 2>/dev/null; then
        kill -TERM "$EDR_PID" 2>/dev/null || true
        for _ in $(seq 50); do kill -0 "$EDR_PID" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$EDR_PID" 2>/dev/null || true
    fi
    if [[ -s $WORK/redis.pid ]]; then
        local redis_pid
        redis_pid=$(<"$WORK/redis.pid")
        # Only if it is still our redis-server, not a recycled pid.
        if [[ $(cat "/proc/$redis_pid/comm" 2>/dev/null) == redis-server ]]; then
            kill -CONT "$redis_pid" 2>/dev/null || true
            kill -KILL "$redis_pid" 2>/dev/null || true
        fi
    fi
    wait 2>/dev/null || true
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

port_in_use() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

free_port() {
    local port
    for _ in $(seq 100); do
        port=$((20000 + RANDOM % 30000))
        port_in_use "$port" || { echo "$port"; return 0; }
    done
    die "no free port found"
}

redis_ping() { [[ $(redis-cli -p "$REDIS_PORT" ping 2>/dev/null) == PONG ]]; }

REDIS_PORT=$(free_port)
EDR_PORT=$(free_port)
while [[ $EDR_PORT == "$REDIS_PORT" ]]; do EDR_PORT=$(free_port); done

# Starts redis-server on REDIS_PORT (a child of the calling shell), records
# its pid in $WORK/redis.pid and waits up to 5 s for it to answer.
start_redis() {
    redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save "" --appendonly no \
        --daemonize no --protected-mode yes >>"$WORK/redis.log" 2>&1 &
    echo $! >"$WORK/redis.pid"
    for _ in $(seq 50); do
        redis_ping && return 0
        sleep 0.1
    done
    return 1
}

# Counts the keys in database 1 and those without a TTL (PTTL -1; -2, gone
# since the scan, is not counted), with one pipelined redis-cli for all the
# PTTLs; appends "label keys no_ttl" to ttl.log and the keys without a TTL,
# if any, to keys-without-ttl.txt.
ttl_check() {
    local keys="$WORK/keys.txt" total no_ttl
    redis-cli -p "$REDIS_PORT" -n 1 --scan >"$keys" || return 1
    total=$(wc -l <"$keys")
    # Quoted for redis-cli's parser, one command a line.
    sed 's/[\\"]/\\&/g; s/.*/PTTL "&"/' "$keys" |
        redis-cli -p "$REDIS_PORT" -n 1 >"$WORK/pttl.txt" || return 1
    [[ $(wc -l <"$WORK/pttl.txt") == "$total" ]] || return 1
    no_ttl=$(paste -d ' ' "$WORK/pttl.txt" "$keys" | awk '$1 == -1' |
        tee -a "$WORK/keys-without-ttl.txt" | wc -l)
    echo "$1|$total|$no_ttl" >>"$WORK/ttl.log"
}

# Sleeps until SECONDS reaches $1; fails at once if the run is over.
sleep_until() {
    while ((SECONDS < $1)); do
        [[ -e $STOP ]] && return 1
        sleep 0.2
    done
    [[ ! -e $STOP ]]
}

# Owns Redis for the whole run: starts it, then every RESTART_EVERY seconds
# kills and restarts it, pausing it once halfway through each cycle. Only the
# waits between events watch for the end of the run, so Redis is always
# running and never paused when this returns.
redis_keeper() {
    local start cycle=0 pid at
    local pauses=0 kills=0
    start_redis || { echo "soak: redis-server did not start on port $REDIS_PORT" >&2; return 1; }
    touch "$WORK/redis.ready"
    # The schedule starts with the load.
    while [[ ! -e $WORK/load.started ]]; do
        [[ -e $STOP ]] && return 0
        sleep 0.1
    done
    start=$SECONDS
    T0=$start
    while :; do
        cycle=$((cycle + 1))
        at=$((start + cycle * RESTART_EVERY - RESTART_EVERY / 2))
        # Nothing in the last seconds of the load, so that the checks at the
        # end see a Redis that has been serving for a while.
        ((at + PAUSE_SECONDS + QUIET_TAIL <= start + SOAK_SECONDS)) || break
        sleep_until "$at" || break
        pid=$(<"$WORK/redis.pid")
        kill -STOP "$pid"
        log "redis paused (SIGSTOP) for ${PAUSE_SECONDS}s" | tee -a "$WORK/chaos.log"
        sleep "$PAUSE_SECONDS"
        kill -CONT "$pid"
        pauses=$((pauses + 1))
        log "redis resumed (SIGCONT)" | tee -a "$WORK/chaos.log"
        at=$((start + cycle * RESTART_EVERY))
        ((at + DOWN_SECONDS + QUIET_TAIL <= start + SOAK_SECONDS)) || break
        sleep_until "$at" || break
        # The keys as the kill finds them: none may lack a TTL.
        ttl_check "before kill $((kills + 1))" || true
        kill -KILL "$pid"
        wait "$pid" 2>/dev/null || true
        kills=$((kills + 1))
        log "redis killed (SIGKILL), down for ${DOWN_SECONDS}s" | tee -a "$WORK/chaos.log"
        sleep "$DOWN_SECONDS"
        local tries=0
        until start_redis; do
            tries=$((tries + 1))
            ((tries < 5)) || { echo "soak: redis-server did not restart" >&2; return 1; }
            kill -KILL "$(<"$WORK/redis.pid")" 2>/dev/null || true
            sleep 1
        done
        log "redis restarted (pid $(<"$WORK/redis.pid"))" | tee -a "$WORK/chaos.log"
    done
    # Idle until the end of the run; Redis keeps running.
    while [[ ! -e $STOP ]]; do sleep 0.2; done
    echo "$kills $pauses" >"$WORK/chaos.counts"
}

rss_kb() { awk '/^VmRSS:/ { print $2 }' "/proc/$1/status" 2>/dev/null || echo 0; }

# One RSS sample of the server per progress step: "seconds kB".
rss_sampler() {
    local every=$((PROGRESS_SECONDS > 0 ? PROGRESS_SECONDS : 10))
    local next=$((SECONDS + every))
    while sleep_until "$next"; do
        echo "$((SECONDS - LOAD_T0)) $(rss_kb "$EDR_PID")" >>"$WORK/rss.log"
        next=$((next + every))
    done
}

# ------------------------------------------------------------------ start
echo "soak: logs in $WORK; redis on 127.0.0.1:$REDIS_PORT, edr on 127.0.0.1:$EDR_PORT"
: >"$WORK/chaos.log"
rm -f "$WORK/redis.ready" "$WORK/chaos.counts" "$WORK/load.started" \
    "$WORK/keys-without-ttl.txt"
: >"$WORK/ttl.log"
redis_keeper &
KEEPER_PID=$!
for _ in $(seq 100); do
    [[ -e $WORK/redis.ready ]] && break
    kill -0 "$KEEPER_PID" 2>/dev/null || die "redis-server did not start (see $WORK/redis.log)"
    sleep 0.1
done
[[ -e $WORK/redis.ready ]] || die "redis-server did not start (see $WORK/redis.log)"

LISTEN_ADDR="127.0.0.1:$EDR_PORT" \
    REDIS_URL="redis://127.0.0.1:$REDIS_PORT/1" \
    QUEUE_URL=off \
    TELEMETRY_RATE="$TELEMETRY_RATE" \
    RUST_LOG=info \
    RUST_BACKTRACE=1 \
    "$EDR" >"$WORK/edr.log" 2>&1 &
EDR_PID=$!
for _ in $(seq 100); do
    curl -fsS --max-time 1 "http://127.0.0.1:$EDR_PORT/healthz" >/dev/null 2>&1 && break
    kill -0 "$EDR_PID" 2>/dev/null || die "edr exited at startup: $(tail -n 5 "$WORK/edr.log")"
    sleep 0.1
done
curl -fsS --max-time 1 "http://127.0.0.1:$EDR_PORT/healthz" >/dev/null ||
    die "edr does not answer /healthz"
RSS_START=$(rss_kb "$EDR_PID")
log "edr up (pid $EDR_PID), VmRSS ${RSS_START} kB; load for ${SOAK_SECONDS}s"

# ------------------------------------------------------------------ load
LOAD_T0=$SECONDS
T0=$LOAD_T0
touch "$WORK/load.started"
: >"$WORK/rss.log"
rss_sampler &
SAMPLER_PID=$!

loadgen_args=(
    --url "http://127.0.0.1:$EDR_PORT/api/v1/telemetry/"
    --concurrency "$CONCURRENCY" --duration "$SOAK_SECONDS" --rate "$SOAK_RATE"
    --tokens "$TOKENS" --flood "$FLOOD" --slow-ms "$SLOW_MS"
    --progress "$PROGRESS_SECONDS" --json "$WORK/loadgen.json"
)
[[ -n $EVENT_COUNT ]] && loadgen_args+=(--event-count "$EVENT_COUNT")
"$LOADGEN" "${loadgen_args[@]}" >"$WORK/loadgen.out" 2> >(tee "$WORK/loadgen.err" >&2) &
LOADGEN_PID=$!
LOADGEN_RC=0
wait "$LOADGEN_PID" || LOADGEN_RC=$?
LOADGEN_PID=""
LOAD_SECONDS=$((SECONDS - LOAD_T0))

# ------------------------------------------------------------------ checks
touch "$STOP"
KEEPER_RC=0
wait "$KEEPER_PID" || KEEPER_RC=$?
KEEPER_PID=""
wait "$SAMPLER_PID" 2>/dev/null || true
SAMPLER_PID=""
read -r KILLS PAUSES 2>/dev/null <"$WORK/chaos.counts" || { KILLS="?"; PAUSES="?"; }

EDR_ALIVE=no
if kill -0 "$EDR_PID" 2>/dev/null; then
    EDR_ALIVE="yes, /healthz does not answer"
    curl -fsS --max-time 2 "http://127.0.0.1:$EDR_PORT/healthz" >/dev/null 2>&1 &&
        EDR_ALIVE=yes
fi
RSS_END=$(rss_kb "$EDR_PID")
RSS_MAX=$(awk -v m="$RSS_END" '$2 > m { m = $2 } END { print m }' "$WORK/rss.log")
RSS_1MIN=$(awk '$1 >= 60 { print $2; exit }' "$WORK/rss.log")

# Keys in database 1 without a TTL, at the end (and before each kill).
KEYS_TOTAL="?"
KEYS_NO_TTL="?"
if redis_ping && ttl_check "end"; then
    IFS='|' read -r _ KEYS_TOTAL KEYS_NO_TTL < <(tail -n 1 "$WORK/ttl.log")
    KEYS_DB0=$(redis-cli -p "$REDIS_PORT" -n 0 dbsize)
fi
# Every check: before each kill and at the end.
CHECKS=$(wc -l <"$WORK/ttl.log")
CHECKS_NO_TTL=$(awk -F'|' '{ n += $3 } END { print n + 0 }' "$WORK/ttl.log")
CHECKS_KEYS=$(awk -F'|' '{ printf "%s%s", (NR > 1 ? " " : ""), $2 }' "$WORK/ttl.log")

# The server's exit after SIGTERM: it should finish and exit 0.
EDR_EXIT="not running"
if kill -0 "$EDR_PID" 2>/dev/null; then
    kill -TERM "$EDR_PID"
    EDR_EXIT=0
    wait "$EDR_PID" || EDR_EXIT=$?
fi
EDR_PID=""

PANICS=$(grep -c 'panicked' "$WORK/edr.log" || true)
LOADGEN_PANICS=$(grep -c 'panicked' "$WORK/loadgen.err" || true)
WARNINGS=$(grep -c ' WARN ' "$WORK/edr.log" || true)
ERRORS=$(grep -c ' ERROR ' "$WORK/edr.log" || true)
FAILING=$(grep -c 'rate-limit store failing' "$WORK/edr.log" || true)
RECOVERED=$(grep -c 'rate-limit store answers again' "$WORK/edr.log" || true)
# Messages without the timestamp and the fields: "LEVEL target: message".
log_messages() {
    grep -E ' (WARN|ERROR) ' "$WORK/edr.log" |
        sed -E 's/^[^ ]+ +//; s/ [A-Za-z_.]+=.*$//' |
        sort | uniq -c | sort -rn | head -n 10
}

FAIL_MODES=$(grep -oE 'fail_mode=[A-Za-z]+' "$WORK/edr.log" | sort -u | cut -d= -f2 | paste -sd, - || true)
EDR_ENV=$(env | grep -E '^(TELEMETRY_(ALGORITHM|BURST|BLOCK_CACHE|FALLBACK_DIVISOR)|LOGIN_RATE|DASHBOARD_RATE|POLICY_FILE|RATE_LIMIT|TRUSTED_PROXIES)=' |
    sort | paste -sd' ' - || true)

J="$WORK/loadgen.json"
if [[ $LOADGEN_RC -ne 0 || ! -s $J ]]; then
    SENT="?" STATUS="?" NO_ANSWER="?" ERRKINDS="" SLOW="?" SERVER_ERRORS="?" LATENCY="?"
else
    SENT=$(jq -r '.sent' "$J")
    STATUS=$(jq -r '[.status | to_entries[] | "\(.key)=\(.value)"] | join(" ")' "$J")
    NO_ANSWER=$(jq -r '.no_answer' "$J")
    ERRKINDS=$(jq -r '[.errors | to_entries[] | "\(.key)=\(.value)"] | join(" ")' "$J")
    SLOW=$(jq -r '.slow' "$J")
    SERVER_ERRORS=$(jq -r '[.status | to_entries[] | select(.key >= "500") | .value] | add // 0' "$J")
    LATENCY=$(jq -r '.latency_ms | "p50 \(.p50) ms, p99 \(.p99) ms, p99.9 \(.p999) ms, max \(.max) ms"' "$J")
fi

violations=()
[[ $LOADGEN_RC == 0 ]] || violations+=("loadgen exited with $LOADGEN_RC")
[[ $KEEPER_RC == 0 ]] || violations+=("redis keeper failed ($KEEPER_RC)")
[[ $NO_ANSWER == 0 ]] || violations+=("requests without an answer: $NO_ANSWER")
[[ $SLOW == 0 ]] || violations+=("answers after ${SLOW_MS} ms: $SLOW")
[[ $SERVER_ERRORS == 0 ]] || violations+=("5xx answers: $SERVER_ERRORS")
[[ $PANICS == 0 && $LOADGEN_PANICS == 0 ]] || violations+=("panics: $PANICS in edr, $LOADGEN_PANICS in loadgen")
[[ $EDR_ALIVE == yes ]] || violations+=("server alive at end: $EDR_ALIVE")
[[ $EDR_EXIT == 0 ]] || violations+=("server exit after SIGTERM: $EDR_EXIT")
[[ $KEYS_NO_TTL == 0 ]] || violations+=("keys without TTL at the end: $KEYS_NO_TTL")
[[ $CHECKS_NO_TTL == 0 ]] || violations+=("keys without TTL over all checks: $CHECKS_NO_TTL")

must() { if [[ $1 == "$2" ]]; then echo "(must be $2: ok)"; else echo "(must be $2: VIOLATED)"; fi; }

echo
cat "$WORK/loadgen.out"
cat <<EOF

==================== soak summary ====================
load:                   ${LOAD_SECONDS} s, ${CONCURRENCY} in flight, at most ${SOAK_RATE} req/s, ${TOKENS} tokens + 1 flooding (${FLOOD} of requests), X-Event-Count ${EVENT_COUNT:-none}
server:                 examples/edr, TELEMETRY_RATE=${TELEMETRY_RATE}, QUEUE_URL=off, counters in Redis db 1${EDR_ENV:+, ${EDR_ENV}}; fail mode in log: ${FAIL_MODES:-none logged}
redis chaos:            ${KILLS} × SIGKILL (down ${DOWN_SECONDS} s, restarted on port ${REDIS_PORT}), ${PAUSES} × SIGSTOP for ${PAUSE_SECONDS} s
requests sent:          ${SENT}
answered per status:    ${STATUS}
no answer:              ${NO_ANSWER}${ERRKINDS:+ (${ERRKINDS})} $(must "$NO_ANSWER" 0)
answered after ${SLOW_MS} ms: ${SLOW} $(must "$SLOW" 0)
5xx answers:            ${SERVER_ERRORS} $(must "$SERVER_ERRORS" 0)
latency:                ${LATENCY}
panics (server log):    ${PANICS} $(must "$PANICS" 0)
server alive at end:    ${EDR_ALIVE}; exit after SIGTERM: ${EDR_EXIT}
server VmRSS:           start ${RSS_START} kB, after 1 min ${RSS_1MIN:-?} kB, end ${RSS_END} kB, max ${RSS_MAX} kB
redis db 1 keys at end: ${KEYS_TOTAL}, without TTL: ${KEYS_NO_TTL} $(must "$KEYS_NO_TTL" 0)  (db 0: ${KEYS_DB0:-?} keys)
keys without TTL:       ${CHECKS_NO_TTL} over ${CHECKS} checks (before each kill and at the end; keys seen: ${CHECKS_KEYS}) $(must "$CHECKS_NO_TTL" 0)
server log:             ${WARNINGS} WARN, ${ERRORS} ERROR lines; 'store failing' ${FAILING}, 'answers again' ${RECOVERED} (Redis outages caused: $((${KILLS/\?/0} + ${PAUSES/\?/0})))
EOF
if ((WARNINGS + ERRORS > 0)); then
    echo "server WARN/ERROR messages (count, level target: message):"
    log_messages | sed 's/^/  /'
fi
echo "RSS samples (s kB):      $(awk '{ printf "%s%s:%s", (NR > 1 ? " " : ""), $1, $2 }' "$WORK/rss.log")"
echo "logs:                   $WORK"
if ((${#violations[@]} == 0)); then
    echo "result:                 PASS"
    echo "======================================================"
    exit 0
fi
echo "result:                 FAIL"
printf '  - %s\n' "${violations[@]}"
echo "======================================================"
exit 1
