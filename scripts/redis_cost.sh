#!/usr/bin/env bash
# What one rate-limit decision costs Redis's CPU (issue 11).
#
# Every decision is one EVALSHA of the algorithm's script, and Redis runs
# scripts on its one main thread: the Redis CPU time per call bounds how many
# decisions a whole fleet of app servers can make on one Redis core
# (1 s / usec_per_call). Issue 11 asks that the fixed window cost at most
# 1.2x, and the sliding window and GCRA at most 1.5x, a minimal fixed-window
# script (INCRBY, PEXPIRE on the first hit, else PTTL), the least any
# fixed-window limiter can do in one round trip.
#
# Against a redis-server of its own (loopback, a free port, no persistence,
# killed on exit) it loads the three scripts of Redis's clock exactly as the
# crate sends them (src/algorithm/<algorithm>.lua; see Script::source,
# Script::args and RedisStore::evalsha) and the minimal baseline, then
# for each script and for 1, 2 and 4 limits (the baseline: 1) runs
#
#   redis-benchmark -c CLIENTS -n REQUESTS -r KEYS_SPACE \
#       EVALSHA <sha> <limits> <one key per limit> [-1] [cost] <two numbers per limit>...
#
# with a limit of 1000000000 per window, so that every call is an allowed
# decision (the path that writes), and for 1 limit once more with a limit of
# 1 per 60000 ms, so that all but each key's first call are denials. Before
# each run the database is flushed and the stats reset (CONFIG RESETSTAT);
# after it, INFO commandstats gives usec_per_call of cmdstat_evalsha: the
# time Redis spent executing the calls, not the network or the client's.
# It prints a Markdown table of those and their ratio to the baseline.
#
# Keys follow the crate's layout, rl:p:{<client>}:<window s>:fixed|sliding|gcra
# (and the sliding window's <counter>:prev).
# redis-benchmark replaces every __rand_int__ with its own random value, even
# within one argument (checked at start-up and reported), so with several
# limits each key of a call belongs to a different random client: in a
# single Redis hash tags mean nothing, and each limit's keys still spread over
# KEYS_SPACE clients with the same hits per key, so the cost per call is that
# of one client's keys; such a call could not run on a Redis Cluster (keys in
# different slots), which this script never uses.
#
# Usage: scripts/redis_cost.sh
#
# Environment:
#   REQUESTS         calls per run (300000)
#   CLIENTS          redis-benchmark connections (50)
#   KEYS_SPACE       random clients, redis-benchmark -r (10000)
#   REDIS_SERVER     redis-server binary (redis-server)
#   REDIS_BENCHMARK  redis-benchmark binary (redis-benchmark)
#   REDIS_CLI        redis-cli binary (redis-cli)
#   PIN              1 (default, with 2 cores or more and taskset): Redis on
#                    CPU 0, redis-benchmark on CPU 1, so they do not take
#                    turns on one core; 0: no pinning
#   INSTRUCTIONS     1: also count the instructions Redis executes per call
#                    (valgrind's callgrind), a figure that, unlike time,
#                    does not move with the machine's load: for each script
#                    (1 limit, allowed) a redis-server of its own under
#                    callgrind takes IR_CALLS and then 3 × IR_CALLS calls
#                    over 100 clients; the difference of the two totals over
#                    the difference of calls is one steady-state call's
#                    instructions (start-up, loading and each client's first
#                    call cancel out). 0 (default): time only
#   IR_CALLS         calls of the shorter callgrind run (3000)
#
# 13 runs; at REQUESTS=300000 a little over a minute on 2 cores (with
# INSTRUCTIONS=1, 8 callgrind runs more: about two minutes).
set -euo pipefail

REQUESTS=${REQUESTS:-300000}
CLIENTS=${CLIENTS:-50}
KEYS_SPACE=${KEYS_SPACE:-10000}
REDIS_SERVER=${REDIS_SERVER:-redis-server}
REDIS_BENCHMARK=${REDIS_BENCHMARK:-redis-benchmark}
REDIS_CLI=${REDIS_CLI:-redis-cli}
PIN=${PIN:-1}
INSTRUCTIONS=${INSTRUCTIONS:-0}
IR_CALLS=${IR_CALLS:-3000}

die() { echo "redis_cost: $*" >&2; exit 1; }

