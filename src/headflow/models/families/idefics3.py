"""Idefics3 and SmolVLM: SigLIP-style tower, pixel-shuffle connector, Llama LM at ``model.model.text_model``;
an image split into tiles, each tile's tokens preceded by ``<fake_token_around_image><row_i_col_j>``, rows
ended by ``\\n``, then ``\\n<fake_token_around_image><global-img>`` and the whole image's tokens."""

from __future__ import annotations

import importlib.util

from ...errors import HeadflowError
from ..adapter import FamilyAdapter, register_adapter
from ..geometry import size_value, split_image_rects
from ..subword import qwen2_tokenizer
from ..tiny import chat_template, image_only_processor_cls, seeded_model, tiny_lm_config

# tiny models: tiles of 32 px, patch 4 (8x8 patches), pixel shuffle 2 -> 16 tokens per tile; longest edge 64 px
# -> at most 2x2 tiles + the global image
TINY_TILE, TINY_PATCH, TINY_SCALE, TINY_LONGEST = 32, 4, 2, 64
#: the tile tags of the processors (``<row_1_col_1>`` .. ``<row_6_col_6>``), tokens of the checkpoints' vocabularies
ROW_COL_TOKENS = tuple(f"<row_{i + 1}_col_{j + 1}>" for i in range(6) for j in range(6))


@register_adapter
class Idefics3Adapter(FamilyAdapter):
    name = "idefics3"
    model_types = ("idefics3",)

    def language_model(self):
        return self.model.model.text_model

    def token_rects(self, image_size, inputs):
        """Tiles (row-major) then the global image, ``image_seq_len`` tokens each, read from the image processor's
        resize / split settings (:func:`~headflow.models.geometry.split_image_rects`); the separators between
        them are not image tokens."""
        width, height = image_size
        ip = self.processor.image_processor
        tile = int(size_value(ip.max_image_size, "longest_edge"))
        config = self.model.config
        grid = int(config.vision_config.image_size) // int(config.vision_config.patch_size) // int(config.scale_factor)
        longest = size_value(ip.size, "longest_edge") if getattr(ip, "do_resize", True) else None
        return split_image_rects(width, height, longest, tile, grid, split=bool(getattr(ip, "do_image_splitting", True)))

    @classmethod
    def tiny(cls, seed=0):
        """Idefics3 vision tower (2 layers, tile 32 px, patch 4) + pixel shuffle 2 (16 tokens per tile, up to 2x2
        tiles + the global image) + a 2-layer Llama LM (4 heads, 2 KV heads), with a byte-level BPE tokenizer (as
        Llama 3's) and HuggingFaceM4/Idefics3-8B-Llama3's chat template (``<|begin_of_text|>User:<image>...``)."""
        from transformers import (
            Idefics3Config,
            Idefics3ForConditionalGeneration,
            Idefics3ImageProcessorPil,
            Idefics3Processor,
            LlamaConfig,
        )
        from transformers.models.idefics3.configuration_idefics3 import Idefics3VisionConfig

        template = chat_template("idefics3")
        tok = tiny_tokenizer("<|begin_of_text|>", template)
        processor = Idefics3Processor(image_processor=tiny_image_processor(Idefics3ImageProcessorPil), tokenizer=tok,
                                      image_seq_len=tiny_image_seq_len(), chat_template=template)
        vision = Idefics3VisionConfig(**tiny_vision_kwargs())
        text = LlamaConfig(**tiny_text_kwargs(tok))
        config = Idefics3Config(vision_config=vision, text_config=text, image_token_id=tok.image_token_id,
                                scale_factor=TINY_SCALE, tie_word_embeddings=False, pad_token_id=tok.pad_token_id)
        return seeded_model(Idefics3ForConditionalGeneration, config, seed), processor


@register_adapter
class SmolVLMAdapter(Idefics3Adapter):
    """SmolVLM: Idefics3's layout, geometry and LM path; SmolLM2 (Llama) LM, its own chat template."""

    name = "smolvlm"
    model_types = ("smolvlm",)

    @classmethod
    def tiny(cls, seed=0):
        """As :meth:`Idefics3Adapter.tiny`, with SmolVLM's classes and HuggingFaceTB/SmolVLM-Instruct's chat
        template (``<|im_start|>User:<image>...<end_of_utterance>\\nAssistant:``)."""
        from transformers import (
            LlamaConfig,
            SmolVLMConfig,
            SmolVLMForConditionalGeneration,
            SmolVLMImageProcessorPil,
            SmolVLMProcessor,
        )
        from transformers.models.smolvlm.configuration_smolvlm import SmolVLMVisionConfig
        from transformers.utils import is_torchvision_available

        if importlib.util.find_spec("num2words") is None:  # transformers' SmolVLMProcessor refuses to start without it
            raise HeadflowError("tiny:smolvlm needs the num2words package (SmolVLM's processor uses it); install it "
                                "with: pip install 'headflow[smolvlm]'.")
        template = chat_template("smolvlm")
        tok = tiny_tokenizer("<|im_start|>", template)
        kwargs = dict(image_processor=tiny_image_processor(SmolVLMImageProcessorPil), tokenizer=tok,
                      image_seq_len=tiny_image_seq_len(), chat_template=template)
        if is_torchvision_available():
            from transformers import SmolVLMVideoProcessor

            processor = SmolVLMProcessor(video_processor=SmolVLMVideoProcessor(), **kwargs)
        else:
            processor = image_only_processor_cls(SmolVLMProcessor)(**kwargs)
        vision = SmolVLMVisionConfig(**tiny_vision_kwargs())
        text = LlamaConfig(**tiny_text_kwargs(tok))
        config = SmolVLMConfig(vision_config=vision, text_config=text, image_token_id=tok.image_token_id,
                               scale_factor=TINY_SCALE, tie_word_embeddings=False, pad_token_id=tok.pad_token_id)
        return seeded_model(SmolVLMForConditionalGeneration, config, seed), processor


# ----------------------------------------------------------------------------------------------
# tiny-model pieces shared by the two families of this file


def tiny_tokenizer(bos: str, template: str):
    """A byte-level BPE tokenizer (the checkpoints' are: Llama 3's, SmolLM2's) with the processors' image tokens
    (``<fake_token_around_image>``, ``<image>``, ``<global-img>``, the tile tags) and the template's special tokens."""
    specials = (bos, "<end_of_utterance>", "<fake_token_around_image>", "<image>", "<global-img>", *ROW_COL_TOKENS)
    return qwen2_tokenizer(specials, image_token="<image>", eos_token="<end_of_utterance>", chat_template=template,
                           extra_special_tokens={"fake_image_token": "<fake_token_around_image>",
                                                 "global_image_token": "<global-img>",
                                                 "end_of_utterance_token": "<end_of_utterance>"})


def tiny_image_processor(processor_cls):
    return processor_cls(size={"longest_edge": TINY_LONGEST}, max_image_size={"longest_edge": TINY_TILE},
                         do_image_splitting=True)


def tiny_image_seq_len() -> int:
    return (TINY_TILE // TINY_PATCH) ** 2 // TINY_SCALE**2


def tiny_vision_kwargs() -> dict:
    return dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                image_size=TINY_TILE, patch_size=TINY_PATCH)


def tiny_text_kwargs(tok) -> dict:
    return tiny_lm_config(tok, num_key_value_heads=2, head_dim=16, max_position_embeddings=1024, bos_token_id=None,
                          tie_word_embeddings=False)
