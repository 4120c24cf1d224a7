"""The report package's structure: one section table, strict JSON access, no import cycle, one atomic writer.

Fast checks without a run directory (the rendering itself is tested in ``tests/test_report.py``).
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

import headflow.report as report
from headflow.errors import HeadflowError
from headflow.report.claims import CLAIMS
from headflow.report.doc import Doc, MissingKeyError
from headflow.report.run import SOURCE_BY_NAME, SOURCES
from headflow.report.sections import SECTION_IDS, SECTIONS

PACKAGE = Path(report.__file__).resolve().parent
MODULES = {p.stem: p for p in sorted(PACKAGE.glob("*.py"))}
#: What report/ may import from the rest of headflow: lower layers only (never the CLI, the study or Ray).
ALLOWED_OUTSIDE = {"headflow.errors", "headflow.store", "headflow.zoo"}


def imports_of(path: Path) -> list[tuple[str, tuple[str, ...]]]:
    """``(absolute module, imported names)`` for every import in ``path``, including those inside functions."""
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out += [(alias.name, ()) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = ["headflow", "report"][: 3 - node.level]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            out.append((module, tuple(alias.name for alias in node.names)))
    return out


def test_no_import_cycle_inside_report():
    graph = {name: set() for name in MODULES}
    for name, path in MODULES.items():
        for module, names in imports_of(path):
            if module == "headflow.report":  # from . import x
                graph[name] |= {n for n in names if n in MODULES}
            elif module.startswith("headflow.report."):
                graph[name].add(module.rsplit(".", 1)[1])
    graph["__init__"] = set()  # the package re-exports; nothing imports it from inside
    state: dict[str, int] = {}

    def visit(node: str, trail: list[str]) -> None:
        if state.get(node) == 1:
            raise AssertionError("import cycle in headflow.report: " + " -> ".join(trail + [node]))
        if state.get(node) == 2:
            return
        state[node] = 1
        for dep in sorted(graph[node]):
            visit(dep, trail + [node])
        state[node] = 2

    for name in graph:
        visit(name, [])
    assert "html" not in graph["sections"] and "sections" in graph["html"]


def test_no_upward_imports_and_no_private_names():
    for name, path in MODULES.items():
        for module, names in imports_of(path):
            if module.startswith("headflow") and not module.startswith("headflow.report"):
                assert module in ALLOWED_OUTSIDE, f"report/{name}.py imports {module}"
            private = [n for n in names if n.startswith("_") and n != "__future__"]
            assert not private, f"report/{name}.py imports private names {private} from {module}"


def test_one_atomic_writer_and_no_global_matplotlib_backend():
    for name, path in MODULES.items():
        text = path.read_text()
        assert not re.search(r"\btempfile\b|os\.replace|mkstemp", text), f"report/{name}.py writes files itself"
        assert "matplotlib.use" not in text and "pyplot" not in text, name
    assert "atomic_write" in MODULES["html"].read_text()


def test_the_section_table_is_consistent():
    ids = [s.id for s in SECTIONS]
    assert tuple(ids) == SECTION_IDS == report.SECTION_IDS and len(set(ids)) == len(ids)
    assert ids[0] == "claims"
    names = [f.name for s in SECTIONS for f in s.figures]
    paths = [f.path for s in SECTIONS for f in s.figures]
    assert len(set(names)) == len(names) and len(set(paths)) == len(paths)
    for s in SECTIONS:
        assert s.title and callable(s.build), s.id
        assert set(s.reads) | set(s.reads_if_present) <= set(SOURCE_BY_NAME), s.id
        assert not set(s.reads) & set(s.reads_if_present), s.id
    assert {c.source for c in CLAIMS} <= set(SOURCE_BY_NAME) and {c.section for c in CLAIMS} <= set(ids)
    assert [s.name for s in SOURCES if s.required] == ["attribution"]


def test_doc_names_file_and_key_path():
    doc = Doc({"rankings": {"random": {"k80_completeness": 7}}, "c3": {"reason": None}, "rows": [1, 2]},
              "validation.json")
    assert doc["rankings"]["random"]["k80_completeness"] == 7 and doc["rows"] == [1, 2]
    assert doc["c3"]["reason"] is None  # a null value is a value (printed n/a), not a missing key
    with pytest.raises(MissingKeyError) as info:
        doc["rankings"]["random"]["k80_completness"]
    err = info.value
    assert str(err).startswith("validation.json has no key 'rankings.random.k80_completness'")
    assert isinstance(err, KeyError) and isinstance(err, HeadflowError)
    assert (err.file, err.key) == ("validation.json", "rankings.random.k80_completness")
    assert doc.optional("subset") is None and doc.optional("rows") == [1, 2]
    assert [k for k, _ in doc["rankings"].items()] == ["random"] and "c3" in doc and len(doc) == 3
    with pytest.raises(HeadflowError, match="expected a JSON object"):
        Doc([1], "flow/flow.json")  # type: ignore[arg-type]