for bin in "$REDIS_SERVER" "$REDIS_BENCHMARK" "$REDIS_CLI"; do
    command -v "$bin" >/dev/null || die "$bin not found (Debian: apt-get install redis-server redis-tools)"
done
for n in "$REQUESTS" "$CLIENTS" "$KEYS_SPACE"; do
    [[ $n =~ ^[1-9][0-9]*$ ]] || die "REQUESTS, CLIENTS and KEYS_SPACE must be positive integers"
done

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
algorithms=$root/src/algorithm
for f in fixed_window sliding_window gcra; do
    [[ -f $algorithms/$f.lua ]] || die "$algorithms/$f.lua not found"
done

server_pin=() bench_pin=()
if [[ $PIN == 1 ]] && command -v taskset >/dev/null && (($(nproc) >= 2)); then
    server_pin=(taskset -c 0) bench_pin=(taskset -c 1)
fi

work=$(mktemp -d)
redis_pid=
# shellcheck disable=SC2317  # called by the EXIT trap
cleanup() {
    if [[ -n $redis_pid ]]; then
        kill "$redis_pid" 2>/dev/null || true
        wait "$redis_pid" 2>/dev/null || true
    fi
    rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

port_in_use() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
free_port() {
    local port i
    for i in $(seq 50); do
        # Below the kernel's ephemeral range (32768 and up), where outgoing
        # connections take ports without listening on them.
        port=$((20000 + RANDOM % 12000))
        port_in_use "$port" || { echo "$port"; return 0; }
    done
    die "no free port found"
}

port=$(free_port)
# The server runs in the foreground of a background job, so $! is its pid.
"${server_pin[@]}" "$REDIS_SERVER" --port "$port" --bind 127.0.0.1 --save "" --appendonly no \
    --daemonize no --dir "$work" --logfile "$work/redis.log" &
redis_pid=$!

cli() { "$REDIS_CLI" -p "$port" "$@"; }
for _ in $(seq 100); do
    [[ $(cli PING 2>/dev/null) == PONG ]] && break
    kill -0 "$redis_pid" 2>/dev/null || die "redis-server exited: $(tail -5 "$work/redis.log")"
    sleep 0.05
done
[[ $(cli PING 2>/dev/null) == PONG ]] || die "redis-server did not answer on port $port"
version=$(cli INFO server | tr -d '\r' | sed -n 's/^redis_version://p')

# How redis-benchmark fills __rand_int__: the same value for every
# occurrence in one command, or each its own.
cli FLUSHALL >/dev/null
"${bench_pin[@]}" "$REDIS_BENCHMARK" -p "$port" -c 1 -n 20 -r 1000000 \
    SET 'probe:{__rand_int__}:__rand_int__' v >/dev/null 2>&1 ||
    die "redis-benchmark failed against port $port"
same=0 differ=0
while IFS= read -r key; do
    [[ $key =~ ^probe:\{([0-9]+)\}:([0-9]+)$ ]] || continue
    if [[ ${BASH_REMATCH[1]} == "${BASH_REMATCH[2]}" ]]; then same=$((same + 1)); else differ=$((differ + 1)); fi
done < <(cli --scan --pattern 'probe:*')
((same + differ > 0)) || die "redis-benchmark did not substitute __rand_int__"
if ((differ == 0)); then
    rand_note="redis-benchmark gives every __rand_int__ in one command the same value: the keys of one call belong to one client"
else
    rand_note="redis-benchmark gives each __rand_int__ in one command its own random value ($differ of $((same + differ)) probe keys had two different values): with several limits, each key of a call is a different random client's (see the top of the script)"
fi

for a in fixed_window sliding_window gcra; do cp "$algorithms/$a.lua" "$work/$a.lua"; done
baseline_src="local c = redis.call('INCRBY', KEYS[1], ARGV[1]) local t if c == tonumber(ARGV[1]) then redis.call('PEXPIRE', KEYS[1], ARGV[2]) t = tonumber(ARGV[2]) else t = redis.call('PTTL', KEYS[1]) end return {c, t}"

load() { cli -x SCRIPT LOAD <"$1" | tr -d '\r'; }
declare -A sha
for a in fixed_window sliding_window gcra; do sha[$a]=$(load "$work/$a.lua"); done
# The baseline as examples/evalsha_baseline.rs runs it: the file it includes,
# whose lines joined are baseline_src (the report's one-line form).
baseline_file=$root/examples/minimal_baseline.lua
[[ $(paste -sd ' ' "$baseline_file") == "$baseline_src" ]] ||
    die "$baseline_file differs from baseline_src: keep the two identical"
sha[baseline]=$(load "$baseline_file")
for a in baseline fixed_window sliding_window gcra; do
    [[ ${sha[$a]} =~ ^[0-9a-f]{40}$ ]] || die "SCRIPT LOAD of $a answered: ${sha[$a]}"
done

windows_s=(60 600 3600 86400)
suffix() { case $1 in sliding_window) echo ":sliding" ;; gcra) echo ":gcra" ;; *) echo ":fixed" ;; esac; }

