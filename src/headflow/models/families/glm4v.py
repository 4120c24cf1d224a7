"""GLM-4.1V (``glm4v``): a Qwen2.5-VL-like dynamic-resolution tower (merged patches), GLM-4 language model with
M-RoPE; an image is ``<|begin_of_image|>`` + ``<|image|>`` per merged patch + ``<|end_of_image|>``, and the
processor returns ``mm_token_type_ids`` (which tokens are image tokens), which the model needs for its 3-D
position ids (recorded and replayed like every other language-model input)."""

from __future__ import annotations

from ..adapter import register_adapter
from ..subword import qwen2_tokenizer
from ..tiny import chat_template, image_only_processor_cls, seeded_model, tiny_lm_config
from .qwen2_vl import Qwen2VLAdapter

#: GLM's turn and vision tokens (``[gMASK]<sop>`` open every prompt)
SPECIAL_TOKENS = ("[gMASK]", "<sop>", "<|system|>", "<|user|>", "<|assistant|>", "<|endoftext|>",
                  "<|begin_of_image|>", "<|end_of_image|>", "<|image|>", "<|begin_of_video|>", "<|end_of_video|>",
                  "<|video|>")
TINY_PATCH, TINY_MERGE = 8, 2


@register_adapter
class Glm4vAdapter(Qwen2VLAdapter):
    """GLM-4.1V: Qwen2-VL's patch geometry (the whole image resized to ``image_grid_thw`` patches, one token per
    ``merge x merge`` patches, row-major) and otherwise the defaults."""

    name = "glm4v"
    model_types = ("glm4v",)

    @classmethod
    def tiny(cls, seed=0):
        """GLM-4V ViT (2 layers, hidden 32, patch 8, merge 2: one LM token per 16x16 pixels, 4 .. 16 per image) + a
        2-layer GLM-4 LM with M-RoPE (4 heads, 2 KV heads), a byte-level BPE tokenizer (as GLM's) and a template of
        GLM-4.1V's prompt format (``templates/SOURCES.md``: no verbatim copy of the checkpoint's was found)."""
        from transformers import Glm4vConfig, Glm4vForConditionalGeneration
        from transformers.models.glm4v.configuration_glm4v import Glm4vTextConfig, Glm4vVisionConfig
        from transformers.models.glm4v.image_processing_pil_glm4v import Glm4vImageProcessorPil
        from transformers.models.glm4v.processing_glm4v import Glm4vProcessor

        template = chat_template("glm4v_format")
        tok = qwen2_tokenizer(SPECIAL_TOKENS, image_token="<|image|>", eos_token="<|endoftext|>",
                              extra_special_tokens={"video_token": "<|video|>"}, chat_template=template)
        image_processor = Glm4vImageProcessorPil(size={"shortest_edge": 32 * 32, "longest_edge": 64 * 64},
                                                 patch_size=TINY_PATCH, temporal_patch_size=2, merge_size=TINY_MERGE)
        processor = image_only_processor_cls(Glm4vProcessor)(image_processor=image_processor, tokenizer=tok,
                                                             chat_template=template)
        vision = Glm4vVisionConfig(depth=2, hidden_size=32, intermediate_size=64, num_heads=2, image_size=64,
                                   patch_size=TINY_PATCH, spatial_merge_size=TINY_MERGE, temporal_patch_size=2,
                                   out_hidden_size=64)
        text = Glm4vTextConfig(**tiny_lm_config(tok, num_key_value_heads=2, max_position_embeddings=1024,
                                                bos_token_id=None, rope_parameters={
                                                    "rope_type": "default", "rope_theta": 10000.0,
                                                    "mrope_section": [1, 1, 2], "partial_rotary_factor": 0.5}))
        conv = tok.convert_tokens_to_ids
        config = Glm4vConfig(text_config=text, vision_config=vision, image_token_id=conv("<|image|>"),
                             video_token_id=conv("<|video|>"), image_start_token_id=conv("<|begin_of_image|>"),
                             image_end_token_id=conv("<|end_of_image|>"),
                             video_start_token_id=conv("<|begin_of_video|>"),
                             video_end_token_id=conv("<|end_of_video|>"), tie_word_embeddings=False)
        return seeded_model(Glm4vForConditionalGeneration, config, seed), processor
