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

# A real Kafka-protocol broker for the Kafka tests: tansu, built once (about 10 minutes) into the cache.
TANSU="$CACHE/tools/bin/tansu"
if ! "$TANSU" --version 2>/dev/null | grep -q "0.6.0"; then
  echo "test.sh: installing tansu 0.6.0 into $CACHE/tools (once; about 10 minutes; cargo's progress follows)" >&2
  env -u CARGO_TARGET_DIR cargo install tansu@0.6.0 --locked --features dynostore \
    --root "$CACHE/tools"
fi
export VIGIL_TANSU="$TANSU"

# One profile (dev, optimised; see Cargo.toml) for everything; benches are compiled, not run.
cargo test --workspace --no-fail-fast "$@"
cargo build --benches --quiet