# The EVALSHA arguments after the sha for `algorithm` with `n` limits of
# `limit` per window, `client` in the keys' hash tag.
evalsha_args() {
    local algorithm=$1 n=$2 limit=$3 client=$4 i args
    if [[ $algorithm == baseline ]]; then
        echo "1 rl:p:{$client}:60 1 60000"
        return
    fi
    # As RedisStore::evalsha on Redis's clock: the sliding window names two
    # keys per limit, its counter and the previous count (<counter>:prev).
    local per=1 key
    [[ $algorithm == sliding_window ]] && per=2
    args="$((per * n))"
    for ((i = 0; i < n; i++)); do
        key="rl:p:{$client}:${windows_s[i]}$(suffix "$algorithm")"
        args+=" $key"
        ((per == 2)) && args+=" $key:prev"
    done
    # As Script::args on Redis's clock: no script reads a clock. The fixed
    # and sliding windows take the cost, then per limit the limit and the
    # window (ms), or for the sliding window the window and their product;
    # GCRA takes no cost but, per limit, the cost times the emission
    # interval and the tolerance (burst = limit), in µs.
    case $algorithm in
    fixed_window | sliding_window) args+=" 1" ;;
    esac
    for ((i = 0; i < n; i++)); do
        local window_ms=$((windows_s[i] * 1000))
        if [[ $algorithm == gcra ]]; then
            local interval=$(((window_ms * 1000 + limit - 1) / limit))
            args+=" $interval $((interval * limit))"
        elif [[ $algorithm == sliding_window ]]; then
            args+=" $window_ms $((limit * window_ms))"
        else
            args+=" $limit $window_ms"
        fi
    done
    echo "$args"
}

# Sanity: each configuration answers an allowed decision on its first call,
# and the denied one a denial on its second.
check_first() {
    local algorithm=$1 n=$2 limit=$3 reply
    # shellcheck disable=SC2046  # the arguments are words by design
    reply=$(cli EVALSHA "${sha[$algorithm]}" $(evalsha_args "$algorithm" "$n" "$limit" check) | tr -d '\r')
    case $algorithm in
    fixed_window)
        # Per limit count × (window + 1) + ms left: admitted while every
        # count <= limit.
        echo "$reply" | awk -v limit="$limit" -v windows="${windows_s[*]}" '
            BEGIN { split(windows, w, " ") }
            { span = w[NR] * 1000 + 1; if (int($1 / span) > limit) over = 1 }
            END { print over ? 0 : 1 }' ;;
    sliding_window)
        # Per limit the count with this cost, the previous count and the ms
        # left: admitted while every p × left + c × window <= limit × window.
        echo "$reply" | awk -v limit="$limit" -v windows="${windows_s[*]}" '
            BEGIN { split(windows, w, " ") }
            { v[NR] = $1 }
            END {
                for (i = 1; 3 * i <= NR; i++) {
                    ms = w[i] * 1000
                    if (v[3 * i - 1] * v[3 * i] + v[3 * i - 2] * ms > limit * ms) over = 1
                }
                print over ? 0 : 1
            }' ;;
    gcra)
        # Per limit how far the TAT lay ahead, negative for a denial.
        echo "$reply" | awk '$1 < 0 { over = 1 } END { print over ? 0 : 1 }' ;;
    *)
        # The baseline: the count, 1 on a key's first call.
        echo "$reply" | head -1 ;;
    esac
}
cli FLUSHALL >/dev/null
for a in fixed_window sliding_window gcra; do
    for n in 1 2 4; do
        [[ $(check_first "$a" "$n" 1000000000) == 1 ]] || die "$a with $n limits did not allow its first call"
        cli FLUSHALL >/dev/null
    done
    check_first "$a" 1 1 >/dev/null
    [[ $(check_first "$a" 1 1) == 0 ]] || die "$a with a limit of 1 did not deny its second call"
    cli FLUSHALL >/dev/null
