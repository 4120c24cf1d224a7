"""Random-weight models with real LVLM token layouts, for benchmarks (no hub, no downloads).

``llava15``: LLaVA-1.5's layout (336 px / patch 14 → 576 image tokens, its prompt) with a language
model narrow enough for a 2-core CPU (hidden 512, 8 layers, 8 heads); ``llava15-7b``: the real
LLaVA-1.5-7B language-model shape (hidden 4096, 32 layers × 32 heads, MLP 11008) for a GPU;
``qwen2vl``: Qwen2-VL's layout (merged 2×2 patches, 256 image tokens, system prompt, GQA, M-RoPE).
The vision towers stay tiny: the benchmark measures the language model, where interventions run.
"""

from __future__ import annotations

import math

import torch

from headflow.models.loading import LoadedModel, load_model
from headflow.models.tiny import build_tiny

LONG_QUESTION = ("Look at the image carefully. What is the main object in the image? "
                 "Answer the question using a single word or phrase, and do not add anything else to it.")

LM_SIZES = {
    "llava15": dict(hidden_size=512, intermediate_size=1376, num_hidden_layers=8, num_attention_heads=8,
                    num_key_value_heads=8, head_dim=64),
    "llava15-7b": dict(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32,
                       num_key_value_heads=32, head_dim=128),
    "qwen2vl": dict(hidden_size=512, intermediate_size=1376, num_hidden_layers=8, num_attention_heads=8,
                    num_key_value_heads=2, head_dim=64),
}


def build_shape(shape: str, *, device: str = "cpu", dtype: torch.dtype = torch.float32,
                image_tokens: int | None = None, lm_size: dict | None = None) -> LoadedModel:
    """``image_tokens`` (LLaVA shapes only): a square image grid of that many tokens (144, 576, 2304, ...) instead
    of 576; ``lm_size``: language-model sizes in place of ``LM_SIZES[shape]``."""
    if shape == "default":
        return load_model("default", device=device)
    if shape.startswith("llava15"):
        model, processor = build_tiny("llava")
        config = model.config
        side = 24 if image_tokens is None else math.isqrt(image_tokens)
        if side * side != (image_tokens or 576):
            raise SystemExit(f"image_tokens must be a square number (a square grid), got {image_tokens}")
        pixels = 14 * side
        config.vision_config.image_size, config.vision_config.patch_size = pixels, 14
        config.image_seq_length = side * side
        processor.patch_size = 14
        processor.image_processor.size = {"shortest_edge": pixels}
        processor.image_processor.crop_size = {"height": pixels, "width": pixels}
        cls = type(model)
    elif shape == "qwen2vl":
        model, processor = build_tiny("qwen2_vl")
        config = model.config
        ip = processor.image_processor
        ip.min_pixels = ip.max_pixels = 256 * 256
        if isinstance(getattr(ip, "size", None), dict):
            ip.size = {"shortest_edge": 256 * 256, "longest_edge": 256 * 256}
        config.text_config.rope_parameters["mrope_section"] = [8, 12, 12]
        config.vision_config.hidden_size = LM_SIZES[shape]["hidden_size"]
        cls = type(model)
    else:
        raise SystemExit(f"unknown shape {shape!r}; use default, llava15, llava15-7b or qwen2vl")
    if image_tokens is not None and not shape.startswith("llava15"):
        raise SystemExit("image_tokens is only supported for the llava15 shapes")
    for key, value in (lm_size or LM_SIZES[shape]).items():
        setattr(config.text_config, key, value)
    config.text_config.max_position_embeddings = 4096
    if getattr(config.text_config, "layer_types", None) is not None:
        config.text_config.layer_types = ["full_attention"] * config.text_config.num_hidden_layers
    torch.manual_seed(0)
    with torch.device(device):
        model = cls(config).to(dtype).eval()
    return load_model((model, processor))
