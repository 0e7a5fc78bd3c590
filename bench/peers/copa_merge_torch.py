#!/usr/bin/python3
"""CoPA merge of N PEFT LoRA adapters in plain PyTorch (CPU): the Python-stack
baseline for copa's end-to-end merge time.

It does what the released CoPA-Merging / RobustMerge code does
(llava/model/builder.py, load_and_merge_pretrained_model): load every adapter
tensor, then loop over the tensors module by module, stack the N tasks, and
trim each with torch.kthvalue(|x|, k, dim=1) + `>=`, compute the complementary
scaling S from the A side, clamp and normalise it, and combine. It is meant to
be a fair, straightforward port, not a slowed-down or an optimised one. Two
changes from the released code: the maths runs in float32 whatever the stored
dtype (SEMANTICS: "all arithmetic happens in fp32"), and a row whose trimmed sum is
0 gets S = 1 (SEMANTICS §2) where the released code would produce inf/NaN.

Methods (SEMANTICS §2 and §3; k = int(n*(1-density)), t = kthvalue(|x|, k),
keep |x| >= t, k = 0 keeps all; S_n[i] = sum_j |A_n[i,j]| / sum_j |Ã_n[i,j]|):

  copa-official  clamp c = 0.2 (S raised to its sorted[int(r*(1-c))] value),
                 A = λ Σ Ã_n,  B = (Σ_n λ S_n ⊙ B̃_n) / Σ_n S_n  (columnwise),
                 written as the released code computes it; same r and the
                 first adapter's lora_alpha.
  copa           (paper) clamp 0 by default (--clamp), S̃_n = S_n / Σ_m S_m,
                 exact rank-Σr output B = [λ s_1 B̃_1 diag(S̃_1) | ...],
                 A = [Ã_1; ...; Ã_N], r = lora_alpha = Σr (scale 1),
                 s_n = lora_alpha_n / r_n (/ sqrt(r_n) with use_rslora).

The `safetensors` package is not needed: the format is read and written here
(8-byte little-endian header length, JSON header, raw little-endian data).
Input dtypes BF16, F16, F32; output dtype = the inputs' dtype unless
--out-dtype is given. Run it with Debian's /usr/bin/python3 (python3-torch).

Example:
  /usr/bin/python3 bench/peers/copa_merge_torch.py --method copa-official \\
      --adapter A1 --adapter A2 --adapter A3 --out OUT --threads 2

Prints the wall time of each phase (import, load, merge, save) and the total.
"""

import time

_T_START = time.perf_counter()

import argparse  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import os  # noqa: E402
import re  # noqa: E402
import struct  # noqa: E402
import sys  # noqa: E402

import torch  # noqa: E402

_T_IMPORTED = time.perf_counter()

ST_DTYPES = {"BF16": torch.bfloat16, "F16": torch.float16, "F32": torch.float32}
ST_NAMES = {v: k for k, v in ST_DTYPES.items()}
CLI_DTYPES = {"bf16": torch.bfloat16, "f16": torch.float16, "f32": torch.float32}
# Integer views of the same width, so that tensor bytes can go through numpy
# (numpy has no bfloat16).
SAME_WIDTH_INT = {torch.bfloat16: torch.int16, torch.float16: torch.int16, torch.float32: torch.int32}

LORA_KEY = re.compile(r"^(?P<module>.+)\.lora_(?P<side>[AB])(?:\.(?P<name>[^.]+))?\.weight$")


class UsageError(Exception):
    pass


# ----------------------------------------------------------------------------- safetensors I/O