done
[[ $(check_first baseline 1 0) == 1 ]] || die "the baseline script did not count its first call"
cli FLUSHALL >/dev/null

# One run: prints "usec_per_call calls rps".
bench() {
    local algorithm=$1 n=$2 limit=$3 stats usec calls failed rps out
    cli FLUSHALL >/dev/null
    cli CONFIG RESETSTAT >/dev/null
    # shellcheck disable=SC2046  # the arguments are words by design
    out=$("${bench_pin[@]}" "$REDIS_BENCHMARK" -p "$port" -c "$CLIENTS" -n "$REQUESTS" -r "$KEYS_SPACE" -q \
        EVALSHA "${sha[$algorithm]}" $(evalsha_args "$algorithm" "$n" "$limit" __rand_int__) 2>&1) ||
        die "redis-benchmark failed: $out"
    rps=$(echo "$out" | tr '\r' '\n' | sed -n 's/.*: \([0-9.]*\) requests per second.*/\1/p' | tail -1)
    stats=$(cli INFO commandstats | tr -d '\r' | grep '^cmdstat_evalsha:') ||
        die "no cmdstat_evalsha after the $algorithm run"
    usec=$(echo "$stats" | sed -n 's/.*usec_per_call=\([0-9.]*\).*/\1/p')
    calls=$(echo "$stats" | sed -n 's/.*[:,]calls=\([0-9]*\).*/\1/p')
    failed=$(echo "$stats" | sed -n 's/.*failed_calls=\([0-9]*\).*/\1/p')
    [[ ${failed:-0} == 0 ]] || die "$algorithm: $failed of $calls calls failed ($stats)"
    [[ $calls == "$REQUESTS" ]] || die "$algorithm: Redis counted $calls calls, not $REQUESTS ($stats)"
    echo "$usec $calls ${rps:-?}"
}

ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", a / b }'; }
verdict() { awk -v r="$1" -v t="$2" 'BEGIN { print (r <= t ? "yes" : "NO") }'; }

echo "redis_cost: redis-server $version on port $port; $REQUESTS calls per run, $CLIENTS clients, $KEYS_SPACE random clients${server_pin:+; Redis on CPU 0, redis-benchmark on CPU 1}" >&2

res=$(bench baseline 1 0)
read -r base_usec _ base_rps <<<"$res"
rows=("| minimal baseline (INCRBY + PEXPIRE/PTTL) | 1 | allowed | $base_usec | 1.00 | $base_rps | |")
for a in fixed_window sliding_window gcra; do
    case $a in fixed_window) target=1.2 ;; *) target=1.5 ;; esac
    for n in 1 2 4; do
        echo "redis_cost: $a, $n limit(s), allowed..." >&2
        res=$(bench "$a" "$n" 1000000000)
        read -r usec _ rps <<<"$res"
        r=$(ratio "$usec" "$base_usec")
        t=""
        [[ $n == 1 ]] && t="≤ ${target}×: $(verdict "$r" "$target")"
        rows+=("| $a | $n | allowed | $usec | $r | $rps |${t:+ $t} |")
    done
    echo "redis_cost: $a, 1 limit, denied..." >&2
    res=$(bench "$a" 1 1)
    read -r usec _ rps <<<"$res"
    rows+=("| $a | 1 | denied | $usec | $(ratio "$usec" "$base_usec") | $rps | |")
done

