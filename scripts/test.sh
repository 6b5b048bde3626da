#!/usr/bin/env bash
# The whole test suite, on a fresh machine with only the Rust toolchain: installs what the tests need
# (idempotently, in seconds when already there), then runs every test. CI runs exactly this (.ci/run).
#
#   VIGIL_CACHE   where installed tools and the cargo target dir live (default ~/.cache/vigil), kept
#                 outside the checkout so a fresh clone reuses them.
set -euo pipefail
cd "$(dirname "$0")/.."

# Formatting first: a seconds-long check should not wait behind a ten-minute install.
cargo fmt --all --check

CACHE="${VIGIL_CACHE:-$HOME/.cache/vigil}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$CACHE/target}"
mkdir -p "$CACHE"

# A real Kafka-protocol broker for the Kafka tests: tansu, built once (about 10 minutes) into the cache.
# It builds in the background, beside the installs below and the build of the tests: two long compiles
# side by side keep both cores busy through each one's single-threaded stretches (build scripts, the
# last crates, linking). Its lines start with "tansu:".
TANSU="$CACHE/tools/bin/tansu"
tansu_pid=""
if ! "$TANSU" --version 2>/dev/null | grep -q "0.6.0"; then
  echo "test.sh: installing tansu 0.6.0 into $CACHE/tools (once; about 10 minutes), beside the rest" >&2
  (env -u CARGO_TARGET_DIR cargo install tansu@0.6.0 --locked --features dynostore --root "$CACHE/tools" 2>&1 \
    | sed -u 's/^/tansu: /' >&2) &
  tansu_pid=$!
  # If this script stops early, the install stops with it.
  trap 'pkill -P "$tansu_pid" 2>/dev/null || true' EXIT
fi
export VIGIL_TANSU="$TANSU"

# Independent Parquet readers for the archive tests (DuckDB, pyarrow) and an independent Kafka client
# (confluent-kafka), and the Standard Webhooks verifier for the webhook tests, in a venv of their own.
VENV="$CACHE/venv"
PY_PACKAGES=(duckdb==2.0.1 pyarrow==26.0.1 confluent-kafka==2.16.1 standardwebhooks==1.1.0)
if ! "$VENV/bin/python" -c "import duckdb, pyarrow, confluent_kafka, standardwebhooks" 2>/dev/null; then
  echo "test.sh: installing ${PY_PACKAGES[*]} into $VENV" >&2
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install --quiet --disable-pip-version-check "${PY_PACKAGES[@]}"
fi
export VIGIL_PYTHON="$VENV/bin/python"

# Debian's prometheus (the server and promtool) for the metrics, dashboard and alert-rule tests.
if ! command -v promtool >/dev/null 2>&1 || ! command -v prometheus >/dev/null 2>&1; then
  echo "test.sh: installing Debian's prometheus (server and promtool)" >&2
  SUDO=""
  if [ "$(id -u)" -ne 0 ]; then SUDO=sudo; fi
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends prometheus >/dev/null
fi
export VIGIL_PROMETHEUS="$(command -v prometheus)" VIGIL_PROMTOOL="$(command -v promtool)"


# One profile (dev, optimised; see Cargo.toml) for everything; benches are compiled, not run.
cargo test --workspace --no-run
if [ -n "$tansu_pid" ]; then
  wait "$tansu_pid" || { echo "test.sh: installing tansu failed (its lines above start with \"tansu:\")" >&2; exit 1; }
  trap - EXIT
fi

# tests/kafka.rs runs its tests one at a time, and spends most of its 7 minutes waiting on the broker
# (tansu pauses 3 s in every group join, a killed member's session takes 6 s to expire): it runs beside
# everything else, which is mostly CPU. Its output follows theirs; every test file not named here is in
# the other group, so a new one is never left out.
SIDE=(kafka)
side_args=() rest_args=()
for f in tests/*.rs; do
  name="$(basename "$f" .rs)"
  if [[ " ${SIDE[*]} " == *" $name "* ]]; then side_args+=(--test "$name"); else rest_args+=(--test "$name"); fi
done
side_log="$(mktemp)"
echo "test.sh: ${side_args[*]} runs beside the other tests; its output follows theirs" >&2
cargo test --no-fail-fast "${side_args[@]}" "$@" >"$side_log" 2>&1 &
side_pid=$!
status=0
cargo test --workspace --no-fail-fast --lib --bins "${rest_args[@]}" "$@" || status=1
cargo test --workspace --doc "$@" || status=1
side_status=0
wait "$side_pid" || side_status=1
cat "$side_log"
rm -f "$side_log"
if [ "$status" -ne 0 ] || [ "$side_status" -ne 0 ]; then
  echo "test.sh: tests failed (see above)" >&2
  exit 1
fi
cargo build --benches --quiet
