"""Full-size shapes: each family's reference checkpoint's dimensions with a few layers and random weights.

:data:`FULL_SIZE` holds, per family, the reference checkpoint's numbers (language model: hidden size, MLP width,
query/KV heads, head dimension, vocabulary, RoPE settings, sliding window; vision tower: width, heads, MLP width,
patch and image size; the multimodal fields that set how many tokens an image becomes) and the source each was
read from. :func:`build_full_size` builds that shape from the family's tiny model (``FamilyAdapter.tiny``) as a
template, with the numbers of the table, ``n_layers`` language-model layers and ``vision_layers`` vision layers,
random seeded weights, constructed directly in ``dtype`` (bf16 by default) on ``device``.

What is real and what is not:

* **real**: every per-layer shape of the language model (hidden size, heads, KV heads, head dimension, MLP
  width), the vocabulary size (embedding and LM-head matrices are full size), the RoPE settings (theta, M-RoPE
  sections, scaling) and sliding window, the vision tower's width/heads/MLP/patch/image size, the projector
  sizes (they follow from the two), and the image-processor settings that decide the number of image tokens, so
  an image becomes as many LM tokens as on the checkpoint (:attr:`FullSize.image_tokens`, for the
  224x224 image of ``headflow check``);
* **not real**: the weights (random, ``transformers`` initialisation, seeded), the depth (``n_layers`` language
  layers, default 2, and ``vision_layers`` vision layers, default 1, instead of 24-36 and 24-32), and the
  tokenizer: the tiny family's small tokenizer (a few hundred to two thousand ids) with the checkpoint's chat
  template. Token ids above the tokenizer's are never produced; the special and image token ids are the tiny
  tokenizer's (all below the real vocabulary, so valid rows of the full-size embedding). Layer types: with
  sliding-window families (Gemma 3, Cohere2/Aya) the kept layers are ``sliding`` except the last, which is
  ``full`` (the checkpoints repeat blocks of sliding layers closed by one full layer), so both kinds are exercised.
  Input/output embeddings are tied where the checkpoint ties them (``top["tie_word_embeddings"]``).
  Qwen3-VL's DeepStack taps and Qwen2.5-VL's full-attention vision blocks are cut to the kept vision layers.

The sources are the stored copies of config.json files (mirrors, quantised copies or fine-tunes of the reference
checkpoint, named in :attr:`FullSize.source`); where a field was not in the stored text, :attr:`FullSize.note`
says what was used instead (the ``transformers`` default the checkpoint relies on, or the documented value).
"""

from __future__ import annotations

import copy
import inspect
from dataclasses import dataclass, field
from typing import Any

import torch

from .adapter import adapter_class

__all__ = ["FULL_SIZE", "FullSize", "build_full_size", "full_size_config"]

#: the fields every table entry's ``text`` must give
TEXT_FIELDS = ("hidden_size", "intermediate_size", "num_attention_heads", "num_key_value_heads", "head_dim",
               "vocab_size")


@dataclass(frozen=True)
class FullSize:
    """One family's reference checkpoint: its numbers and where they come from.

    ``text`` and ``vision`` are set on ``config.text_config`` / ``config.vision_config``, ``top`` on the
    multimodal config, ``image_processor`` on the image processor (rebuilt from its dict) and ``processor`` on
    the processor (rebuilt with these keyword arguments). ``image_tokens`` is the number of image tokens one
    224x224 image becomes on the checkpoint (``headflow check``'s image), worked out from its processor's rules.
    """

    checkpoint: str
    source: tuple[str, ...]
    text: dict[str, Any]
    vision: dict[str, Any]
    image_tokens: int
    image_tokens_rule: str
    top: dict[str, Any] = field(default_factory=dict)
    image_processor: dict[str, Any] = field(default_factory=dict)
    processor: dict[str, Any] = field(default_factory=dict)
    note: str = ""


HF = "https://huggingface.co/"
_CLIP_L_336 = dict(hidden_size=1024, intermediate_size=4096, num_attention_heads=16, image_size=336, patch_size=14)
_SIGLIP_SO400M = dict(hidden_size=1152, intermediate_size=4304, num_attention_heads=16, patch_size=14)
_QWEN2_7B = dict(hidden_size=3584, intermediate_size=18944, num_attention_heads=28, num_key_value_heads=4,
                 head_dim=128)
