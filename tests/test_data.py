"""Tests for headflow.data: the default generator, folder datasets and the export CLI."""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pytest

from headflow.data import CLASSES, Dataset, Example, export_folder, load_dataset
from headflow.data.default import ANALYSIS_STREAM, SCENE_FACTORS, TRAIN_STREAM, DefaultDataset, render_example


@pytest.fixture(scope="module")
def ds48() -> Dataset:
    return load_dataset("default", n=48, seed=0)


def test_default_types_and_shapes(ds48: Dataset) -> None:
    assert len(ds48) == 48
    assert ds48.name == "default"
    assert len(ds48.classes) >= 16 and ds48.classes == CLASSES
    assert set(ds48.factor_names) == set(SCENE_FACTORS)  # world 2, the shipped model's
    ex = ds48[5]
    assert isinstance(ex, Example)
    assert ex.image.mode == "RGB" and ex.image.size == (96, 96)
    assert ex.label in CLASSES
    assert ex.mask is not None and ex.mask.dtype == bool and ex.mask.shape == (96, 96)
    assert 0 < ex.mask.mean() < 0.6
    assert set(ex.factors) == set(ds48.factor_names)
    for name, level in ex.factors.items():
        assert level in SCENE_FACTORS[name]
    assert ex.id == "default-w2-s0-000005"


def test_default_is_deterministic_per_seed_and_index() -> None:
    a = DefaultDataset(n=20, seed=3)[17]
    b = DefaultDataset(n=200, seed=3)[17]  # depends only on (seed, index), not on n
    assert np.array_equal(np.asarray(a.image), np.asarray(b.image))
    assert np.array_equal(a.mask, b.mask) and a.factors == b.factors and a.label == b.label
    c = DefaultDataset(n=20, seed=4)[17]
    assert not np.array_equal(np.asarray(a.image), np.asarray(c.image))


def test_training_stream_differs_from_analysis_stream() -> None:
    for seed in range(3):
        _, _, img_a, _ = render_example(seed, 7, ANALYSIS_STREAM)
        _, _, img_t, _ = render_example(seed, 7, TRAIN_STREAM)
        assert not np.array_equal(img_a, img_t)


def test_crossed_design_is_balanced(ds48: Dataset) -> None:
    cells = Counter((e.label, e.factors["style"]) for e in ds48)
    assert len(cells) == 16 * 3 and set(cells.values()) == {1}
    ds = load_dataset("default", n=96)
    assert set(Counter((e.label, e.factors["style"]) for e in ds).values()) == {2}
    colours = Counter(e.factors["colour"] for e in ds)
    assert set(colours) == set(SCENE_FACTORS["colour"]) and max(colours.values()) - min(colours.values()) <= 8


def test_mask_marks_object_not_background() -> None:
    _, factors, img, mask = render_example(0, 0)  # a filled circle
    assert factors["style"] == "filled"
    obj = img[mask].astype(float).mean(0)
    bg = img[~mask].astype(float).mean(0)
    assert np.abs(obj - bg).sum() > 100  # contrast control: object and background differ strongly


def test_slicing_and_negative_index(ds48: Dataset) -> None:
    assert [e.id for e in ds48[:3]] == [ds48[i].id for i in range(3)]
    assert ds48[-1].id == ds48[47].id
    with pytest.raises(IndexError, match="out of range"):
        ds48[48]


def test_unknown_spec_names_valid_forms() -> None:
    with pytest.raises(ValueError, match=r"Unknown dataset spec 'imagenet'.*'default' or 'folder:PATH'"):
        load_dataset("imagenet")
    with pytest.raises(ValueError, match="'n' parameter of DefaultDataset"):
        load_dataset("default", n=0)


def test_export_and_folder_roundtrip(tmp_path, ds48: Dataset) -> None:
    sub = load_dataset("default", n=6, seed=2)
    root = export_folder(sub, tmp_path / "out")
    assert (root / "manifest.csv").is_file()
    back = load_dataset(f"folder:{root}")
    assert len(back) == 6 and back.factor_names == sub.factor_names
    for a, b in zip(sub, back):
        assert a.label == b.label and a.factors == b.factors and a.id == b.id
        assert np.array_equal(np.asarray(a.image), np.asarray(b.image))
        assert np.array_equal(a.mask, b.mask)
    assert len(load_dataset(f"folder:{root}", n=2)) == 2


