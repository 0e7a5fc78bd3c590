#!/usr/bin/env bash
# Byte-for-byte parity of two copa builds: every method and output mode, on each device asked for.
#
# A refactor that claims "no change of behaviour" is checked here: both builds run the same merges
# on the same inputs, and every output file must be identical byte for byte (merge_report.html, drawn
# from the JSON, is left out); merge_report.json must
# be identical once the fields that describe the run rather than the result are left out (timings,
# memory, the finish time, the output's own path).
#
# Cases (the same list per device):
#   - `copa demo` itself (its generated base and adapters, and both of its merges);
#   - on the demo's 3 adapters and base: every method with adapter, model and delta output, the
#     baselines also in delta space, an exact re-rank, other output dtypes, weights, a seed;
#   - on the 8-adapter Llama-7B-shaped set of bench/peers/copa-vs-torch.sh (when SET8 holds it, or
#     SET8=make to generate it, about 610 MiB): adapter output of every method (cpu only by default:
#     PoCL on a small machine takes minutes a merge; SET8_DEVICES to change).
#
# Usage: bench/parity/compare-builds.sh OLD NEW [DEVICE ...]
#   OLD, NEW  copa commands of the two builds (e.g. published with
#             `dotnet publish src/CopaKernels.Cli -c Release -r linux-x64 -o DIR`, from two worktrees)
#   DEVICE    cpu (default) and/or opencl; opencl runs inside the PoCL root (.ci/in-pocl.sh), as CI does
# Environment:
#   WORK          scratch folder (default: a mktemp -d folder, removed at the end unless KEEP=1)
#   SET8          folder of the 8-adapter set (default /tmp/copa-7b-adapters; skipped when absent)
#   SET8_DEVICES  devices the 8-adapter cases run on (default: cpu)
#   THREADS       --threads for every run (default: nproc)
#   SKIP_FIELDS   report fields left out of the comparison, space-separated (e.g. "spectra" where the
#                 change is meant to alter them: compare those apart, with a tolerance)
# Exit status 0 when every case matched; the last line is "N cases, N identical, N different".
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd -P)
repo=$(cd "$here/../.." && pwd -P)

