"""One per-image executor for every analysis: a per-image job runs here or on Ray workers, with the same
semantics either way.

Contract of :func:`map_images`:

* ``items`` are ``(key, item)`` pairs; the caller leaves out the keys that are already finished, so
  finished work is never recomputed (a resumed run hands in only what is missing).
* ``fn(state, item) -> result`` computes one item. Here ``state`` is the caller's ``local_state`` (the
  engine it already has); on a Ray worker it is ``setup(context, device)``, run once per worker (it loads
  the model from its spec). ``fn`` and ``setup`` must be module-level functions (Ray pickles them).
* ``on_result(key, result)`` runs in this process, the only writer, as each result arrives (in order here;
  in completion order on Ray). A worker that dies is restarted and its unfinished item retried
  (:class:`headflow.distributed.RayRunner`).
* A progress bar counts the items.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from tqdm.auto import tqdm

if TYPE_CHECKING:  # pragma: no cover
    from .distributed import RayRunner


def map_images(fn: Callable[[Any, Any], Any], items: Iterable[tuple[Any, Any]], *, n_items: int,
               on_result: Callable[[Any, Any], None], local_state: Any = None,
               setup: Callable[[Any, str], Any] | None = None, context: Any = None,
               runner: "RayRunner | None" = None, desc: str = "images", progress: bool = True) -> None:
    """Run ``fn`` over ``items`` (here, or on ``runner``'s Ray workers) and hand each result to ``on_result``."""
    bar = tqdm(total=n_items, desc=desc, unit="image", disable=not progress or n_items == 0)

    def finished(key: Any, result: Any) -> None:
        on_result(key, result)
        bar.update()

    try:
        if runner is None:
            for key, item in items:
                finished(key, fn(local_state, item))
        else:  # [ray]
            if setup is None:
                raise TypeError("map_images on a Ray runner needs setup(context, device)")
            runner.map(setup, fn, items, n_items=n_items, context=context, on_result=finished)
    finally:
        bar.close()
