#!/usr/bin/env bash
# Side by side, in one run: copa bench (CPU backend) and the Python peers, alternating rounds so that
# both see the same machine state (these machines are shared and noisy). Prints both tables per round.
# Usage: bench/peers/side-by-side.sh [ROUNDS] [OUTDIR]
set -euo pipefail
cd "$(dirname "$0")/../.."
rounds=${1:-2}
out=${2:-$(mktemp -d)}
mkdir -p "$out"
bash bench/peers/setup.sh >/dev/null
dotnet build src/CopaKernels.Cli -c Release -v q >/dev/null
copa=src/CopaKernels.Cli/bin/Release/net10.0/copa
for r in $(seq 1 "$rounds"); do
  echo "=== round $r: copa bench ($(date -u +%H:%M:%S))"
  "$copa" bench --ops select,select-batched,product --json "$out/copa-$r.json"
  echo "=== round $r: peers ($(date -u +%H:%M:%S))"
  /usr/bin/python3 bench/peers/peers.py --only abce --json "$out/peers-$r.json" 2>/dev/null
done
echo "results in $out"
