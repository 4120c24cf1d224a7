"""``headflow model-card``: the card's targets measured with the engine, as numbers and as the card's Markdown section."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from typer.testing import CliRunner  # noqa: E402

from headflow.cli import app  # noqa: E402
from headflow.data.default import QUESTION_TYPES  # noqa: E402
from headflow.models import load_model  # noqa: E402
from headflow.zoo.phenomena import measure_phenomena  # noqa: E402


@pytest.fixture(scope="module")
def measured():
    return measure_phenomena(load_model("default"), n_images=6)


def test_measured_numbers_are_fractions_of_the_mixed_set(measured) -> None:
    assert measured.n_images == 6 and measured.question_types == list(QUESTION_TYPES)
    assert measured.accuracy == measured.accuracy_per_type["class"]
    # every fraction is k / 6 (per type) or k / 36 (mixed set of six types per image)
    for a in measured.accuracy_per_type.values():
        assert round(a * 6, 6) == round(a * 6)
    assert round(measured.accuracy_mixed * 36, 6) == round(measured.accuracy_mixed * 36)
    assert measured.accuracy_mixed == pytest.approx(sum(measured.accuracy_per_type.values()) / 6)
    assert len(measured.accuracy_knockout_single_layer) == len(measured.accuracy_mixed_knockout_single_layer) == 6


def test_markdown_section_shows_every_measured_number_and_marks_the_failed_checks(measured) -> None:
    text = measured.markdown()
    rows = [line for line in text.splitlines() if line.startswith("| ") and "---" not in line][1:]
    assert len(rows) == len(QUESTION_TYPES) + 6
    assert rows[0] == (f"| identification (class) accuracy | {100 * measured.accuracy:.1f} % | ≥ 95 %"
                       + ("" if measured.accuracy >= 0.95 else " — **not met**") + " |")
    for t in QUESTION_TYPES[1:]:
        a = measured.accuracy_per_type[t]
        assert f"| {t} accuracy | {100 * a:.1f} % | ≥ 90 %{'' if a >= 0.9 else ' — **not met**'} |" in rows
    knockouts = {"question->{role, final} knocked out in all layers": "question knocked out",
                 "image->text knocked out in all layers: mixed": "image knocked out: mixed",
                 "image->text knocked out in all layers: identification": "image knocked out: identification",
                 "largest single-head share": "any single head"}
    for row_start, check_start in knockouts.items():
        row = next(r for r in rows if r.startswith("| " + row_start))
        ok = next(v for k, v in measured.checks.items() if k.startswith(check_start))
        assert row.endswith("**not met** |") != ok, row
    failed = [name for name, ok in measured.checks.items() if not ok]
    assert f"{len(measured.checks) - len(failed)} of the {len(measured.checks)} checks pass." in text
    assert text.count("**not met**") >= len(failed)  # the per-type check can mark several rows


def test_cli_prints_the_markdown_section() -> None:
    result = CliRunner().invoke(app, ["model-card", "--images", "2", "--markdown"])
    assert result.exit_code in (0, 1), result.output  # 1: some target not met on two images
    assert "## The card's targets, recomputed by `headflow model-card`" in result.output
    assert "PASS" not in result.output and "FAIL" not in result.output
