#!/usr/bin/python3
"""Peer-comparison benchmarks: time the Python stack (NumPy/OpenBLAS, PyTorch)
on the same operations the C# CopaKernels kernels implement.

Run with Debian's system interpreter (NOT a pyenv/venv python):

    sudo bench/peers/setup.sh                      # once
    /usr/bin/python3 bench/peers/peers.py --quick --json /tmp/peers-quick.json

Operations
  a. numpy.matmul  float32  C[d_out, d_in] = B[d_out, r] @ A[r, d_in]  (OpenBLAS sgemm)
  b. torch.matmul  float32  same shapes, out= preallocated
  c. torch.kthvalue on |x| (selection alone), and the full CoPA "trim":
         t = torch.kthvalue(x.abs().flatten(), k).values ; y = x * (x.abs() >= t)
     with k = int(n * (1 - 0.2))
  d. torch.topk(|x|, n - k) (selection alone) and torch.topk(x.abs().flatten(), n - k)
     (mergekit-style magnitude selection, abs included)
  e. a LoRA factor set (224 A's 16x4096, 160 B's 4096x16, 64 B's 14336x16),
     trimmed one tensor at a time with kthvalue+mask.

Every timing is: warm-up call(s), then the median of several time.perf_counter()
measurements.  Outputs a table on stdout and (with --json FILE) a JSON list of
records {op, shape, n, ms, gflops|gbps, threads, library_version, ...}.
"""

import argparse
import ctypes
import datetime
import gc
import json
import os
import platform
import re
import resource
import statistics
import subprocess
import sys
import time

import numpy as np
import torch

DENSITY_TRIM = 0.2  # k = int(n * (1 - 0.2)) -> keep the top 20% by magnitude

MATMUL_SHAPES = [  # (d_out, r, d_in)
    (4096, 16, 4096),
    (4096, 64, 4096),
    (4096, 128, 4096),
    (14336, 16, 4096),
    (14336, 64, 4096),
    (14336, 128, 4096),
]

SELECT_SHAPES = [  # tensor shapes for kthvalue / trim / topk
    (16, 4096),
    (4096, 16),
    (14336, 16),
    (1 << 20,),
    (16 << 20,),
    (64 << 20,),
]

# LoRA factor set: 32 layers x 7 modules = 224 adapters.  Every A is 16x4096;
# B is 4096x16 for 5 modules/layer (160) and 14336x16 for 2 modules/layer (64).
LORA_LAYERS = 32
LORA_B_ROWS = [4096, 4096, 4096, 4096, 14336, 14336, 4096]  # q k v o gate up down
LORA_RANK = 16
LORA_D_IN = 4096


# --------------------------------------------------------------------------- #
# environment / library introspection
# --------------------------------------------------------------------------- #

def _sh(cmd):
    try:
        return subprocess.run(cmd, shell=True, capture_output=True, text=True,
                              timeout=10).stdout.strip()
    except Exception:  # pragma: no cover - informational only
        return ""


def find_openblas():
    """Return (ctypes handle, path) of the OpenBLAS actually loaded in-process."""
    path = None
    try:
        with open("/proc/self/maps") as f:
            for line in f:
                p = line.split()[-1] if "/" in line else ""
                if re.search(r"libopenblas[^/]*\.so", p):
                    path = p
                    break
    except OSError:
        pass
    for cand in ([path] if path else []) + ["libopenblas.so.0"]:
        try:
            lib = ctypes.CDLL(cand)
            lib.openblas_get_num_threads  # noqa: B018 - probe symbol
            return lib, os.path.realpath(cand) if os.path.exists(cand) else cand
        except (OSError, AttributeError):
            continue
    return None, None


def openblas_info(lib):
    info = {}
    if lib is None:
        return info
    for fn, key in (("openblas_get_config", "config"),
                    ("openblas_get_corename", "corename")):
        try:
            f = getattr(lib, fn)
            f.restype = ctypes.c_char_p
            info[key] = f().decode()
        except AttributeError:
            pass
    try:
        info["num_threads"] = int(lib.openblas_get_num_threads())
    except AttributeError:
        pass
    try:
        info["parallel"] = {0: "sequential", 1: "pthreads", 2: "openmp"}.get(
            int(lib.openblas_get_parallel()), "?")
    except AttributeError:
        pass
    m = re.search(r"OpenBLAS\s+([0-9.]+)", info.get("config", ""))
    if m:
        info["version"] = m.group(1)
    return info


