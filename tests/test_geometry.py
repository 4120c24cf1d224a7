"""Patch geometry: pixel masks drawn in known regions map onto exactly the expected image tokens."""

import numpy as np
import pytest
import torch
from PIL import Image

from headflow import HeadflowError
from headflow.models.adapter import family_names
from headflow.models.geometry import classify_tokens, coverage_from_rects, token_coverage, token_rects

QUESTION = "What is shown ?"


def rect_mask(height, width, y0, y1, x0, x1):
    mask = np.zeros((height, width), dtype=bool)
    mask[y0:y1, x0:x1] = True
    return mask


def coverage(lm, width, height, mask):
    image = Image.new("RGB", (width, height), "gray")
    inputs, groups = lm.encode(image, QUESTION)
    cov = token_coverage(lm, image, mask, inputs)
    assert len(cov) == len(groups.image)
    return cov


def test_llava_square_grid_maps_rectangle_to_exact_tokens(tiny_models):
    lm = tiny_models("llava")  # shortest edge 32, crop 32, patch 8: 4x4 tokens, 16 px each on a 64x64 image
    cov = coverage(lm, 64, 64, rect_mask(64, 64, 16, 32, 32, 64))
    expected = np.zeros(16)
    expected[[1 * 4 + 2, 1 * 4 + 3]] = 1.0
    np.testing.assert_array_equal(cov, expected)
    cov = coverage(lm, 64, 64, rect_mask(64, 64, 0, 4, 0, 16))  # a quarter of token 0
    assert cov[0] == 0.25 and cov[1:].sum() == 0
    assert list(classify_tokens(cov)[:2]) == ["boundary", "background"]


def test_llava_center_crop_is_replayed(tiny_models):
    lm = tiny_models("llava")  # 96x64 -> resize 48x32 -> crop 8 px each side = 16 original px
    cov = coverage(lm, 96, 64, rect_mask(64, 96, 0, 16, 16, 32))
    expected = np.zeros(16)
    expected[0] = 1.0
    np.testing.assert_array_equal(cov, expected)
    # a region the centre crop removes reaches no token
    assert coverage(lm, 96, 64, rect_mask(64, 96, 0, 64, 0, 16)).sum() == 0


def test_llava_geometry_matches_the_processed_pixels(tiny_models):
    """Independent check: a white rectangle shows up in exactly the predicted patches of pixel_values."""
    lm = tiny_models("llava")
    mask = rect_mask(96, 128, 24, 72, 32, 80)
    array = np.zeros((96, 128, 3), dtype=np.uint8)
    array[mask] = 255
    image = Image.fromarray(array)
    inputs, _ = lm.encode(image, QUESTION)
    pixels = inputs["pixel_values"][0].mean(0)  # (32, 32), normalised
    bright = (pixels > 0).float().view(4, 8, 4, 8).mean((1, 3)).flatten().numpy()
    cov = token_coverage(lm, image, mask, inputs)
    np.testing.assert_allclose(bright, cov, atol=0.15)


def test_qwen2_vl_merged_grid_maps_rectangle_to_exact_tokens(tiny_models):
    lm = tiny_models("qwen2_vl")  # 96x96 -> smart resize 64x64 -> 8x8 patches -> 4x4 merged tokens of 24 px
    image = Image.new("RGB", (96, 96))
    inputs, _ = lm.encode(image, QUESTION)
    assert inputs["image_grid_thw"].tolist() == [[1, 8, 8]]
    cov = token_coverage(lm, image, rect_mask(96, 96, 24, 48, 48, 72), inputs)
    expected = np.zeros(16)
    expected[1 * 4 + 2] = 1.0
    np.testing.assert_array_equal(cov, expected)


def test_qwen2_vl_non_square_grid(tiny_models):
    lm = tiny_models("qwen2_vl")  # 96x64 -> 64x48 resized -> 3x4 merged tokens (21.3 x 24 original px)
    cov = coverage(lm, 96, 64, rect_mask(64, 96, 0, 64, 24, 48))
    expected = np.zeros(12)
    expected[[1, 5, 9]] = 1.0
    np.testing.assert_allclose(cov, expected, atol=1e-12)


def test_internvl_single_tile(tiny_models):
    lm = tiny_models("internvl")  # a 32x32 image is one tile of 4x4 tokens
    cov = coverage(lm, 32, 32, rect_mask(32, 32, 8, 16, 0, 8))
    expected = np.zeros(16)
    expected[4] = 1.0
    np.testing.assert_array_equal(cov, expected)


@pytest.mark.parametrize("family", family_names())
@pytest.mark.parametrize("size", [(64, 64), (96, 64), (40, 150)])
def test_geometry_token_count_matches_prompt(tiny_models, family, size):
    lm = tiny_models(family)
    inputs, groups = lm.encode(Image.new("RGB", size), QUESTION)
    rects = token_rects(lm, size, inputs)  # raises if the count disagrees
    assert rects.shape == (len(groups.image), 4)
    full = token_coverage(lm, Image.new("RGB", size), np.ones(size[::-1], dtype=bool), inputs)
    assert np.isfinite(full).any() and ((full[np.isfinite(full)] > 0) & (full[np.isfinite(full)] <= 1)).all()


def test_coverage_counts_padding_as_background():
    rects = np.array([[-2.0, 2.0, 0.0, 2.0], [np.nan] * 4])
    cov = coverage_from_rects(np.ones((4, 4), dtype=bool), rects)
    assert cov[0] == 0.5 and np.isnan(cov[1])
    assert classify_tokens(cov)[1] == "other"


def test_mask_of_wrong_shape_is_rejected(tiny_models):
    lm = tiny_models("llava")
    image = Image.new("RGB", (64, 64))
    inputs, _ = lm.encode(image, QUESTION)
    with pytest.raises(HeadflowError, match=r"must have the image's shape \(64, 64\)"):
        token_coverage(lm, image, np.zeros((10, 10), dtype=bool), inputs)


@pytest.mark.parametrize("family", ["idefics3", "smolvlm"])
def test_split_image_geometry_matches_the_processed_tiles(tiny_models, family):
    """Independent check: a white rectangle shows up in exactly the predicted 8x8-pixel blocks (patch 4 x pixel
    shuffle 2) of each 32 px tile and of the global image, in the prompt's order (tiles row-major, then global)."""
    lm = tiny_models(family)
    mask = rect_mask(60, 90, 10, 50, 20, 70)
    array = np.zeros((60, 90, 3), dtype=np.uint8)
    array[mask] = 255
    image = Image.fromarray(array)
    inputs, groups = lm.encode(image, QUESTION)
    tiles = inputs["pixel_values"][0].mean(1)  # (n_tiles + 1, 32, 32), normalised
    assert tiles.shape[0] == 5 and len(groups.image) == 5 * 16  # 2x2 tiles + the global image
    bright = (tiles > 0).float().view(5, 4, 8, 4, 8).mean((2, 4)).flatten().numpy()
    cov = token_coverage(lm, image, mask, inputs)
    np.testing.assert_allclose(bright, cov, atol=0.15)
    assert cov[:16].max() > 0.9 and cov[-16:].max() > 0.9  # the rectangle is seen in a tile and in the global image
