#!/usr/bin/env bash
# Where a Redis server's time goes for dlock's two hot paths, measured without dlock's
# client: each variant is sent by Redis's own tools (redis-benchmark, redis-cli --pipe) to a
# redis-server of its own, and the figure is that server's CPU time (/proc/<pid>/stat).
#
# 1. Acquire: server µs per call of a plain `SET NX PX` (the floor's acquire), of dlock's
#    obtain.lua, and of scripts that keep only part of it, to see what a fencing token drawn
#    in the acquire costs (8 clients, 16 calls in flight each, fresh keys).
# 2. Holding 100,000 locks with a TTL of 10 s, renewed every TTL/3 (30,000 renewals a second,
#    in calls of 100 locks as dlock's engine sends them): server % of a core for nothing
#    sent, for plain pipelined `PEXPIRE`s (the floor: the least that keeps the keys alive,
#    with no check of whose they are), for scripts that keep only part of the work, and for
#    dlock's refresh_many.lua.
#
# Needs redis-server, redis-cli and redis-benchmark (Debian: redis-server, redis-tools).
# Takes about 3 minutes. Usage: scripts/redis-server-cost.sh
set -euo pipefail
cd "$(dirname "$0")/.."
for tool in redis-server redis-cli redis-benchmark; do
  command -v "$tool" >/dev/null || {
    echo "redis-server-cost.sh: $tool is missing (Debian: apt-get install redis-server redis-tools)" >&2
    exit 1
  }
done

work=$(mktemp -d)
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])' 2>/dev/null ||
  shuf -i 20000-60000 -n 1)
redis-server --bind 127.0.0.1 --port "$port" --save "" --appendonly no --dir "$work" \
  --daemonize yes --pidfile "$work/redis.pid" --logfile "$work/redis.log"
trap 'redis-cli -p "$port" shutdown nosave >/dev/null 2>&1 || true; rm -rf "$work"' EXIT
for _ in $(seq 50); do redis-cli -p "$port" ping >/dev/null 2>&1 && break; sleep 0.1; done
pid=$(cat "$work/redis.pid")
hz=$(getconf CLK_TCK)
cli() { redis-cli -p "$port" "$@"; }
cpu() { awk '{print $14 + $15}' "/proc/$pid/stat"; }
load() { cli SCRIPT LOAD "$1"; }
token=01ARZ3NDEKTSV4RRFFQ69G5FAV

echo "# Redis server cost (redis-server $(redis-server --version | sed "s/.*v=\([^ ]*\).*/\1/"), $(nproc) cores)"
echo
echo "## 1. Acquire: server µs per call (400,000 calls, fresh keys)"
echo
echo "| call | server µs per call |"
echo "|---|---|"
per_call() {
  local label=$1 n=400000
  shift
  cli FLUSHALL >/dev/null
  local t0 t1
  t0=$(cpu)
  redis-benchmark -p "$port" -c 8 -P 16 -n "$n" -r 100000000 -q "$@" >/dev/null 2>&1
  t1=$(cpu)
  echo "| $label | $(awk -v d=$((t1 - t0)) -v hz="$hz" -v n="$n" 'BEGIN {printf "%.2f", d / hz * 1e6 / n}') |"
}
obtain=$(load "$(cat src/backend/redis/obtain.lua)")
time_set=$(load "local now = redis.call('TIME')
local fence = now[1] .. string.sub('00000' .. now[2], -6)
if redis.call('SET', KEYS[1], ARGV[1] .. ':' .. fence, 'NX', 'PX', ARGV[2]) then return fence end
return 0")
set_only=$(load "if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then return 1 end
return 0")
nothing=$(load "return 1")
per_call "TIME (a command that does nearly nothing)" TIME
per_call "SET NX PX (the floor's acquire)" SET "k:__rand_int__" "$token" NX PX 10000
per_call "script: return 1" EVALSHA "$nothing" 1 "k:__rand_int__" "$token" 10000
per_call "script: SET NX PX" EVALSHA "$set_only" 1 "k:__rand_int__" "$token" 10000
per_call "script: TIME, then SET NX PX of token:fence" EVALSHA "$time_set" 1 "k:__rand_int__" "$token" 10000
per_call "dlock's obtain.lua (GET, TIME, SET)" EVALSHA "$obtain" 1 "k:__rand_int__" "$token" 10000 0 ""

echo
echo "## 2. Holding 100,000 locks (TTL 10 s), renewed every 3.33 s for 20 s: server % of a core"
echo
# RESP for: the 100,000 keys, and one round of renewals of each kind.
awk -v t="$token" 'BEGIN {
  for (i = 0; i < 100000; i++) {
    k = "dlock:{many-" i "}"; v = t ":1733430000123456"
    printf "*5\r\n$3\r\nSET\r\n$%d\r\n%s\r\n$%d\r\n%s\r\n$2\r\nPX\r\n$5\r\n10000\r\n", length(k), k, length(v), v
  }
}' >"$work/set.resp"
awk 'BEGIN {
  for (i = 0; i < 100000; i++) {
    k = "dlock:{many-" i "}"
    printf "*3\r\n$7\r\nPEXPIRE\r\n$%d\r\n%s\r\n$5\r\n10000\r\n", length(k), k
  }
}' >"$work/pexpire.resp"
batches() { # sha -> 1,000 EVALSHA calls of 100 locks each, as batch.rs sends them
  awk -v sha="$1" -v t="$token" 'BEGIN {
    for (b = 0; b < 1000; b++) {
      printf "*303\r\n$7\r\nEVALSHA\r\n$%d\r\n%s\r\n$3\r\n100\r\n", length(sha), sha
      for (j = 0; j < 100; j++) { k = "dlock:{many-" (b * 100 + j) "}"; printf "$%d\r\n%s\r\n", length(k), k }
      for (j = 0; j < 100; j++) printf "$%d\r\n%s\r\n$5\r\n10000\r\n", length(t), t
    }
  }'
}
batches "$(load "local r = {} for i = 1, #KEYS do r[i] = 1 end return r")" >"$work/empty.resp"
batches "$(load "local r = {} for i = 1, #KEYS do r[i] = redis.call('PEXPIRE', KEYS[i], ARGV[2 * i]) end return r")" >"$work/unchecked.resp"
batches "$(load "$(cat src/backend/redis/refresh_many.lua)")" >"$work/dlock.resp"
hold() { # label file|none
  cli FLUSHALL >/dev/null
  cli --pipe <"$work/set.resp" >/dev/null
  local t0 s e t1
  t0=$(cpu)
  s=$(date +%s%N)
  for _ in 1 2 3 4 5 6; do
    [ "$2" = none ] || cli --pipe <"$work/$2.resp" >/dev/null
    sleep 3.33
  done
  t1=$(cpu)
  e=$(date +%s%N)
  echo "| $1 | $(awk -v d=$((t1 - t0)) -v hz="$hz" -v ns=$((e - s)) 'BEGIN {printf "%.2f %%", d / hz * 100 / (ns / 1e9)}') |"
}
echo "| renewals | server CPU |"
echo "|---|---|"
hold "none (the keys expire)" none
hold "plain PEXPIRE per key, pipelined (the floor: no check of whose the key is)" pexpire
hold "a script per 100 locks that does nothing" empty
hold "a script per 100 locks: PEXPIRE each, unchecked" unchecked
hold "dlock's refresh_many.lua (GET, token check, PEXPIRE)" dlock
