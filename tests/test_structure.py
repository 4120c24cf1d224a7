"""The shape of the code base: one home per default, methods of one shape, arrows that point one way."""

from __future__ import annotations

import ast
import inspect
import re
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "headflow"


def _modules() -> dict[str, ast.Module]:
    out = {}
    for path in sorted(SRC.rglob("*.py")):
        rel = path.relative_to(SRC.parent).with_suffix("")
        name = ".".join(rel.parts[:-1] if rel.name == "__init__" else rel.parts)
        out[name] = ast.parse(path.read_text(), filename=str(path))
    return out


def _absolute(module: str, node: ast.ImportFrom, is_package: bool) -> str:
    if node.level == 0:
        return node.module or ""
    base = module.split(".") if is_package else module.split(".")[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def _imports(top_level_only: bool):
    """(importer, imported module, names) for every ``from … import …`` inside headflow."""
    for module, tree in _modules().items():
        is_package = (SRC.parent / module.replace(".", "/") / "__init__.py").exists()
        nodes = tree.body if top_level_only else ast.walk(tree)
        for node in nodes:
            if isinstance(node, ast.ImportFrom):
                target = _absolute(module, node, is_package)
                if target.startswith("headflow"):
                    yield module, target, [a.name for a in node.names]


def test_no_module_imports_a_private_name_of_another_module():
    offenders = [f"{m} imports {n} from {t}" for m, t, names in _imports(False) for n in names
                 if n.startswith("_") and not n.startswith("__") and t != m]
    assert not offenders, offenders


def test_no_import_cycle_at_module_level():
    graph: dict[str, set[str]] = {}
    modules = set(_modules())
    for m, t, names in _imports(True):
        targets = {f"{t}.{n}" if f"{t}.{n}" in modules else t for n in names}
        graph.setdefault(m, set()).update(x for x in targets if x in modules and x != m)
    state: dict[str, int] = {}

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in graph.get(node, ()):
            if state.get(nxt) == 1:
                cycle = path[path.index(nxt):] + [nxt] if nxt in path else [node, nxt]
                raise AssertionError(f"import cycle: {' -> '.join(cycle)}")
            if nxt not in state:
                visit(nxt, path + [nxt])
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])


ANALYSES = ("headflow.attribution", "headflow.steering", "headflow.flow", "headflow.semantics", "headflow.method", "headflow.executor",
            "headflow.per_image", "headflow.answers", "headflow.study", "headflow.report", "headflow.intervene",
            "headflow.models", "headflow.data", "headflow.store")


def test_analyses_never_import_the_package_face_or_the_cli():
    upward = [f"{m} imports {t}" for m, t, _ in _imports(False) if m.startswith(ANALYSES)
              and (t == "headflow" or t.startswith("headflow.cli"))]
    assert not upward, upward


def test_each_default_is_defined_once():
    """The batch size and the question are written once (method.py); no CLI or method repeats a default."""
    text = {p: p.read_text() for p in SRC.rglob("*.py")}
    batch = [str(p) for p, t in text.items() if re.search(r"batch_size\s*(:[^=\n]*)?=\s*64\b|\"64\"", t)]
    assert not batch, batch
    question = [str(p) for p, t in text.items() if re.search(
        r"question\w*\s*(:[^=\n]*)?=\s*\"What is the main object in the image\? Answer in one word\.\"", t, re.I)]
    assert [Path(p).name for p in question] == ["method.py"], question
    mean_baseline = [str(p) for p, t in text.items() if re.search(r"baseline\s*(:[^=\n]*)?=\s*\"mean\"", t)]
    assert not mean_baseline, mean_baseline


def _methods():
    from headflow.attribution import HeadAttribution, HeadAttributionHybrid, HeadAttributionPatching, Validation
    from headflow.compare import CompareRuns
    from headflow.flow import TokenFlow
    from headflow.semantics import SemanticAnalysis
    from headflow.steering import HeadSteering

    return [HeadAttribution, HeadAttributionPatching, HeadAttributionHybrid, Validation, TokenFlow, SemanticAnalysis,
            CompareRuns, HeadSteering]


