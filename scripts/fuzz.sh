#!/usr/bin/env bash
# Runs every cargo-fuzz target in fuzz/ for a bounded time and prints
# libFuzzer's final figures for each. Exits non-zero if any target crashed
# (the input that did it is left in fuzz/artifacts/<target>/).
#
#   scripts/fuzz.sh                      # 60 s per target
#   FUZZ_SECONDS=30 scripts/fuzz.sh      # 30 s per target
#   FUZZ_TARGETS="forwarded header_key" scripts/fuzz.sh
#
# cargo-fuzz wants a nightly compiler for its -Z flags (coverage
# instrumentation, AddressSanitizer); RUSTC_BOOTSTRAP=1 lets the stable one
# accept them, so no other toolchain is needed. The corpus grows in
# fuzz/corpus/<target>/ (seeded from fuzz/seeds/<target>/); both corpus/ and
# artifacts/ are git-ignored.
set -euo pipefail

seconds="${FUZZ_SECONDS:-60}"
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root/fuzz"
export RUSTC_BOOTSTRAP=1

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "installing cargo-fuzz from crates.io"
    cargo install cargo-fuzz --locked
fi

targets="${FUZZ_TARGETS:-$(cargo fuzz list)}"
echo "building: ${targets//$'\n'/ }"
cargo fuzz build

mkdir -p artifacts/logs
summary=()
failed=()
for target in $targets; do
    echo "=== $target: ${seconds}s"
    mkdir -p "corpus/$target"
    corpora=("corpus/$target")
    [[ -d "seeds/$target" ]] && corpora+=("seeds/$target")
    log="artifacts/logs/$target.log"
    status=0
    cargo fuzz run "$target" "${corpora[@]}" -- \
        -max_total_time="$seconds" -timeout=10 -print_final_stats=1 \
        >"$log" 2>&1 || status=$?
    done_line="$(grep -E '^#[0-9]+[[:space:]]+DONE' "$log" | tail -n 1 || true)"
    runs="$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n 1)"
    per_sec="$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -n 1)"
    cov="$(grep -oE 'cov: [0-9]+' <<<"$done_line" | grep -oE '[0-9]+' || true)"
    ft="$(grep -oE 'ft: [0-9]+' <<<"$done_line" | grep -oE '[0-9]+' || true)"
    corp="$(grep -oE 'corp: [0-9]+/[0-9]+[a-zA-Z]*' <<<"$done_line" | cut -d' ' -f2 || true)"
    if [[ $status -ne 0 ]]; then
        failed+=("$target")
        echo "!!! $target failed (exit $status); see fuzz/$log"
        grep -E 'panicked|SUMMARY|Test unit written|ERROR' "$log" | head -n 20 || true
    else
        echo "$done_line"
    fi
    summary+=("$(printf '%-14s %-6s %12s %10s %6s %7s %12s' \
        "$target" "$([[ $status -eq 0 ]] && echo ok || echo CRASH)" \
        "${runs:-?}" "${per_sec:-?}" "${cov:-?}" "${ft:-?}" "${corp:-?}")")
done

echo
printf '%-14s %-6s %12s %10s %6s %7s %12s\n' target result runs exec/s cov ft corpus
printf '%s\n' "${summary[@]}"
if [[ ${#failed[@]} -ne 0 ]]; then
    echo "crashed: ${failed[*]}"
    exit 1
fi
echo "no crash in ${seconds}s per target"
