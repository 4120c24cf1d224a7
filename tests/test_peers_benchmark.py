"""The peers of benchmarks/peers.py (issue 18 item 5) compute headflow's head ablation: their answer logits agree with
the engine's on tiny models, so the side-by-side speed table compares like with like. The nnsight peers are checked
only where nnsight is installed (an optional extra, ``pip install headflow[peers]``)."""

import sys
from pathlib import Path

import pytest
import torch

from headflow import load_model

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import peers  # noqa: E402

TOL = peers.TOLERANCE


@pytest.fixture(scope="module", params=["default", "tiny:qwen2_vl"])
def setup(request):
    lm = load_model(request.param)
    return peers.build_setup("default", model=lm)


def _masks(setup):
    masks = setup.masks(3, seed=3, prob=0.3)
    return torch.cat([masks, torch.ones_like(masks[:1])])  # + every head ablated


def test_hooks_peers_match_headflow(setup):
    masks = _masks(setup)
    reference = peers.headflow_logits(setup, masks, batch=4)
    clean = setup.prompt.clean_logits[setup.answer]
    assert float((reference - clean).abs().max()) > 100 * TOL  # the masks change the answer logit
    for batch in (1, 4):
        got = peers.hooks_logits(setup, masks, batch)
        assert float((got - reference).abs().max()) <= TOL, batch
    got = peers.hooks_cached_logits(setup, masks, 4)  # the prefix-cache peer
    assert float((got - reference).abs().max()) <= TOL


def test_nnsight_peers_match_headflow(setup):
    pytest.importorskip("nnsight")
    masks = _masks(setup)
    reference = peers.headflow_logits(setup, masks, batch=4)
    # nnsight 0.8 cannot batch invokes of M-RoPE inputs (Qwen2-VL): one invoke per trace there
    for mode in ("1", "B") if peers.multi_axis_positions(setup) else ("1", "inv", "B"):
        got = peers.nnsight_logits(setup, masks, 3, mode)
        assert float((got - reference).abs().max()) <= TOL, mode


def test_unverified_peer_gets_no_ratio():
    rates = {"headflow": 100.0, "hooks-1": 10.0, "hooks-B": 20.0}
    assert peers.verified_ratios(rates, {"hooks-1": True, "hooks-B": False}) == {"hooks-1": 10.0}