def test_folder_jsonl_without_masks(tmp_path) -> None:
    ex = load_dataset("default", n=2)[1]
    (tmp_path / "img").mkdir()
    ex.image.save(tmp_path / "img" / "a.png")
    rows = [{"image": "img/a.png", "label": "square", "colour": "red"}]
    (tmp_path / "manifest.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    ds = load_dataset(f"folder:{tmp_path}")
    assert ds.classes == ["square"] and ds.factor_names == ["colour"]
    assert ds[0].mask is None and ds[0].factors == {"colour": "red"}


def test_folder_errors(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_dataset(f"folder:{tmp_path / 'missing'}")
    with pytest.raises(FileNotFoundError, match="No manifest"):
        load_dataset(f"folder:{tmp_path}")
    (tmp_path / "manifest.csv").write_text("image,label\nx.png,\n")
    assert load_dataset(f"folder:{tmp_path}").problems == {"missing_label": 1}  # skipped and counted


def test_data_cli_export(tmp_path) -> None:
    from typer.testing import CliRunner

    from headflow.data.cli import data_app

    result = CliRunner().invoke(data_app, ["export", str(tmp_path / "d"), "--n", "4", "--seed", "1"])
    assert result.exit_code == 0, result.output
    assert len(load_dataset(f"folder:{tmp_path / 'd'}")) == 4


# ----------------------------------------------------------------------------------------------
# world 2: main object + distractors, per-object masks, questions
# ----------------------------------------------------------------------------------------------


def test_world2_scene_objects_masks_and_main_is_largest() -> None:
    from headflow.data.default import SCENE_FACTORS, render_scene

    for i in range(96):
        scene = render_scene(0, i)
        assert scene.image.shape == (96, 96, 3) and scene.image.dtype == np.uint8
        n_dis = {"none": 0, "one": 1, "two": 2}[scene.factors["distractors"]]
        assert len(scene.objects) == 1 + n_dis
        main = scene.objects[0]
        assert scene.label == main.label == CLASSES[i % 16] and scene.mask is main.mask
        assert all(o.radius < main.radius for o in scene.objects[1:])  # the main object is the largest
        labels = [o.label for o in scene.objects]
        assert len(set(labels)) == len(labels)  # distractors are of other, distinct classes
        for k, o in enumerate(scene.objects):
            assert o.mask.dtype == bool and o.mask.shape == (96, 96) and o.mask.sum() > 10
            for other in scene.objects[k + 1:]:
                assert not (o.mask & other.mask).any()
        assert set(scene.factors) == set(SCENE_FACTORS)


def test_world2_crossed_design_is_balanced() -> None:
    from headflow.data.default import SCENE_FACTORS

    ds = DefaultDataset(n=480, seed=0, world=2)
    cells = Counter((e.label, e.factors["style"]) for e in ds)
    assert len(cells) == 48 and set(cells.values()) == {10}
    for name in ("colour", "size", "position", "distractors"):
        counts = Counter(e.factors[name] for e in ds)
        assert set(counts) == set(SCENE_FACTORS[name])
        assert max(counts.values()) - min(counts.values()) <= 0.1 * len(ds)


def test_world2_questions_have_answers_that_differ_and_held_out_phrasings() -> None:
    from headflow.data.default import (ANSWER_WORDS, CANONICAL_QUESTION, PHRASINGS, QUESTION_TYPES, caption,
                                       question_for, render_scene)
    from headflow.method import DEFAULT_QUESTION

    assert CANONICAL_QUESTION == DEFAULT_QUESTION == PHRASINGS["class"][0]
    assert all(len(PHRASINGS[t]) >= 3 for t in QUESTION_TYPES)
    scene = render_scene(0, 40)
    answers = {t: question_for(scene, t)[1] for t in QUESTION_TYPES}
    assert len(set(answers.values())) == len(QUESTION_TYPES)  # one image, six different answers
    for t, a in answers.items():
        assert a in ANSWER_WORDS[t]
    yes = question_for(scene, "exists", probe=scene.objects[-1].label)
    no = question_for(scene, "exists", probe=next(c for c in CLASSES if c not in [o.label for o in scene.objects]))
    assert yes[1] == "yes" and no[1] == "no"
    assert question_for(scene, "exists", 0, probe="arrow")[0] == "Is there an arrow in the image?"
    text = caption(scene)
    assert scene.label in text and answers["colour"] in text and text.endswith(".")
    yes_share = np.mean([render_scene(0, i).answer("exists") == "yes" for i in range(200)])
    assert 0.35 < yes_share < 0.65
    with pytest.raises(ValueError, match="Unknown question type 'shape'"):
        question_for(scene, "shape")
    with pytest.raises(ValueError, match="phrasings 0..3"):
        question_for(scene, "colour", 9)


def test_world2_deterministic_and_streams_differ() -> None:
    from headflow.data.default import render_scene

    a, b = render_scene(3, 17), render_scene(3, 17)
    assert np.array_equal(a.image, b.image) and a.factors == b.factors and a.probe == b.probe
    assert not np.array_equal(a.image, render_scene(3, 17, TRAIN_STREAM).image)
    assert DefaultDataset(n=5, seed=3, world=2)[4].id == "default-w2-s3-000004"
    with pytest.raises(ValueError, match="'world' parameter of DefaultDataset must be one of"):
        DefaultDataset(n=5, world=3)
    with pytest.raises(ValueError, match="needs world 2"):
        DefaultDataset(n=5, world=1).scene(0)
