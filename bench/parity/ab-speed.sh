#!/usr/bin/env bash
# Speed of two copa builds on one merge, alternating, in one run: the ratio old ÷ new of the wall time,
# the CPU time and the in-process phases the report gives (plan, merge_compute, stream_total).
#
# Each round runs both builds on the same merge, the order swapped every round so that neither always
# runs first (or always after the other's writes); each run starts after a `sync` (not timed). The
# summary gives, per measure, the medians and the median of the per-round ratios old ÷ new (above 1:
# the new build is faster). This machine is shared: run twice, or with more rounds, before reading a
# few percent into it; two copies of one build (A/A) show what the setup resolves.
#
# Usage: bench/parity/ab-speed.sh OLD NEW ROUNDS ADAPTERS_DIR [copa merge arguments ...]
#   OLD, NEW      copa commands (published: `dotnet publish src/CopaKernels.Cli -c Release -r linux-x64 -o DIR`)
#   ROUNDS        rounds (each runs both builds once)
#   ADAPTERS_DIR  a folder holding adapters/task-1, task-2, ... (every one is merged), e.g. the set
#                 bench/peers/copa-vs-torch.sh makes; its base/ is passed as --base when the arguments
#                 ask for --output model
#   arguments     e.g. --method copa-official, or --method copa --output model (--device cpu, --quiet and
#                 a scratch --out are added)
set -euo pipefail
[ $# -ge 4 ] || { sed -n '2,/^set -euo/p' "$0" | sed '$d'; exit 2; }
OLD=$(realpath "$1"); NEW=$(realpath "$2"); rounds=$3; dir=$(realpath "$4"); shift 4
args=("$@")
ad=()
for a in "$dir"/adapters/task-*; do ad+=(--adapter "$a"); done
[[ " ${args[*]} " == *" --output model "* ]] && args+=(--base "$dir/base")
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
log=$out/times
for r in $(seq 1 "$rounds"); do
  if [ $((r % 2)) = 1 ]; then order="old new"; else order="new old"; fi
  for b in $order; do
    exe=$OLD; [ $b = new ] && exe=$NEW
    rm -rf "$out/merged"; sync
    /usr/bin/time -f "%e %U %S" -o "$out/time" "$exe" merge "${ad[@]}" --out "$out/merged" --device cpu --quiet "${args[@]}"
    python3 - "$b" "$out" >> "$log" <<'PY'
import json, sys
b, out = sys.argv[1:]
wall, user, sys_ = map(float, open(f"{out}/time").read().split()[-3:])
t = json.load(open(f"{out}/merged/merge_report.json"))["timings_seconds"]
print(b, wall, user + sys_, t["plan"], t["merge_compute"], t["stream_total"])
PY
  done
done
python3 - "$log" "$rounds" <<'PY'
import statistics as st, sys
rows = {"old": [], "new": []}
for line in open(sys.argv[1]):
    b, *v = line.split()
    rows[b].append([float(x) for x in v])
print(f"{sys.argv[2]} rounds; ratio = old ÷ new (above 1: the new build is faster)")
for i, name in enumerate(["wall", "cpu", "plan", "merge_compute", "stream_total"]):
    o = [x[i] for x in rows["old"]]; n = [x[i] for x in rows["new"]]
    pairs = [a / b for a, b in zip(o, n) if b > 0]
    print(f"  {name:14s} old {st.median(o):8.3f} s  new {st.median(n):8.3f} s  median of pair ratios {st.median(pairs):.3f}")
PY
