#!/usr/bin/env bash
# ferry put (S3 store, default settings) next to `aws s3 cp` (aws-cli defaults: 8 MiB parts, 10
# concurrent) against the same s3s-fs server on loopback and the same 1 GiB file, alternating,
# RUNS times each. Prints each run, the medians and their ratio, and the CPU seconds `ferry serve`
# spent per GiB uploaded (read from /proc: the part bytes do not pass through it).
#
# A third column is the store's own ceiling: a client that does no work of its own (no hashing,
# parts already split and in the page cache, sent by 8 `curl`s at once to ferry's presigned URLs,
# the SHA-256 handed to complete), so no client on this machine and store can beat it.
#
#   RUNS=3 SIZE_MIB=1024 bench/s3-vs-awscli.sh
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${RUNS:-3}
SIZE_MIB=${SIZE_MIB:-1024}
command -v aws >/dev/null || python3 -m pip install --quiet awscli
cargo build --release --quiet
work=$(mktemp -d "${TMPDIR:-/tmp}/ferry-s3bench.XXXXXX")
trap 'kill $(jobs -p) 2>/dev/null; wait 2>/dev/null; rm -rf "$work"' EXIT
export AWS_ACCESS_KEY_ID=benchkey AWS_SECRET_ACCESS_KEY=bench-secret-key-0123456789 AWS_DEFAULT_REGION=us-east-1 AWS_REGION=us-east-1
export AWS_CONFIG_FILE="$work/aws-config"
printf '[default]\ns3 =\n    addressing_style = path\n' > "$AWS_CONFIG_FILE"
mkdir -p "$work/s3/bench" "$work/state"
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
s3s-fs --host 127.0.0.1 --port "$port" --access-key "$AWS_ACCESS_KEY_ID" --secret-key "$AWS_SECRET_ACCESS_KEY" "$work/s3" >/dev/null 2>&1 &
endpoint="http://127.0.0.1:$port"
until curl -s -o /dev/null "$endpoint"; do sleep 0.1; done
target/release/ferry serve --listen 127.0.0.1:0 --token t --store s3://bench/ferry \
  --s3-endpoint "$endpoint" --s3-path-style >"$work/serve.out" 2>"$work/serve.err" &
srv=$!
until grep -q listening "$work/serve.out" 2>/dev/null; do sleep 0.05; done
url=$(grep -o 'http://[0-9.:]*' "$work/serve.out" | head -1)
head -c $((SIZE_MIB * 1024 * 1024)) /dev/urandom > "$work/src"
split -b $((8 * 1024 * 1024)) -d -a 4 "$work/src" "$work/part."
src_sha=$(sha256sum "$work/src" | cut -c1-64)
# The ceiling client: create through ferry, PUT every part with curl, complete.
ceiling() {
  curl -sf -H 'Authorization: Bearer t' -H 'Content-Type: application/json' \
    -d "{\"name\":\"ceiling/$1\",\"size\":$((SIZE_MIB * 1024 * 1024)),\"part_size\":$((8 * 1024 * 1024))}" \
    "$url/v1/uploads" > "$work/created.json"
  python3 -c 'import json,sys; [print(p["part_number"], p["url"]) for p in json.load(open(sys.argv[1]))["parts"]]' \
    "$work/created.json" | W="$work" xargs -P 8 -n 2 sh -c \
    'curl -sf -o /dev/null -X PUT --data-binary @"$(printf "%s/part.%04d" "$W" $(($0 - 1)))" "$1"'
  id=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["upload_id"])' "$work/created.json")
  curl -sf -o /dev/null -X POST -H 'Authorization: Bearer t' -H 'Content-Type: application/json' \
    -d "{\"sha256\":\"$src_sha\"}" "$url/v1/uploads/$id/complete"
}
cpu() { awk '{ print $14 + $15 }' "/proc/$srv/stat"; }
ticks=$(getconf CLK_TCK)
now() { date +%s.%N; }
aws_t=(); ferry_t=(); ceil_t=(); ferry_cpu=0
for i in $(seq 1 "$RUNS"); do
  rm -rf "$work/s3/bench/aws" "$work/s3/bench/ferry"
  sync
  t0=$(now); aws s3 cp --quiet --endpoint-url "$endpoint" "$work/src" "s3://bench/aws/src-$i"; t1=$(now)
  aws_t+=("$(echo "$t1 - $t0" | bc)")
  rm -rf "$work/s3/bench/aws" "$work/s3/bench/ferry"
  sync
  c0=$(cpu)
  t0=$(now); FERRY_STATE_DIR="$work/state" target/release/ferry put "$work/src" --key "src-$i" --server "$url" --token t --no-progress >/dev/null; t1=$(now)
  c1=$(cpu)
  ferry_t+=("$(echo "$t1 - $t0" | bc)")
  ferry_cpu=$((ferry_cpu + c1 - c0))
  rm -rf "$work/s3/bench/aws" "$work/s3/bench/ferry"
  sync
  cat "$work"/part.* > /dev/null
  t0=$(now); ceiling "$i"; t1=$(now)
  ceil_t+=("$(echo "$t1 - $t0" | bc)")
  echo "run $i: aws s3 cp ${aws_t[-1]} s   ferry put ${ferry_t[-1]} s   store ceiling ${ceil_t[-1]} s"
done
median() { printf '%s\n' "$@" | sort -n | awk '{ v[NR] = $1 } END { print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
ma=$(median "${aws_t[@]}"); mf=$(median "${ferry_t[@]}"); mc=$(median "${ceil_t[@]}")
gib=$(echo "scale=3; $SIZE_MIB * $RUNS / 1024" | bc)
echo "median: aws s3 cp ${ma} s, ferry put ${mf} s; ferry is $(echo "scale=2; $ma / $mf" | bc)x faster"
echo "store ceiling ${mc} s: no client can be more than $(echo "scale=2; $ma / $mc" | bc)x faster than aws s3 cp here"
echo "ferry serve CPU: $(echo "scale=3; $ferry_cpu / $ticks / $gib" | bc) s per GiB uploaded ($ferry_cpu ticks over ${gib} GiB)"
