"""COCO instance annotations as a headflow dataset: one main object per image, its category the answer.

Spec: ``coco:INSTANCES_JSON:IMAGES_DIR``, e.g. ``coco:annotations/instances_val2017.json:val2017``.
The annotations are read with :class:`pycocotools.coco.COCO` (install ``pycocotools``; it is imported
only when a COCO dataset is built).

Per image, the *main object* is the largest non-crowd instance by area (the annotation's ``area``
field, or the area of its segmentation where that field is missing). Its category name, mapped to one
word by :data:`COCO_ONE_WORD` where it has several, is the label; its segmentation (polygons, RLE or
uncompressed RLE, decoded with ``COCO.annToMask``) is the object mask; its supercategory is the factor
``"supercategory"``.

Images are skipped, and counted, for two kinds of reasons:

* **selection** (``filtered``): no non-crowd instance (``"no_instance"``), main object below
  ``min_area_frac`` of the image (``"too_small"``), main category occurring more than once with
  ``single_instance_only`` (``"not_single_instance"``), category mapped to ``None`` (``"label_skipped"``);
* **bad data** (``problems``, see :data:`headflow.data.base.PROBLEM_REASONS`): missing or unreadable
  image file, empty mask, mask size differing from the image, multi-word label without a mapping,
  malformed annotation.

Every image in the walk is decoded once while the dataset is built (so that a broken file is
skipped, not met in the middle of a run); examples are decoded again on access and nothing is cached.
"""

from __future__ import annotations

import contextlib
import io
import json
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from headflow.data.base import Dataset, Example, ProblemLog, decode_image, mask_problem, one_word_label, walk_order
from headflow.errors import HeadflowError, MissingFileError, param_error

__all__ = ["COCO_ONE_WORD", "CocoDataset", "CocoItem"]

COCO_ONE_WORD: dict[str, str | None] = {
    "traffic light": "stoplight",
    "fire hydrant": "hydrant",
    "stop sign": "sign",
    "parking meter": "meter",
    "sports ball": "ball",
    "baseball bat": "bat",
    "baseball glove": "glove",
    "tennis racket": "racket",
    "wine glass": "glass",
    "hot dog": "hotdog",
    "potted plant": "plant",
    "dining table": "table",
    "cell phone": "phone",
    "teddy bear": "teddy",
    "hair drier": "hairdryer",
}
"""One-word answers for the 15 multi-word names among COCO 2017's 80 categories.

Each is the word a person would answer with, chosen so that no two COCO categories share a label
("teddy", not "bear", which is its own category). Override or extend it with ``label_map``; a value of
``None`` skips that category (counted in ``filtered["label_skipped"]``).
"""


@dataclass(frozen=True)
class CocoItem:
    """One kept image: where it is and which annotation is its main object."""

    image_id: int
    file_name: str
    ann_id: int
    category: str
    """The COCO category name, before mapping to one word."""
    label: str
    supercategory: str
    area_frac: float
    """Main object area over image area."""


def _import_coco():  # noqa: ANN202 - pycocotools is optional
    try:
        from pycocotools import mask as mask_utils
        from pycocotools.coco import COCO
    except ImportError as err:
        raise HeadflowError(
            "COCO datasets need pycocotools, which is not installed. Install it with: pip install pycocotools"
        ) from err
    return COCO, mask_utils