def read_safetensors(path):
    """Returns (ordered dict name -> tensor, metadata). Tensors are views on one
    bytearray holding the whole file (no per-tensor copy)."""
    size = os.path.getsize(path)
    buf = bytearray(size)
    with open(path, "rb") as f:
        view = memoryview(buf)
        got = 0
        while got < size:
            n = f.readinto(view[got:])
            if not n:
                raise UsageError(f"{path}: truncated file")
            got += n
    if size < 8:
        raise UsageError(f"{path}: not a safetensors file")
    (hlen,) = struct.unpack_from("<Q", buf, 0)
    if 8 + hlen > size:
        raise UsageError(f"{path}: header length {hlen} past the end of the file")
    header = json.loads(bytes(buf[8:8 + hlen]).decode("utf-8"))
    meta = header.pop("__metadata__", None)
    base = 8 + hlen
    tensors = {}
    for name, info in header.items():
        dt = ST_DTYPES.get(info["dtype"])
        if dt is None:
            raise UsageError(f"{path}: tensor {name}: unsupported dtype {info['dtype']}")
        shape = list(info["shape"])
        begin, end = info["data_offsets"]
        count = math.prod(shape)
        esize = torch.tensor([], dtype=dt).element_size()
        if end - begin != count * esize or base + end > size:
            raise UsageError(f"{path}: tensor {name}: bad data_offsets {info['data_offsets']}")
        if count == 0:
            t = torch.empty(shape, dtype=dt)
        else:
            t = torch.frombuffer(buf, dtype=dt, count=count, offset=base + begin).reshape(shape)
        tensors[name] = t
    return tensors, meta


def write_safetensors(path, tensors, metadata=None):
    """tensors: dict name -> contiguous CPU tensor (BF16/F16/F32)."""
    names = sorted(tensors)
    header = {}
    if metadata:
        header["__metadata__"] = metadata
    off = 0
    for name in names:
        t = tensors[name]
        nbytes = t.numel() * t.element_size()
        header[name] = {"dtype": ST_NAMES[t.dtype], "shape": list(t.shape), "data_offsets": [off, off + nbytes]}
        off += nbytes
    hbytes = json.dumps(header, separators=(",", ":")).encode("utf-8")
    hbytes += b" " * (-len(hbytes) % 8)  # pad the header to 8 bytes, as safetensors does
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(hbytes)))
        f.write(hbytes)
        for name in names:
            t = tensors[name].contiguous()
            if t.numel():
                f.write(t.view(SAME_WIDTH_INT[t.dtype]).numpy().data)
    os.replace(tmp, path)


# ----------------------------------------------------------------------------- adapters

def load_adapter(folder):
    cfg_path = os.path.join(folder, "adapter_config.json")
    st_path = os.path.join(folder, "adapter_model.safetensors")
    for p in (cfg_path, st_path):
        if not os.path.isfile(p):
            raise UsageError(f"{p}: not found")
    with open(cfg_path) as f:
        cfg = json.load(f)
    if cfg.get("use_dora"):
        raise UsageError(f"{cfg_path}: use_dora is not supported")
    if cfg.get("rank_pattern") or cfg.get("alpha_pattern"):
        raise UsageError(f"{cfg_path}: rank_pattern/alpha_pattern are not supported")
    tensors, _ = read_safetensors(st_path)
    return cfg, tensors


def scale_of(cfg):
    r, alpha = cfg["r"], cfg.get("lora_alpha", cfg["r"])
    return alpha / math.sqrt(r) if cfg.get("use_rslora") else alpha / r


def group_modules(tensors, where):
    """name -> {'A': key, 'B': key}, in the file's order of first appearance."""
    mods = {}
    for key in tensors:
        m = LORA_KEY.match(key)
        if not m:
            raise UsageError(f"{where}: tensor {key} is not a lora_A/lora_B weight")
        mods.setdefault(m.group("module"), {})[m.group("side")] = key
    for mod, sides in mods.items():
        if set(sides) != {"A", "B"}:
            raise UsageError(f"{where}: module {mod} lacks lora_A or lora_B")
    return mods


# ----------------------------------------------------------------------------- CoPA

