import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
torch.set_num_threads(min(2, os.cpu_count() or 1))


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
