"""Load an LVLM (hub id, local path, ``tiny:<family>``, ``default``, or a ``(model, processor)`` pair)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch
from PIL import Image

from ..errors import HeadflowError
from .adapter import FamilyAdapter, adapter_class, adapter_for
from .groups import TokenGroups

DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
          "float16": torch.float16, "fp16": torch.float16}


def default_model_dir() -> Path:
    """Directory of the embedded default model shipped with the package."""
    return Path(__file__).resolve().parent.parent / "zoo" / "default"


@dataclass(eq=False)
class LoadedModel:
    """A model, its processor and its family adapter, with the language model's head counts.

    Attributes
    ----------
    n_layers, n_heads, n_kv_heads : int
        Layers ``L``, query heads ``H`` and key/value heads ``G`` of the language model.
    """

    model: torch.nn.Module
    processor: Any
    adapter: FamilyAdapter
    name: str

    @property
    def text_config(self) -> Any:
        return self.adapter.text_config()

    @property
    def n_layers(self) -> int:
        return int(self.text_config.num_hidden_layers)

    @property
    def n_heads(self) -> int:
        return int(self.text_config.num_attention_heads)

    @property
    def n_kv_heads(self) -> int:
        value = getattr(self.text_config, "num_key_value_heads", None)
        return int(value) if value else self.n_heads

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    def encode(self, image: Image.Image | Sequence[Image.Image], question: str) -> tuple[dict[str, torch.Tensor], TokenGroups]:
        """Processor inputs (on the model's device) and token groups for ``image`` + ``question``."""
        images = [image] if isinstance(image, Image.Image) else list(image)
        inputs, groups = self.adapter.encode(images, question)
        moved = {k: (v.to(self.device) if torch.is_tensor(v) else v) for k, v in inputs.items()}
        if "pixel_values" in moved and moved["pixel_values"].is_floating_point():
            moved["pixel_values"] = moved["pixel_values"].to(self.dtype)
        return moved, groups

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "family": self.adapter.name,
            "class": type(self.model).__name__,
            "n_layers": self.n_layers,
            "n_heads": self.n_heads,
            "n_kv_heads": self.n_kv_heads,
            "dtype": str(self.dtype).replace("torch.", ""),
            "device": str(self.device),
        }


def _resolve_dtype(dtype: str | torch.dtype | None) -> torch.dtype | None:
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in DTYPES:
        raise HeadflowError(f"Unknown dtype {dtype!r}. Use one of: {', '.join(DTYPES)}.")
    return DTYPES[dtype]


def load_model(
    spec: str | Path | tuple[torch.nn.Module, Any] | LoadedModel,
    *,
    device: str | torch.device = "cpu",
    dtype: str | torch.dtype | None = None,
    seed: int = 0,
) -> LoadedModel:
    """Load an LVLM for analysis.

    Parameters
    ----------
    spec : str, Path, or (model, processor)
        ``"default"`` (the embedded tiny LLaVA), ``"tiny:<family>"`` (random weights, built
        locally: llava, llava_next, qwen2_vl, qwen2_5_vl, internvl), a local directory or hub id
        (loaded with ``AutoModelForImageTextToText`` and ``AutoProcessor``), or a loaded pair.
    device, dtype
        Where and in which precision to run. ``dtype=None`` keeps the checkpoint's dtype
        (float32 for tiny models).
    seed : int
        Weight seed for ``tiny:`` models.

    Examples
    --------
    >>> lm = load_model("tiny:llava")
    >>> lm.n_layers > 0
    True
    """
    if isinstance(spec, LoadedModel):
        return spec
    torch_dtype = _resolve_dtype(dtype)
    if isinstance(spec, tuple):
        if len(spec) != 2:
            raise HeadflowError("A loaded model must be passed as a (model, processor) pair.")
        model, processor = spec
        name = getattr(model.config, "_name_or_path", "") or type(model).__name__
    elif isinstance(spec, (str, Path)) and str(spec).startswith("tiny:"):
        family = str(spec).split(":", 1)[1]
        model, processor = adapter_class(family).tiny(seed=seed)
        name = str(spec)
    else:
        path = default_model_dir() if str(spec) == "default" else spec
        if str(spec) == "default" and not (Path(path) / "config.json").exists():
            raise HeadflowError(f"The embedded default model is missing at {path}; reinstall headflow.")
        model, processor = _from_pretrained(str(path), torch_dtype)
        name = str(spec)
    model = model.to(device=device, dtype=torch_dtype) if torch_dtype else model.to(device=device)
    model.eval()
    return LoadedModel(model=model, processor=processor, adapter=adapter_for(model, processor), name=name)


def _from_pretrained(path: str, dtype: torch.dtype | None) -> tuple[torch.nn.Module, Any]:
    from transformers import AutoModelForImageTextToText, AutoProcessor

    try:
        processor = AutoProcessor.from_pretrained(path)
        model = AutoModelForImageTextToText.from_pretrained(path, dtype=dtype or "auto", attn_implementation="sdpa")
    except OSError as exc:
        raise HeadflowError(
            f"Cannot load model {path!r}: {str(exc).splitlines()[0]} "
            "Use 'default', 'tiny:<family>', a local directory, or a hub id reachable from this machine."
        ) from exc
    return model, processor
