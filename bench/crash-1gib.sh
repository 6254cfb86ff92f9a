#!/usr/bin/env bash
# kill -9 of `ferry serve` in the middle of a 1 GiB upload loses nothing it acknowledged.
# 8 curl workers PUT 128 parts of 8 MiB, logging every part the server answered 200 for (with its
# ETag); the server is killed after KILL_AFTER seconds, restarted on the same data dir, and its part
# listing must contain every acknowledged part with the same ETag. Then the rest is sent and the
# object's SHA-256 checked.
set -euo pipefail
cd "$(dirname "$0")/.."
KILL_AFTER=${KILL_AFTER:-1.5}
PART=$((8 * 1024 * 1024))
N=128
cargo build --release --quiet
work=$(mktemp -d "${TMPDIR:-/tmp}/ferry-crash.XXXXXX")
trap 'kill -9 $(jobs -p) 2>/dev/null; wait 2>/dev/null; rm -rf "$work"' EXIT
head -c $((N * PART)) /dev/urandom > "$work/src"
sha=$(sha256sum "$work/src" | cut -c1-64)

start_server() {
  target/release/ferry serve --listen 127.0.0.1:0 --data-dir "$work/data" --token t >"$work/out" 2>>"$work/err" &
  srv=$!
  until grep -q listening "$work/out" 2>/dev/null; do sleep 0.05; done
  url=$(grep -o 'http://[0-9.:]*' "$work/out" | head -1)
}
start_server
curl -sf -H "Authorization: Bearer t" -H 'Content-Type: application/json' \
  -d "{\"name\":\"crash/1gib\",\"size\":$((N * PART)),\"part_size\":$PART,\"sha256\":\"$sha\"}" "$url/v1/uploads" > "$work/created.json"
id=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["upload_id"])' "$work/created.json")
python3 -c 'import json,sys; [print(p["part_number"], p["url"]) for p in json.load(open(sys.argv[1]))["parts"]]' "$work/created.json" > "$work/urls"
: > "$work/acked"
for w in $(seq 0 7); do
  ( awk -v w=$w 'NR % 8 == w' "$work/urls" | while read -r n u; do
      etag=$(dd if="$work/src" bs=$PART skip=$((n - 1)) count=1 status=none | curl -s -X PUT --data-binary @- -D - -o /dev/null "$u" | tr -d '\r' | awk 'tolower($1) == "etag:" { print $2 }') || true
      [ -n "$etag" ] && echo "$n $etag" >> "$work/acked"
    done ) &
done
sleep "$KILL_AFTER"
kill -9 $srv
wait 2>/dev/null || true
acked=$(wc -l < "$work/acked")
start_server
python3 - "$work/acked" "$url" "$id" <<'PY'
import json, sys, urllib.request
acked = dict(line.split() for line in open(sys.argv[1]))
req = urllib.request.Request(f"{sys.argv[2]}/v1/uploads/{sys.argv[3]}", headers={"Authorization": "Bearer t"})
held = {str(p["part_number"]): p["etag"] for p in json.load(urllib.request.urlopen(req))["parts"]}
lost = [n for n, e in acked.items() if held.get(n) != e]
print(f"acknowledged before kill -9: {len(acked)} parts; held after restart: {len(held)}; lost or changed: {len(lost)}")
sys.exit(1 if lost else 0)
PY
# Finish: re-sign what is missing, send it, complete.
missing=$(python3 - "$url" "$id" <<'PY'
import json, sys, urllib.request
req = urllib.request.Request(f"{sys.argv[1]}/v1/uploads/{sys.argv[2]}", headers={"Authorization": "Bearer t"})
st = json.load(urllib.request.urlopen(req))
have = {p["part_number"] for p in st["parts"]}
print(json.dumps([n for n in range(1, st["part_count"] + 1) if n not in have]))
PY
)
curl -sf -H "Authorization: Bearer t" -H 'Content-Type: application/json' -d "{\"part_numbers\":$missing}" "$url/v1/uploads/$id/parts/sign" \
  | python3 -c 'import json,sys; [print(p["part_number"], p["url"]) for p in json.load(sys.stdin)["parts"]]' | while read -r n u; do
  dd if="$work/src" bs=$PART skip=$((n - 1)) count=1 status=none | curl -sf -X PUT --data-binary @- -o /dev/null "$u"
done
got=$(curl -sf -X POST -H "Authorization: Bearer t" "$url/v1/uploads/$id/complete" | python3 -c 'import json,sys; print(json.load(sys.stdin)["sha256"])')
echo "re-sent after restart: $(echo "$missing" | python3 -c 'import json,sys; print(len(json.load(sys.stdin)))') parts; object sha256 matches source: $([ "$got" = "$sha" ] && echo yes || echo NO)"
[ "$got" = "$sha" ]
