#!/usr/bin/env bash
# Runs every cargo-fuzz target in fuzz/ for a bounded number of inputs and
# fails if any of them crashes (a panic, a failed property, a hang, an
# out-of-memory). Prints the inputs run and the seconds taken per target.
#
#   scripts/fuzz.sh                   # every target, 100000 inputs each
#   scripts/fuzz.sh json manifest     # some targets
#
# Settings (environment):
#   FUZZ_RUNS=100000        inputs per target
#   FUZZ_SANITIZER=address  address | none (none when ASan is unavailable)
#   FUZZ_TIMEOUT=30         seconds one input may take before it is a hang
#   FUZZ_ARGS=              more libFuzzer arguments, e.g. "-max_len=65536"
#
# Seeds are read from fuzz/corpus/<target> (committed; kept small). What
# libFuzzer finds beyond them goes to fuzz/corpus-scratch/<target> and crash
# inputs to fuzz/artifacts/<target> (both ignored by git). Reproduce a crash
# with `RUSTC_BOOTSTRAP=1 cargo fuzz run <target> <artifact>` plus the flags
# below. The stable toolchain runs cargo-fuzz's -Z flags through
# RUSTC_BOOTSTRAP=1.
set -euo pipefail
cd "$(dirname "$0")/.."

RUNS="${FUZZ_RUNS:-100000}"
SANITIZER="${FUZZ_SANITIZER:-address}"
TIMEOUT="${FUZZ_TIMEOUT:-30}"
export RUSTC_BOOTSTRAP=1

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "installing cargo-fuzz"
    cargo install cargo-fuzz --locked
fi

# Optimised, with debug assertions and overflow checks; 16 codegen units
# keep building Wasmtime (which the provider links) bearable.
FLAGS=(--release --debug-assertions --codegen-units 16 --sanitizer "$SANITIZER")

if [ "$#" -gt 0 ]; then
    TARGETS=("$@")
else
    mapfile -t TARGETS < <(cargo fuzz list)
fi

echo "building ${#TARGETS[@]} targets (sanitizer: $SANITIZER)"
cargo fuzz build "${FLAGS[@]}"

LOGS="fuzz/artifacts/logs"
mkdir -p "$LOGS"
failed=()
summary=()
for target in "${TARGETS[@]}"; do
    mkdir -p "fuzz/corpus-scratch/$target" "fuzz/corpus/$target"
    log="$LOGS/$target.log"
    start=$(date +%s%N)
    status=0
    # shellcheck disable=SC2086 # FUZZ_ARGS is a list of arguments
    cargo fuzz run "${FLAGS[@]}" "$target" \
        "fuzz/corpus-scratch/$target" "fuzz/corpus/$target" -- \
        -runs="$RUNS" -timeout="$TIMEOUT" -print_final_stats=1 ${FUZZ_ARGS:-} \
        >"$log" 2>&1 || status=$?
    seconds=$(awk -v a="$start" -v b="$(date +%s%N)" 'BEGIN { printf "%.1f", (b - a) / 1e9 }')
    inputs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
    if [ "$status" -eq 0 ]; then
        result="ok"
    else
        result="CRASH (exit $status; log $log)"
        failed+=("$target")
        grep -E "panicked at|ERROR: libFuzzer|Test unit written to" "$log" | head -5 || true
    fi
    line=$(printf '%-16s %10s %9s  %s' "$target" "${inputs:-?}" "$seconds" "$result")
    echo "$line"
    summary+=("$line")
done

# The loader targets' scratch files (fuzz_checks::scratch_dir).
rm -rf "${TMPDIR:-/tmp}"/trigger-messaging-fuzz-*

echo
printf '%-16s %10s %9s  %s\n' target inputs seconds result
printf '%s\n' "${summary[@]}"
if [ "${#failed[@]}" -gt 0 ]; then
    echo "crashed: ${failed[*]}" >&2
    exit 1
fi
echo "no crashes"
