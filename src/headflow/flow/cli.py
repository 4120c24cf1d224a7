"""``headflow flow``: the token-flow command. The lead mounts it with ``app.command("flow")(flow_command)``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Optional

import typer

from ..errors import HeadflowError

if TYPE_CHECKING:  # numpy/torch load inside the functions, so that `headflow --help` stays fast
    import numpy as np
    import torch

DEFAULT_PAIRS_SPEC = "question:role,question:final,image:question,image:role,image:final,role:final"
SCORE_FILES = ("attribution.npy", "attribution_mean.npy", "head_scores.npy")
# [ray] as `headflow attribute` (not imported from headflow.cli, which imports this module)
RAY_HELP = ("Shard the images over Ray workers: 'auto' (this machine's cluster), HOST:PORT (a head node) or 'local' "
            "(start one here). Off by default.")
WORKERS_HELP = "Ray workers (default: one per GPU of the cluster, else one per CPU)."


def _load_heads_file(path: Path, n_layers: int, n_heads: int) -> torch.Tensor:
    """Heads from a file: ``.npy`` (``[layer, head]`` array, nonzero = selected), ``.json`` (a list of
    ``[layer, head]`` or ``{"heads": [...]}``), or text with one ``layer head`` (or ``layer,head``) per line."""
    import numpy as np
    import torch

    if not path.exists():
        raise HeadflowError(f"Heads file {path} does not exist. Use --heads all, top:K (with --from-run) or a file.")
    if path.suffix == ".npy":
        array = np.load(path)
        if array.shape != (n_layers, n_heads):
            raise HeadflowError(f"Heads array {path} must have shape ({n_layers}, {n_heads}). Got {array.shape} instead.")
        return torch.from_numpy(array != 0)
    if path.suffix == ".json":
        data = json.loads(path.read_text())
        pairs = data["heads"] if isinstance(data, dict) else data
    else:
        pairs = [line.replace(",", " ").split() for line in path.read_text().splitlines() if line.strip()
                 and not line.startswith("#")]
    out = torch.zeros(n_layers, n_heads, dtype=torch.bool)
    for pair in pairs:
        layer, head = int(pair[0]), int(pair[1])
        if not (0 <= layer < n_layers and 0 <= head < n_heads):
            raise HeadflowError(f"Head ({layer}, {head}) in {path} is out of range: the model has {n_layers} layers "
                                f"and {n_heads} heads per layer.")
        out[layer, head] = True
    return out


def _head_scores(run_dir: Path, n_layers: int, n_heads: int) -> np.ndarray:
    """Mean head attribution ``[layer, head]`` of an attribution run directory."""
    import numpy as np

    if (run_dir / "summary.json").exists() and (run_dir / "attributions.npy").exists():
        from ..attribution import AttributionResult  # a finished `headflow attribute` run

        scores = np.asarray(AttributionResult.load(run_dir).mean_attribution, dtype=float)
        if scores.shape != (n_layers, n_heads):
            raise HeadflowError(f"The attribution run {run_dir} has heads of shape {scores.shape}, but the model has "
                                f"({n_layers}, {n_heads}); use a run of the same model.")
        return scores
    for name in SCORE_FILES:
        if (run_dir / name).exists():
            scores = np.load(run_dir / name)
            if scores.ndim == 3:  # per image
                scores = scores.mean(0)
            if scores.shape == (n_layers, n_heads):
                return scores
            raise HeadflowError(f"{run_dir / name} has shape {scores.shape}; expected ({n_layers}, {n_heads}) or "
                                f"(images, {n_layers}, {n_heads}).")
    raise HeadflowError(f"No head attribution found in {run_dir} (looked for summary.json + attributions.npy of "
                        f"'headflow attribute', then {', '.join(SCORE_FILES)}). "
                        "Pass the directory of a head-attribution run with --from-run.")


def resolve_heads(spec: str, from_run: Optional[Path], n_layers: int, n_heads: int) -> torch.Tensor | None:
    """``all`` → None; ``top:K`` → the K heads of highest mean attribution in ``from_run``; else a file."""
    import numpy as np
    import torch

    if spec == "all":
        return None
    if spec.startswith("top:"):
        try:
            k = int(spec.split(":", 1)[1])
        except ValueError:
            k = 0
        if not 1 <= k <= n_layers * n_heads:
            raise HeadflowError(f"The '--heads' option must be all, top:K with K in [1, {n_layers * n_heads}], or a "
                                f"file. Got {spec!r} instead.")
        if from_run is None:
            raise HeadflowError("--heads top:K needs --from-run DIR, the directory of a head-attribution run.")
        scores = _head_scores(Path(from_run), n_layers, n_heads)
        top = np.argsort(-scores.ravel(), kind="stable")[:k]
        out = torch.zeros(n_layers * n_heads, dtype=torch.bool)
        out[torch.from_numpy(top)] = True
        return out.view(n_layers, n_heads)
    return _load_heads_file(Path(spec), n_layers, n_heads)


def flow_command(
    model: str = typer.Option("default", "--model", help="default | tiny:<family> | local path | hub id"),
    data: str = typer.Option("default", "--data", help="default | folder:PATH"),
    out: Path = typer.Option(..., "--out", help="Output directory (flow.json, parquet tables, figures/)."),
    images: Optional[int] = typer.Option(64, "--images", help="Number of images."),
    window: Optional[int] = typer.Option(None, "--window", help="Layers per window (default max(1, round(L/6)))."),
    pairs: str = typer.Option(DEFAULT_PAIRS_SPEC, "--pairs", help="source:target pairs, comma-separated."),
    heads: str = typer.Option("all", "--heads", help="all | top:K (needs --from-run) | FILE (.npy/.json/.txt)."),
    from_run: Optional[Path] = typer.Option(None, "--from-run", help="Head-attribution run directory for top:K."),
    seed: int = typer.Option(0, "--seed", help="Dataset, bootstrap and random-token-set seed."),
    n_bootstrap: int = typer.Option(1000, "--bootstrap", help="Bootstrap resamples over images."),
    keep_wrong: bool = typer.Option(False, "--keep-wrong", help="Keep images the clean model answers wrongly."),
    maps: int = typer.Option(4, "--maps", help="Images with per-token effect maps."),
    batch_size: int = typer.Option(64, "--batch-size"),
    device: str = typer.Option("cpu", "--device"),
    ray: Optional[str] = typer.Option(None, "--ray", help=RAY_HELP),  # [ray]
    workers: Optional[int] = typer.Option(None, "--workers", help=WORKERS_HELP),  # [ray]
) -> None:
    """Token-level information flow by attention knockout (F9) and object/background tokens (F10)."""
    from ..cli import _ray_runner  # (imported here: headflow.cli mounts this module)
    from ..data import load_dataset
    from ..models import load_model
    from .knockout import TokenFlow, parse_pairs

    runner = None  # [ray]
    try:
        runner = _ray_runner(ray, workers)  # [ray]
        lm = load_model(model, device=device)
        dataset = load_dataset(data, n=images, seed=seed)
        flow = TokenFlow(lm, window=window, pairs=parse_pairs(pairs),
                         heads=resolve_heads(heads, from_run, lm.n_layers, lm.n_heads), n_bootstrap=n_bootstrap,
                         seed=seed, keep_wrong=keep_wrong, n_maps=maps, batch_size=batch_size)
        result = flow.run(dataset, out=out, runner=runner)
    except (HeadflowError, ValueError, TypeError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(code=2)
    finally:
        if runner is not None:  # [ray]
            runner.close()
    s = result.summary
    typer.echo(f"headflow flow: {s['images']['n_kept']}/{s['images']['n_total']} images kept, "
               f"window {s['resolved']['window_']} → {out}")
    for name, p in s["pairs"].items():
        m = p["mean_layer"]["value"]
        typer.echo(f"  {name:<18} peak layer {p['peak_layer']['value']:>3}   mean layer "
                   f"{'n/a' if m is None else f'{m:.2f}'}")
    typer.echo(f"  C3: {s['c3'].get('verdict')}   C4: {s['c4'].get('verdict')}")
