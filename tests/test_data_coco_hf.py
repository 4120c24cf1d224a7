"""Tests for the COCO and Hugging Face loaders and for skip-and-count bad-data handling (folder included).

Every fixture is generated in ``tmp_path``: PNGs drawn with PIL, a COCO instances JSON with polygon,
compressed-RLE and crowd annotations, and ``datasets`` folders written with ``save_to_disk``.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

from headflow.data import COCO_ONE_WORD, CocoDataset, HFDataset, load_dataset, parse_hf_spec
from headflow.errors import HeadflowError

W, H = 80, 60
DOG = [(10.0, 8.0), (62.0, 12.0), (58.0, 50.0), (14.0, 46.0)]  # main object of image 1 (a quadrilateral)
CAT = [(64.0, 40.0), (76.0, 40.0), (76.0, 56.0), (64.0, 56.0)]  # smaller instance in image 1


def _poly_mask(poly: list[tuple[float, float]]) -> np.ndarray:
    im = Image.new("L", (W, H), 0)
    ImageDraw.Draw(im).polygon(poly, fill=255)
    return np.asarray(im) > 0


def _ellipse_mask(box: tuple[int, int, int, int]) -> np.ndarray:
    im = Image.new("L", (W, H), 0)
    ImageDraw.Draw(im).ellipse(box, fill=255)
    return np.asarray(im) > 0


def _rle(mask: np.ndarray) -> dict:
    from pycocotools import mask as mask_utils

    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [int(s) for s in rle["size"]], "counts": rle["counts"].decode("ascii")}


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / max((a | b).sum(), 1))


@pytest.fixture(scope="module")
def coco(tmp_path_factory) -> tuple[Path, Path]:
    pytest.importorskip("pycocotools")
    root = tmp_path_factory.mktemp("coco")
    images = root / "images"
    images.mkdir()
    teddy = _ellipse_mask((15, 10, 65, 55))
    anns: list[dict] = []

    def ann(image_id: int, cat: int, segm, area: float, crowd: int = 0) -> None:
        anns.append({"id": len(anns) + 1, "image_id": image_id, "category_id": cat, "segmentation": segm,
                     "area": area, "bbox": [0, 0, 1, 1], "iscrowd": crowd})  # fmt: skip

    flat = lambda poly: [[c for xy in poly for c in xy]]  # noqa: E731
    ann(1, 17, flat(CAT), 190.0)  # cat, small
    ann(1, 18, flat(DOG), 1900.0)  # dog, largest non-crowd
    ann(1, 1, _rle(np.ones((H, W), bool)), float(W * H), crowd=1)  # person crowd: bigger, but excluded
    ann(2, 88, _rle(teddy), float(teddy.sum()))  # teddy bear as compressed RLE
    ann(3, 100, flat(DOG), 1900.0)  # "sea lion": multi-word, no mapping
    ann(4, 18, flat(DOG), 1900.0)  # image file missing
    ann(5, 18, flat(DOG), 1900.0)  # image file unreadable
    ann(6, 17, [[1, 1, 5, 1, 5, 5, 1, 5]], 16.0)  # too small
    ann(8, 18, flat(DOG), 1900.0)  # two dogs
    ann(8, 18, flat(CAT), 190.0)
    ann(9, 17, _rle(np.zeros((H, W), bool)), 500.0)  # stated area, but an empty mask
    for i in (1, 2, 3, 6, 7, 8, 9):
        im = Image.new("RGB", (W, H), (30, 60, 90))
        ImageDraw.Draw(im).polygon(DOG, fill=(200, 180, 40))
        im.save(images / f"{i:012d}.png")
    (images / f"{5:012d}.png").write_bytes(b"this is not a PNG")
    data = {
        "images": [{"id": i, "file_name": f"{i:012d}.png", "width": W, "height": H} for i in range(9, 0, -1)],
        "annotations": anns,
        "categories": [
            {"id": 1, "name": "person", "supercategory": "person"},
            {"id": 17, "name": "cat", "supercategory": "animal"},
            {"id": 18, "name": "dog", "supercategory": "animal"},
            {"id": 88, "name": "teddy bear", "supercategory": "indoor"},
            {"id": 100, "name": "sea lion", "supercategory": "animal"},
        ],
    }
    (root / "instances.json").write_text(json.dumps(data))
    return root / "instances.json", images


def test_coco_main_object_mask_and_factor(coco) -> None:
    ds = load_dataset(f"coco:{coco[0]}:{coco[1]}")
    assert isinstance(ds, CocoDataset)
    assert [it.image_id for it in ds.items] == [1, 2, 8]  # sorted by image id
    assert ds.classes == ["dog", "teddy"] and ds.factor_names == ["supercategory"]
    first = ds[0]
    assert first.id == "coco-1" and first.label == "dog" and first.factors == {"supercategory": "animal"}
    assert first.image.mode == "RGB" and first.image.size == (W, H)
    assert first.mask is not None and first.mask.dtype == bool and first.mask.shape == (H, W)
    assert _iou(first.mask, _poly_mask(DOG)) > 0.9  # the largest non-crowd instance, polygon decoded
    teddy = ds[1]
    assert teddy.label == "teddy" and teddy.factors == {"supercategory": "indoor"}
    assert ds.items[1].category == "teddy bear"
    assert _iou(teddy.mask, _ellipse_mask((15, 10, 65, 55))) > 0.99  # RLE decoded exactly


def test_coco_problems_and_filters_are_counted(coco) -> None:
    ds = CocoDataset(*coco)
    assert ds.problems == {"empty_mask": 1, "label_not_one_word": 1, "missing_image": 1, "unreadable_image": 1}
    assert ("coco-4", "missing_image") in ds.problem_items and ("coco-5", "unreadable_image") in ds.problem_items
    assert ("coco-3", "label_not_one_word") in ds.problem_items and ("coco-9", "empty_mask") in ds.problem_items
    assert ds.filtered == {"no_instance": 1, "too_small": 1}
    single = CocoDataset(*coco, single_instance_only=True)
    assert [it.image_id for it in single.items] == [1, 2] and single.filtered["not_single_instance"] == 1
    mapped = CocoDataset(*coco, label_map={"sea lion": "sealion", "teddy bear": None})
    assert [it.label for it in mapped.items] == ["dog", "sealion", "dog"]
    assert mapped.filtered["label_skipped"] == 1 and "label_not_one_word" not in mapped.problems
    assert CocoDataset(*coco, min_area_frac=0.0).filtered == {"no_instance": 1}


def test_coco_subsample_and_errors(coco, tmp_path) -> None:
    a, b = CocoDataset(*coco, n=2, seed=3), CocoDataset(*coco, n=2, seed=3)
    assert len(a) == 2 and [it.image_id for it in a.items] == [it.image_id for it in b.items]
    ids = [it.image_id for it in a.items]
    assert ids == sorted(ids) and set(ids) <= {1, 2, 8}
    assert [it.image_id for it in CocoDataset(*coco, n=2, seed=None).items] == [1, 2]
    assert set(COCO_ONE_WORD) >= {"traffic light", "teddy bear", "hair drier"}
    assert all(" " not in v for v in COCO_ONE_WORD.values() if v)
    with pytest.raises(HeadflowError, match=r"'min_area_frac' parameter of CocoDataset must be a float in \[0, 1\)"):
        CocoDataset(*coco, min_area_frac=1.5)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_dataset(f"coco:{tmp_path / 'nope.json'}:{coco[1]}")
    with pytest.raises(ValueError, match="needs two paths"):
        load_dataset("coco:only.json")
    with pytest.raises(HeadflowError, match="'mask_column' option of load_dataset applies only to hf:"):
        load_dataset(f"coco:{coco[0]}:{coco[1]}", mask_column="mask")
    (tmp_path / "bad.json").write_text("[1, 2]")
    with pytest.raises(HeadflowError, match="is not a COCO instances file"):
        CocoDataset(tmp_path / "bad.json", coco[1])


# ------------------------------------------------------------------------------------------------
# Hugging Face datasets
# ------------------------------------------------------------------------------------------------


def _shape_image(kind: str) -> tuple[Image.Image, Image.Image]:
    im, m = Image.new("RGB", (32, 24), (240, 240, 240)), Image.new("L", (32, 24), 0)
    for canvas, fill in ((im, (200, 30, 30)), (m, 255)):
        draw = ImageDraw.Draw(canvas)
        (draw.ellipse if kind == "circle" else draw.rectangle)((6, 4, 24, 20), fill=fill)
    return im, m


@pytest.fixture(scope="module")
def hf_saved(tmp_path_factory) -> Path:
    datasets = pytest.importorskip("datasets")
    rows = [("circle", "plain"), ("square", "striped"), ("hot dog", "plain"), ("circle", "plain"), ("square", "plain")]
    images, masks = [], []
    for k, (kind, _) in enumerate(rows):
        im, m = _shape_image("circle" if kind == "hot dog" else kind)
        images.append(im)
        masks.append(Image.new("L", (32, 24), 0) if k == 3 else m)  # row 3: empty mask
    images[4] = {"bytes": b"not an image", "path": None}  # row 4: unreadable
    features = datasets.Features({
        "image": datasets.Image(), "label": datasets.ClassLabel(names=["circle", "square", "hot dog"]),
        "mask": datasets.Image(), "background": datasets.Value("string"), "score": datasets.Value("float32"),
    })  # fmt: skip
    ds = datasets.Dataset.from_dict(
        {"image": images, "label": [r[0] for r in rows], "mask": masks, "background": [r[1] for r in rows],
         "score": [0.5] * len(rows)},
        features=features,
    )  # fmt: skip
    path = tmp_path_factory.mktemp("hf") / "saved"
    ds.save_to_disk(str(path))
    return path


def test_hf_saved_dataset_fields_and_problems(hf_saved) -> None:
    ds = load_dataset(f"hf:{hf_saved}", mask_column="mask")
    assert isinstance(ds, HFDataset) and ds.name == f"hf:{hf_saved}"
    assert len(ds) == 2 and ds.rows == [0, 1]
    assert ds.classes == ["circle", "square"] and ds.factor_names == ["background"]
    ex = ds[1]
    assert ex.id == "saved-000001" and ex.label == "square" and ex.factors == {"background": "striped"}
    img, mask = _shape_image("square")
    assert np.array_equal(np.asarray(ex.image), np.asarray(img))
    assert ex.mask is not None and ex.mask.dtype == bool and np.array_equal(ex.mask, np.asarray(mask) > 0)
    assert ds.problems == {"empty_mask": 1, "label_not_one_word": 1, "unreadable_image": 1}
    assert ds.problem_items == [("saved-000002", "label_not_one_word"), ("saved-000003", "empty_mask"),
                                ("saved-000004", "unreadable_image")]  # fmt: skip
    no_mask = HFDataset(hf_saved, factor_columns=[], label_map={"hot dog": "hotdog"})
    assert [no_mask[i].label for i in range(len(no_mask))] == ["circle", "square", "hotdog", "circle"]
    assert no_mask[0].mask is None and no_mask[0].factors == {} and no_mask.problems == {"unreadable_image": 1}
    sub = load_dataset(f"hf:{hf_saved}", n=1, seed=1)
    assert len(sub) == 1 and sub.rows == load_dataset(f"hf:{hf_saved}", n=1, seed=1).rows


def test_hf_splits_and_errors(hf_saved, tmp_path) -> None:
    datasets = pytest.importorskip("datasets")
    dd = datasets.DatasetDict({"train": datasets.load_from_disk(str(hf_saved)),
                               "test": datasets.load_from_disk(str(hf_saved)).select([1])})  # fmt: skip
    dd.save_to_disk(str(tmp_path / "dd"))
    with pytest.raises(HeadflowError, match=r"has splits \['test', 'train'\]; got no split\. Use 'hf:"):
        load_dataset(f"hf:{tmp_path / 'dd'}")
    test = load_dataset(f"hf:{tmp_path / 'dd'}:test")
    assert len(test) == 1 and test[0].label == "square" and test.name.endswith(":test")
    assert parse_hf_spec("/a/b:validation") == ("/a/b", "validation") and parse_hf_spec("rel/x") == ("rel/x", None)
    with pytest.raises(HeadflowError, match="names column 'segmentation', which .* lacks"):
        load_dataset(f"hf:{hf_saved}", mask_column="segmentation")
    with pytest.raises(HeadflowError, match="must be a ClassLabel or strings"):
        load_dataset(f"hf:{hf_saved}", label_column="score")
    with pytest.raises(HeadflowError, match="'min_area_frac' option of load_dataset applies only to coco:"):
        load_dataset(f"hf:{hf_saved}", min_area_frac=0.1)
    with pytest.raises(HeadflowError, match="Could not load Hugging Face dataset"):
        load_dataset(f"hf:{tmp_path / 'empty'}")


def test_hf_imagefolder(tmp_path, monkeypatch) -> None:
    datasets = pytest.importorskip("datasets")
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "cache")  # keep the user's cache clean
    for kind in ("circle", "square"):
        (tmp_path / "imf" / "train" / kind).mkdir(parents=True)
        for k in range(2):
            _shape_image(kind)[0].save(tmp_path / "imf" / "train" / kind / f"{k}.png")
    ds = load_dataset(f"hf:{tmp_path / 'imf'}")
    assert len(ds) == 4 and ds.classes == ["circle", "square"] and ds.problems == {}
    assert sorted(e.label for e in ds) == ["circle", "circle", "square", "square"]
    assert ds[0].image.size == (32, 24) and ds[0].mask is None


def test_folder_skips_bad_rows(tmp_path) -> None:
    good, mask = _shape_image("circle")
    (tmp_path / "img").mkdir()
    good.save(tmp_path / "img" / "a.png")
    mask.save(tmp_path / "img" / "a_mask.png")
    Image.new("L", (32, 24), 0).save(tmp_path / "img" / "empty_mask.png")
    (tmp_path / "img" / "junk.png").write_bytes(b"junk")
    rows = [
        {"image": "img/a.png", "label": "circle", "mask": "img/a_mask.png"},
        {"image": "img/missing.png", "label": "circle"},
        {"image": "img/junk.png", "label": "circle"},
        {"image": "img/a.png", "label": "hot dog"},
        {"image": "img/a.png", "label": "circle", "mask": "img/empty_mask.png"},
        {"image": "img/a.png", "label": "Circle", "id": "keep-me"},
    ]
    (tmp_path / "manifest.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    ds = load_dataset(f"folder:{tmp_path}")
    assert [e.id for e in ds] == [f"{tmp_path.name}-000000", "keep-me"]
    assert ds.problems == {"empty_mask": 1, "label_not_one_word": 1, "missing_image": 1, "unreadable_image": 1}
    assert (f"{tmp_path.name}-000001", "missing_image") in ds.problem_items
    assert len(load_dataset(f"folder:{tmp_path}", n=1)) == 1
    assert load_dataset("default", n=2).problems == {}