def threadpoolctl_info():
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        return None
    keep = ("user_api", "internal_api", "prefix", "filepath", "version",
            "num_threads", "architecture", "threading_layer")
    return [{k: i.get(k) for k in keep} for i in threadpool_info()]


def dpkg_version(pkg):
    return _sh(f"dpkg-query -W -f='${{Version}}' {pkg} 2>/dev/null") or None


def blas_alternative():
    out = _sh("update-alternatives --query libblas.so.3-x86_64-linux-gnu 2>/dev/null")
    m = re.search(r"^Value:\s*(\S+)", out, re.M)
    return m.group(1) if m else None


def machine_info():
    model = _sh("lscpu | grep 'Model name' | head -1 | sed 's/^Model name:[ ]*//'")
    return {
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "cpu": model or platform.processor(),
        "nproc": int(_sh("nproc") or os.cpu_count() or 0),
        "usable_cpus": len(os.sched_getaffinity(0)),
        "mem_total_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
        "kernel": platform.release(),
        "os": _sh(". /etc/os-release && echo $PRETTY_NAME"),
        "python": f"{sys.executable} {platform.python_version()}",
    }


# --------------------------------------------------------------------------- #
# CPU contention accounting (the benchmark host may be shared)
# --------------------------------------------------------------------------- #

_CLK_TCK = os.sysconf("SC_CLK_TCK")


class CpuSnap:
    """Snapshot of system-wide busy/steal CPU time and this process's CPU time."""

    def __init__(self):
        self.wall = time.perf_counter()
        with open("/proc/stat") as f:
            v = [int(x) for x in f.readline().split()[1:]]
        # user nice system idle iowait irq softirq steal ...
        self.busy = (v[0] + v[1] + v[2] + v[5] + v[6]) / _CLK_TCK
        self.steal = (v[7] if len(v) > 7 else 0) / _CLK_TCK
        ru = resource.getrusage(resource.RUSAGE_SELF)
        self.own = ru.ru_utime + ru.ru_stime


def other_cpu_pct(a, b, ncpu):
    """% of total CPU capacity used by *other* processes (plus steal) between snapshots."""
    wall = b.wall - a.wall
    if wall <= 0:
        return 0.0
    others = max(0.0, (b.busy - a.busy) - (b.own - a.own)) + (b.steal - a.steal)
    return 100.0 * others / (wall * ncpu)


