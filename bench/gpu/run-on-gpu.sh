#!/usr/bin/env bash
# Runs on the GPU machine, from the unpacked package that bench/gpu/pack.sh builds (no .NET needed):
#
#   tar xJf copakernels-gpu.tar.xz && copakernels-gpu/run-on-gpu.sh [RESULTS_DIR]
#
# Steps, each run even if an earlier one failed, each logged to RESULTS_DIR/<step>.log:
#   machine  nvidia-smi, CPU and OS facts
#   devices  copa devices
#   bench    copa bench --device $COPA_BENCH_DEVICES (default cuda,cpu) --json RESULTS_DIR/bench.json
#            plus $COPA_BENCH_ARGS (e.g. "--quick" or "--ops select")
#   tests    the test assembly, run by itself (plus $COPA_TEST_ARGS, e.g. "--filter Gpu")
# RESULTS_DIR defaults to ./copakernels-gpu-results-<host>-<UTC time>; it is also packed as
# RESULTS_DIR.tar.gz to copy back. The environment passes through to the tests (REQUIRE_* etc.).
# Exit status: 0 if every step succeeded, else 1 (summary.txt lists each step's status).
set -uo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd -P)
results=${1:-$PWD/copakernels-gpu-results-$(hostname -s 2>/dev/null || echo host)-$(date -u +%Y%m%dT%H%M%SZ)}
mkdir -p "$results" || { echo "run-on-gpu: cannot create $results" >&2; exit 1; }
results=$(cd "$results" && pwd -P)
summary=$results/summary.txt
cp "$here/VERSION" "$results/VERSION" 2>/dev/null || true
: >"$summary"
failures=0

step() { # $1: step name, then the command
  local name=$1 status
  shift
  echo "== $name: $*"
  "$@" 2>&1 | tee "$results/$name.log"
  status=${PIPESTATUS[0]}
  echo "$name: exit $status" | tee -a "$summary"
  ((status == 0)) || failures=$((failures + 1))
}

machine() {
  echo "host: $(hostname 2>/dev/null) | $(uname -srm)"
  grep -m1 'model name' /proc/cpuinfo 2>/dev/null
  echo "cores: $(nproc 2>/dev/null)"
  if command -v nvidia-smi >/dev/null; then
    nvidia-smi
    nvidia-smi --query-gpu=name,driver_version,memory.total,compute_cap --format=csv 2>/dev/null || true
  else
    echo "nvidia-smi: not found (no NVIDIA driver on PATH?)"
  fi
  ldconfig -p 2>/dev/null | grep -E 'libcuda\.so|libOpenCL\.so' || echo "no libcuda/libOpenCL in the linker cache"
}

# Always from the package's own folders: these are self-contained builds with their own runtime.
export DOTNET_CLI_TELEMETRY_OPTOUT=1 DOTNET_NOLOGO=1
step machine machine
step devices "$here/copa/copa" devices
# shellcheck disable=SC2086  # COPA_BENCH_ARGS is a list of options on purpose
step bench "$here/copa/copa" bench --device "${COPA_BENCH_DEVICES:-cuda,cpu}" --json "$results/bench.json" ${COPA_BENCH_ARGS:-}
# The tests write temporary files under $TMPDIR (or /tmp) and clean up after themselves. Those that run
# copa as a child process (signals, kill -9, a closed stderr) run the package's own tool: there is no dotnet.
# shellcheck disable=SC2086
COPA_EXE="$here/copa/copa" step tests "$here/tests/CopaKernels.Tests" ${COPA_TEST_ARGS:-}

tar -C "$(dirname "$results")" -czf "$results.tar.gz" "$(basename "$results")" \
  && echo "results: $results (and $results.tar.gz)"
cat "$summary"
((failures == 0))
