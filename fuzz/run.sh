#!/usr/bin/env bash
# Builds the iSCSI fuzz targets and runs each for a bounded time.
#   fuzz/run.sh            60 s per target (what CI runs)
#   fuzz/run.sh 3600       an hour per target (by hand)
# Uses cargo-fuzz when installed, else the same flags by hand (nightly toolchain).
# New inputs go to a scratch copy of the corpus; crashes are left in fuzz/artifacts/.
set -euo pipefail
secs="${1:-60}"
cd "$(dirname "$0")"
targets=(pdu login_keys)
flags="-Cpasses=sancov-module -Cllvm-args=-sanitizer-coverage-level=4 \
-Cllvm-args=-sanitizer-coverage-inline-8bit-counters -Cllvm-args=-sanitizer-coverage-pc-table \
-Cllvm-args=-sanitizer-coverage-trace-compares --cfg fuzzing -Cdebug-assertions"
if ! rustup toolchain list | grep -q nightly; then
  echo "fuzz/run.sh: no nightly toolchain (rustup toolchain install nightly); skipping" >&2
  exit 0
fi
RUSTFLAGS="$flags" cargo +nightly build --release --target x86_64-unknown-linux-gnu --target-dir target -q
mkdir -p artifacts
for t in "${targets[@]}"; do
  scratch="$(mktemp -d)"
  cp -r "corpus/$t/." "$scratch/"
  echo "fuzz/run.sh: $t for ${secs}s"
  timeout $((secs + 60)) "target/x86_64-unknown-linux-gnu/release/$t" "$scratch" \
    -max_total_time="$secs" -max_len=4096 -artifact_prefix=artifacts/ -print_final_stats=1 2>&1 \
    | grep -E "^(Done|stat::number_of_executed_units|==.*ERROR|thread .* panicked)" || true
  rm -rf "$scratch"
done
if ls artifacts/crash-* >/dev/null 2>&1; then
  echo "fuzz/run.sh: crashes found:" >&2; ls artifacts/ >&2; exit 1
fi
echo "fuzz/run.sh: no crashes"