def wait_for_idle(max_wait, ncpu, threshold=10.0, window=2.0):
    """Wait (up to max_wait s) until other processes use < threshold % of the CPUs."""
    t_end = time.perf_counter() + max_wait
    while True:
        a = CpuSnap()
        time.sleep(window)
        pct = other_cpu_pct(a, CpuSnap(), ncpu)
        if pct < threshold or time.perf_counter() >= t_end:
            return pct
        print(f"  waiting for idle CPUs: other processes use {pct:.0f}% ...",
              file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- #
# timing
# --------------------------------------------------------------------------- #

def time_it(fn, warmup, reps):
    """Run fn() `warmup` times untimed, then `reps` timed runs. Returns seconds list."""
    for _ in range(warmup):
        fn()
    gc.collect()
    gc_was = gc.isenabled()
    gc.disable()
    try:
        ts = []
        for _ in range(reps):
            t0 = time.perf_counter()
            fn()
            ts.append(time.perf_counter() - t0)
    finally:
        if gc_was:
            gc.enable()
    return ts


def matmul_reps(quick):
    return (1, 3) if quick else (2, 10)


def select_reps(n, quick):
    """(warmup, reps) by element count: fewer repetitions for big tensors."""
    if quick:
        if n >= (32 << 20):
            return 1, 1
        if n >= (8 << 20):
            return 1, 2
        if n >= (1 << 20):
            return 1, 5
        return 2, 20
    if n >= (32 << 20):
        return 1, 4
    if n >= (8 << 20):
        return 1, 7
    if n >= (1 << 20):
        return 2, 15
    return 5, 100


def lora_reps(quick):
    return (1, 2) if quick else (1, 5)


# --------------------------------------------------------------------------- #
# benchmark bodies
# --------------------------------------------------------------------------- #

class Bench:
    def __init__(self, args, meta):
        self.args = args
        self.meta = meta
        self.records = []
        self.ncpu = meta["machine"]["usable_cpus"] or 1

    def measure(self, fn, warmup, reps):
        """time_it() plus contention accounting; returns (times, other_cpu_pct)."""
        best = None
        for attempt in range(1 + max(0, self.args.retry_contended)):
            if self.args.wait_idle:
                wait_for_idle(self.args.wait_idle, self.ncpu)
            a = CpuSnap()
            ts = time_it(fn, warmup, reps)
            other = other_cpu_pct(a, CpuSnap(), self.ncpu)
            if best is None or other < best[1]:
                best = (ts, other)
            if other < 10:
                break
            print(f"  (contention {other:.0f}% during measurement, attempt {attempt + 1})",
                  file=sys.stderr, flush=True)
        return best

    def add(self, op, library, shape, n, meas, threads, version, metric, value, extra=None):
        ts, other = meas
        ms = statistics.median(ts) * 1e3
        rec = {
            "op": op,
            "library": library,
            "shape": list(shape),
            "n": int(n),
            "ms": round(ms, 4),
            "ms_min": round(min(ts) * 1e3, 4),
            "ms_max": round(max(ts) * 1e3, 4),
            "reps": len(ts),
            metric: round(value(ms), 3),
            "threads": threads,
            "library_version": version,
            "cpu": self.meta["machine"]["cpu"],
            "nproc": self.meta["machine"]["nproc"],
            "other_cpu_pct": round(other, 1),
            "date": self.meta["machine"]["date"],
        }
        if extra:
            rec.update(extra)
        self.records.append(rec)
        unit = "GFLOP/s" if metric == "gflops" else ("GB/s" if metric == "gbps" else metric)
        shape_s = "x".join(str(s) for s in shape)
        print(f"  {op:<16} {shape_s:>17} {n:>11,d} {ms:>11.3f} {rec['ms_min']:>11.3f} "
              f"{rec[metric]:>9.2f} {unit:<8} {len(ts):>4} {threads:>3} {other:>5.0f}"
              + ("  <-- CPU contention" if other >= 10 else ""), flush=True)
        return rec


def table_header(title):
    print()
    print(title)
    print(f"  {'op':<16} {'shape':>17} {'n':>11} {'median ms':>11} {'min ms':>11} "
          f"{'rate':>9} {'unit':<8} {'reps':>4} {'thr':>3} {'oth%':>5}")
    print("  " + "-" * 104)


def bench_matmul(b, np_ver, torch_ver, ob_threads):
    warm, reps = matmul_reps(b.args.quick)
    rng = np.random.default_rng(1234)

    table_header(f"a. numpy.matmul float32  C[d_out,d_in] = B[d_out,r] @ A[r,d_in]  "
                 f"(OpenBLAS sgemm, {ob_threads} threads)  rate = 2*d_out*r*d_in / t")
    for (d_out, r, d_in) in MATMUL_SHAPES:
        B = rng.standard_normal((d_out, r), dtype=np.float32)
        A = rng.standard_normal((r, d_in), dtype=np.float32)
        C = np.empty((d_out, d_in), dtype=np.float32)
        flops = 2.0 * d_out * r * d_in
        ts = b.measure(lambda: np.matmul(B, A, out=C), warm, reps)
        b.add("np.matmul", "numpy", (d_out, r, d_in), d_out * d_in, ts, ob_threads, np_ver,
              "gflops", lambda ms: flops / (ms * 1e-3) / 1e9, {"flops": flops})
        del A, B, C

    table_header(f"b. torch.matmul float32 (out=)  same shapes  "
                 f"(torch -> BLAS sgemm; OpenBLAS {ob_threads} threads)")
    g = torch.Generator().manual_seed(1234)
    for (d_out, r, d_in) in MATMUL_SHAPES:
        B = torch.randn(d_out, r, generator=g, dtype=torch.float32)
        A = torch.randn(r, d_in, generator=g, dtype=torch.float32)
        C = torch.empty(d_out, d_in, dtype=torch.float32)
        flops = 2.0 * d_out * r * d_in
        ts = b.measure(lambda: torch.matmul(B, A, out=C), warm, reps)
        b.add("torch.matmul", "torch", (d_out, r, d_in), d_out * d_in, ts, ob_threads, torch_ver,
              "gflops", lambda ms: flops / (ms * 1e-3) / 1e9,
              {"flops": flops, "torch_threads": torch.get_num_threads()})
        del A, B, C


def trim(x, k):
    """Official-CoPA-style trim: keep entries with |x| >= k-th smallest |x|."""
    t = torch.kthvalue(x.abs().flatten(), k).values
    return x * (x.abs() >= t)


def bench_select(b, torch_ver, tthreads):
    table_header(f"c/d. selection & trim on float32 (torch, {tthreads} intra-op threads)  "
                 f"k = int(n*(1-{DENSITY_TRIM}))  rate = 4*n bytes / t")
    for shape in SELECT_SHAPES:
        g = torch.Generator().manual_seed(42)
        x = torch.randn(*shape, generator=g, dtype=torch.float32)
        n = x.numel()
        k = int(n * (1 - DENSITY_TRIM))
        keep = n - k
        a = x.abs().flatten()  # precomputed |x| for the "selection alone" timings
        warm, reps = select_reps(n, b.args.quick)
        gbps = lambda ms, n=n: 4.0 * n / (ms * 1e-3) / 1e9  # noqa: E731
        extra = {"k": k, "torch_threads": tthreads}

        # sanity: kthvalue threshold and topk agree
        kv = torch.kthvalue(a, k).values
        tk = torch.topk(a, keep).values.min()
        assert kv.item() <= tk.item(), (kv.item(), tk.item())

        cases = [
            ("kthvalue", lambda: torch.kthvalue(a, k)),                 # c: selection alone
            ("trim", lambda: trim(x, k)),                               # c: abs+kthvalue+mask
            ("topk", lambda: torch.topk(a, keep)),                      # d: selection alone
            ("abs+topk", lambda: torch.topk(x.abs().flatten(), keep)),  # d: mergekit-style
        ]
        for op, fn in cases:
            ts = b.measure(fn, warm, reps)
            b.add(op, "torch", shape, n, ts, tthreads, torch_ver, "gbps", gbps, extra)
        del x, a
        gc.collect()


def bench_lora(b, torch_ver, tthreads):
    g = torch.Generator().manual_seed(7)
    tensors = []
    for _layer in range(LORA_LAYERS):
        for rows in LORA_B_ROWS:
            tensors.append(torch.randn(LORA_RANK, LORA_D_IN, generator=g))  # A: 16x4096
            tensors.append(torch.randn(rows, LORA_RANK, generator=g))       # B: d_out x 16
    ks = [int(t.numel() * (1 - DENSITY_TRIM)) for t in tensors]
    n_total = sum(t.numel() for t in tensors)
    n_a = sum(1 for t in tensors if t.shape[0] == LORA_RANK)
    n_b4 = sum(1 for t in tensors if t.shape == (4096, LORA_RANK))
    n_b14 = sum(1 for t in tensors if t.shape == (14336, LORA_RANK))

    def run_all():
        out = [None] * len(tensors)
        for i, (t, k) in enumerate(zip(tensors, ks)):
            out[i] = trim(t, k)
        return out

    warm, reps = lora_reps(b.args.quick)
    table_header(f"e. LoRA factor set: {n_a} A 16x4096 + {n_b4} B 4096x16 + {n_b14} B 14336x16 "
                 f"= {len(tensors)} tensors, trimmed one by one (kthvalue+mask)")
    ts = b.measure(run_all, warm, reps)
    rec = b.add("lora_set_trim", "torch", (len(tensors),), n_total, ts, tthreads, torch_ver,
                "gbps", lambda ms: 4.0 * n_total / (ms * 1e-3) / 1e9,
                {"tensors": len(tensors), "torch_threads": tthreads})
    rec["elements_per_s"] = round(n_total / (rec["ms"] * 1e-3), 1)
    rec["ms_per_tensor"] = round(rec["ms"] / len(tensors), 4)
    print(f"  -> {rec['elements_per_s'] / 1e6:.1f} M elements/s, "
          f"{rec['ms_per_tensor']:.3f} ms per tensor on average")


# --------------------------------------------------------------------------- #
# main
# --------------------------------------------------------------------------- #

def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="fewer repetitions (~1 min)")
    ap.add_argument("--json", metavar="FILE", help="write the records as a JSON list")
    ap.add_argument("--torch-threads", default="all",
                    help="torch intra-op threads: 'all' (= usable CPUs, default), "
                         "'default' (leave torch's own choice), or an integer")
    ap.add_argument("--wait-idle", type=float, default=0, metavar="SEC",
                    help="before each measurement wait up to SEC seconds for other "
                         "processes to stop using the CPUs (default 0: don't wait)")
    ap.add_argument("--retry-contended", type=int, default=0, metavar="N",
                    help="re-measure a row up to N times if other processes used >= 10%% "
                         "of the CPUs while it was timed; the least-contended try is kept")
    ap.add_argument("--only", default="abcde",
                    help="subset of sections to run, e.g. 'ab' or 'cde' (default abcde)")
    args = ap.parse_args()

    t_start = time.perf_counter()
    machine = machine_info()
    snap0 = CpuSnap()
    torch_default_threads = torch.get_num_threads()
    if args.torch_threads == "all":
        torch.set_num_threads(machine["usable_cpus"])
    elif args.torch_threads != "default":
        torch.set_num_threads(int(args.torch_threads))
    tthreads = torch.get_num_threads()

    np.ones((64, 64), np.float32) @ np.ones((64, 64), np.float32)  # make sure BLAS is loaded
    lib, ob_path = find_openblas()
    ob = openblas_info(lib)
    ob_threads = ob.get("num_threads", -1)
    np_ver = f"numpy {np.__version__} / OpenBLAS {ob.get('version', '?')} ({ob.get('corename', '?')})"
    torch_ver = (f"torch {torch.__version__} (deb {dpkg_version('python3-torch') or '?'}) / "
                 f"OpenBLAS {ob.get('version', '?')} ({ob.get('corename', '?')})")
    meta = {"machine": machine}
    b = Bench(args, meta)

    env_keys = ["OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE", "OPENBLAS_NUM_THREADS",
                "OPENBLAS_VERBOSE", "GOTO_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"]
    print("=" * 100)
    print(f"CopaKernels peer benchmarks (Python stack)   {'QUICK' if args.quick else 'FULL'} run")
    print("=" * 100)
    print(f"command       : {sys.executable} {' '.join(sys.argv)}")
    print(f"date          : {machine['date']}")
    print(f"cpu           : {machine['cpu']}   nproc={machine['nproc']}  "
          f"usable={machine['usable_cpus']}  mem={machine['mem_total_gib']} GiB")
    print(f"os / kernel   : {machine['os']} / {machine['kernel']}")
    print(f"python        : {machine['python']}")
    print(f"numpy         : {np.__version__} (deb {dpkg_version('python3-numpy') or '?'})")
    print(f"torch         : {torch.__version__} (deb {dpkg_version('python3-torch') or '?'}), "
          f"parallel backend: {torch.__config__.parallel_info().splitlines()[-1].split(':')[-1].strip()}")
    print(f"openblas      : {ob.get('config', 'NOT FOUND')}")
    print(f"  loaded from : {ob_path}  (deb libopenblas0-pthread "
          f"{dpkg_version('libopenblas0-pthread') or '?'})")
    print(f"  core type   : {ob.get('corename', '?')}   threading: {ob.get('parallel', '?')}   "
          f"threads: {ob_threads}")
    print(f"  libblas.so.3 alternative: {blas_alternative()}")
    tpc = threadpoolctl_info()
    if tpc is not None:
        for i in tpc:
            print(f"  threadpoolctl: {i}")
    else:
        print("  threadpoolctl: not installed (core type read via openblas_get_corename)")
    for kname in env_keys:
        print(f"env {kname:<20}: {os.environ.get(kname, '<unset>')}")
    print(f"threads       : torch intra-op = {tthreads} (torch default was "
          f"{torch_default_threads}, --torch-threads={args.torch_threads}), "
          f"torch inter-op = {torch.get_num_interop_threads()}, OpenBLAS = {ob_threads}")
    pct0 = wait_for_idle(args.wait_idle, machine["usable_cpus"] or 1)
    print(f"idle check    : other processes use {pct0:.0f}% of the CPUs at start"
          + ("  (WARNING: machine is busy, timings will be noisy)" if pct0 >= 10 else ""))
    meta.update({"openblas": ob, "openblas_path": ob_path, "env": {k: os.environ.get(k) for k in env_keys},
                 "torch_default_threads": torch_default_threads, "torch_threads": tthreads})

    if "a" in args.only or "b" in args.only:
        bench_matmul(b, np_ver, torch_ver, ob_threads)
    if "c" in args.only or "d" in args.only:
        bench_select(b, torch_ver, tthreads)
    if "e" in args.only:
        bench_lora(b, torch_ver, tthreads)

    total = time.perf_counter() - t_start
    other = other_cpu_pct(snap0, CpuSnap(), machine["usable_cpus"] or 1)
    print()
    worst = max((r["other_cpu_pct"] for r in b.records), default=0.0)
    print(f"total wall time: {total:.1f} s;  CPU used by other processes (+steal): "
          f"{other:.1f}% of {machine['usable_cpus']} CPUs over the whole run (incl. --wait-idle "
          f"waits), at most {worst:.1f}% during any timed row (oth% column)")
    if worst >= 10 or (other >= 10 and not args.wait_idle):
        print("WARNING: other processes competed for the CPUs; rows marked '<-- CPU contention' "
              "are not reliable (re-run on an idle machine, or use --wait-idle 300)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(b.records, f, indent=1)
            f.write("\n")
        print(f"wrote {len(b.records)} records to {args.json}")


if __name__ == "__main__":
    main()