def trim(w, density):
    """w: (T, ...) float32 stack of one tensor over the T tasks. Per task, keep
    the entries with |x| >= kthvalue(|x|, k), k = int(n*(1-density)), as the
    released code does (one kthvalue over dim 1 of the (T, n) view)."""
    T = w.shape[0]
    flat = w.reshape(T, -1)
    n = flat.shape[1]
    k = int(n * (1 - density))
    if k == 0:
        return w.clone(), None
    absw = flat.abs()
    kth, _ = absw.kthvalue(k, dim=1, keepdim=True)
    masks = absw >= kth
    return (masks * flat).reshape(w.shape), masks.reshape(w.shape)


def complementary_scale(A, A_trim, clamp_c):
    """S (T, r): row sums of |A| over row sums of |Ã|, 1 where the latter is 0;
    then per task raised to its sorted[int(r*(1-c))] value when c > 0."""
    num = A.abs().sum(dim=-1)
    den = A_trim.abs().sum(dim=-1)
    S = torch.where(den == 0, torch.ones_like(num), num / den)
    zero_rows = int((den == 0).sum())
    r = S.shape[1]
    if clamp_c > 0:
        idx = int(r * (1 - clamp_c))
        if idx < r:
            sorted_s, _ = torch.sort(S, dim=1)
            S = torch.clamp(S, min=sorted_s[:, idx:idx + 1])  # = torch.clamp(x, min, max=row max)
    return S, zero_rows


def merge(adapters, method, density, lam, clamp_c, out_dtype):
    cfgs = [c for c, _ in adapters]
    sets = [t for _, t in adapters]
    mods = group_modules(sets[0], "adapter 1")
    for i, ts in enumerate(sets[1:], start=2):
        if set(ts) != set(sets[0]):
            raise UsageError(f"adapter {i}: tensor names differ from adapter 1")
        for k, t in ts.items():
            if t.shape != sets[0][k].shape:
                raise UsageError(f"adapter {i}: tensor {k}: shape {list(t.shape)} != {list(sets[0][k].shape)}")
    ranks = {c["r"] for c in cfgs}
    if len(ranks) != 1:
        raise UsageError(f"CoPA needs one shared rank, got {sorted(ranks)}")
    if method == "copa-official" and len({c.get("lora_alpha") for c in cfgs}) != 1:
        raise UsageError("copa-official needs one shared lora_alpha")
    T = len(sets)
    scales = [scale_of(c) for c in cfgs]
    out = {}
    zero_rows = 0
    for mod, keys in mods.items():
        kA, kB = keys["A"], keys["B"]
        # Stack the T tasks of each factor, in float32.
        A = torch.stack([ts[kA] for ts in sets]).to(torch.float32)  # (T, r, d_in)
        B = torch.stack([ts[kB] for ts in sets]).to(torch.float32)  # (T, d_out, r)
        if A.shape[1] != B.shape[2]:
            raise UsageError(f"module {mod}: lora_A {list(A.shape[1:])} and lora_B {list(B.shape[1:])} disagree")
        A_t, _ = trim(A, density)
        B_t, _ = trim(B, density)
        S, z = complementary_scale(A, A_t, clamp_c)
        zero_rows += z
        if method == "copa-official":
            fuse = torch.full((T, 1, 1), lam, dtype=torch.float32)
            A_m = torch.sum(fuse * A_t, dim=0)
            B_m = torch.sum(fuse * S.unsqueeze(1) * B_t, dim=0) / torch.sum(S.unsqueeze(1), dim=0)
        else:  # copa (paper): exact rank-Σr pair
            S_norm = S / S.sum(dim=0, keepdim=True)  # (T, r)
            coef = lam * torch.tensor(scales, dtype=torch.float32)[:, None] * S_norm  # (T, r)
            B_m = torch.cat([B_t[n] * coef[n] for n in range(T)], dim=1)  # (d_out, T r)
            A_m = A_t.reshape(-1, A_t.shape[-1])  # (T r, d_in)
        out[kA] = A_m.to(out_dtype).contiguous()
        out[kB] = B_m.to(out_dtype).contiguous()
    return out, len(mods), zero_rows