class CocoDataset(Dataset):
    """Images of a COCO instances file, each labelled with its largest object.

    Parameters
    ----------
    instances_json : str or pathlib.Path
        COCO instances annotation file (e.g. ``annotations/instances_val2017.json``).
    images_dir : str or pathlib.Path
        Folder holding the images named by the file's ``file_name`` fields.
    n : int, optional
        Keep at most ``n`` images (default: all that pass). With ``seed`` set, a seeded random subsample;
        otherwise the first ``n`` by image id.
    seed : int or None, default 0
        Subsampling seed (``numpy.random.default_rng(seed)``); ignored when ``n`` is ``None``.
    min_area_frac : float, default 0.05
        Minimum main-object area as a fraction of the image area, in ``[0, 1)``.
    single_instance_only : bool, default False
        Keep only images where the main object's category occurs once (crowd regions of that
        category count as further instances).
    label_map : dict of str to (str or None), optional
        Extra or overriding entries for :data:`COCO_ONE_WORD` (COCO name -> one-word label, or
        ``None`` to skip the category).

    Attributes
    ----------
    items : list of CocoItem
        The kept images, sorted by image id; ``items[i]`` describes ``self[i]``.
    problems, problem_items
        Bad items skipped (see :class:`~headflow.data.base.Dataset`).
    filtered : dict of str to int
        Images left out by the selection rules: reason -> count.

    Raises
    ------
    MissingFileError
        If the annotation file or the image folder does not exist (a ``HeadflowError`` and a
        ``FileNotFoundError``).
    HeadflowError
        If a parameter is invalid, the file is not a COCO instances file, or pycocotools is missing.

    Examples
    --------
    >>> ds = CocoDataset("instances_val2017.json", "val2017", n=256, min_area_frac=0.1)  # doctest: +SKIP
    >>> ds[0].label, ds[0].factors, ds.problems  # doctest: +SKIP
    ('bear', {'supercategory': 'animal'}, {})
    """

    def __init__(
        self,
        instances_json: str | Path,
        images_dir: str | Path,
        n: int | None = None,
        seed: int | None = 0,
        *,
        min_area_frac: float = 0.05,
        single_instance_only: bool = False,
        label_map: dict[str, str | None] | None = None,
    ) -> None:
        self._check_params(n, seed, min_area_frac, single_instance_only, label_map)
        self.instances_json = Path(instances_json)
        self.images_dir = Path(images_dir)
        if not self.instances_json.exists():
            raise MissingFileError(f"COCO annotation file {str(self.instances_json)!r} does not exist. Use "
                                   "'coco:INSTANCES_JSON:IMAGES_DIR' with an existing instances_*.json.")
        if not self.instances_json.is_file():
            raise HeadflowError(f"COCO annotation file {str(self.instances_json)!r} is a folder, not a file. Use "
                                "the instances_*.json inside it, e.g. annotations/instances_val2017.json.")
        if not self.images_dir.is_dir():
            raise MissingFileError(f"COCO image folder {str(self.images_dir)!r} does not exist or is not a folder. "
                                   "Use the folder holding the images, e.g. val2017.")
        self.n, self.seed = n, seed
        self.min_area_frac = float(min_area_frac)
        self.single_instance_only = bool(single_instance_only)
        self.label_map_ = {**COCO_ONE_WORD, **(label_map or {})}
        """The resolved multi-word table (defaults plus ``label_map``)."""

        COCO, self._mask_utils = _import_coco()
        try:
            with self.instances_json.open(encoding="utf-8") as fh:
                raw = json.load(fh)
            if not isinstance(raw, dict) or not {"images", "annotations", "categories"} <= raw.keys():
                raise ValueError("needs top-level 'images', 'annotations' and 'categories'")
            self._coco = COCO()
            self._coco.dataset = raw
            with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress
                self._coco.createIndex()
        except OSError as err:
            raise HeadflowError(f"Cannot read COCO annotation file {str(self.instances_json)!r}: "
                                f"{err.strerror or err}.") from None
        except (ValueError, KeyError, TypeError) as err:  # JSON and UTF-8 decode errors are ValueErrors
            reason = str(err).splitlines()[0] if str(err) else type(err).__name__
            raise HeadflowError(
                f"{str(self.instances_json)!r} is not a COCO instances file ({reason}). "
                "Use an instances_*.json from the COCO annotations archive."
            ) from err

        self.name = f"coco:{self.instances_json}:{self.images_dir}"
        self._problem_log = ProblemLog()
        self.filtered: dict[str, int] = {}
        image_ids = sorted(self._coco.imgs)
        kept: list[tuple[int, CocoItem]] = []
        for pos in walk_order(len(image_ids), n, seed):
            if n is not None and len(kept) >= n:
                break
            item = self._examine(image_ids[pos])
            if item is not None:
                kept.append((pos, item))
        self.items = [item for _, item in sorted(kept, key=lambda t: t[0])]
        self.filtered = dict(sorted(self.filtered.items()))
        self.classes = sorted({it.label for it in self.items})
        self.factor_names = ["supercategory"]

    @staticmethod
    def _check_params(n: object, seed: object, min_area_frac: object, single: object, label_map: object) -> None:
        owner = "CocoDataset"
        if n is not None and (isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1):
            raise param_error("n", owner, "an int in [1, inf) or None", n)
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0):
            raise param_error("seed", owner, "an int in [0, inf) or None", seed)
        if isinstance(min_area_frac, bool) or not isinstance(min_area_frac, (int, float)) or not 0 <= min_area_frac < 1:
            raise param_error("min_area_frac", owner, "a float in [0, 1)", min_area_frac)
        if not isinstance(single, bool):
            raise param_error("single_instance_only", owner, "a bool", single)
        if label_map is not None and (
            not isinstance(label_map, dict)
            or not all(isinstance(k, str) and (v is None or one_word_label(v) == v) for k, v in label_map.items())
        ):
            raise param_error(
                "label_map", owner, "a dict from COCO category name to a lower-case one-word label or None", label_map
            )

    def _filter(self, reason: str) -> None:
        self.filtered[reason] = self.filtered.get(reason, 0) + 1

    def _area(self, ann: dict) -> float:
        area = ann.get("area")
        if isinstance(area, (int, float)) and not isinstance(area, bool):
            return float(area)
        return float(self._mask_utils.area(self._coco.annToRLE(ann)))

    def _examine(self, image_id: int) -> CocoItem | None:
        """Apply the selection rules and the bad-data checks to one image; ``None`` if it is skipped."""
        coco, item_id = self._coco, f"coco-{image_id}"
        info = coco.imgs[image_id]
        try:
            anns = coco.imgToAnns.get(image_id, [])
            solid = [a for a in anns if not a.get("iscrowd", 0)]
            if not solid:
                self._filter("no_instance")
                return None
            areas = [self._area(a) for a in solid]
            main = solid[int(np.argmax(areas))]  # ties: the first in file order
            height, width = int(info["height"]), int(info["width"])
            cat = coco.cats[main["category_id"]]
            category, supercategory = str(cat["name"]), str(cat.get("supercategory", ""))
            file_name = str(info["file_name"])
        except (KeyError, TypeError, ValueError, IndexError):
            self._problem_log.add(item_id, "bad_annotation")
            return None
        area_frac = max(areas) / max(height * width, 1)
        if area_frac < self.min_area_frac:
            self._filter("too_small")
            return None
        if self.single_instance_only and sum(a.get("category_id") == main["category_id"] for a in anns) > 1:
            self._filter("not_single_instance")
            return None
        if category in self.label_map_:
            label = self.label_map_[category]
            if label is None:
                self._filter("label_skipped")
                return None
        else:
            label = one_word_label(category)
            if label is None:
                self._problem_log.add(item_id, "label_not_one_word")
                return None
        path = self.images_dir / file_name
        if not path.is_file():
            self._problem_log.add(item_id, "missing_image")
            return None
        try:
            image = decode_image(path)
        except OSError:
            self._problem_log.add(item_id, "unreadable_image")
            return None
        try:
            mask = self._decode_mask(main)
        except Exception:  # noqa: BLE001 - pycocotools raises assorted errors on broken segmentations
            self._problem_log.add(item_id, "bad_annotation")
            return None
        problem = mask_problem(mask, image)
        if problem is not None:
            self._problem_log.add(item_id, problem)
            return None
        return CocoItem(image_id, file_name, int(main["id"]), category, label, supercategory, float(area_frac))

    def _decode_mask(self, ann: dict) -> np.ndarray:
        """The annotation's mask, ``bool`` of shape ``(H, W)`` (the RLE's own size; polygons use the image's)."""
        with warnings.catch_warnings():  # pycocotools 2.0 + numpy 2: a harmless "copy keyword" DeprecationWarning
            warnings.simplefilter("ignore", DeprecationWarning)
            return np.asarray(self._coco.annToMask(ann), dtype=bool)

    def __len__(self) -> int:
        return len(self.items)

    def _get(self, index: int) -> Example:
        it = self.items[index]
        image = decode_image(self.images_dir / it.file_name)
        mask = self._decode_mask(self._coco.anns[it.ann_id])
        return Example(
            id=f"coco-{it.image_id}", image=image, label=it.label, factors={"supercategory": it.supercategory}, mask=mask
        )
