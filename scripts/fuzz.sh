#!/usr/bin/env bash
# Runs the cargo-fuzz targets of fuzz/ (libFuzzer, nightly Rust), each for a bounded time.
# Not part of CI: tests/fuzz_corpus.rs runs every committed seed and crash reproducer through the
# same functions (echonet_edge::fuzzing) on stable Rust in every `cargo test`.
#
#   scripts/fuzz.sh                 every target, FUZZ_SECONDS (default 60) each
#   scripts/fuzz.sh dicom avi       those targets only
#   FUZZ_SECONDS=300 FUZZ_JOBS=2 scripts/fuzz.sh config
#   FUZZ_PROFILE=release FUZZ_SANITIZER=address scripts/fuzz.sh     optimised, with ASan
#
# Installs cargo-fuzz (cargo install) and the nightly toolchain (rustup) when they are missing.
# New inputs found go to fuzz/target/corpus/<target>/ (not committed: fold the interesting ones
# into fuzz/corpus/<target>/ by hand or with `cargo fuzz cmin`); a crash, OOM or timeout leaves
# its input in fuzz/artifacts/<target>/ and stops that target; the script exits non-zero if any
# target found one. Copy the input into fuzz/regressions/<target>/ with the fix, so the stable
# test keeps it fixed.
set -euo pipefail
cd "$(dirname "$0")/.."
SECONDS_EACH="${FUZZ_SECONDS:-60}"
JOBS="${FUZZ_JOBS:-1}"
# libFuzzer's own limits: memory (MB of RSS), one input's time (s) and its length (bytes).
RSS_MB="${FUZZ_RSS_MB:-1024}"
TIMEOUT_S="${FUZZ_TIMEOUT_S:-10}"
# dev (opt-level 1, see fuzz/Cargo.toml: builds in a fraction of release's time on a small machine)
# or release; a sanitizer of cargo-fuzz's (none, address, ...). The code under test is safe Rust
# over dependencies with some unsafe: address is worth it on a fast machine.
PROFILE="${FUZZ_PROFILE:-dev}"
SANITIZER="${FUZZ_SANITIZER:-none}"
case "$PROFILE" in
  dev) PROFILE_FLAG=--dev ;;
  release) PROFILE_FLAG=--release ;;
  *) echo "fuzz.sh: FUZZ_PROFILE is dev or release, not $PROFILE" >&2; exit 2 ;;
esac
ALL_TARGETS=(dicom bundle config avi v4l2_convert)
TARGETS=("$@")
[ ${#TARGETS[@]} -gt 0 ] || TARGETS=("${ALL_TARGETS[@]}")

max_len_of() {
  case "$1" in
    dicom) echo 262144 ;;
    bundle) echo 65536 ;;
    config) echo 8192 ;;
    avi) echo 262144 ;;
    v4l2_convert) echo 65536 ;;
    *) echo "fuzz.sh: unknown target $1 (targets: ${ALL_TARGETS[*]})" >&2; exit 2 ;;
  esac
}
for t in "${TARGETS[@]}"; do max_len_of "$t" >/dev/null; done

if ! rustup toolchain list | grep -q '^nightly'; then
  echo "fuzz.sh: installing the nightly toolchain (rustup)" >&2
  rustup toolchain install nightly --profile minimal
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "fuzz.sh: installing cargo-fuzz (cargo install, a few minutes)" >&2
  cargo install --locked cargo-fuzz
fi

# More than one job: libFuzzer's jobs write fuzz-N.log files instead of the terminal.
parallel=()
[ "$JOBS" -gt 1 ] && parallel=(-jobs="$JOBS" -workers="$JOBS")
failed=()
for t in "${TARGETS[@]}"; do
  work="fuzz/target/corpus/$t"
  mkdir -p "$work" "fuzz/artifacts/$t"
  echo "== $t: ${SECONDS_EACH}s, rss ${RSS_MB} MB, ${TIMEOUT_S}s per input, max_len $(max_len_of "$t")" >&2
  # The work corpus first (libFuzzer writes new inputs into the first folder), then the seeds.
  if ! (cd fuzz && cargo +nightly fuzz run "$PROFILE_FLAG" -s "$SANITIZER" "$t" "target/corpus/$t" "corpus/$t" -- \
      -max_total_time="$SECONDS_EACH" -rss_limit_mb="$RSS_MB" -malloc_limit_mb="$RSS_MB" \
      -timeout="$TIMEOUT_S" -max_len="$(max_len_of "$t")" "${parallel[@]}" \
      -print_final_stats=1 2>&1 | tee "target/$t.log"); then
    failed+=("$t")
  fi
done
if [ ${#failed[@]} -gt 0 ]; then
  echo "fuzz.sh: findings in: ${failed[*]} (inputs in fuzz/artifacts/)" >&2
  exit 1
fi
echo "fuzz.sh: no crash, OOM or timeout in ${TARGETS[*]}" >&2
