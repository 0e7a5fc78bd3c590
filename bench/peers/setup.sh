#!/usr/bin/env bash
# Idempotent setup for the Python peer benchmarks (Debian 12 / bookworm).
# Installs Debian's numpy + torch and makes OpenBLAS (pthread build) the
# system BLAS/LAPACK so that numpy's matmul goes through OpenBLAS sgemm.
# Must run as root (or via sudo).  Does NOT touch OPENBLAS_* env vars.
set -euo pipefail

PKGS=(python3-numpy libopenblas0-pthread python3-torch)

if [[ $EUID -ne 0 ]]; then
  echo "setup.sh: must be run as root (try: sudo $0)" >&2
  exit 1
fi

missing=()
for p in "${PKGS[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$p")
  fi
done

if ((${#missing[@]})); then
  echo "Installing missing packages: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update
  apt-get install -y --no-install-recommends "${missing[@]}"
else
  echo "All packages already installed: ${PKGS[*]}"
fi

# Select the pthread OpenBLAS build as the BLAS and LAPACK alternative.
arch=$(dpkg-architecture -qDEB_HOST_MULTIARCH 2>/dev/null || gcc -dumpmachine 2>/dev/null || echo x86_64-linux-gnu)
want_dir=/usr/lib/${arch}/openblas-pthread
for name in libblas.so.3 liblapack.so.3; do
  alt="${name}-${arch}"
  target="${want_dir}/${name}"
  if ! update-alternatives --query "$alt" >/dev/null 2>&1; then
    echo "WARNING: alternative $alt not registered; skipping" >&2
    continue
  fi
  if [[ ! -e "$target" ]]; then
    echo "WARNING: $target not found; skipping $alt" >&2
    continue
  fi
  current=$(update-alternatives --query "$alt" | awk '/^Value:/{print $2}')
  if [[ "$current" != "$target" ]]; then
    echo "Selecting $target for $alt (was: ${current:-none})"
    update-alternatives --set "$alt" "$target"
  else
    echo "$alt already -> $target"
  fi
done

echo
echo "Environment (left unchanged): OPENBLAS_CORETYPE=${OPENBLAS_CORETYPE-<unset>}" \
     "OPENBLAS_L2_SIZE=${OPENBLAS_L2_SIZE-<unset>}" \
     "OPENBLAS_NUM_THREADS=${OPENBLAS_NUM_THREADS-<unset>}" \
     "OMP_NUM_THREADS=${OMP_NUM_THREADS-<unset>}"
/usr/bin/python3 - <<'PY'
import numpy, torch
print("numpy", numpy.__version__, "| torch", torch.__version__)
try:
    from threadpoolctl import threadpool_info
    for i in threadpool_info():
        print("threadpool:", {k: i.get(k) for k in ("internal_api", "filepath", "version", "num_threads", "architecture", "threading_layer")})
except ImportError:
    print("threadpoolctl not available")
PY
echo "Setup done. Run: /usr/bin/python3 bench/peers/peers.py --quick"
