#!/usr/bin/env bash
# End-to-end CoPA merge, copa (C#) vs the plain-PyTorch port of the released CoPA code
# (bench/peers/copa_merge_torch.py), side by side on one machine.
#
# Inputs: 8 BF16 LoRA adapters of rank 16 on all seven projections (q,k,v,o,gate,up,down) of a
# 32-layer Llama-7B shape, made once by
#     $COPA demo --preset llama-7b --no-base --generate-only --adapters 8 --rank 16 --dir DIR
# and kept in DIR for later runs (about 610 MiB).
#
# For each method (copa-official, then copa), each round runs `copa merge` (adapter output,
# --device cpu, --quiet) and the torch script, one after the other, each under /usr/bin/time -v.
# The order of the two alternates from round to round, so that neither always runs first, and every
# run starts after a `sync` (not timed), so that no run waits for the previous run's writes.
# Both write BF16 adapters (the inputs' dtype) to a scratch folder that is deleted after each run.
# copa's time includes syncing its output to disk (durable when it exits); the torch script's does not.
# The table gives wall seconds and peak RSS for each run. The summary gives, per method, the best
# (minimum) wall time and the peak RSS of each tool, and the ratios torch/copa (above 1 means
# copa is faster or smaller). "CPU s" is user+sys seconds (less sensitive to other load than wall
# time, though torch's OpenMP threads also burn CPU waiting at barriers when a core is taken away from
# them). CPU is the share of a CPU the run got (/usr/bin/time: 200% = both
# cores of a 2-core machine) and "load 1min" is /proc/loadavg just after the run: a load above the
# thread count means other work was competing for the cores and the row's wall time is inflated.
#
# Usage: bench/peers/copa-vs-torch.sh [DIR] [ROUNDS]
#   DIR     adapter cache folder (default /tmp/copa-7b-adapters)
#   ROUNDS  runs of each (method, tool) pair (default 1)
# Environment:
#   COPA     copa command (default: artifacts/copa/copa, the published tool (self-contained, composite ReadyToRun), as a
#            user installs it; published here by `dotnet publish -r linux-x64` when it is missing)
#   PYTHON   interpreter with Debian's python3-torch (default /usr/bin/python3)
#   THREADS  threads for both tools: copa --threads and torch.set_num_threads (default: nproc).
#            torch is always given --threads explicitly, because its own default here can be 1.
#   SCRATCH  where the merged outputs go while a run lasts (default: a mktemp -d folder)
#   COPA_FLAGS  extra flags for copa merge, e.g. --no-sync (the torch script does not sync its output either)
#   COPA_BEFORE a second copa command (the build before a change, published the same way): it runs as a
#            third tool ("before") in every round, the order of the three rotating from round to round,
#            and a second summary gives before and after side by side (best and median wall and CPU).
set -euo pipefail
dir=$(realpath -m "${1:-/tmp/copa-7b-adapters}")   # resolved before the cd below
rounds=${2:-1}
if [ -n "${SCRATCH:-}" ]; then SCRATCH=$(realpath -m "$SCRATCH"); fi
cd "$(dirname "$0")/../.."
if [ -z "${COPA:-}" ]; then
  COPA=artifacts/copa/copa
  if [ ! -x "$COPA" ]; then
    echo "publishing copa to artifacts/copa (once)"
    dotnet publish src/CopaKernels.Cli -c Release -r linux-x64 -o artifacts/copa -v q >/dev/null
  fi
fi
PYTHON=${PYTHON:-/usr/bin/python3}
THREADS=${THREADS:-$(nproc)}
scratch=${SCRATCH:-$(mktemp -d)}
mkdir -p "$scratch"
log="$scratch/log"
: > "$log"
torch_script=bench/peers/copa_merge_torch.py
[ -x /usr/bin/time ] || { echo "error: /usr/bin/time is missing (apt-get install time)" >&2; exit 1; }

