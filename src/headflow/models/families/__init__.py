"""Built-in family adapters; importing this package registers them."""

from . import internvl, llava, llava_next, qwen2_vl  # noqa: F401
