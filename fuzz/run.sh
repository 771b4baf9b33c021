#!/usr/bin/env bash
# Builds the iSCSI fuzz targets (stable toolchain) and runs each for a bounded time.
#   fuzz/run.sh                    60 s per target
#   fuzz/run.sh 30                 30 s per target (what ci/test runs)
#   fuzz/run.sh 3600 pdu           an hour, one target (by hand; prefix `nice -n 19`)
#   fuzz/run.sh --merge 3600       also minimise fuzz/corpus/<target> plus what the run
#                                  found back into fuzz/corpus/<target> (named seeds kept)
#
# No nightly and no cargo-fuzz needed: the sanitizer-coverage flags cargo-fuzz uses are
# stable -C options, and libfuzzer-sys builds libFuzzer with the C++ compiler.
# Without AddressSanitizer a panic (the only way safe Rust fails) still aborts and
# libFuzzer keeps the input. Cargo output goes to build/fuzz. Each run fuzzes a scratch
# copy of the corpus, build/fuzz/corpus/<target>, so fuzz/corpus changes only with
# --merge. A crash, hang (10 s per input) or out-of-memory fails the script; the input
# is kept in fuzz/artifacts/<target>/ and the command reproducing it is printed.
set -euo pipefail
merge=0
if [ "${1:-}" = "--merge" ]; then merge=1; shift; fi
secs="${1:-60}"
shift || true
cd "$(dirname "$0")"
root="$(cd .. && pwd)"
out="$root/build/fuzz"

# The targets are the [[bin]] entries of Cargo.toml (codec.rs is a module they share).
all=($(sed -n '/^\[\[bin\]\]/{n;s/^name = "\(.*\)"/\1/p}' Cargo.toml))
targets=("${@:-${all[@]}}")

host="$(rustc -vV | sed -n 's/^host: //p')"
flags="-Cpasses=sancov-module -Cllvm-args=-sanitizer-coverage-level=4 \
-Cllvm-args=-sanitizer-coverage-inline-8bit-counters -Cllvm-args=-sanitizer-coverage-pc-table \
-Cllvm-args=-sanitizer-coverage-trace-compares --cfg fuzzing -Cdebug-assertions -Coverflow-checks"
start=$(date +%s)
# --target: RUSTFLAGS then apply to the fuzz targets only, not to build scripts and
# proc macros.
RUSTFLAGS="$flags" cargo build --locked --release --target "$host" --target-dir "$out" -q
echo "fuzz/run.sh: built ${targets[*]} in $(($(date +%s) - start)) s"
bin="$out/$host/release"

failed=()
for t in "${targets[@]}"; do
  [ -d "corpus/$t" ] || { echo "fuzz/run.sh: no corpus/$t" >&2; exit 2; }
  scratch="$out/corpus/$t"
  log="$out/$t.log"
  rm -rf "$scratch"
  mkdir -p "$scratch" "artifacts/$t"
  cp -r "corpus/$t/." "$scratch/"
  echo "fuzz/run.sh: $t for ${secs} s (log $log)"
  rc=0
  # libFuzzer stops itself after max_total_time; timeout is the backstop.
  timeout -k 10 $((secs + 120)) "$bin/$t" "$scratch" -max_total_time="$secs" \
    -max_len=4096 -timeout=10 -rss_limit_mb=2048 -artifact_prefix="artifacts/$t/" \
    -print_final_stats=1 >"$log" 2>&1 || rc=$?
  done_line="$(grep -E '^#[0-9]+[[:space:]]+DONE' "$log" | tail -1 || true)"
  execs="$(sed -n 's/^stat::number_of_executed_units: *//p' "$log")"
  echo "fuzz/run.sh: $t: ${execs:-?} executions${done_line:+, ${done_line#*DONE   }}"
  if [ "$rc" -ne 0 ]; then
    failed+=("$t")
    grep -E '^(==[0-9]+== ERROR|thread .* panicked|SUMMARY)' "$log" | head -5 >&2 || true
    art="$(sed -n 's/.*Test unit written to \(.*\)$/\1/p' "$log" | tail -1)"
    if [ -n "$art" ]; then
      echo "fuzz/run.sh: $t failed (exit $rc); input: $root/fuzz/$art" >&2
      echo "fuzz/run.sh: reproduce: $bin/$t $root/fuzz/$art" >&2
    elif [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then
      echo "fuzz/run.sh: $t did not stop after ${secs} s + 120 s (killed); see $log" >&2
    else
      echo "fuzz/run.sh: $t failed (exit $rc); see $log" >&2
    fi
    continue
  fi
  if [ "$merge" -eq 1 ]; then
    # A small set of inputs (set cover) keeping every feature of the old corpus and
    # the new inputs; hand-named seeds (not 40-hex-digit names) are kept as they are.
    fresh="$out/merged/$t"
    rm -rf "$fresh" && mkdir -p "$fresh"
    find "corpus/$t" -maxdepth 1 -type f -regextype posix-extended \
      ! -regex '.*/[0-9a-f]{40}' -exec cp {} "$fresh/" \;
    "$bin/$t" -set_cover_merge=1 -max_len=4096 -timeout=10 "$fresh" "$scratch" \
      >"$out/$t.merge.log" 2>&1
    find "corpus/$t" -maxdepth 1 -type f -regextype posix-extended \
      -regex '.*/[0-9a-f]{40}' -delete
    find "$fresh" -maxdepth 1 -type f -regextype posix-extended \
      -regex '.*/[0-9a-f]{40}' -exec cp {} "corpus/$t/" \;
    echo "fuzz/run.sh: $t: corpus merged, fuzz/corpus/$t has $(ls "corpus/$t" | wc -l) files"
  fi
done
if [ ${#failed[@]} -gt 0 ]; then
  echo "fuzz/run.sh: failed: ${failed[*]}" >&2
  exit 1
fi
echo "fuzz/run.sh: no crashes"
