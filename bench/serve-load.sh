#!/usr/bin/env bash
# Part PUT throughput of `ferry serve` on loopback next to `dd conv=fsync` of the same bytes on the
# same disk, and the server's peak RSS while CLIENTS clients each PUT PARTS parts of 8 MiB.
# Repeats ROUNDS times and prints every round and the medians.
#
#   bench/serve-load.sh            # 8 clients x 8 parts x 8 MiB = 512 MiB per round, 3 rounds
set -euo pipefail
cd "$(dirname "$0")/.."
CLIENTS=${CLIENTS:-8}
PARTS=${PARTS:-8}
ROUNDS=${ROUNDS:-3}
PART=$((8 * 1024 * 1024))

cargo build --release --quiet
work=$(mktemp -d "${TMPDIR:-/tmp}/ferry-bench.XXXXXX")
trap 'kill $srv 2>/dev/null; wait $srv 2>/dev/null; rm -rf "$work"' EXIT
head -c $PART /dev/urandom > "$work/part"

target/release/ferry serve --listen 127.0.0.1:0 --data-dir "$work/data" --token bench >"$work/out" 2>"$work/err" &
srv=$!
until grep -q listening "$work/out" 2>/dev/null; do sleep 0.1; done
url=$(grep -o 'http://[0-9.:]*' "$work/out" | head -1)

mb=$((CLIENTS * PARTS * PART / 1024 / 1024))
printf 'round  ferry_put_MiB/s  dd_fsync_MiB/s  ratio\n'
results=()
for round in $(seq 1 "$ROUNDS"); do
  # One upload per client; each client PUTs its parts one after another.
  for c in $(seq 1 "$CLIENTS"); do
    curl -sf -H "Authorization: Bearer bench" -H 'Content-Type: application/json' \
      -d "{\"name\":\"bench/r$round/c$c\",\"size\":$((PARTS * PART)),\"part_size\":$PART}" "$url/v1/uploads" > "$work/c$c.json"
    python3 -c 'import json,sys; [print(p["url"]) for p in json.load(open(sys.argv[1]))["parts"]]' "$work/c$c.json" > "$work/c$c.urls"
  done
  start=$(date +%s.%N)
  for c in $(seq 1 "$CLIENTS"); do
    ( while read -r u; do curl -sf -X PUT --data-binary @"$work/part" "$u" -o /dev/null; done < "$work/c$c.urls" ) &
  done
  wait $(jobs -p | grep -v "^$srv$") 2>/dev/null || true
  end=$(date +%s.%N)
  put=$(awk -v mb=$mb -v s=$start -v e=$end 'BEGIN { printf "%.1f", mb / (e - s) }')
  # The same bytes through dd with an fsync at the end, on the same filesystem.
  start=$(date +%s.%N)
  for i in $(seq 1 $((CLIENTS * PARTS))); do cat "$work/part"; done | dd of="$work/dd.out" bs=8M iflag=fullblock conv=fsync status=none
  end=$(date +%s.%N)
  dd_rate=$(awk -v mb=$mb -v s=$start -v e=$end 'BEGIN { printf "%.1f", mb / (e - s) }')
  rm -f "$work/dd.out"
  for c in $(seq 1 "$CLIENTS"); do
    id=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["upload_id"])' "$work/c$c.json")
    curl -sf -X DELETE -H "Authorization: Bearer bench" "$url/v1/uploads/$id" -o /dev/null
  done
  ratio=$(awk -v a="$put" -v b="$dd_rate" 'BEGIN { printf "%.2f", a / b }')
  printf '%5d  %15s  %14s  %5s\n' "$round" "$put" "$dd_rate" "$ratio"
  results+=("$put $dd_rate $ratio")
done
hwm=$(awk '/VmHWM/ { print $2 / 1024 }' /proc/$srv/status)
printf '%s\n' "${results[@]}" | sort -n -k3 | awk -v n="$ROUNDS" 'NR == int((n + 1) / 2) { printf "median ratio round: put %s MiB/s, dd %s MiB/s, ratio %s\n", $1, $2, $3 }'
printf 'server peak RSS (VmHWM): %.1f MiB with %d clients x %d MiB parts in flight\n' "$hwm" "$CLIENTS" $((PART / 1024 / 1024))
