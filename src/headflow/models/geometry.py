"""Patch geometry: which pixels of the original image each image token of the prompt sees.

Every image token gets a rectangle ``(y0, y1, x0, x1)`` in the *original* image's pixel coordinates
(floats; a rectangle may reach outside the image where the processor pads), computed by replaying the
processor's own resize / pad / crop / tile steps from its configuration. Tokens that see no region
(a CLS token kept by ``vision_feature_select_strategy="full"``, LLaVA-NeXT's row-end newline tokens)
get a NaN rectangle. From the rectangles, :func:`token_coverage` maps a pixel mask onto tokens:
coverage = the fraction of the token's pixel area that is object (padding counts as not object).

Each family's geometry is its adapter's ``token_rects`` method, in its file under ``models/families/``
(e.g. LLaVA-1.5: shortest-edge resize + centre crop, optional pad-to-square; LLaVA-NeXT: base image +
any-resolution tiles, unpadded, with newline tokens; Qwen2-VL / Qwen2.5-VL: smart resize, 2x2-merged
patches read from ``image_grid_thw``; InternVL: dynamic tiles plus the thumbnail). This module holds the
math they share (:func:`grid_rects`, :func:`size_value`) and the entry points. Nothing here is stateful.

>>> from headflow import load_model
>>> lm = load_model("tiny:llava")
>>> image = Image.new("RGB", (64, 64))
>>> inputs, _ = lm.encode(image, "What is shown ?")
>>> token_rects(lm, image.size, inputs).shape
(16, 4)
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from PIL import Image

from ..errors import HeadflowError

__all__ = ["anyres_rects", "split_image_rects", "tiles_and_thumbnail_rects", "token_rects", "token_coverage", "coverage_from_rects", "classify_tokens", "grid_rects",
           "size_value"]

#: token classes of :func:`classify_tokens`
OBJECT, BACKGROUND, BOUNDARY, OTHER = "object", "background", "boundary", "other"


def size_value(d: Any, *keys: str) -> Any:
    """The first of ``keys`` that ``d`` (a processor's size dict or size object, or None) has set, else None."""
    if d is None:
        return None
    for key in keys:
        value = d.get(key) if isinstance(d, dict) else getattr(d, key, None)
        if value is not None:
            return value
    return None


def grid_rects(n_rows: int, n_cols: int, y0: float, x0: float, cell_h: float, cell_w: float) -> np.ndarray:
    """Row-major cell rectangles of an ``n_rows x n_cols`` grid starting at ``(y0, x0)``."""
    i, j = np.meshgrid(np.arange(n_rows), np.arange(n_cols), indexing="ij")
    i, j = i.ravel().astype(float), j.ravel().astype(float)
    return np.stack([y0 + i * cell_h, y0 + (i + 1) * cell_h, x0 + j * cell_w, x0 + (j + 1) * cell_w], -1)


def anyres_rects(width: int, height: int, tile: int, grid: int, pinpoints: Any,
                 max_num_patches: int | None = None) -> np.ndarray:
    """LLaVA-NeXT / LLaVA-OneVision any-resolution geometry of one image (``width x height`` original pixels).

    The base image (squashed to one ``tile x tile`` tile, ``grid x grid`` tokens), then the tile grid of the best
    pinpoint (image resized keeping its aspect ratio, centred, padded), unpadded in feature units, row by row,
    each row followed by a newline token (NaN). ``max_num_patches`` (OneVision's ``anyres_max_N``): where the
    unpadded grid has more than ``N`` tiles' worth of tokens (ratio > 1.1), the model shrinks it bilinearly to
    ``int(h // ratio) x int(w // ratio)`` tokens; each is then given the cells it is resampled from (an
    approximation: bilinear weights reach half a cell further).
    """
    from transformers.image_processing_utils import select_best_resolution

    base = grid_rects(grid, grid, 0.0, 0.0, height / grid, width / grid)
    pinpoints = [list(p) for p in pinpoints]
    bh, bw = select_best_resolution((height, width), pinpoints)
    scale_w, scale_h = bw / width, bh / height
    if scale_w < scale_h:
        nw, nh = bw, min(math.ceil(height * scale_w), bh)
    else:
        nh, nw = bh, min(math.ceil(width * scale_h), bw)
    paste_y, paste_x = (bh - nh) // 2, (bw - nw) // 2
    fh, fw = (bh // tile) * grid, (bw // tile) * grid  # feature grid over the padded canvas
    cell = tile / grid  # canvas px per feature cell
    # unpad_image, in feature units
    if width / height > fw / fh:
        new_h = int(round(height * (fw / width), 7))
        pad = (fh - new_h) // 2
        r0, r1, c0, c1 = pad, fh - pad, 0, fw
    else:
        new_w = int(round(width * (fh / height), 7))
        pad = (fw - new_w) // 2
        r0, r1, c0, c1 = 0, fh, pad, fw - pad
    n_rows, n_cols = r1 - r0, c1 - c0
    step_r = step_c = 1.0
    if max_num_patches is not None:
        ratio = math.sqrt(n_rows * n_cols / (max_num_patches * grid**2))
        if ratio > 1.1:
            out_rows, out_cols = int(n_rows // ratio), int(n_cols // ratio)
            step_r, step_c = n_rows / out_rows, n_cols / out_cols
            n_rows, n_cols = out_rows, out_cols
    sy, sx = height / nh, width / nw
    rows = []
    for r in range(n_rows):
        y0 = ((r0 + r * step_r) * cell - paste_y) * sy
        row = grid_rects(1, n_cols, y0, (c0 * cell - paste_x) * sx, step_r * cell * sy, step_c * cell * sx)
        rows.extend([row, np.full((1, 4), np.nan)])
    return np.concatenate([base, *rows])


def split_image_rects(width: int, height: int, longest_edge: int | None, tile: int, grid: int,
                      split: bool = True) -> np.ndarray:
    """Idefics3 / SmolVLM geometry of one image (``width x height`` original pixels): the tiles, row-major, then
    the global image; ``grid x grid`` tokens per tile (patches merged by the connector's pixel shuffle, row-major).

    The processor resizes the longest edge to ``longest_edge`` (even short edge; None: no resize), then up to
    multiples of ``tile`` (keeping the aspect ratio) and, when that is larger than one tile, cuts it into
    ``tile x tile`` tiles followed by the whole image squashed to one tile. Without ``split`` (or when the image fits
    one tile) there is only the whole image, squashed to one tile.
    """
    if not split:
        return grid_rects(grid, grid, 0.0, 0.0, height / grid, width / grid)
    from transformers.models.idefics3.image_processing_pil_idefics3 import get_resize_output_image_size

    h, w = height, width
    if longest_edge:
        h, w = get_resize_output_image_size(np.broadcast_to(np.uint8(0), (1, height, width)), longest_edge)
    # Idefics3ImageProcessorPil.resize_for_vision_encoder
    aspect = w / h
    if w >= h:
        w = math.ceil(w / tile) * tile
        h = math.ceil(int(w / aspect) / tile) * tile
    else:
        h = math.ceil(h / tile) * tile
        w = math.ceil(int(h * aspect) / tile) * tile
    whole = grid_rects(grid, grid, 0.0, 0.0, height / grid, width / grid)
    if h <= tile and w <= tile:
        return whole
    sy, sx = height / h, width / w
    cell_h, cell_w = tile / grid * sy, tile / grid * sx
    tiles = [grid_rects(grid, grid, r * tile * sy, c * tile * sx, cell_h, cell_w)
             for r in range(h // tile) for c in range(w // tile)]
    return np.concatenate([*tiles, whole])


def tiles_and_thumbnail_rects(width: int, height: int, image_processor: Any, grid: int) -> np.ndarray:
    """GOT-OCR2-style dynamic tiling (InternVL, Aya Vision) of one image (``width x height`` original pixels): the
    image resized to a ``cols x rows`` canvas of tiles chosen by aspect ratio (``crop_to_patches``, between
    ``min_patches`` and ``max_patches`` tiles), the tiles row-major, then the thumbnail (the whole image in one tile)
    when there is more than one tile; ``grid x grid`` tokens per tile, row-major."""
    ip = image_processor
    th, tw = size_value(ip.size, "height"), size_value(ip.size, "width")
    cols = rows = 1
    if getattr(ip, "crop_to_patches", False) and int(ip.max_patches) > 1:
        from transformers.models.got_ocr2.image_processing_pil_got_ocr2 import get_optimal_tiled_canvas

        cols, rows = get_optimal_tiled_canvas((height, width), (th, tw), int(ip.min_patches), int(ip.max_patches))
    sy, sx = height / (rows * th), width / (cols * tw)
    tiles = [grid_rects(grid, grid, r * th * sy, c * tw * sx, th / grid * sy, tw / grid * sx)
             for r in range(rows) for c in range(cols)]
    if rows * cols > 1:
        tiles.append(grid_rects(grid, grid, 0.0, 0.0, height / grid, width / grid))
    return np.concatenate(tiles)


# ----------------------------------------------------------------------------------------------
# entry points


def token_rects(lm: Any, image_size: tuple[int, int], inputs: dict) -> np.ndarray:
    """Rectangles ``Float[ndarray, "image_token 4"]`` = ``(y0, y1, x0, x1)`` in original pixels, NaN for
    tokens without a region, in the order of the prompt's image tokens: the family adapter's
    ``token_rects``, checked against the prompt's image-token count.

    Raises
    ------
    HeadflowError
        If the family has no patch geometry, or the geometry disagrees with the prompt's token count.
    """
    adapter = lm.adapter
    rects = adapter.token_rects(image_size, inputs)
    n_tokens = int((torch.as_tensor(inputs["input_ids"]) == adapter.image_token_id()).sum())
    if len(rects) != n_tokens:
        raise HeadflowError(
            f"Patch geometry of family {adapter.name!r} gives {len(rects)} tokens, but the prompt has {n_tokens} "
            "image tokens; this processor configuration is not supported by headflow's geometry.")
    return rects


def coverage_from_rects(mask: np.ndarray, rects: np.ndarray) -> np.ndarray:
    """Exact area fraction of each rectangle covered by ``mask`` (pixels as unit squares; outside = 0).

    Returns ``Float[ndarray, "token"]`` in [0, 1], NaN where the rectangle is NaN.
    """
    mask = np.asarray(mask, dtype=np.float64)
    height, width = mask.shape
    out = np.full(len(rects), np.nan)
    ok = np.isfinite(rects).all(1)
    if not ok.any():
        return out
    r = rects[ok]

    def overlap(lo: np.ndarray, hi: np.ndarray, n: int) -> np.ndarray:
        px = np.arange(n, dtype=np.float64)
        return np.clip(np.minimum(hi[:, None], px + 1) - np.maximum(lo[:, None], px), 0.0, None)

    wy, wx = overlap(r[:, 0], r[:, 1], height), overlap(r[:, 2], r[:, 3], width)
    area = (r[:, 1] - r[:, 0]) * (r[:, 3] - r[:, 2])
    out[ok] = np.einsum("ny,yx,nx->n", wy, mask, wx) / area
    return np.clip(out, 0.0, 1.0)


def token_coverage(lm: Any, image: Image.Image, mask: np.ndarray, inputs: dict) -> np.ndarray:
    """Object coverage of each image token: ``Float[ndarray, "image_token"]`` in [0, 1] (NaN: no region).

    Parameters
    ----------
    lm : LoadedModel
    image : PIL.Image.Image
        The original image (only its size is used).
    mask : Bool[ndarray, "height width"]
        Object pixels, same size as ``image``.
    inputs : dict
        The processor outputs of the prompt (``lm.encode(image, question)[0]``).
    """
    mask = np.asarray(mask)
    if mask.shape != (image.height, image.width):
        raise HeadflowError(f"An object mask must have the image's shape ({image.height}, {image.width}). "
                            f"Got {mask.shape} instead.")
    return coverage_from_rects(mask.astype(bool), token_rects(lm, image.size, inputs))


def classify_tokens(coverage: np.ndarray, threshold: float = 0.5) -> np.ndarray:
    """``object`` (coverage ≥ threshold), ``background`` (0), ``boundary`` (in between), ``other`` (NaN)."""
    cov = np.asarray(coverage, dtype=float)
    out = np.full(cov.shape, BOUNDARY, dtype=object)
    out[np.isnan(cov)] = OTHER
    out[cov == 0] = BACKGROUND
    out[cov >= threshold] = OBJECT
    return out
