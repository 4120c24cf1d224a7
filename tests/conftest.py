"""Shared fixtures and the suite's rule for comparing floats.

Rule: a test compares floats bit for bit only between computations it controls completely (the same
process, the same thread count, the same inputs in the same order), e.g. a resumed run against an
uninterrupted one in this process. Results from *other* processes or thread counts (Ray workers, a
subprocess, another machine) are compared with :func:`assert_close_across_processes`: reductions there may
be summed in another order, which moves float32 values by a few units in the last place.
"""

import os

import numpy as np
import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
torch.set_num_threads(min(2, os.cpu_count() or 1))

#: "Identical up to floating-point summation order": every value within this fraction of the largest
#: magnitude in its array (float32 sums of a few hundred terms differ by ~1e-7 of their size); a lone float
#: within this fraction of itself or 1e-6.
ACROSS_PROCESSES_RTOL = 1e-5


def assert_close_across_processes(got, want, path: str = "") -> None:
    """``got`` equals ``want`` up to floating-point summation order (see :data:`ACROSS_PROCESSES_RTOL`).

    Arrays (and lists of numbers) are compared element-wise with a tolerance scaled by the largest magnitude
    in ``want``; dicts and lists recursively with the same keys and lengths; everything else exactly.
    """
    if isinstance(want, dict):
        assert isinstance(got, dict) and got.keys() == want.keys(), path
        for key in want:
            assert_close_across_processes(got[key], want[key], f"{path}.{key}")
    elif isinstance(want, np.ndarray) or (isinstance(want, list) and want and all(
            isinstance(v, (int, float)) and not isinstance(v, bool) for v in want)):
        got_a, want_a = np.asarray(got, dtype=np.float64), np.asarray(want, dtype=np.float64)
        assert got_a.shape == want_a.shape, path
        scale = float(np.nanmax(np.abs(want_a))) if np.isfinite(want_a).any() else 0.0
        np.testing.assert_allclose(got_a, want_a, rtol=0, atol=ACROSS_PROCESSES_RTOL * max(scale, 1e-12),
                                   equal_nan=True, err_msg=path)
    elif isinstance(want, list):
        assert isinstance(got, list) and len(got) == len(want), path
        for i, (g, w) in enumerate(zip(got, want)):
            assert_close_across_processes(g, w, f"{path}[{i}]")
    elif isinstance(want, float):
        assert np.isclose(got, want, rtol=ACROSS_PROCESSES_RTOL, atol=1e-6, equal_nan=True), (path, got, want)
    else:
        assert got == want, path


@pytest.fixture(scope="session")
def tiny_models():
    """Tiny random-weight models, built once per session and shared (read-only) by tests."""
    from headflow import load_model

    cache = {}

    def get(family: str):
        if family not in cache:
            cache[family] = load_model(f"tiny:{family}")
        return cache[family]

    return get


#: A user's family outside headflow: LLaVA under another name and model type (what ``--adapter`` loads).
USER_ADAPTER = '''"""A user's family: LLaVA under another name."""
from headflow.models import register_adapter
from headflow.models.families.llava import LlavaAdapter


@register_adapter
class MyFamilyAdapter(LlavaAdapter):
    name = "my_family"
    model_types = ("my_family",)

    @classmethod
    def tiny(cls, seed=0):
        model, processor = LlavaAdapter.tiny(seed)
        model.config.model_type = "my_family"
        return model, processor
'''


@pytest.fixture
def user_adapter_file(tmp_path):
    """An adapter file registering ``my_family``; afterwards the registry, the loaded-files record, the module and
    ``HEADFLOW_ADAPTERS`` are as they were (no test sees the family of another)."""
    import sys

    from headflow.models.adapter import ADAPTER_FILES, ADAPTERS, ADAPTERS_ENV, family_names

    family_names()  # the built-in families are in the snapshot
    path = tmp_path / "my_family.py"
    path.write_text(USER_ADAPTER)
    before, files, env = dict(ADAPTERS), dict(ADAPTER_FILES), os.environ.get(ADAPTERS_ENV)
    yield path
    for name in set(ADAPTER_FILES) - set(files):
        sys.modules.pop(name, None)
    ADAPTERS.clear()
    ADAPTERS.update(before)
    ADAPTER_FILES.clear()
    ADAPTER_FILES.update(files)
    if env is None:
        os.environ.pop(ADAPTERS_ENV, None)
    else:
        os.environ[ADAPTERS_ENV] = env
