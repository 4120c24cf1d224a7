"""PaliGemma (``paligemma``): SigLIP tower, linear projector, Gemma LM (Gemma 2 in PaliGemma 2: attention scores
softcapped, which headflow's attention applies in every path); a prefix-LM without a chat template.

The processor builds the prompt itself: ``<image>`` x N, ``<bos>``, the prompt, ``\\n``. The image and that
text form one bidirectional prefix (``token_type_ids`` 0): image tokens attend the question after them, so the
engine's prefix path (which reuses keys and values of the image computed without the question) does not apply,
and the model's own mask says so. Nothing stands before the image and the answer header is the one ``\\n``, so
the ``system`` and ``role`` groups are empty.
"""

from __future__ import annotations

from ..adapter import FamilyAdapter, register_adapter
from ..geometry import grid_rects, size_value
from ..subword import gemma_tokenizer
from ..tiny import seeded_model, tiny_lm_config

# tiny model: SigLIP 32 px / patch 8 = 4x4 = 16 image tokens
TINY_IMAGE, TINY_PATCH = 32, 8


@register_adapter
class PaliGemmaAdapter(FamilyAdapter):
    name = "paligemma"
    model_types = ("paligemma",)
    empty_groups = ("system", "role")

    def prompt_text(self, question, n_images=1):
        """What PaliGemmaProcessor builds (it has no chat template): ``<image>`` per image, ``<bos>``, the question,
        ``\\n``."""
        tok = self.tokenizer()
        return f"{tok.image_token * n_images}{tok.bos_token}{question}\n"

    def processor_text(self, question, n_images=1):
        return f"{self.tokenizer().image_token * n_images}{question}"

    def token_rects(self, image_size, inputs):
        """The whole image resized (aspect ratio not kept) to the SigLIP input; one token per patch, row-major."""
        width, height = image_size
        vision = self.model.config.vision_config
        side = int(vision.image_size) // int(vision.patch_size)
        ip = self.processor.image_processor
        if size_value(ip.size, "height") != vision.image_size or size_value(ip.size, "width") != vision.image_size:
            from ...errors import HeadflowError

            raise HeadflowError("PaliGemma's image processor does not resize to the vision tower's square input; "
                                "headflow cannot place its patches.")
        return grid_rects(side, side, 0.0, 0.0, height / side, width / side)

    @classmethod
    def tiny(cls, seed=0):
        """SigLIP (2 layers, 32 px, patch 8: 16 image tokens) + a 2-layer Gemma 2 LM as PaliGemma 2's (4 heads, 1 KV
        head; attention scores softcapped at 50 and output logits at 30, a sliding-window layer then a global one)
        with a Gemma-style SentencePiece tokenizer."""
        from transformers import Gemma2Config, PaliGemmaConfig, PaliGemmaForConditionalGeneration, PaliGemmaProcessor
        from transformers import SiglipImageProcessorPil
        from transformers.models.siglip.configuration_siglip import SiglipVisionConfig

        tok = gemma_tokenizer(image_token="<image>")
        image_processor = SiglipImageProcessorPil(size={"height": TINY_IMAGE, "width": TINY_IMAGE})
        image_processor.image_seq_length = (TINY_IMAGE // TINY_PATCH) ** 2
        processor = PaliGemmaProcessor(image_processor=image_processor, tokenizer=tok)  # adds <loc>/<seg> tokens
        vision = SiglipVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                                    image_size=TINY_IMAGE, patch_size=TINY_PATCH)
        text = Gemma2Config(**tiny_lm_config(tok, num_key_value_heads=1, head_dim=16, max_position_embeddings=1024),
                            attn_logit_softcapping=50.0, final_logit_softcapping=30.0, sliding_window=512,
                            layer_types=["sliding_attention", "full_attention"])
        config = PaliGemmaConfig(vision_config=vision, text_config=text, projection_dim=64, hidden_size=64,
                                 image_token_index=tok.image_token_id, vocab_size=len(tok))
        return seeded_model(PaliGemmaForConditionalGeneration, config, seed), processor