# Instructions Redis executes for `calls` calls of `algorithm` (1 limit,
# allowed), on a callgrind-run server of its own: the process's total.
instructions() {
    local algorithm=$1 calls=$2 ir_port out sha total pid
    ir_port=$(free_port)
    out=$work/callgrind.$algorithm.$calls
    valgrind --tool=callgrind --callgrind-out-file="$out" "$REDIS_SERVER" --port "$ir_port" \
        --bind 127.0.0.1 --save "" --appendonly no --daemonize no --dir "$work" \
        --logfile "$work/callgrind-redis.log" >/dev/null 2>&1 &
    pid=$!
    for _ in $(seq 200); do
        [[ $("$REDIS_CLI" -p "$ir_port" PING 2>/dev/null) == PONG ]] && break
        sleep 0.1
    done
    sha=$("$REDIS_CLI" -p "$ir_port" -x SCRIPT LOAD <"$work/$algorithm.lua" | tr -d '\r')
    # shellcheck disable=SC2046  # the arguments are words by design
    "$REDIS_BENCHMARK" -p "$ir_port" -c 20 -n "$calls" -r 100 -q \
        EVALSHA "$sha" $(evalsha_args "$algorithm" 1 1000000000 __rand_int__) >/dev/null 2>&1 ||
        die "redis-benchmark failed against the callgrind server"
    "$REDIS_CLI" -p "$ir_port" SHUTDOWN NOSAVE >/dev/null 2>&1 || true
    wait "$pid" || true
    total=$(sed -n 's/^summary: *\([0-9]*\).*/\1/p;s/^totals: *\([0-9]*\).*/\1/p' "$out" | head -1)
    [[ $total =~ ^[0-9]+$ ]] || die "no callgrind total in $out"
    echo "$total"
}

ir_rows=()
if [[ $INSTRUCTIONS == 1 ]]; then
    command -v valgrind >/dev/null || die "valgrind not found (Debian: apt-get install valgrind)"
    cp "$baseline_file" "$work/baseline.lua"
    declare -A per_call
    for a in baseline fixed_window sliding_window gcra; do
        echo "redis_cost: $a under callgrind..." >&2
        short=$(instructions "$a" "$IR_CALLS")
        long=$(instructions "$a" $((3 * IR_CALLS)))
        per_call[$a]=$(((long - short) / (2 * IR_CALLS)))
    done
    for a in baseline fixed_window sliding_window gcra; do
        case $a in fixed_window) target=1.2 ;; baseline) target= ;; *) target=1.5 ;; esac
        r=$(ratio "${per_call[$a]}" "${per_call[baseline]}")
        ir_rows+=("| $a | 1 | allowed | ${per_call[$a]} | $r |${target:+ ≤ ${target}×: $(verdict "$r" "$target")} |")
    done
fi

sample_sha='<sha>'
sample_args=$(evalsha_args fixed_window 2 1000000000 __rand_int__)
cat <<EOF
## Redis CPU per rate-limit decision

redis-server $version, $(nproc) cores${server_pin:+ (Redis pinned to CPU 0, redis-benchmark to CPU 1)}; $REQUESTS calls per run from $CLIENTS connections over $KEYS_SPACE random clients; each run on an empty database after CONFIG RESETSTAT.

| script | limits | path | Redis µs per call (EVALSHA usec_per_call) | ratio to the minimal baseline | benchmark calls/s | issue 11 |
|---|---|---|---|---|---|---|
EOF
printf '%s\n' "${rows[@]}"
cat <<EOF

- allowed: a limit of 1000000000 per window, every call allowed; denied: 1 per 60000 ms, every call after a key's first denied.
- Windows of the limits, in order: ${windows_s[*]} s; each limit's burst = its limit; Redis's clock (no script reads a clock; the sliding window names two keys per limit).
- Command line (fixed_window, 2 limits; the others differ in the sha, the keys' suffix and the limits):
  \`$REDIS_BENCHMARK -p <port> -c $CLIENTS -n $REQUESTS -r $KEYS_SPACE -q EVALSHA $sample_sha $sample_args\`
- Minimal baseline: \`$REDIS_BENCHMARK -p <port> -c $CLIENTS -n $REQUESTS -r $KEYS_SPACE -q EVALSHA <sha> $(evalsha_args baseline 1 0 __rand_int__)\`, script: \`$baseline_src\`
- $rand_note.
- benchmark calls/s is redis-benchmark's throughput on this machine (client included), not a Redis bound; 1 s / µs per call is.
EOF
if ((${#ir_rows[@]})); then
    cat <<EOF

### Instructions per call (callgrind)

Redis's instructions for one steady-state call (each client's counters exist), $IR_CALLS and $((3 * IR_CALLS)) calls over 100 clients on a callgrind-run redis-server per script; the same on every run, whatever the machine's load.

| script | limits | path | instructions per call | ratio to the minimal baseline | issue 11 |
|---|---|---|---|---|---|
EOF
    printf '%s\n' "${ir_rows[@]}"
fi