if [ ! -f "$dir/adapters/task-8/adapter_model.safetensors" ]; then
  echo "generating the adapters in $dir (once)"
  $COPA demo --preset llama-7b --no-base --generate-only --adapters 8 --rank 16 --dir "$dir"
fi
adapters=()
for i in 1 2 3 4 5 6 7 8; do adapters+=(--adapter "$dir/adapters/task-$i"); done

# Read the page cache in once, so that the first timed run doesn't pay for the disk.
cat "$dir"/adapters/task-*/adapter_model.safetensors > /dev/null

echo "machine: $(nproc) CPUs ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')), $(free -g | awk '/Mem:/{print $2}') GiB"
echo "copa:  $COPA merge ... --device cpu --threads $THREADS --quiet ${COPA_FLAGS:-}"
echo "torch: $PYTHON $torch_script ... --threads $THREADS   ($($PYTHON -c 'import torch; print("torch", torch.__version__, "- its default here:", torch.get_num_threads(), "thread(s)")'))"
echo "inputs: 8 BF16 adapters, rank 16, Llama-7B shape, 32 layers x 7 modules, in $dir; outputs BF16"
echo

results=()   # "method tool round wall_s rss_mb cpu_s"
run_one() {  # method tool round
  local method=$1 tool=$2 round=$3 out="$scratch/out" tv="$scratch/time.txt" rc=0
  rm -rf "$out"
  # Start from a quiet disk: the torch script does not sync what it writes, so without this the next
  # run (often copa, which syncs its output before it renames it into place) waited for torch's 610 MB.
  sync
  if [ "$tool" = copa ] || [ "$tool" = before ]; then
    local cmd=$COPA
    if [ "$tool" = before ]; then cmd=$COPA_BEFORE; fi
    /usr/bin/time -v -o "$tv" $cmd merge --method "$method" "${adapters[@]}" --out "$out" \
      --device cpu --threads "$THREADS" --quiet ${COPA_FLAGS:-} >> "$log" 2>&1 || rc=$?
  else
    /usr/bin/time -v -o "$tv" "$PYTHON" "$torch_script" --method "$method" "${adapters[@]}" --out "$out" \
      --threads "$THREADS" > "$scratch/torch.txt" 2>&1 || rc=$?
    cat "$scratch/torch.txt" >> "$log"
  fi
  if [ "$rc" != 0 ]; then
    echo "error: $tool $method failed (exit $rc); see $log" >&2
    cat "$tv" >&2
    exit 1
  fi
  local wall rss cpu load cpus
  load=$(cut -d' ' -f1 /proc/loadavg)
  cpu=$(awk -F': ' '/Percent of CPU this job got/{print $2}' "$tv")
  cpus=$(awk -F': ' '/User time \(seconds\)|System time \(seconds\)/{s+=$2} END{printf "%.2f", s}' "$tv")
  wall=$(awk -F': ' '/Elapsed \(wall clock\)/{n=split($2,p,":"); s=0; for(i=1;i<=n;i++) s=s*60+p[i]; printf "%.2f", s}' "$tv")
  rss=$(awk -F': ' '/Maximum resident set size/{printf "%.0f", $2/1024}' "$tv")
  results+=("$method $tool $round $wall $rss $cpus")
  printf '%-14s %-6s %5s %9s %12s %8s %6s %9s' "$method" "$tool" "$round" "$wall" "$rss" "$cpus" "$cpu" "$load"
  if [ "$tool" = torch ]; then
    printf '   %s' "$(grep '^time:' "$scratch/torch.txt" | sed 's/^time: //; s/, total incl.*//')"
  fi
  echo
  rm -rf "$out"
}

tools=(copa torch)
if [ -n "${COPA_BEFORE:-}" ]; then
  tools=(copa before torch)
  echo "before: $COPA_BEFORE merge ... (the same flags)"
