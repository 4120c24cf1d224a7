"""Patch geometry: which pixels of the original image each image token of the prompt sees.

Every image token gets a rectangle ``(y0, y1, x0, x1)`` in the *original* image's pixel coordinates
(floats; a rectangle may reach outside the image where the processor pads), computed by replaying the
processor's own resize / pad / crop / tile steps from its configuration. Tokens that see no region
(a CLS token kept by ``vision_feature_select_strategy="full"``, LLaVA-NeXT's row-end newline tokens)
get a NaN rectangle. From the rectangles, :func:`token_coverage` maps a pixel mask onto tokens:
coverage = the fraction of the token's pixel area that is object (padding counts as not object).

Supported: LLaVA-1.5 (CLIP processor: shortest-edge resize + centre crop, optional pad-to-square),
LLaVA-NeXT (base image + any-resolution tiles, unpadded, with newline tokens), Qwen2-VL / Qwen2.5-VL
(smart resize, 2x2-merged patches, read from ``image_grid_thw``) and InternVL (dynamic tiles of the
processor's tile size plus the thumbnail). Nothing here is stateful.

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

__all__ = ["token_rects", "token_coverage", "coverage_from_rects", "classify_tokens",
           "llava_rects", "llava_next_rects", "qwen2_vl_rects", "internvl_rects"]

#: token classes of :func:`classify_tokens`
OBJECT, BACKGROUND, BOUNDARY, OTHER = "object", "background", "boundary", "other"


def _size(d: Any, *keys: str) -> Any:
    if d is None:
        return None
    for key in keys:
        value = d.get(key) if isinstance(d, dict) else getattr(d, key, None)
        if value is not None:
            return value
    return None


def _grid_rects(n_rows: int, n_cols: int, y0: float, x0: float, cell_h: float, cell_w: float) -> np.ndarray:
    """Row-major cell rectangles of an ``n_rows x n_cols`` grid starting at ``(y0, x0)``."""
    i, j = np.meshgrid(np.arange(n_rows), np.arange(n_cols), indexing="ij")
    i, j = i.ravel().astype(float), j.ravel().astype(float)
    return np.stack([y0 + i * cell_h, y0 + (i + 1) * cell_h, x0 + j * cell_w, x0 + (j + 1) * cell_w], -1)


# ----------------------------------------------------------------------------------------------
# per-family geometry (called by each adapter's one-line ``token_rects``)


def llava_rects(processor: Any, config: Any, image_size: tuple[int, int], inputs: dict) -> np.ndarray:
    """LLaVA-1.5: [pad to square] → resize (shortest edge or exact size) → centre crop → patch grid."""
    width, height = image_size
    ip = processor.image_processor
    oy = ox = 0.0
    h, w = float(height), float(width)
    if getattr(ip, "do_pad", False):  # LlavaImageProcessor.pad_to_square: image centred on the long side
        side = max(height, width)
        if width > height:
            oy = float((side - height) // 2)
        else:
            ox = float((side - width) // 2)
        h = w = float(side)
    rh, rw = h, w
    if getattr(ip, "do_resize", True):
        short_edge = _size(ip.size, "shortest_edge")
        if short_edge:
            short, long = (w, h) if w <= h else (h, w)
            new_long = int(short_edge * long / short)
            rh, rw = (new_long, short_edge) if w <= h else (short_edge, new_long)
        else:
            rh, rw = _size(ip.size, "height"), _size(ip.size, "width")
    sy, sx = h / rh, w / rw  # processed px → (padded) original px
    top = left = 0
    ch, cw = rh, rw
    if getattr(ip, "do_center_crop", False):
        ch, cw = _size(ip.crop_size, "height"), _size(ip.crop_size, "width")
        top, left = int((rh - ch) / 2.0), int((rw - cw) / 2.0)
    patch = int(config.vision_config.patch_size)
    rows, cols = int(ch) // patch, int(cw) // patch
    rects = _grid_rects(rows, cols, top * sy - oy, left * sx - ox, patch * sy, patch * sx)
    if getattr(config, "vision_feature_select_strategy", "default") == "full":
        rects = np.concatenate([np.full((1, 4), np.nan), rects])
    return rects


def llava_next_rects(processor: Any, config: Any, image_size: tuple[int, int], inputs: dict) -> np.ndarray:
    """LLaVA-NeXT anyres: base image (squashed to the tile size), then the unpadded tile grid row by row,
    each row followed by a newline token (NaN)."""
    from transformers.image_processing_utils import select_best_resolution

    width, height = image_size
    ip = processor.image_processor
    tile = int(config.vision_config.image_size)
    g = tile // int(config.vision_config.patch_size)
    base = _grid_rects(g, g, 0.0, 0.0, height / g, width / g)
    if getattr(config, "vision_feature_select_strategy", "default") == "full":
        raise HeadflowError("Patch geometry for LLaVA-NeXT with vision_feature_select_strategy='full' is not "
                            "supported; object/background analysis needs the 'default' strategy.")
    pinpoints = [list(p) for p in (getattr(config, "image_grid_pinpoints", None) or ip.image_grid_pinpoints)]
    bh, bw = select_best_resolution((height, width), pinpoints)
    scale_w, scale_h = bw / width, bh / height
    if scale_w < scale_h:
        nw, nh = bw, min(math.ceil(height * scale_w), bh)
    else:
        nh, nw = bh, min(math.ceil(width * scale_h), bw)
    paste_y, paste_x = (bh - nh) // 2, (bw - nw) // 2
    fh, fw = (bh // tile) * g, (bw // tile) * g  # feature grid over the padded canvas
    cell = tile / g  # canvas px per feature cell
    # unpad_image, in feature units
    if width / height > fw / fh:
        new_h = int(round(height * (fw / width), 7))
        pad = (fh - new_h) // 2
        r0, r1, c0, c1 = pad, fh - pad, 0, fw
    else:
        new_w = int(round(width * (fh / height), 7))
        pad = (fw - new_w) // 2
        r0, r1, c0, c1 = 0, fh, pad, fw - pad
    sy, sx = height / nh, width / nw
    rows = []
    for r in range(r0, r1):
        row = _grid_rects(1, c1 - c0, (r * cell - paste_y) * sy, (c0 * cell - paste_x) * sx, cell * sy, cell * sx)
        rows.extend([row, np.full((1, 4), np.nan)])
    return np.concatenate([base, *rows])


def qwen2_vl_rects(processor: Any, config: Any, image_size: tuple[int, int], inputs: dict) -> np.ndarray:
    """Qwen2-VL / Qwen2.5-VL: the whole image resized to ``image_grid_thw`` patches; one token per
    ``merge_size x merge_size`` patches, row-major."""
    width, height = image_size
    ip = processor.image_processor
    grid = inputs.get("image_grid_thw")
    if grid is None:
        raise HeadflowError("Qwen2-VL patch geometry needs 'image_grid_thw' in the processor outputs.")
    t, gh, gw = (int(v) for v in torch.as_tensor(grid)[0].tolist())
    patch, merge = int(ip.patch_size), int(ip.merge_size)
    sy, sx = height / (gh * patch), width / (gw * patch)
    return _grid_rects(gh // merge, gw // merge, 0.0, 0.0, patch * merge * sy, patch * merge * sx)


def internvl_rects(processor: Any, config: Any, image_size: tuple[int, int], inputs: dict) -> np.ndarray:
    """InternVL: the image resized to a ``cols x rows`` canvas of tiles (row-major), then the thumbnail
    (whole image in one tile) when there is more than one tile; ``image_seq_length`` tokens per tile."""
    width, height = image_size
    ip = processor.image_processor
    th, tw = _size(ip.size, "height"), _size(ip.size, "width")
    per_tile = int(getattr(processor, "image_seq_length", None) or config.image_seq_length)
    q = int(round(math.sqrt(per_tile)))
    if q * q != per_tile:
        raise HeadflowError(f"InternVL patch geometry needs a square token grid per tile; got {per_tile} tokens.")
    cols = rows = 1
    if getattr(ip, "crop_to_patches", False) and int(ip.max_patches) > 1:
        from transformers.models.got_ocr2.image_processing_pil_got_ocr2 import get_optimal_tiled_canvas

        cols, rows = get_optimal_tiled_canvas((height, width), (th, tw), int(ip.min_patches), int(ip.max_patches))
    sy, sx = height / (rows * th), width / (cols * tw)
    tiles = [_grid_rects(q, q, r * th * sy, c * tw * sx, th / q * sy, tw / q * sx)
             for r in range(rows) for c in range(cols)]
    if rows * cols > 1:
        tiles.append(_grid_rects(q, q, 0.0, 0.0, height / q, width / q))
    return np.concatenate(tiles)


FAMILY_RECTS = {"llava": llava_rects, "llava_next": llava_next_rects, "qwen2_vl": qwen2_vl_rects,
                "qwen2_5_vl": qwen2_vl_rects, "internvl": internvl_rects}


# ----------------------------------------------------------------------------------------------
# public entry points


def token_rects(lm: Any, image_size: tuple[int, int], inputs: dict) -> np.ndarray:
    """Rectangles ``Float[ndarray, "image_token 4"]`` = ``(y0, y1, x0, x1)`` in original pixels, NaN for
    tokens without a region, in the order of the prompt's image tokens.

    Raises
    ------
    HeadflowError
        If the family has no patch geometry, or the geometry disagrees with the prompt's token count.
    """
    adapter = lm.adapter
    fn = getattr(adapter, "token_rects", None)
    if fn is None:
        if adapter.name not in FAMILY_RECTS:
            raise HeadflowError(
                f"No patch geometry for family {adapter.name!r}; object/background analysis supports "
                f"{', '.join(sorted(FAMILY_RECTS))}. Add a token_rects(image_size, inputs) method to its adapter.")
        rects = FAMILY_RECTS[adapter.name](adapter.processor, adapter.model.config, image_size, inputs)
    else:
        rects = fn(image_size, inputs)
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
