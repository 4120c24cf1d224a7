"""Model zoo: the embedded default model (a tiny LLaVA trained on :mod:`headflow.data.default`).

The checkpoint lives in this package's ``default/`` folder and loads offline with the standard
transformers API::

    from transformers import AutoModelForImageTextToText, AutoProcessor
    from headflow.zoo import default_model_dir
    model = AutoModelForImageTextToText.from_pretrained(default_model_dir())
    processor = AutoProcessor.from_pretrained(default_model_dir())

Retrain with ``python -m headflow.zoo.train --out DIR`` (see :mod:`headflow.zoo.train`).
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["DEFAULT_MODEL_NAME", "default_model_dir"]

#: Name under which the embedded model is known to the CLI and adapters.
DEFAULT_MODEL_NAME = "default"


def default_model_dir() -> Path:
    """Path of the shipped default checkpoint (``save_pretrained`` layout + ``MODEL_CARD.md``).

    Raises
    ------
    FileNotFoundError
        If the checkpoint files are missing (e.g. a source checkout without the weights).
    """
    path = Path(__file__).resolve().parent / "default"
    if not (path / "config.json").is_file():
        raise FileNotFoundError(
            f"The default model is missing from {str(path)!r}. Rebuild it with: python -m headflow.zoo.train --out {path}"
        )
    return path
