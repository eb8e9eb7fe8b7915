#!/usr/bin/env bash
# Installs what the tests need when it is missing (Debian: redis-server, etcd-server,
# protobuf-compiler, postgresql, pgbouncer), then runs the whole test suite against real servers that the tests
# start themselves on free loopback ports, then runs every example.
set -euo pipefail
cd "$(dirname "$0")/.."

missing=()
command -v redis-server >/dev/null || missing+=(redis-server)
command -v redis-cli >/dev/null || missing+=(redis-tools)
command -v etcd >/dev/null || missing+=(etcd-server)
command -v protoc >/dev/null || missing+=(protobuf-compiler)
# PostgreSQL's server binaries are not on PATH: tests/support/postgres_server.rs finds them
# under /usr/lib/postgresql/<version>/bin.
compgen -G "/usr/lib/postgresql/*/bin/postgres" >/dev/null || missing+=(postgresql)
# Debian puts pgbouncer in /usr/sbin, not on an ordinary user's PATH:
# tests/support/pgbouncer.rs looks there too.
command -v pgbouncer >/dev/null || [ -x /usr/sbin/pgbouncer ] || missing+=(pgbouncer)
if ((${#missing[@]})); then
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  echo "test.sh: installing ${missing[*]}"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
fi

# The soak tests (100,000 cycles per backend, locks and semaphores) run afterwards, two at a
# time: the fault tests must not run beside them (they measure deadlines), and the etcd and
# PostgreSQL soaks wait on their servers' fsyncs more than on the CPU.
cargo test --all-features -- --test-threads "${DLOCK_TEST_THREADS:-4}" --skip _does_not_grow
cargo test --all-features --test soak -- --test-threads 2
# The guide's pictures (tools/pictures, a workspace member the root's `cargo test` skips):
# fails when docs/pictures/*.svg are not what `cargo run -p dlock-pictures` draws.
cargo test --quiet -p dlock-pictures

for example in examples/*.rs; do
  name=$(basename "$example" .rs)
  # Needs a PostgreSQL server of the user's (DATABASE_URL) and starts none: its `run` is
  # run on the tests' own server by tests/postgres.rs (the_inventory_example_sells_exactly_the_stock).
  [ "$name" = inventory_postgres ] && continue
  echo "test.sh: running example $name"
  timeout 120 cargo run --quiet --all-features --example "$name" >/dev/null
done

# The multi-process torture checker, bounded: exits non-zero on any violation. Redis with
# its default persistence (RDB snapshots) and with AOF, and a 3-member etcd cluster.
# Then elections (two leaders of one election at once is a violation) on both backends.
for target in "redis rdb" "redis aof" "etcd rdb" "redis rdb --election" "etcd rdb --election"; do
  read -r backend persistence election <<<"$target"
  timeout 120 cargo run --quiet -p dlock-torture -- --backend "$backend" $election \
    --persistence "$persistence" --procs 3 --tasks 4 --keys 3 --secs "${DLOCK_TORTURE_SECS:-20}"
done
# PostgreSQL: kill -9 and a restart with crash recovery, operator deletes, worker pauses and
# the proxies' faults; locks, then elections.
for election in "" --election; do
  timeout 120 cargo run --quiet -p dlock-torture -- --backend postgres $election \
    --procs 3 --tasks 4 --keys 3 --secs "${DLOCK_TORTURE_SECS:-20}"
done
# Semaphores: 3 permits per key on 2 keys (12 tasks); 4 sections of one key at once without
# an excuse is a violation, and the fenced resource keeps the 3 highest tokens.
for backend in redis etcd postgres; do
  timeout 120 cargo run --quiet -p dlock-torture -- --backend "$backend" --permits 3 \
    --persistence rdb --procs 3 --tasks 4 --keys 2 --secs "${DLOCK_TORTURE_SECS:-20}"
done
echo "test.sh: all tests and examples passed"