fi
printf '%-14s %-6s %5s %9s %12s %8s %6s %9s\n' method tool round "wall s" "peak RSS MB" "CPU s" "CPU" "load 1min"
for method in copa-official copa; do
  for r in $(seq 1 "$rounds"); do
    # Each round starts with the next tool: no tool always runs first (or right after another).
    n=${#tools[@]}
    for ((i = 0; i < n; i++)); do run_one "$method" "${tools[(i + r - 1) % n]}" "$r"; done
  done
done

echo
echo "summary (best wall time, best CPU time and largest peak RSS over $rounds round(s); ratios = torch / copa):"
printf '%-14s %12s %12s %12s %12s %11s %11s %8s %8s %9s\n' method "copa wall s" "torch wall s" "copa RSS MB" "torch RSS MB" \
  "copa CPU s" "torch CPU s" "speed x" "memory x" "CPU-time x"
printf '%s\n' "${results[@]}" | awk '
  { k=$1; t=$2; w=$4; m=$5; c=$6
    if (!((k,t) in W) || w < W[k,t]) W[k,t]=w
    if (!((k,t) in C) || c < C[k,t]) C[k,t]=c
    if (!((k,t) in M) || m > M[k,t]) M[k,t]=m
    if (!(k in seen)) { seen[k]=1; order[++n]=k } }
  END { for (i=1;i<=n;i++) { k=order[i]
          printf "%-14s %12.2f %12.2f %12d %12d %11.2f %11.2f %8.2f %8.2f %9.2f\n", k, W[k,"copa"], W[k,"torch"], M[k,"copa"], M[k,"torch"],
                 C[k,"copa"], C[k,"torch"], W[k,"torch"]/W[k,"copa"], M[k,"torch"]/M[k,"copa"], C[k,"torch"]/C[k,"copa"] } }'
if [ -n "${COPA_BEFORE:-}" ]; then
  echo
  echo "before vs after (copa = this build, before = COPA_BEFORE; ratios before / after, above 1 means this build is faster):"
  printf '%-14s %8s %8s %8s %8s %8s %8s %8s %8s %9s %9s\n' method "best" "best" "median" "median" "best" "best" "median" "median" "wall x" "CPU x"
  printf '%-14s %8s %8s %8s %8s %8s %8s %8s %8s %9s %9s\n' "" "wall" "before" "wall" "before" "CPU" "before" "CPU" "before" "(median)" "(median)"
  printf '%s\n' "${results[@]}" | awk '
    function med(a, n,   i, j, t) { for (i = 2; i <= n; i++) for (j = i; j > 1 && a[j-1] > a[j]; j--) { t = a[j]; a[j] = a[j-1]; a[j-1] = t }
                                    return n % 2 ? a[(n+1)/2] : (a[n/2] + a[n/2+1]) / 2 }
    $2 == "copa" || $2 == "before" { k=$1; t=$2
      n = ++N[k,t]; Wv[k,t,n]=$4; Cv[k,t,n]=$6
      if (!(k in seen)) { seen[k]=1; order[++m]=k } }
    END { for (i = 1; i <= m; i++) { k = order[i]
            for (t = 0; t < 2; t++) { tool = t ? "before" : "copa"; n = N[k,tool]
              delete w; delete c; for (j = 1; j <= n; j++) { w[j] = Wv[k,tool,j]; c[j] = Cv[k,tool,j] }
              bw[tool] = w[1]; bc[tool] = c[1]; for (j = 1; j <= n; j++) { if (w[j] < bw[tool]) bw[tool] = w[j]; if (c[j] < bc[tool]) bc[tool] = c[j] }
              mw[tool] = med(w, n); mc[tool] = med(c, n) }
            printf "%-14s %8.2f %8.2f %8.3f %8.3f %8.2f %8.2f %8.3f %8.3f %9.3f %9.3f\n", k, bw["copa"], bw["before"], mw["copa"], mw["before"],
                   bc["copa"], bc["before"], mc["copa"], mc["before"], mw["before"] / mw["copa"], mc["before"] / mc["copa"] } }'
fi
echo
echo "torch ran with --threads $THREADS (set explicitly); copa with --threads $THREADS. Logs: $log"
