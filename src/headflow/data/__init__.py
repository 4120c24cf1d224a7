"""Datasets for headflow: the embedded synthetic default set, image folders, COCO and Hugging Face datasets.

>>> from headflow.data import load_dataset
>>> ds = load_dataset("default", n=48)
>>> len(ds), ds.classes[:3]
(48, ['circle', 'square', 'triangle'])
"""

from __future__ import annotations

from pathlib import Path

from headflow.data.base import PROBLEM_REASONS, Dataset, Example, ListDataset
from headflow.data.coco import COCO_ONE_WORD, CocoDataset
from headflow.data.default import CLASSES, FACTORS, DefaultDataset
from headflow.data.folder import FolderDataset, export_folder
from headflow.data.hf import HFDataset, parse_hf_spec
from headflow.errors import HeadflowError

__all__ = [
    "CLASSES",
    "COCO_ONE_WORD",
    "FACTORS",
    "PROBLEM_REASONS",
    "CocoDataset",
    "Dataset",
    "DefaultDataset",
    "Example",
    "FolderDataset",
    "HFDataset",
    "ListDataset",
    "export_folder",
    "load_dataset",
]

_VALID_SPECS = "'default' or 'folder:PATH' or 'coco:INSTANCES_JSON:IMAGES_DIR' or 'hf:NAME_OR_PATH[:SPLIT]'"

_SPEC_OPTIONS = {  # keyword option -> the spec kinds it applies to
    "image_column": ("hf",),
    "label_column": ("hf",),
    "mask_column": ("hf",),
    "factor_columns": ("hf",),
    "min_area_frac": ("coco",),
    "single_instance_only": ("coco",),
}


def _split_coco_spec(rest: str) -> tuple[str, str]:
    """``INSTANCES_JSON:IMAGES_DIR`` -> the two paths (split after ``.json`` if present, else at the last ``:``)."""
    cut = rest.lower().find(".json:")
    head, tail = (rest[: cut + 5], rest[cut + 6 :]) if cut >= 0 else rest.rpartition(":")[::2]
    if not head or not tail:
        raise ValueError(
            f"Dataset spec 'coco:{rest}' needs two paths. Use 'coco:INSTANCES_JSON:IMAGES_DIR', "
            "e.g. 'coco:annotations/instances_val2017.json:val2017'."
        )
    return head, tail


def load_dataset(
    spec: str,
    n: int | None = None,
    seed: int = 0,
    *,
    image_column: str | None = None,
    label_column: str | None = None,
    mask_column: str | None = None,
    factor_columns: list[str] | None = None,
    min_area_frac: float | None = None,
    single_instance_only: bool | None = None,
) -> Dataset:
    """Load a dataset by spec.

    Parameters
    ----------
    spec : str
        ``"default"`` (the embedded generator), ``"folder:PATH"`` (an image folder with
        ``manifest.csv`` or ``manifest.jsonl``), ``"coco:INSTANCES_JSON:IMAGES_DIR"`` (COCO instances,
        see :class:`CocoDataset`; needs ``pycocotools``) or ``"hf:NAME_OR_PATH[:SPLIT]"`` (a Hugging
        Face dataset read offline, see :class:`HFDataset`; needs ``datasets``).
    n : int, optional
        Number of examples. For ``"default"`` it defaults to 256 (a multiple of 48 keeps the
        (class, style) design balanced); for a folder, the first ``n`` usable rows (default: all);
        for COCO and Hugging Face, a random subsample of ``n`` usable items drawn with ``seed`` and kept
        in dataset order (default: all).
    seed : int, default 0
        Generator seed for ``"default"``, subsampling seed for ``"coco:"`` and ``"hf:"``; ignored for
        folders.
    image_column, label_column, mask_column, factor_columns : optional
        ``"hf:"`` only: the columns holding images (default ``"image"``), labels (default ``"label"``),
        object masks (default: none) and factors (default: every other string or ClassLabel column).
    min_area_frac, single_instance_only : optional
        ``"coco:"`` only: minimum main-object area as a fraction of the image (default 0.05), and
        whether to keep only images whose main category occurs once (default False).

    Returns
    -------
    Dataset
        Items skipped as bad data are counted in ``dataset.problems`` (reason -> count);
        ``dataset.load_args`` holds this call's arguments, so ``load_dataset(**dataset.load_args)`` loads it again.

    Raises
    ------
    ValueError
        If ``spec`` is not one of the valid forms, or an option is given for a spec it does not apply
        to (``HeadflowError``, a ``ValueError``, for the COCO and Hugging Face loaders' own errors).
    FileNotFoundError
        If a folder or COCO path does not exist.
    """
    if not isinstance(spec, str):
        raise TypeError(f"Dataset spec must be a str ({_VALID_SPECS}). Got {type(spec).__name__} instead.")
    kind = spec.split(":", 1)[0] if ":" in spec else spec
    options = {
        "image_column": image_column,
        "label_column": label_column,
        "mask_column": mask_column,
        "factor_columns": factor_columns,
        "min_area_frac": min_area_frac,
        "single_instance_only": single_instance_only,
    }
    given = {k: v for k, v in options.items() if v is not None}
    for key in given:
        if kind not in _SPEC_OPTIONS[key]:
            raise HeadflowError(
                f"The {key!r} option of load_dataset applies only to {' and '.join(f'{s}:' for s in _SPEC_OPTIONS[key])} "
                f"specs. Got it with spec {spec!r}; leave it out."
            )
    if spec == "default":
        dataset: Dataset = DefaultDataset(n=256 if n is None else n, seed=seed)
    elif spec.startswith("folder:") and len(spec) > len("folder:"):
        dataset = FolderDataset(spec[len("folder:"):], n=n)
    elif spec.startswith("coco:") and len(spec) > len("coco:"):
        instances, images = _split_coco_spec(spec[len("coco:"):])
        dataset = CocoDataset(instances, images, n=n, seed=seed, **given)
    elif spec.startswith("hf:") and len(spec) > len("hf:"):
        source, split = parse_hf_spec(spec[len("hf:"):])
        dataset = HFDataset(source, split, n=n, seed=seed, **given)
    else:
        raise ValueError(f"Unknown dataset spec {spec!r}; valid forms: {_VALID_SPECS}.")
    # how to load it again (a run records this, so `validate` reloads the same data, options included)
    if spec.startswith("folder:"):  # absolute, so the run can be reopened from another working directory
        spec = "folder:" + str(Path(spec[len("folder:"):]).resolve())
    dataset.load_args = {"spec": spec, "n": n, "seed": seed, **given}
    return dataset
