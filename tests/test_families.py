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
    # the token repeated per image feature is the processor's or its tokenizer's image token (Gemma3Processor's
    # image_token_id is the begin-of-image token, Aya Vision's tokenizer names the "<image>" placeholder);
    # tests/test_tiny.py counts it against the image features
    assert a.config.image_token_id in (processor.image_token_id, getattr(processor.tokenizer, "image_token_id", None))
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

    class SameType(FamilyAdapter):  # a new name, but the model type of another family
        name = "llava_again"
        model_types = ("llava",)

    with pytest.raises(HeadflowError, match=r"Family name 'llava' of .*Copied is already taken by "
                                            r"headflow\.models\.families\.llava\.LlavaAdapter"):
        register_adapter(Copied)
    with pytest.raises(HeadflowError, match="Adapter .*Nameless needs a family name"):
        register_adapter(Nameless)
    with pytest.raises(HeadflowError, match=r"Model type 'llava' of .*SameType is already served by family 'llava' "
                                            r"\(headflow\.models\.families\.llava\.LlavaAdapter\); give the new "
                                            r"adapter its own 'model_types'"):
        register_adapter(SameType)
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


# -- families from outside headflow: adapter files (--adapter, HEADFLOW_ADAPTERS) and entry points ---------------


def test_an_adapter_file_joins_the_registry_once(user_adapter_file):
    from headflow.models.adapter import load_adapter_file

    assert "my_family" not in family_names()
    assert load_adapter_file(user_adapter_file) == ["my_family"]
    assert "my_family" in family_names() and ADAPTERS["my_family"].__name__ == "MyFamilyAdapter"
    assert load_adapter_file(str(user_adapter_file)) == ["my_family"]  # again: the same class, no collision
    lm = load_model("tiny:my_family")
    assert lm.adapter.name == "my_family" and lm.n_layers == 2


def test_the_user_adapter_fixture_left_nothing_behind():
    assert "my_family" not in family_names()


@pytest.mark.parametrize(("source", "expected"), [
    ("x = 1\n", "registers no family adapter. Decorate a FamilyAdapter subclass with @register_adapter"),
    ("import no_such_module_xyz\n", "failed to import: ModuleNotFoundError: No module named 'no_such_module_xyz'."),
    ("from headflow.models import FamilyAdapter, register_adapter\n\n@register_adapter\nclass A(FamilyAdapter):\n"
     "    name = 'llava'\n    model_types = ('a',)\n", "failed to import: HeadflowError: Family name 'llava' of "),
    ("from headflow.models import FamilyAdapter, register_adapter\n\n@register_adapter\nclass A(FamilyAdapter):\n"
     "    name = 'half'\n    model_types = ('half',)\n\nraise RuntimeError('late\\nmore')\n",
     "failed to import: RuntimeError: late. Fix the file"),
])
def test_a_bad_adapter_file_is_one_line_and_registers_nothing(tmp_path, source, expected):
    from headflow.models.adapter import load_adapter_file

    family_names()
    before = dict(ADAPTERS)
    bad = tmp_path / "bad.py"
    bad.write_text(source)
    with pytest.raises(HeadflowError) as caught:
        load_adapter_file(bad)
    assert expected in str(caught.value) and str(bad) in str(caught.value) and "\n" not in str(caught.value)
    assert ADAPTERS == before


def test_adapter_file_that_is_missing_or_not_python(tmp_path):
    from headflow.errors import MissingFileError
    from headflow.models.adapter import load_adapter_file

    with pytest.raises(MissingFileError, match=r"Adapter file '.*nope\.py' does not exist"):
        load_adapter_file(tmp_path / "nope.py")
    (tmp_path / "a.txt").write_text("x")
    for path in (tmp_path / "a.txt", tmp_path):
        with pytest.raises(HeadflowError, match=r"is not a \.py file"):
            load_adapter_file(path)


def test_environment_and_entry_points_register_families_in_a_fresh_process(user_adapter_file, tmp_path):
    """What a Ray worker does: HEADFLOW_ADAPTERS names the file, and the first use of the registry loads it; an
    installed package's ``headflow.families`` entry point is loaded the same way."""
    import os
    import subprocess
    import sys

    site = tmp_path / "site"
    (site / "plugin_family-0.1.dist-info").mkdir(parents=True)
    (site / "plugin_family-0.1.dist-info" / "METADATA").write_text("Metadata-Version: 2.1\nName: plugin-family\n"
                                                                   "Version: 0.1\n")
    (site / "plugin_family-0.1.dist-info" / "entry_points.txt").write_text(
        "[headflow.families]\nplugin = plugin_family\n")
    (site / "plugin_family.py").write_text(user_adapter_file.read_text().replace("my_family", "plugin_family")
                                           .replace("MyFamilyAdapter", "PluginAdapter"))
    code = ("from headflow import load_model; from headflow.models.adapter import family_names; "
            "names = family_names(); assert {'my_family', 'plugin_family', 'llava'} <= set(names), names; "
            "print(load_model('tiny:my_family').adapter.name, load_model('tiny:plugin_family').adapter.name)")
    env = {**os.environ, "HEADFLOW_ADAPTERS": str(user_adapter_file),
           "PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ["my_family", "plugin_family"]


def test_a_broken_entry_point_is_one_line_naming_it(monkeypatch):
    from importlib.metadata import EntryPoint

    from headflow.models import adapter as registry

    family_names()
    broken = EntryPoint(name="broken", value="no_such_plugin_module_xyz", group=registry.ENTRY_POINT_GROUP)
    monkeypatch.setattr(registry.importlib.metadata, "entry_points", lambda group: [broken])
    monkeypatch.setattr(registry, "_plugins_loaded", False)
    with pytest.raises(HeadflowError, match=re.escape(
            "Cannot load the family entry point 'broken' (no_such_plugin_module_xyz) of group 'headflow.families': "
            "ModuleNotFoundError: No module named 'no_such_plugin_module_xyz'. Fix or uninstall the package")):
        family_names()