def out_config(cfgs, method):
    cfg = dict(cfgs[0])
    if method == "copa":
        total = sum(c["r"] for c in cfgs)
        cfg["r"] = total
        cfg["lora_alpha"] = total
        cfg["use_rslora"] = False
        cfg["rank_pattern"] = {}
        cfg["alpha_pattern"] = {}
    return cfg


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--method", choices=["copa-official", "copa"], default="copa-official")
    p.add_argument("--adapter", action="append", required=True, help="PEFT adapter folder (repeatable, in order)")
    p.add_argument("--out", required=True, help="output PEFT adapter folder")
    p.add_argument("--density", type=float, default=0.2, help="fraction kept by the trim (default 0.2)")
    p.add_argument("--lambda", dest="lam", type=float, default=2.0, help="λ (default 2)")
    p.add_argument("--clamp", type=float, default=None,
                   help="clamp c in [0,1) (default 0.2 for copa-official, 0 for copa)")
    p.add_argument("--threads", type=int, default=0, help="torch.set_num_threads (default: all usable cores)")
    p.add_argument("--out-dtype", choices=sorted(CLI_DTYPES), default=None,
                   help="output dtype (default: the inputs' dtype; f32 if they differ)")
    p.add_argument("--quiet", action="store_true", help="print only the timing line")
    a = p.parse_args(argv)
    if not (0 < a.density <= 1):
        raise UsageError("--density must be in (0, 1]")
    clamp_c = a.clamp if a.clamp is not None else (0.2 if a.method == "copa-official" else 0.0)
    if not (0 <= clamp_c < 1):
        raise UsageError("--clamp must be in [0, 1)")
    if len(a.adapter) < 2:
        raise UsageError("need at least two --adapter")
    threads = a.threads or len(os.sched_getaffinity(0))
    torch.set_num_threads(threads)

    t0 = time.perf_counter()
    adapters = [load_adapter(d) for d in a.adapter]
    t1 = time.perf_counter()

    in_dtypes = {t.dtype for _, ts in adapters for t in ts.values()}
    if a.out_dtype:
        out_dtype = CLI_DTYPES[a.out_dtype]
    else:
        out_dtype = in_dtypes.pop() if len(in_dtypes) == 1 else torch.float32
    out, n_mod, zero_rows = merge(adapters, a.method, a.density, a.lam, clamp_c, out_dtype)
    t2 = time.perf_counter()

    os.makedirs(a.out, exist_ok=True)
    cfg = out_config([c for c, _ in adapters], a.method)
    write_safetensors(os.path.join(a.out, "adapter_model.safetensors"), out, {"format": "pt"})
    with open(os.path.join(a.out, "adapter_config.json"), "w") as f:
        json.dump(cfg, f, indent=2)
    t3 = time.perf_counter()

    n_in = sum(t.numel() for _, ts in adapters for t in ts.values())
    if not a.quiet:
        print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; method {a.method}, "
              f"{len(adapters)} adapters, {n_mod} modules, {n_in / 1e6:.1f} M input parameters, "
              f"density {a.density}, lambda {a.lam}, clamp {clamp_c}, out {ST_NAMES[out_dtype]} "
              f"r={cfg['r']} lora_alpha={cfg.get('lora_alpha')}"
              + (f"; {zero_rows} rows with a zero trimmed sum (S=1)" if zero_rows else ""))
    print(f"time: import {_T_IMPORTED - _T_START:.3f} s, load {t1 - t0:.3f} s, merge {t2 - t1:.3f} s, "
          f"save {t3 - t2:.3f} s, total (load+merge+save) {t3 - t0:.3f} s, "
          f"total incl. import {t3 - _T_START:.3f} s")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except UsageError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