def test_every_method_has_one_shape():
    from headflow.method import Method, Params, Result

    for method in _methods():
        assert issubclass(method, Method) and issubclass(method.Params, Params)
        run = inspect.signature(method.run)
        assert list(run.parameters)[:2] == ["self", "data"], method
        for name in ("out", "runner"):
            assert run.parameters[name].kind is inspect.Parameter.KEYWORD_ONLY and run.parameters[name].default is None
        assert issubclass(inspect.signature(method.run).return_annotation.__class__, type) or True
        init = inspect.signature(method.__init__)
        for name, info in method.Params.model_fields.items():  # the signature is the parameter model's
            assert init.parameters[name].default == info.get_default(call_default_factory=True), (method, name)
            assert info.description, (method, name)  # every parameter has its help line
    from headflow.attribution import AttributionResult, ValidationResult
    from headflow.compare import ComparisonResult
    from headflow.flow import FlowResult
    from headflow.semantics import SemanticResult
    from headflow.steering import SteeringResult

    for result in (AttributionResult, ValidationResult, FlowResult, SemanticResult, ComparisonResult, SteeringResult):
        assert issubclass(result, Result)
        for name in ("save", "load", "plot"):
            assert getattr(result, name) is not getattr(Result, name), (result, name)


def test_unknown_parameter_is_refused_at_once():
    from headflow import HeadflowError
    from headflow.attribution import HeadAttribution

    with pytest.raises(HeadflowError, match=r"HeadAttribution has no parameter 'n_mask'\. Its parameters: .*n_masks"):
        HeadAttribution("tiny:llava", n_mask=8)


@pytest.mark.parametrize(("command", "params"), [("attribute", "AttributionParams"), ("attribute", "PatchingParams"),
                                                 ("attribute", "HybridParams"),
                                                 ("validate", "ValidationParams"),
                                                 ("flow", "FlowParams"), ("semantics", "SemanticParams"),
                                                 ("compare", "CompareParams"), ("steer", "SteeringParams")])
def test_cli_options_come_from_the_parameter_models(command, params):
    """Every parameter is an option of its command, with the model's default and help line."""
    import typer.main

    from headflow.attribution.params import AttributionParams, HybridParams, PatchingParams, ValidationParams
    from headflow.cli import app
    from headflow.cli.options import flag_of
    from headflow.flow.params import FlowParams
    from headflow.compare.params import CompareParams
    from headflow.semantics.params import SemanticParams
    from headflow.steering.params import SteeringParams

    model = {"SteeringParams": SteeringParams, "AttributionParams": AttributionParams, "PatchingParams": PatchingParams,
             "HybridParams": HybridParams,
             "ValidationParams": ValidationParams, "FlowParams": FlowParams,
             "SemanticParams": SemanticParams, "CompareParams": CompareParams}[params]
    click = typer.main.get_command(app).commands[command]
    options = {opt: p for p in click.params for opt in getattr(p, "opts", [])}
    for name, info in model.model_fields.items():
        flag = flag_of(name, info)
        assert flag in options, (command, flag)
        default = info.get_default(call_default_factory=True)
        got = options[flag].default
        if isinstance(default, (tuple, list)) and not isinstance(got, (tuple, list)):
            pairs = bool(default) and isinstance(default[0], (tuple, list))
            got = [tuple(p.split(":")) for p in got.split(",")] if pairs else got.split(",")
            default = [tuple(p) for p in default] if default and isinstance(default[0], tuple) else [
                str(v) for v in default]
        if name != "heads":
            assert got == default or str(got) == str(default), (command, name, got, default)
        assert options[flag].help.startswith(info.description[:20]) or name in ("ablation_prob", "heads")