_LLAMA2_7B = dict(hidden_size=4096, intermediate_size=11008, num_attention_heads=32, num_key_value_heads=32,
                  head_dim=128)
_ONEVISION_PINPOINTS = [[384 * i, 384 * j] for i in range(1, 7) for j in range(1, 7)]
_LLAVA_NEXT_PINPOINTS = [[336, 672], [672, 336], [672, 672], [1008, 336], [336, 1008]]

FULL_SIZE: dict[str, FullSize] = {
    "llava": FullSize(
        checkpoint="llava-hf/llava-1.5-7b-hf",
        source=(HF + "mohitsha/llava-1.5-7b-hf/blob/main/config.json",),
        text=dict(_LLAMA2_7B, vocab_size=32064, max_position_embeddings=4096,
                  rope_parameters={"rope_type": "default", "rope_theta": 10000.0}),
        vision=dict(_CLIP_L_336),
        top=dict(tie_word_embeddings=False, image_seq_length=576),
        image_processor=dict(size={"shortest_edge": 336}, crop_size={"height": 336, "width": 336}),
        processor=dict(patch_size=14, num_additional_image_tokens=1, vision_feature_select_strategy="default"),
        image_tokens=576, image_tokens_rule="(336/14)^2 patches, CLS dropped",
        note="the stored config (a copy of llava-hf/llava-1.5-7b-hf's, _name_or_path says so) gives vocab 32064, "
             "max positions 4096 and the CLIP tower; hidden 4096 / MLP 11008 / 32 heads are LlamaConfig's "
             "defaults, which the checkpoint's text_config relies on (vicuna-7b-v1.5 = Llama-2-7B)."),
    "llava_next": FullSize(
        checkpoint="llava-hf/llava-v1.6-mistral-7b-hf",
        source=(HF + "zhenxuan/llava-v1.6-mistral-7b-awq/blob/main/config.json",
                HF + "Ayush374/quantised_llava/blob/main/config.json"),
        text=dict(hidden_size=4096, intermediate_size=14336, num_attention_heads=32, num_key_value_heads=8,
                  head_dim=128, vocab_size=32064, max_position_embeddings=32768, sliding_window=None,
                  rope_parameters={"rope_type": "default", "rope_theta": 1000000.0}),
        vision=dict(_CLIP_L_336),
        top=dict(tie_word_embeddings=False, image_grid_pinpoints=_LLAVA_NEXT_PINPOINTS, image_seq_length=576),
        image_processor=dict(size={"shortest_edge": 336}, crop_size={"height": 336, "width": 336},
                             image_grid_pinpoints=_LLAVA_NEXT_PINPOINTS),
        processor=dict(patch_size=14, num_additional_image_tokens=1, vision_feature_select_strategy="default"),
        image_tokens=1176,
        image_tokens_rule="anyres: 224x224 -> best pinpoint 336x672 (1x2 tiles of 24x24 patches), unpadded to "
                          "24x24 + 24 newline tokens = 600, plus the 576 of the base image",
        note="quantised copies of llava-hf/llava-v1.6-mistral-7b-hf (_name_or_path); hidden 4096 and 32 heads "
             "are MistralConfig's defaults (Mistral-7B-Instruct-v0.2)."),
    "qwen2_vl": FullSize(
        checkpoint="Qwen/Qwen2-VL-7B-Instruct",
        source=(HF + "OPEA/Qwen2-VL-7B-Instruct-int4-sym-inc/blob/main/config.json",
                HF + "OS-Copilot/OS-Genesis-7B-AW/commit/f70ea840e41c19ff0ac6071b1805d0f6d65b62b5"),
        text=dict(_QWEN2_7B, vocab_size=152064, max_position_embeddings=32768,
                  rope_parameters={"rope_type": "default", "rope_theta": 1000000.0, "mrope_section": [16, 24, 24]}),
        vision=dict(embed_dim=1280, hidden_size=3584, num_heads=16, mlp_ratio=4, patch_size=14, spatial_merge_size=2,
                    temporal_patch_size=2),
        top=dict(tie_word_embeddings=False),
        image_processor=dict(patch_size=14, merge_size=2, temporal_patch_size=2,
                             size={"shortest_edge": 56 * 56, "longest_edge": 28 * 28 * 16384}),
        image_tokens=64, image_tokens_rule="224x224 is a multiple of 28: 16x16 patches of 14 px, merged 2x2",
        note="vision tower sizes: embed 1280, 16 heads, MLP ratio 4 (printed module tree of the 7B model, "
             "github.com/zhenhua32/Qwen2-VL READ.md); vocab 152064."),
    "qwen2_5_vl": FullSize(
        checkpoint="Qwen/Qwen2.5-VL-7B-Instruct",
        source=(HF + "Qwen/Qwen2.5-VL-7B-Instruct-AWQ/blame/main/config.json",
                HF + "TencentARC/GRPO-CARE/commit/e7093fbdd77ca6170edc513ec246d5c05dc6f47f"),
        text=dict(_QWEN2_7B, vocab_size=152064, max_position_embeddings=128000,
                  rope_parameters={"rope_type": "default", "rope_theta": 1000000.0, "mrope_section": [16, 24, 24]}),
        vision=dict(hidden_size=1280, intermediate_size=3420, num_heads=16, out_hidden_size=3584, patch_size=14,
                    spatial_merge_size=2, temporal_patch_size=2, window_size=112),
        top=dict(tie_word_embeddings=False),
        image_processor=dict(patch_size=14, merge_size=2, temporal_patch_size=2,
                             size={"shortest_edge": 56 * 56, "longest_edge": 28 * 28 * 16384}),
        image_tokens=64, image_tokens_rule="as Qwen2-VL: 16x16 patches of 14 px, merged 2x2",
        note="vision hidden 1280 in the stored config, which stops before the rest of vision_config and before "
             "vocab_size: MLP 3420 / 16 heads / window 112 are Qwen2_5_VLVisionConfig's defaults (transformers "
             "5.24), vocab 152064 is Qwen2.5-7B's / Qwen2-VL-7B's; neither was seen in the stored text."),
    "qwen3_vl": FullSize(
        checkpoint="Qwen/Qwen3-VL-8B-Instruct",
        source=(HF + "Steinate/Cortex/blame/main/config.json",
                "https://ollama.com/library/qwen3-vl:8b-instruct-q8_0/blobs/4768dcaebbaf"),
        text=dict(hidden_size=4096, intermediate_size=12288, num_attention_heads=32, num_key_value_heads=8,
                  head_dim=128, vocab_size=151936, max_position_embeddings=262144,
                  rope_parameters={"rope_type": "default", "rope_theta": 5000000.0, "mrope_section": [24, 20, 20],
                                   "mrope_interleaved": True}),
        vision=dict(hidden_size=1152, intermediate_size=4304, num_heads=16, out_hidden_size=4096, patch_size=16,
                    spatial_merge_size=2, temporal_patch_size=2, num_position_embeddings=2304),
        top=dict(tie_word_embeddings=False),
        image_processor=dict(patch_size=16, merge_size=2, temporal_patch_size=2,
                             size={"shortest_edge": 65536, "longest_edge": 16777216}),
        image_tokens=64,
        image_tokens_rule="224x224 has fewer than 65536 px: upscaled to 256x256, 16x16 patches of 16 px, merged 2x2",
        note="Steinate/Cortex is a Qwen3-VL-8B-shaped config (Qwen3VLForConditionalGeneration, 36 layers, hidden "
             "4096); the Ollama GGUF metadata of qwen3-vl:8b-instruct agrees (heads 32/8, FFN 12288, vision 1152 x "
             "27 blocks, patch 16, shortest/longest edge 65536/16777216 px). DeepStack taps [8, 16, 24] are cut "
             "to the kept vision layers."),
    "internvl": FullSize(
        checkpoint="OpenGVLab/InternVL3-8B-hf",
        source=(HF + "OpenGVLab/InternVL3-38B-hf/blob/refs%2Fpr%2F2/config.json",
                HF + "hf-internal-testing/tiny-processor-internvl/blame/main/config.json"),
        text=dict(_QWEN2_7B, vocab_size=151674, max_position_embeddings=32768,
                  rope_parameters={"rope_type": "default", "rope_theta": 1000000.0}),
        vision=dict(hidden_size=1024, intermediate_size=4096, num_attention_heads=16, image_size=[448, 448],
                    patch_size=[14, 14]),
        top=dict(tie_word_embeddings=False, image_seq_length=256, downsample_ratio=0.5),
        image_processor=dict(size={"height": 448, "width": 448}, crop_to_patches=True, min_patches=1, max_patches=12),
        processor=dict(image_seq_length=256),
        image_tokens=256,
        image_tokens_rule="a square image is one 448 px tile (no thumbnail): (448/14)^2 patches pixel-shuffled by 0.5",
        note="InternVL3-8B-hf's own config.json was not in the store. Its parts: the LM is Qwen2.5-7B (hidden "
             "3584, MLP 18944, 28 heads, 4 KV, as Qwen2.5-VL-7B's text_config above), the vision tower "
             "InternViT-300M-448px (1024 wide, 16 heads, MLP 4096, patch 14, 448 px); vocab 151674, "
             "image_seq_length 256 and downsample 0.5 as in the stored InternVL3 -hf configs (38B, 1B). The "
             "checkpoints' dynamic RoPE scaling (factor 2) is left out: it changes nothing below 32768 positions. "
             "Untied embeddings, as Qwen2.5-7B's (not seen in the stored text)."),
    "gemma3": FullSize(
        checkpoint="google/gemma-3-4b-it",
        source=(HF + "mlx-community/gemma-3-4b-it-bf16/blob/main/config.json",
                HF + "unsloth/gemma-3-4b-pt/blame/main/config.json"),
        text=dict(hidden_size=2560, intermediate_size=10240, num_attention_heads=8, num_key_value_heads=4,
                  head_dim=256, vocab_size=262208, query_pre_attn_scalar=256, sliding_window=1024,
                  max_position_embeddings=131072,
                  rope_parameters={"sliding_attention": {"rope_type": "default", "rope_theta": 10000.0},
                                   "full_attention": {"rope_type": "linear", "factor": 8.0,
                                                      "rope_theta": 1000000.0}}),
        vision=dict(_SIGLIP_SO400M, image_size=896, vision_use_head=False),
        top=dict(tie_word_embeddings=True, mm_tokens_per_image=256),
        image_processor=dict(size={"height": 896, "width": 896}, do_pan_and_scan=False),
        processor=dict(image_seq_length=256),
        image_tokens=256, image_tokens_rule="896 px / 14 = 64x64 patches, average-pooled to 16x16",
        note="heads/KV/head_dim/query_pre_attn_scalar from unsloth/gemma-3-4b-pt (same 4B text model); "
             "sliding_window_pattern 6 (5 local : 1 global) on the checkpoint."),
    "paligemma": FullSize(
        checkpoint="google/paligemma2-3b-pt-224",
        source=(HF + "google/paligemma2-3b-pt-224",),
        text=dict(hidden_size=2304, intermediate_size=9216, num_attention_heads=8, num_key_value_heads=4,
                  head_dim=256, vocab_size=257216, max_position_embeddings=8192, query_pre_attn_scalar=256,
                  sliding_window=4096, attn_logit_softcapping=50.0, final_logit_softcapping=30.0),
        vision=dict(_SIGLIP_SO400M, image_size=224, projection_dim=2304, vision_use_head=False),
        top=dict(tie_word_embeddings=True, projection_dim=2304, hidden_size=2304, vocab_size=257216),
        image_processor=dict(size={"height": 224, "width": 224}, image_seq_length=256),
        processor=dict(image_seq_length=256),
        image_tokens=256, image_tokens_rule="224 px / 14 = 16x16 patches",
        note="PaliGemma 2 (the family's tiny template has a Gemma 2 language model since issue #15): no stored "
             "config.json of it was found; the numbers are Gemma 2 2B's (hidden 2304, MLP 9216, 8 heads, 4 KV heads "
             "of 256, sliding window 4096, softcaps 50/30, query_pre_attn_scalar 256: Gemma2Config's fields, the "
             "Gemma 2 2B model card) with PaliGemma's vocabulary (257216, Gemma's 256000 + 1024 <loc> + 128 <seg> "
             "+ 64) and SigLIP-So400m at 224 px. Unverified against the hub file. PaliGemma 1 (Gemma 2B, "
             "google/paligemma-3b-pt-224: hidden 2048, MLP 16384, 8 heads, 1 KV head) is not built here."),
    "llava_onevision": FullSize(
        checkpoint="llava-hf/llava-onevision-qwen2-7b-ov-hf",
        source=(HF + "mgoin/llava-onevision-qwen2-7b-ov-hf-bnb-full-4bit/blob/main/config.json",
                HF + "lmms-lab/llava-onevision-qwen2-7b-ov-chat/blob/refs%2Fpr%2F1/config.json"),
        text=dict(_QWEN2_7B, vocab_size=152128, max_position_embeddings=32768,
                  rope_parameters={"rope_type": "default", "rope_theta": 1000000.0}),
        vision=dict(_SIGLIP_SO400M, image_size=384, vision_use_head=False),
        top=dict(tie_word_embeddings=False, image_grid_pinpoints=_ONEVISION_PINPOINTS, vision_aspect_ratio="anyres_max_9"),
        image_processor=dict(size={"height": 384, "width": 384}, image_grid_pinpoints=_ONEVISION_PINPOINTS),
        processor=dict(num_image_tokens=729, vision_feature_select_strategy="full", vision_aspect_ratio="anyres_max_9"),
        image_tokens=1485,
        image_tokens_rule="anyres_max_9: 224x224 -> pinpoint 384x384 (1 tile of 27x27), 27 rows x (27 + newline) "
                          "= 756, plus the base image's 729",
        note="the stored excerpts give the pinpoints (384..2304 in steps of 384), anyres_max_9 and the Qwen2-7B LM "
             "(hidden 3584, 28 layers); vocab 152128 is the llava-hf conversion's (tokenizer + image/video tokens, "
             "padded), NOT seen in the stored text; SigLIP-so400m-384 tower as in the lmms-lab config "
             "(mm_vision_tower google/siglip-so400m-patch14-384)."),
    "idefics3": FullSize(
        checkpoint="HuggingFaceM4/Idefics3-8B-Llama3",
        source=(HF + "HuggingFaceM4/Idefics3-8B-Llama3/blob/92a708af3b96e7fe9aeac5d439a1f64083868a05/config.json",
                HF + "leon-se/Idefics3-8B-Llama3-FP8-Dynamic/blame/ef043550f65b736c6ae182814b3877e8d3c910fb/"
                     "processor_config.json"),
        text=dict(hidden_size=4096, intermediate_size=14336, num_attention_heads=32, num_key_value_heads=8,
                  head_dim=128, vocab_size=128259, max_position_embeddings=131072,
                  rope_parameters={"rope_type": "default", "rope_theta": 500000.0}),
        vision=dict(_SIGLIP_SO400M, image_size=364),
        top=dict(tie_word_embeddings=False, scale_factor=2),
        image_processor=dict(size={"longest_edge": 4 * 364}, max_image_size={"longest_edge": 364},
                             do_image_splitting=True),
        processor=dict(image_seq_len=169),
        image_tokens=2873,
        image_tokens_rule="224x224 upscaled to the longest edge 1456 = 4x4 tiles of 364 px + the global image; "
                          "17 x (364/14)^2 / 2^2 = 17 x 169",
        note="the stored config gives hidden 4096, MLP 14336, scale_factor 2, image token 128257; heads 32 / KV 8 / "
             "rope_theta 500000 and vocab 128259 (128256 + 3 added) are Llama-3-8B's, not seen in the stored "
             "excerpt; SigLIP-so400m at 364 px and image_seq_len 169 (stored processor_config)."),
    "smolvlm": FullSize(
        checkpoint="HuggingFaceTB/SmolVLM2-2.2B-Instruct",
        source=(HF + "HuggingFaceTB/SmolVLM2-2.2B-Instruct/blob/refs%2Fpr%2F21/config.json",),
        text=dict(hidden_size=2048, intermediate_size=8192, num_attention_heads=32, num_key_value_heads=32,
                  head_dim=64, vocab_size=49280, max_position_embeddings=8192,
                  rope_parameters={"rope_type": "default", "rope_theta": 130000.0}),
        vision=dict(_SIGLIP_SO400M, image_size=384),
        top=dict(tie_word_embeddings=False, scale_factor=3),
        image_processor=dict(size={"longest_edge": 4 * 384}, max_image_size={"longest_edge": 384},
                             do_image_splitting=True),
        processor=dict(image_seq_len=81),
        image_tokens=1377,
        image_tokens_rule="224x224 upscaled to the longest edge 1536 = 4x4 tiles of 384 px + the global image; "
                          "17 x (384/14)^2 / 3^2 = 17 x 81",
        note="the stored config gives hidden 2048, MLP 8192, head_dim 64, scale_factor 3, image token 49190; "
             "32 heads / 32 KV heads / vocab 49280 / rope_theta 130000 (SmolLM2-1.7B) and the image processor's "
             "longest edge 1536 were not in the stored excerpt; untied embeddings (SmolVLMConfig's default) not verified."),
    "aya_vision": FullSize(
        checkpoint="CohereLabs/aya-vision-8b",
        source=(HF + "mlx-community/aya-vision-8b-8bit/raw/main/config.json",),
        text=dict(hidden_size=4096, intermediate_size=14336, num_attention_heads=32, num_key_value_heads=8,
                  head_dim=128, vocab_size=256000, logit_scale=0.25, sliding_window=4096,
                  max_position_embeddings=8192, rope_parameters={"rope_type": "default", "rope_theta": 50000.0}),
        vision=dict(_SIGLIP_SO400M, image_size=364, vision_use_head=False),
        top=dict(tie_word_embeddings=True, downsample_factor=2, alignment_intermediate_size=28672),
        image_processor=dict(size={"height": 364, "width": 364}, crop_to_patches=True, min_patches=1,
                             max_patches=12),
        processor=dict(patch_size=14, img_size=364, downsample_factor=2),
        image_tokens=169,
        image_tokens_rule="a square image is one 364 px tile (no thumbnail): (364/14)^2 / 2^2",
        note="vocab 256000 and sliding window 4096 are Cohere2Config's defaults (transformers 5.24), which the "
             "stored config relies on; the sliding/full pattern there is 3:1. Tied input/output embeddings: the stored "
             "config sets no tie_word_embeddings, so AyaVisionConfig's default (True) applies."),
    "glm4v": FullSize(
        checkpoint="zai-org/GLM-4.1V-9B-Thinking",
        source=("https://github.com/huggingface/transformers/blob/v5.24.0/src/transformers/models/glm4v/"
                "configuration_glm4v.py",),
        text=dict(hidden_size=4096, intermediate_size=13696, num_attention_heads=32, num_key_value_heads=2,
                  head_dim=128, vocab_size=151552, max_position_embeddings=32768,
                  rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [8, 12, 12],
                                   "partial_rotary_factor": 0.5}),
        vision=dict(hidden_size=1536, intermediate_size=13696, num_heads=12, image_size=336, patch_size=14,
                    spatial_merge_size=2, temporal_patch_size=2, out_hidden_size=4096),
        top=dict(tie_word_embeddings=False),
        image_processor=dict(patch_size=14, merge_size=2, temporal_patch_size=2,
                             size={"shortest_edge": 112 * 112, "longest_edge": 28 * 28 * 15000}),
        image_tokens=64, image_tokens_rule="as Qwen2-VL: 224x224 is 16x16 patches of 14 px, merged 2x2",
        note="no stored config.json of the checkpoint: every number is transformers' Glm4vConfig default (read in the "
             "installed transformers 5.24), whose docstring names zai-org/GLM-4.1V-9B-Thinking as its checkpoint; rope theta 10000 and M-RoPE sections [8, 12, 12] over half of each head "
             "(partial rotary 0.5) are the defaults the model code assumes. Unverified against the hub file."),
}


