"""The prefix path's attention kernels (issue 18): which kernel computes a block, and the glue around each fused
kernel (bias layout, log-sum-exp padding, queries with no key), checked on the CPU.

The CUDA kernels themselves run only on a GPU; ``benchmarks/gpu.sh`` checks them there against the written-out
computation (``InterventionEngine(kernel="written")``) before it times anything. Here each CUDA kernel is replaced
by a stand-in with its calling convention (and its strict requirements asserted), so that the code around it is
exact against the written-out reference.
"""

import pytest
import torch

from headflow import Baseline, HeadflowError, InterventionEngine
from headflow.errors import HeadflowWarning
from headflow.intervene import attention
from headflow.intervene.attention import attend_with_lse, block_kernel
from headflow.intervene.check import random_rows

bf16, f16, f32, f64 = torch.bfloat16, torch.float16, torch.float32, torch.float64


@pytest.mark.parametrize("args, kernel", [
    (("cpu", f32, 64, 64, True), "cpu-flash"),
    (("cpu", bf16, 128, 128, False), "cpu-flash"),
    (("cpu", f16, 64, 64, False), "written"),  # no CPU flash kernel for float16
    (("cuda", bf16, 128, 128, False, (9, 0)), "cuda-flash"),
    (("cuda", f16, 256, 256, False, (8, 0)), "cuda-flash"),
    (("cuda", bf16, 128, 128, True, (9, 0)), "cuda-efficient"),  # a mask: the flash kernel takes none
    (("cuda", bf16, 128, 128, False, (7, 0)), "cuda-efficient"),  # pre-Ampere: no FlashAttention-2
    (("cuda", bf16, 288, 288, False, (9, 0)), "cuda-efficient"),  # head dim above 256
    (("cuda", f32, 64, 64, False, (9, 0)), "cuda-efficient"),  # float32: memory-efficient kernel
    (("cuda", f32, 66, 66, False, (9, 0)), "written"),  # head dim not aligned
    (("cuda", bf16, 72, 64, False, (9, 0)), "cuda-efficient"),  # key and value dims differ
    (("cuda", f64, 64, 64, False, (9, 0)), "written"),
    (("mps", f32, 64, 64, False), "written"),
])
def test_which_kernel_computes_a_block(args, kernel):
    assert block_kernel(*args) == kernel
    assert block_kernel(*args, choice="written") == "written"


def blocks(seed: int, dtype=f32):
    """Query/key/value blocks in the prefix path's layouts and a mask with a fully masked query row."""
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(1, 2, 37, 16, generator=g, dtype=dtype)  # folded queries (1, G, rows * S, D)
    k = torch.randn(1, 2, 13, 16, generator=g, dtype=dtype)
    v = torch.randn(1, 2, 13, 16, generator=g, dtype=dtype)
    allowed = torch.rand(1, 1, 37, 13, generator=g) < 0.7  # broadcast over heads, as the suffix block's mask
    allowed[..., 5, :] = False
    return q, k, v, allowed


def fake_flash(q, k, v, dropout, causal, debug, *, scale):
    assert dropout == 0.0 and not causal and q.is_contiguous() and k.is_contiguous()
    out, lse = attention._written(q, k, v, None, scale)
    return out, lse, None, None, 0, 0, None, None, None


def fake_efficient(q, k, v, bias, compute_lse, dropout, causal, *, scale):
    assert compute_lse and dropout == 0.0 and not causal
    if bias is not None:
        assert bias.dtype == q.dtype and tuple(bias.shape) == (q.shape[0], q.shape[1], q.shape[2], k.shape[2])
        assert bias.stride(-2) % 16 == 0  # the kernel's aligned rows
    scores = (q @ k.transpose(-1, -2)).float() * scale + (0 if bias is None else bias.float())
    lse = scores.logsumexp(-1)
    out = torch.nan_to_num(torch.softmax(scores, -1)).to(v.dtype) @ v
    padded = torch.full((*lse.shape[:-1], -(-lse.shape[-1] // 32) * 32), 123.0)  # garbage past the queries
    padded[..., :lse.shape[-1]] = lse
    return out, padded, None, None


@pytest.mark.parametrize("name, fake", [("cuda-flash", fake_flash), ("cuda-efficient", fake_efficient)])
def test_fused_kernel_glue_equals_the_written_out_block(name, fake, monkeypatch):
    q, k, v, allowed = blocks(0)
    mask = None if name == "cuda-flash" else allowed
    function = attention._KERNEL_FUNCTIONS[name]
    monkeypatch.setitem(attention._KERNEL_FUNCTIONS, "cpu-flash", lambda *a: function(*a, op=fake))
    got_out, got_lse = attend_with_lse(q, k, v, mask, 0.25)
    want_out, want_lse = attend_with_lse(q, k, v, mask, 0.25, kernel="written")
    torch.testing.assert_close(got_out, want_out, rtol=0, atol=1e-5)
    torch.testing.assert_close(got_lse, want_lse, rtol=0, atol=1e-5)
    if mask is not None:
        assert got_lse[0, :, 5].eq(float("-inf")).all() and got_out[0, :, 5].eq(0).all()  # the query with no key


def test_a_kernel_that_refuses_a_block_is_replaced_by_the_written_out_one(monkeypatch):
    def refuse(*args):
        raise RuntimeError("No available kernel. Aborting execution.")

    monkeypatch.setitem(attention._KERNEL_FUNCTIONS, "cpu-flash", refuse)
    q, k, v, allowed = blocks(1)
    with pytest.warns(HeadflowWarning, match="cpu-flash attention kernel refused"):
        out, lse = attend_with_lse(q, k, v, allowed, 0.25)
    want = attend_with_lse(q, k, v, allowed, 0.25, kernel="written")
    assert torch.equal(out, want[0]) and torch.equal(lse, want[1])


def test_engine_kernel_choice(tiny_models):
    lm = tiny_models("qwen2_vl")
    with pytest.raises(HeadflowError, match="'kernel' parameter of InterventionEngine must be one of auto, written"):
        InterventionEngine(lm, kernel="flash")
    from headflow.intervene.check import CHECK_QUESTION, check_image

    fused, written = InterventionEngine(lm), InterventionEngine(lm, kernel="written")
    prompt = fused.prepare(check_image(), CHECK_QUESTION)
    rows = random_rows(lm.n_layers, lm.n_heads, 4, seed=2, knockouts=True)
    a = fused.run(prompt, rows, baseline=Baseline.mean([prompt]), path="prefix")
    b = written.run(prompt, rows, baseline=Baseline.mean([prompt]), path="prefix")
    torch.testing.assert_close(a.logits, b.logits, rtol=0, atol=1e-5)
