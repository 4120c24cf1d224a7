"""Token-level information flow (F9) and object/background image tokens (F10) by attention knockout.

>>> from headflow import load_model
>>> from headflow.data import load_dataset
>>> from headflow.flow import TokenFlow
>>> result = TokenFlow(load_model("tiny:llava"), keep_wrong=True, n_bootstrap=50, progress=False).run(
...     load_dataset("default", n=2))
>>> sorted(result.summary["pairs"])[:2]
['image->final', 'image->question']
"""

from .answers import answer_candidates, answer_token
from .knockout import DEFAULT_PAIRS, DEFAULT_QUESTION, FlowResult, TokenFlow, parse_pairs

__all__ = ["DEFAULT_PAIRS", "DEFAULT_QUESTION", "FlowResult", "TokenFlow", "answer_candidates", "answer_token",
           "parse_pairs"]