def _rebuild_processor(processor: Any, image_overrides: dict[str, Any], overrides: dict[str, Any]) -> Any:
    """The processor rebuilt with the image processor's settings and the processor's keyword arguments
    replaced (derived strings such as Gemma 3's image sequence are computed in ``__init__``)."""
    ip = processor.image_processor
    ip_dict = {k: v for k, v in ip.to_dict().items() if k not in ("image_processor_type", "processor_class")}
    image_processor = type(ip)(**{**ip_dict, **image_overrides}) if image_overrides else ip
    cls = type(processor)
    params = [p for p in list(inspect.signature(cls.__init__).parameters.values())[1:]
              if p.kind is inspect.Parameter.POSITIONAL_OR_KEYWORD]
    kwargs: dict[str, Any] = {}
    for p in params:
        if p.name == "image_processor":
            kwargs[p.name] = image_processor
        elif p.name in overrides:
            kwargs[p.name] = overrides[p.name]
        elif p.name in ("tokenizer", "chat_template", "video_processor"):
            kwargs[p.name] = getattr(processor, p.name, None)
        elif hasattr(processor, p.name):
            kwargs[p.name] = getattr(processor, p.name)
    return cls(**kwargs)


def _layer_types(n_layers: int, sliding: bool) -> list[str]:
    if not sliding:
        return ["full_attention"] * n_layers
    return ["sliding_attention"] * (n_layers - 1) + ["full_attention"]


