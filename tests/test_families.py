"""The family registry: every module in models/families/ registers an adapter, found without an import list,
and every registered family builds its tiny model and loads as ``tiny:<name>``."""

import ast
import importlib
import pkgutil
import re
from pathlib import Path

import pytest
import torch

from headflow import FamilyAdapter, HeadflowError, load_model, register_adapter
from headflow.models.adapter import ADAPTERS, adapter_class, family_names


def test_every_family_module_registers_an_adapter():
    """Independent of the registry's discovery: list the package's modules with pkgutil and import each."""
    package = importlib.import_module("headflow.models.families")
    modules = sorted(m.name for m in pkgutil.iter_modules(package.__path__, f"{package.__name__}."))
    names = family_names()
    registered_in = {cls.__module__ for cls in ADAPTERS.values()}
    for module in modules:
        importlib.import_module(module)
        assert module in registered_in, f"{module} registers no adapter (decorate its class with @register_adapter)"
    assert names == sorted(ADAPTERS) and len(names) == len(set(names))
    # the built-in families stay registered (a floor, not the list the tests run over)
    assert {"llava", "llava_next", "qwen2_vl", "qwen2_5_vl", "internvl"} <= set(names)
    for name in names:
        cls = adapter_class(name)
        assert cls.name == name and cls.model_types and issubclass(cls, FamilyAdapter)
        assert cls.token_rects is not FamilyAdapter.token_rects, f"{name} has no patch geometry (token_rects)"
        assert cls.tiny.__func__ is not FamilyAdapter.tiny.__func__, f"{name} has no tiny test model (tiny)"
    # no two families claim the same model_type (adapter_for would pick one silently)
    types = [t for cls in ADAPTERS.values() for t in cls.model_types]
    assert len(types) == len(set(types))


@pytest.mark.parametrize("family", family_names())
def test_tiny_builds_deterministically(family):
    cls = adapter_class(family)
    a, processor = cls.tiny(seed=1)
    b, _ = cls.tiny(seed=1)
    c, _ = cls.tiny(seed=2)
    assert not a.training and a.dtype == torch.float32
    assert a.config.model_type in cls.model_types
    assert processor.image_token_id == a.config.image_token_id
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert sa.keys() == sb.keys() and all(torch.equal(v, sb[k]) for k, v in sa.items())
    assert any(not torch.equal(v, sc[k]) for k, v in sa.items())


@pytest.mark.parametrize("family", family_names())
def test_tiny_spec_loads_every_family(tiny_models, family):
    lm = tiny_models(family)
    assert lm.name == f"tiny:{family}" and type(lm.adapter) is ADAPTERS[family] and lm.adapter.name == family
    assert lm.describe()["family"] == family and lm.n_layers == 2 and lm.n_heads == 4


def test_unknown_family_lists_the_registered_ones():
    expected = f"Unknown family 'nope'. Supported: {', '.join(family_names())}."
    with pytest.raises(HeadflowError, match=re.escape(expected)):
        load_model("tiny:nope")
    with pytest.raises(HeadflowError, match=re.escape(expected)):
        adapter_class("nope")


def test_register_adapter_rejects_a_taken_or_missing_name():
    before = dict(ADAPTERS)

    class Copied(FamilyAdapter):  # e.g. a copied adapter file whose name was not changed
        name = "llava"
        model_types = ("llava_copy",)

    class Nameless(FamilyAdapter):
        model_types = ("nameless",)

    with pytest.raises(HeadflowError, match=r"Family name 'llava' of .*Copied is already taken by "
                                            r"headflow\.models\.families\.llava\.LlavaAdapter"):
        register_adapter(Copied)
    with pytest.raises(HeadflowError, match="Adapter .*Nameless needs a family name"):
        register_adapter(Nameless)
    assert ADAPTERS == before
    assert register_adapter(ADAPTERS["llava"]) is ADAPTERS["llava"]  # re-registering the same class is fine


def test_defaults_without_geometry_or_tiny_model_raise(tiny_models):
    lm = tiny_models("llava")

    class Bare(FamilyAdapter):  # not registered
        name = "bare"
        model_types = ("bare",)

    with pytest.raises(HeadflowError, match=re.escape(
            f"No patch geometry for family 'bare'; object/background analysis supports {', '.join(family_names())}.")):
        Bare(lm.model, lm.processor).token_rects((32, 32), {})
    with pytest.raises(HeadflowError, match="Family 'bare' has no tiny test model; add a tiny\\(seed\\) classmethod"):
        Bare.tiny()


def test_models_modules_import_no_private_names_from_each_other():
    """Within headflow.models, a name shared between modules is public (no ``from .x import _y``)."""
    root = Path(importlib.import_module("headflow.models").__file__).parent
    offenders = []
    for path in sorted(root.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.level or (node.module or "").startswith("headflow")):
                offenders += [f"{path.relative_to(root)}: {a.name}" for a in node.names if a.name.startswith("_")]
    assert offenders == []
