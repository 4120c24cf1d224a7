"""Full-size shapes (``headflow.models.full_size``): every family's reference-checkpoint dimensions.

The fast test checks the table against the registered families and the configs it produces, without building a
model. The full-size tests (marked ``slow`` and ``fullsize``) build each family's 2-layer full-size model in bf16
on the CPU (0.8-1.7 B parameters, 1.5-3.5 GB, minutes each) and run ``headflow check`` and a short attribution;
they are skipped unless ``HEADFLOW_FULL_SIZE=1``, so ``make test`` is unchanged::

    HEADFLOW_FULL_SIZE=1 .venv/bin/python -m pytest tests/test_full_size.py -m fullsize -k llava
"""

import os
from urllib.parse import urlparse

import pytest
import torch

from headflow.models.adapter import family_names
from headflow.models.full_size import FULL_SIZE, TEXT_FIELDS, full_size_config

FULL = pytest.mark.skipif(os.environ.get("HEADFLOW_FULL_SIZE") != "1",
                          reason="full-size shapes: set HEADFLOW_FULL_SIZE=1 (minutes and GBs per family)")


def test_the_table_covers_every_family_and_gives_each_its_numbers():
    assert sorted(FULL_SIZE) == family_names()
    for family, spec in FULL_SIZE.items():
        assert spec.checkpoint.count("/") == 1, family
        assert spec.source and all(urlparse(url).scheme == "https" for url in spec.source), family
        assert all(key in spec.text for key in TEXT_FIELDS), family
        assert spec.text["num_attention_heads"] % spec.text["num_key_value_heads"] == 0, family
        assert spec.vision and spec.image_tokens > 0 and spec.image_tokens_rule, family
        config, processor, _ = full_size_config(family)
        text = config.text_config
        for key in TEXT_FIELDS:
            assert getattr(text, key) == spec.text[key], (family, key)
        assert text.num_hidden_layers == 2, family
        assert config.tie_word_embeddings == spec.top["tie_word_embeddings"], family
        assert len(getattr(text, "layer_types", None) or [0, 0]) == 2, family
        vision = config.vision_config
        assert getattr(vision, "depth", None) == 1 or vision.num_hidden_layers == 1, family
        # the small tokenizer's ids (special and image tokens included) are rows of the full-size vocabulary
        tok = processor.tokenizer
        assert len(tok) < text.vocab_size, family
        ids = [i for i in (processor.image_token_id, tok.pad_token_id, tok.bos_token_id, tok.eos_token_id)
               if isinstance(i, int)]
        assert max(ids) < len(tok), family


@FULL
@pytest.mark.slow
@pytest.mark.fullsize
@pytest.mark.parametrize("family", sorted(FULL_SIZE))
def test_full_size_shape_runs_check_and_an_attribution_in_bf16(family, tmp_path):
    from headflow.attribution import HeadAttribution
    from headflow.data import load_dataset
    from headflow.intervene.check import check_image, run_checks, tolerance_for
    from headflow.method import DEFAULT_QUESTION
    from headflow.models.full_size import build_full_size

    spec = FULL_SIZE[family]
    lm = build_full_size(family, n_layers=2, vision_layers=1, dtype=torch.bfloat16)
    assert {p.dtype for p in lm.model.parameters()} == {torch.bfloat16}
    text = lm.model.config.text_config
    assert (text.hidden_size, text.num_attention_heads, text.num_key_value_heads, text.vocab_size) == tuple(
        spec.text[k] for k in ("hidden_size", "num_attention_heads", "num_key_value_heads", "vocab_size"))
    assert lm.n_layers == 2 and lm.n_heads == spec.text["num_attention_heads"]
    assert lm.model.get_input_embeddings().weight.shape == (spec.text["vocab_size"], spec.text["hidden_size"])
    assert len(lm.encode(check_image(), DEFAULT_QUESTION)[1].image) == spec.image_tokens

    results = run_checks(lm)
    for r in results:
        assert r.tolerance >= tolerance_for(torch.bfloat16, 1.0)
        assert r.passed, (family, r.name, r.max_abs_diff, r.tolerance, r.error)

    data = load_dataset("default", n=2)
    result = HeadAttribution(lm, n_masks=8, n_val=8, keep_wrong=True, batch_size=8).run(data, out=tmp_path / "run")
    assert tuple(result.attributions.shape[-2:]) == (2, spec.text["num_attention_heads"])
    assert torch.isfinite(torch.as_tensor(result.attributions)).all()
