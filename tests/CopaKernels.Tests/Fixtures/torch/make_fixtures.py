#!/usr/bin/env python3
"""Writes the torch.save fixtures that TorchCheckpointTests reads, with whichever torch runs it.

    python3 make_fixtures.py                      # Debian 12: python3-torch 1.13
    .ci/in-pocl.sh python3 tests/CopaKernels.Tests/Fixtures/torch/make_fixtures.py
                                                  # Debian 13: python3-torch 2.6 (+ python3-safetensors)

Every value is k/64 for a small integer k, exact in BF16, F16 and F32, so both torch versions write
the same bits and the tests can compare them with reference.safetensors (written where the
safetensors package is installed) and with the formula itself: element i of a tensor numbered n is
((i * 37 + n * 11) % 251 - 125) / 64.
"""
import io
import os
import sys

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
VERSION = ".".join(torch.__version__.split(".")[:2])


def values(n, shape, dtype):
    count = 1
    for d in shape:
        count *= d
    i = torch.arange(count, dtype=torch.int64)
    return (((i * 37 + n * 11) % 251 - 125).to(torch.float32) / 64).reshape(shape).to(dtype)


def state_dict():
    """A LoRA adapter's tensors in three float types, plus the shapes a reader must honour."""
    prefix = "base_model.model.model.layers.0."
    sd = {}
    sd[prefix + "self_attn.q_proj.lora_A.weight"] = values(0, (4, 16), torch.bfloat16)
    sd[prefix + "self_attn.q_proj.lora_B.weight"] = values(1, (16, 4), torch.bfloat16)
    sd[prefix + "self_attn.v_proj.lora_A.weight"] = values(2, (4, 16), torch.float16)
    sd[prefix + "self_attn.v_proj.lora_B.weight"] = values(3, (24, 4), torch.float16)
    # nn.Parameter pickles through torch._utils._rebuild_parameter.
    sd[prefix + "mlp.up_proj.lora_A.weight"] = torch.nn.Parameter(values(4, (4, 16), torch.float32))
    sd[prefix + "mlp.up_proj.lora_B.weight"] = torch.nn.Parameter(values(5, (32, 4), torch.float32), requires_grad=False)
    # Views of one storage: the whole, rows 2..4 (storage offset 16), the last 8 elements (offset 40).
    whole = values(6, (6, 8), torch.float32)
    sd["shared.whole"] = whole
    sd["shared.rows"] = whole[2:5]
    sd["shared.tail"] = whole.view(-1)[40:]
    # One tensor under two names (tied weights): pickled once, the second name a memo reference.
    tied = values(7, (4, 4), torch.bfloat16)
    sd["tied.embed"] = tied
    sd["tied.head"] = tied
    sd["other.f64"] = values(8, (3,), torch.float64)
    sd["other.i64"] = torch.arange(-2, 3, dtype=torch.int64)
    sd["other.i32"] = torch.arange(-2, 3, dtype=torch.int32)
    sd["other.i16"] = torch.arange(-2, 3, dtype=torch.int16)
    sd["other.i8"] = torch.arange(-2, 3, dtype=torch.int8)
    sd["other.u8"] = torch.arange(250, 255, dtype=torch.uint8)
    sd["other.bool"] = torch.tensor([True, False, True, True, False])
    sd["other.scalar"] = torch.tensor(0.5)
    sd["other.empty"] = torch.zeros((0, 4), dtype=torch.float32)
    return sd


def main():
    sd = state_dict()
    torch.save(sd, os.path.join(HERE, f"torch-{VERSION}.bin"))
    torch.save(sd, os.path.join(HERE, f"torch-{VERSION}-protocol4.bin"), pickle_protocol=4)

    # A module's state_dict(): an OrderedDict whose _metadata attribute pickles with BUILD.
    module = torch.nn.Linear(4, 3)
    with torch.no_grad():
        module.weight.copy_(values(9, (3, 4), torch.float32))
        module.bias.copy_(values(10, (3,), torch.float32))
    torch.save(module.state_dict(), os.path.join(HERE, f"module-{VERSION}.bin"))

    # Saved to a file object, the archive's folder is "archive/".
    buffer = io.BytesIO()
    torch.save({"w": values(11, (4, 6), torch.float32).t()}, buffer)
    with open(os.path.join(HERE, f"noncontiguous-{VERSION}.bin"), "wb") as f:
        f.write(buffer.getvalue())

    # A PEFT adapter's weights as save_pretrained(safe_serialization=False) writes them (the LoRA
    # factors of state_dict(), nothing else), and LLaVA's non_lora_trainables.bin beside it: the
    # projector's tensors under the PEFT model's parameter names.
    torch.save({k: v for k, v in sd.items() if ".lora_" in k}, os.path.join(HERE, f"adapter-{VERSION}.bin"))
    trainables = {
        "base_model.model.model.mm_projector.0.weight": values(13, (16, 8), torch.bfloat16),
        "base_model.model.model.mm_projector.0.bias": values(14, (16,), torch.bfloat16),
    }
    torch.save(trainables, os.path.join(HERE, f"non-lora-trainables-{VERSION}.bin"))

    # The legacy format (before torch 1.6), which the reader refuses with advice.
    torch.save({"w": values(12, (2, 2), torch.float32)}, os.path.join(HERE, f"legacy-{VERSION}.pt"),
               _use_new_zipfile_serialization=False)

    try:
        from safetensors.torch import save_file
    except ImportError:
        print("safetensors is not installed: reference.safetensors not written", file=sys.stderr)
        return
    save_file({k: v.detach().contiguous().clone() for k, v in sd.items()}, os.path.join(HERE, "reference.safetensors"))
    save_file(trainables, os.path.join(HERE, "non-lora-trainables.safetensors"))


if __name__ == "__main__":
    main()