def full_size_config(family: str, *, n_layers: int = 2, vision_layers: int = 1, seed: int = 0) -> tuple[Any, Any, type]:
    """``(config, processor, model_class)`` of ``family``'s full-size shape, without building the model."""
    if family not in FULL_SIZE:
        from ..errors import HeadflowError

        raise HeadflowError(f"No full-size shape for family {family!r}; known: {', '.join(sorted(FULL_SIZE))}.")
    spec = FULL_SIZE[family]
    template, processor = adapter_class(family).tiny(seed=seed)
    model_cls = type(template)
    config = copy.deepcopy(template.config)
    del template
    text, vision = config.text_config, config.vision_config
    for key, value in spec.text.items():
        setattr(text, key, copy.deepcopy(value))
    text.num_hidden_layers = n_layers
    if getattr(text, "layer_types", None) is not None:
        text.layer_types = _layer_types(n_layers, spec.text.get("sliding_window") is not None)
    if hasattr(text, "max_window_layers"):
        text.max_window_layers = n_layers
    for key, value in spec.vision.items():
        setattr(vision, key, copy.deepcopy(value))
    if hasattr(vision, "depth"):
        vision.depth = vision_layers
    else:
        vision.num_hidden_layers = vision_layers
    if hasattr(vision, "fullatt_block_indexes"):  # Qwen2.5-VL: every 8th block full on the checkpoint
        vision.fullatt_block_indexes = [vision_layers - 1]
    if hasattr(vision, "deepstack_visual_indexes"):  # Qwen3-VL: taps at blocks 8, 16, 24 on the checkpoint
        vision.deepstack_visual_indexes = list(range(min(3, vision_layers)))
    for key, value in spec.top.items():
        setattr(config, key, copy.deepcopy(value))
    processor = _rebuild_processor(processor, spec.image_processor, spec.processor)
    return config, processor, model_cls


def build_full_size(family: str, n_layers: int = 2, vision_layers: int = 1, dtype: torch.dtype = torch.bfloat16,
                    *, seed: int = 0, device: str | torch.device = "cpu"):
    """A :class:`~headflow.models.loading.LoadedModel` of ``family``'s reference checkpoint's shape (see the
    module docstring: real dimensions and vocabulary, ``n_layers`` language layers, ``vision_layers`` vision
    layers, random weights seeded by ``seed``), built directly in ``dtype`` on ``device``."""
    from .loading import load_model

    config, processor, model_cls = full_size_config(family, n_layers=n_layers, vision_layers=vision_layers, seed=seed)
    torch.manual_seed(seed)
    with torch.device(device):
        model = model_cls._from_config(config, dtype=dtype).eval()
    if family == "gemma3":  # zero-initialised image projection (see Gemma3Adapter.tiny): a seeded random one
        projection = model.model.multi_modal_projector.mm_input_projection_weight
        generator = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            projection.copy_((torch.randn(projection.shape, generator=generator) * 0.02).to(projection.dtype))
    return load_model((model, processor))