# ---- inside the PoCL root: run a case file (one merge per line: label, build, then copa's arguments) ----
if [ "${1:-}" = --run-cases ]; then
  cases=$2
  while IFS=$'\t' read -r label exe args; do
    out=$(dirname "$cases")/out/$label
    rm -rf "$out"
    # The demo writes its inputs' absolute paths into its outputs' metadata, so both builds' demos run
    # in one folder (@DEMO@), each moved to its own place afterwards.
    fixed=$(dirname "$cases")/out/demo
    args=${args//@DEMO@/$fixed}
    # shellcheck disable=SC2086
    if ! $exe $args > "$out.log" 2>&1; then echo "FAILED" >> "$out.log"; fi
    if [ -d "$fixed" ]; then mv "$fixed" "$out"; fi
  done < "$cases"
  exit 0
fi

[ $# -ge 2 ] || { sed -n '2,/^set -euo/p' "$0" | sed '$d'; exit 2; }
OLD=$(realpath "$1"); NEW=$(realpath "$2"); shift 2
devices=("${@:-cpu}")
[ ${#devices[@]} -gt 0 ] || devices=(cpu)
THREADS=${THREADS:-$(nproc)}
WORK=${WORK:-$(mktemp -d)}
mkdir -p "$WORK"
[ "${KEEP:-0}" = 1 ] || trap 'rm -rf "$WORK"' EXIT
SET8=${SET8:-/tmp/copa-7b-adapters}
SET8_DEVICES=${SET8_DEVICES:-cpu}

# ---- inputs: the demo's (made by NEW; OLD's must be the same bytes, checked below as a case) ----
demo=$WORK/inputs/demo
if [ ! -f "$demo/base/model.safetensors" ] && [ ! -f "$demo/base/model.safetensors.index.json" ]; then
  rm -rf "$demo"
  "$NEW" demo --dir "$demo" --generate-only --device cpu > /dev/null
fi
if [ "$SET8" = make ]; then
  SET8=$WORK/inputs/set8
  "$NEW" demo --preset llama-7b --no-base --generate-only --adapters 8 --rank 16 --dir "$SET8" > /dev/null
fi
have8=0
[ -f "$SET8/adapters/task-8/adapter_model.safetensors" ] && have8=1

demo_adapters="--adapter $demo/adapters/task-1 --adapter $demo/adapters/task-2 --adapter $demo/adapters/task-3"
set8_adapters=""
for i in 1 2 3 4 5 6 7 8; do set8_adapters+=" --adapter $SET8/adapters/task-$i"; done

# One line per merge: a label and copa's arguments after `merge` (OUT and the device are added).
demo_cases() {
  local b="--base $demo/base"
  for m in copa copa-official task-arithmetic ties dare dare-ties magnitude-prune pcb; do
    echo "$m-adapter	--method $m"
    echo "$m-model	--method $m --output model $b"
    echo "$m-delta	--method $m --output delta"
  done
  for m in task-arithmetic ties dare dare-ties magnitude-prune pcb; do
    echo "$m-space-delta-model	--method $m --space delta --output model $b"
    echo "$m-space-delta-delta	--method $m --space delta --output delta"
  done
  echo "task-arithmetic-space-delta-rank4	--method task-arithmetic --space delta --rank 4"
  echo "ties-space-delta-rank4-refused	--method ties --space delta --rank 4"
  echo "copa-rank4	--method copa --rank 4"
  echo "copa-official-rank4	--method copa-official --rank 4"
  echo "copa-f32	--method copa --out-dtype f32"
  echo "copa-model-f32	--method copa --output model $b --out-dtype f32"
  echo "copa-official-f16	--method copa-official --out-dtype f16"
  echo "copa-clamp-nonorm	--method copa --clamp 0.3 --normalize false --density 0.4 --lambda 1.5"
  echo "ties-weights	--method ties --weight 0.5 --weight 1 --weight -0.25 --density 0.3"
  echo "dare-seed	--method dare --seed 7 --density 0.6"
  echo "task-arithmetic-model-f16	--method task-arithmetic --weight 0.5 --weight 1 --weight -0.25 --output model $b --out-dtype f16"
}
set8_cases() {
  for m in copa copa-official task-arithmetic ties dare magnitude-prune pcb; do
    echo "set8-$m	--method $m"
  done
}

total=0; same=0; diff=0
check() { # label dirA dirB: every file identical; reports identical minus run fields
  local label=$1 a=$2 b=$3 bad=0 fa=0 fb=0
  grep -q '^FAILED' "$a.log" 2>/dev/null && fa=1
  grep -q '^FAILED' "$b.log" 2>/dev/null && fb=1
  if [ $fa = 1 ] && [ $fb = 1 ]; then
    # Both refused: the same error line, the output folders' names aside, is the same behaviour.
    if [ "$(sed "s|$a|OUT|g" "$a.log")" != "$(sed "s|$b|OUT|g" "$b.log")" ]; then echo "  $label: different errors"; bad=1; fi
  elif [ $fa = 1 ] || [ $fb = 1 ]; then
    [ $fa = 1 ] && echo "  $label: old build failed: $(head -1 "$a.log")"
    [ $fb = 1 ] && echo "  $label: new build failed: $(head -1 "$b.log")"
    bad=1
  else
    python3 - "$a" "$b" <<'PY' || bad=1
import json, os, sys
a, b = sys.argv[1:]
def files(root):
    return sorted(os.path.relpath(os.path.join(d, f), root) for d, _, fs in os.walk(root) for f in fs)
# merge_report.html is drawn from merge_report.json (which is compared below, without its run-describing
# fields); a build from before the page existed writes none, so the page is left out of both lists.
fa, fb = [f for f in files(a) if os.path.basename(f) != "merge_report.html"], [f for f in files(b) if os.path.basename(f) != "merge_report.html"]
if fa != fb:
    print(f"  file lists differ: only old {sorted(set(fa) - set(fb))}, only new {sorted(set(fb) - set(fa))}")
    sys.exit(1)
RUN = {"timings_seconds", "memory", "finished_utc", "seconds", "throughput"} | set(os.environ.get("SKIP_FIELDS", "").split())
# Fields a newer build adds to the report: compared when both builds write them, ignored when only one does.
NEW_FIELDS = {"kept_fraction_a", "kept_fraction_b", "scales", "energy_kept", "spectra"}
def common(ra, rb):
    if isinstance(ra, dict) and isinstance(rb, dict):
        keys = (set(ra) | set(rb)) - {k for k in NEW_FIELDS if (k in ra) != (k in rb)}
        return {k: common(ra.get(k), rb.get(k))[0] for k in keys}, {k: common(ra.get(k), rb.get(k))[1] for k in keys}
    if isinstance(ra, list) and isinstance(rb, list) and len(ra) == len(rb):
        pairs = [common(x, y) for x, y in zip(ra, rb)]
        return [p[0] for p in pairs], [p[1] for p in pairs]
    return ra, rb
def strip(o, root):
    if isinstance(o, dict): return {k: strip(v, root) for k, v in o.items() if k not in RUN}
    if isinstance(o, list): return [strip(x, root) for x in o]
    if isinstance(o, str): return o.replace(root, "OUT")
    return o
bad = 0
for f in fa:
    pa, pb = os.path.join(a, f), os.path.join(b, f)
    if os.path.basename(f) == "merge_report.json":
        ra, rb = common(strip(json.load(open(pa)), a), strip(json.load(open(pb)), b))
        if ra != rb:
            print(f"  {f}: reports differ"); bad = 1
    elif open(pa, "rb").read() != open(pb, "rb").read():
        print(f"  {f}: bytes differ"); bad = 1
sys.exit(bad)
PY
  fi
  total=$((total + 1))
  if [ $bad = 0 ]; then same=$((same + 1)); else diff=$((diff + 1)); echo "DIFFERENT: $label"; fi
}

for dev in "${devices[@]}"; do
  d=$WORK/$dev
  rm -rf "$d"; mkdir -p "$d/out"
  list=$d/cases.tsv
  : > "$list"
  common="--device $dev --threads $THREADS --quiet --no-sync"
  # Each case twice, the old build's line then the new one's: label, command, copa's arguments.
  both() { # label arguments (OUT is @OUT@)
    local build exe
    for build in old new; do
      exe=$OLD; [ $build = new ] && exe=$NEW
      printf '%s\t%s\t%s\n' "$1-$build" "$exe" "${2//@OUT@/$d/out/$1-$build}" >> "$list"
    done
  }
  # copa demo, whole: inputs and both merges.
  both demo "demo --dir @DEMO@ --device $dev --threads $THREADS"
  while IFS=$'\t' read -r label args; do
    both "$label" "merge $args $demo_adapters --out @OUT@ $common"
  done < <(demo_cases)
  if [ $have8 = 1 ] && [[ " $SET8_DEVICES " == *" $dev "* ]]; then
    while IFS=$'\t' read -r label args; do
      both "$label" "merge $args $set8_adapters --out @OUT@ $common"
    done < <(set8_cases)
  fi
  n=$(wc -l < "$list")
  echo "$dev: $((n / 2)) cases, each with the old and the new build"
  start=$(date +%s)
  if [ "$dev" = cpu ]; then bash "$0" --run-cases "$list"
  else (cd "$repo" && REQUIRE_OPENCL=1 .ci/in-pocl.sh bash "$0" --run-cases "$list"); fi
  echo "$dev: ran in $(( $(date +%s) - start )) s"
  # The demo's stdout names its own folder and times: compare its files only.
  for label in $(cut -f1 "$list" | sed -n 's/-old$//p'); do
    check "$dev/$label" "$d/out/$label-old" "$d/out/$label-new"
  done
  rm -rf "$d/out"
done
echo "$total cases, $same identical, $diff different"
[ $diff = 0 ]
