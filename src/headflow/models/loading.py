"""Load an LVLM (hub id, local path, ``tiny:<family>``, ``default``, or a ``(model, processor)`` pair)."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import struct
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any, Sequence

import torch
from PIL import Image

from ..answers import Answers
from ..errors import HeadflowError, MissingFileError
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

    @cached_property
    def weights_id(self) -> str | None:
        """A fingerprint of the weights (:func:`weights_fingerprint`), computed once. Every run records it in
        its configuration, so a run resumed under the same model name with other weights (a retrained
        checkpoint, another seed) is refused instead of mixing two models' results."""
        return weights_fingerprint(self.model)

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
        """Where the model's inputs go: the device its input embeddings run on (with a device map, layers may
        run elsewhere; see :attr:`device_map`)."""
        return module_device(self.model.get_input_embeddings())

    @property
    def dtype(self) -> torch.dtype:
        return next(p.dtype for p in self.model.parameters() if p.is_floating_point())

    @property
    def device_map(self) -> dict[str, str] | None:
        """Which module runs on which device, when the model was loaded with a device map (else ``None``)."""
        placed = getattr(self.model, "hf_device_map", None)
        return {name: str(where) for name, where in placed.items()} if placed else None

    def encode(self, image: Image.Image | Sequence[Image.Image], question: str) -> tuple[dict[str, torch.Tensor], TokenGroups]:
        """Processor inputs (on the model's device) and token groups for ``image`` + ``question``."""
        images = [image] if isinstance(image, Image.Image) else list(image)
        inputs, groups = self.adapter.encode(images, question)
        moved = {k: (v.to(self.device) if torch.is_tensor(v) else v) for k, v in inputs.items()}
        if "pixel_values" in moved and moved["pixel_values"].is_floating_point():
            moved["pixel_values"] = moved["pixel_values"].to(self.dtype)
        return moved, groups

    def answers(self, question: str, *, aliases: bool = True) -> Answers:
        """How labels are written by this model after ``question``'s prompt (:class:`~headflow.answers.Answers`)."""
        return Answers(self.adapter.tokenizer(), self.adapter.prompt_text(question),
                       joiner=self.adapter.answer_joiner(question), aliases=aliases)

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
            "device_map": self.device_map,
            "weights": self.weights_id,
        }


def weights_fingerprint(model: torch.nn.Module, per_tensor: int = 64) -> str | None:
    """16 hex digits of SHA-256 over every parameter's name, shape, dtype and ``per_tensor`` evenly spaced
    values (their bytes). Retraining or reseeding changes it; moving the model between devices does not.
    ``None`` when no parameter is materialised (all offloaded to ``meta``)."""
    digest = hashlib.sha256()
    seen = 0
    for name, param in model.named_parameters():
        if param.device.type == "meta":
            continue
        flat = param.detach().reshape(-1)
        sample = flat[:: max(1, flat.numel() // per_tensor)][:per_tensor].contiguous().cpu()
        digest.update(f"{name}{tuple(param.shape)}{param.dtype}".encode())
        digest.update(sample.view(torch.uint8).numpy().tobytes())
        seen += 1
    return digest.hexdigest()[:16] if seen else None


def module_device(module: torch.nn.Module) -> torch.device:
    """The device ``module`` computes on: its accelerate hook's execution device when it has one (weights
    offloaded to the CPU or disk wait on ``meta`` until the hook brings them in), else its first parameter's."""
    hook = getattr(module, "_hf_hook", None)
    execution = getattr(hook, "execution_device", None)
    if execution is not None:
        return torch.device(execution) if not isinstance(execution, int) else torch.device("cuda", execution)
    for p in module.parameters():
        if p.device.type != "meta":
            return p.device
    return torch.device("cpu")


def _resolve_dtype(dtype: str | torch.dtype | None) -> torch.dtype | None:
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in DTYPES:
        raise HeadflowError(f"Unknown dtype {dtype!r}. Use one of: {', '.join(DTYPES)}.")
    return DTYPES[dtype]


def load_model(
    spec: str | Path | tuple[torch.nn.Module, Any] | LoadedModel,
    *,
    device: str | torch.device | None = None,
    dtype: str | torch.dtype | None = None,
    seed: int = 0,
    device_map: str | dict[str, Any] | None = None,
    max_memory: dict[Any, str | int] | None = None,
    offload_folder: str | Path | None = None,
) -> LoadedModel:
    """Load an LVLM for analysis.

    Parameters
    ----------
    spec : str, Path, or (model, processor)
        ``"default"`` (the embedded tiny LLaVA), ``"tiny:<family>"`` (random weights, built
        locally: one of :func:`~headflow.models.adapter.family_names`), a local directory or hub id
        (loaded with ``AutoModelForImageTextToText`` and ``AutoProcessor``), or a loaded pair.
    device, dtype
        Where and in which precision to run. ``device=None``: the CPU, except for a loaded pair, which stays
        where it is (a model you put on a GPU is not moved back). ``dtype=None`` keeps the checkpoint's dtype
        (float32 for tiny models). The device is checked first (:func:`resolve_device`). A hub id or local
        directory loaded onto an accelerator goes straight there when accelerate is installed (no CPU copy of the
        weights first), and always without Hub kernels (``use_kernels=False``: transformers' own modules, which
        the interventions are checked against, and nothing downloaded at load time).
    seed : int
        Weight seed for ``tiny:`` models.
    device_map, max_memory, offload_folder
        One model over several devices, placed by accelerate as transformers places it (instead of
        ``device``): a strategy (``"auto"``, ``"balanced"``, ``"balanced_low_0"``, ``"sequential"``) or a dict
        ``{module name: device}`` where a device is ``"cuda:1"``, ``1``, ``"cpu"`` or ``"disk"`` (weights kept on
        the disk under ``offload_folder`` and brought in layer by layer). ``max_memory`` caps each device
        (``{0: "70GiB", "cpu": "200GiB"}``). A hub id or local directory is loaded straight onto its devices,
        never materialised on the CPU first. Needs ``accelerate`` (``pip install 'headflow[big]'``). The engine
        keeps every recorded tensor on the device of the layer that uses it.

    Raises
    ------
    HeadflowError
        One line for a device this machine lacks, an unknown dtype, a local path that does not exist
        (never reported as a bad hub id), a directory that is not a model, a broken ``config.json`` or
        a truncated weights file (see :func:`check_model_dir`), or a model transformers cannot load.

    Notes
    -----
    ``LoadedModel.name`` (and ``describe()["name"]``) is ``"default"``, ``"tiny:<family>"``, a hub id, or
    the *absolute* path of a local directory, so a run that records it can be reopened from any
    working directory.

    Examples
    --------
    >>> lm = load_model("tiny:llava")
    >>> lm.n_layers > 0
    True
    """
    if isinstance(spec, LoadedModel):
        return spec
    torch_dtype = _resolve_dtype(dtype)
    keep_device = device is None and isinstance(spec, tuple)
    device = resolve_device("cpu" if device is None else device)
    placement, placed = None, False
    if device_map is not None:
        placement = {"device_map": check_device_map(device_map), "max_memory": max_memory,
                     "offload_folder": str(offload_folder) if offload_folder is not None else None}
    if isinstance(spec, tuple):
        if len(spec) != 2:
            raise HeadflowError("A loaded model must be passed as a (model, processor) pair.")
        model, processor = spec
        name = getattr(model.config, "_name_or_path", "") or type(model).__name__
        if name and Path(name).expanduser().is_dir():
            name = str(Path(name).expanduser().resolve())
    elif isinstance(spec, (str, Path)) and str(spec).startswith("tiny:"):
        family = str(spec).split(":", 1)[1]
        model, processor = adapter_class(family).tiny(seed=seed)
        name = str(spec)
    elif not isinstance(spec, (str, Path)):
        raise HeadflowError(f"Cannot load a model from a {type(spec).__name__}. Use 'default', 'tiny:<family>', a "
                            "local directory, a hub id, or a (model, processor) pair.")
    else:
        path = default_model_dir() if str(spec) == "default" else Path(spec).expanduser()
        if str(spec) == "default" and not (path / "config.json").exists():
            raise HeadflowError(f"The embedded default model is missing at {path}; reinstall headflow.")
        local = path.exists() or _looks_like_path(str(spec))
        if local:
            check_model_dir(path)
            path = path.resolve()
        if placement is None and device.type != "cpu" and importlib.util.find_spec("accelerate") is not None:
            placement = {"device_map": str(device)}  # straight onto the accelerator: no CPU copy of the weights first
        model, processor = _from_pretrained(str(path), torch_dtype, local=local, placement=placement)
        name = "default" if str(spec) == "default" else str(path) if local else str(spec)
        placed = placement is not None
    if placement is not None and not placed:
        dispatch(model.to(dtype=torch_dtype) if torch_dtype else model, **placement)
    elif getattr(model, "hf_device_map", None) is None:
        model = model.to(**({} if keep_device else {"device": device}), **({"dtype": torch_dtype} if torch_dtype else {}))
    model.eval()
    return LoadedModel(model=model, processor=processor, adapter=adapter_for(model, processor), name=name)


def available_devices() -> list[str]:
    """Devices this machine can run on, e.g. ``["cpu", "cuda:0", "cuda:1"]``."""
    devices = ["cpu"]
    if torch.cuda.is_available():
        devices += [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        devices.append("mps")
    return devices


def resolve_device(device: str | torch.device) -> torch.device:
    """``device`` as a ``torch.device``, checked to exist on this machine.

    Raises
    ------
    HeadflowError
        If the string is not a device, or the device is not available here (e.g. ``"cuda"`` on a
        machine without CUDA); the message lists the available devices.
    """
    available = available_devices()
    listing = f"Available here: {', '.join(available)}."
    try:
        dev = device if isinstance(device, torch.device) else torch.device(str(device).strip())
    except (RuntimeError, ValueError, TypeError):
        raise HeadflowError(f"Unknown device {device!r}. {listing}") from None
    if dev.type == "cpu":
        return dev
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise HeadflowError(f"Device {str(device)!r} needs CUDA, which this machine does not have (torch "
                                f"{torch.__version__}, CUDA build: {torch.version.cuda or 'no'}). {listing}")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise HeadflowError(f"Device {str(device)!r} does not exist: this machine has "
                                f"{torch.cuda.device_count()} CUDA device(s). {listing}")
        return dev
    if dev.type == "mps":
        if "mps" not in available:
            raise HeadflowError(f"Device {str(device)!r} (Apple MPS) is not available on this machine. {listing}")
        return dev
    backend = getattr(torch, dev.type, None)
    if backend is None or not hasattr(backend, "is_available") or not backend.is_available():
        raise HeadflowError(f"Device {str(device)!r} is not available on this machine. {listing}")
    return dev


DEVICE_MAP_STRATEGIES = ("auto", "balanced", "balanced_low_0", "sequential")


def check_device_map(device_map: str | dict[str, Any]) -> str | dict[str, Any]:
    """``device_map`` checked: a strategy, or a dict whose devices exist here (``"disk"`` allowed).

    Raises
    ------
    HeadflowError
        One line for an unknown strategy, a device this machine lacks, or a missing ``accelerate``.
    """
    if importlib.util.find_spec("accelerate") is None:
        raise HeadflowError("A device map needs the accelerate package, which is not installed. Install it: "
                            "pip install 'headflow[big]' (or pip install accelerate).")
    if isinstance(device_map, str):
        if device_map not in DEVICE_MAP_STRATEGIES:
            raise HeadflowError(f"Unknown device map {device_map!r}. Use one of {', '.join(DEVICE_MAP_STRATEGIES)}, "
                                "or a dict (a JSON file on the command line) of module name -> device.")
        return device_map
    if not isinstance(device_map, dict) or not device_map:
        raise HeadflowError(f"A device map must be a strategy or a non-empty dict of module name -> device. Got "
                            f"{device_map!r} instead.")
    for name, where in device_map.items():
        if where == "disk":
            continue
        resolve_device(f"cuda:{where}" if isinstance(where, int) else where)
    return device_map


def dispatch(model: torch.nn.Module, device_map: str | dict[str, Any], max_memory: dict | None = None,
             offload_folder: str | None = None) -> None:
    """Place a model built in memory (``tiny:``, a loaded pair) over devices with accelerate, as transformers'
    ``from_pretrained(device_map=...)`` places a checkpoint: a strategy is resolved with ``infer_auto_device_map``
    over the model's no-split blocks, then ``dispatch_model`` moves weights and adds its device hooks."""
    from accelerate import dispatch_model, infer_auto_device_map
    from accelerate.utils import get_balanced_memory, get_max_memory

    if isinstance(device_map, str):
        no_split = getattr(model, "_no_split_modules", None) or []
        memory = (get_max_memory(max_memory) if device_map == "sequential" else
                  get_balanced_memory(model, max_memory=max_memory, no_split_module_classes=no_split,
                                      low_zero=device_map == "balanced_low_0"))
        device_map = infer_auto_device_map(model, max_memory=memory, no_split_module_classes=no_split)
    if "disk" in device_map.values() and offload_folder is None:
        raise HeadflowError("The device map offloads weights to 'disk' but no offload folder was given. Pass "
                            "offload_folder (--offload-folder DIR).")
    dispatch_model(model, device_map=device_map, offload_dir=offload_folder)


def _looks_like_path(spec: str) -> bool:
    """Whether ``spec`` is meant as a local path, not a hub id (``name`` or ``owner/name``)."""
    return (spec.startswith(("/", "./", "../", "~", "\\")) or spec in (".", "..") or spec.count("/") > 1
            or "\\" in spec or (len(spec) > 1 and spec[1] == ":"))


_WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                 "pytorch_model.bin.index.json")


def check_model_dir(path: str | Path) -> None:
    """Check that ``path`` is a loadable model directory before handing it to transformers.

    Checks, cheaply (headers only): the directory exists; ``config.json`` exists and is valid JSON
    naming a ``model_type``; there is a weights file; every ``*.safetensors`` file has a readable
    header and the size its header implies (a truncated download is caught here).

    Raises
    ------
    HeadflowError
        One line naming the directory or file and what is missing or broken
        (:class:`~headflow.errors.MissingFileError` if the directory does not exist).
    """
    path = Path(path)
    if not path.exists():
        raise MissingFileError(f"Model directory {str(path)!r} does not exist (resolved: {path.resolve()}). Check the "
                               "path, or use 'default', 'tiny:<family>' or a hub id such as 'owner/name'.")
    if not path.is_dir():
        raise HeadflowError(f"Model path {str(path)!r} is a file, not a model directory. Use the directory that holds "
                            "config.json and the weights.")
    config = path / "config.json"
    if not config.is_file():
        found = ", ".join(sorted(p.name for p in path.iterdir())[:6]) or "nothing"
        raise HeadflowError(f"{str(path)!r} is not a model directory: it has no config.json (it holds: {found}). "
                            "Use a directory written by save_pretrained or downloaded from the hub.")
    try:
        data = json.loads(config.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise HeadflowError(f"{config} is not valid JSON ({exc.msg} at line {exc.lineno} column {exc.colno}). "
                            "Restore it from the model's source.") from None
    except UnicodeDecodeError as exc:
        raise HeadflowError(f"{config} is not UTF-8 text ({exc.reason} at byte {exc.start}). "
                            "Restore it from the model's source.") from None
    if not isinstance(data, dict) or "model_type" not in data:
        raise HeadflowError(f"{config} has no 'model_type', so transformers cannot tell which model it is. "
                            "Restore it from the model's source.")
    shards = sorted(path.glob("*.safetensors"))
    if not shards and not any((path / name).is_file() for name in _WEIGHT_FILES) and not list(path.glob("*.bin")):
        raise HeadflowError(f"{str(path)!r} has a config.json but no weights (none of {', '.join(_WEIGHT_FILES)}). "
                            "Copy or download the weights into it.")
    for shard in shards:
        problem = _safetensors_problem(shard)
        if problem:
            raise HeadflowError(f"{shard} {problem}. Download or copy the weights again.")


def _safetensors_problem(path: Path) -> str | None:
    """Why ``path`` is not a complete safetensors file (``None`` if its header and size agree)."""
    size = path.stat().st_size
    try:
        with open(path, "rb") as f:
            raw = f.read(8)
            if len(raw) < 8:
                return f"is not a safetensors file (only {size} bytes)"
            (n,) = struct.unpack("<Q", raw)
            if n > min(size - 8, 100 * 2**20):
                return "is not a safetensors file (its header length is garbage)"
            header = json.loads(f.read(n).decode("utf-8"))
    except (ValueError, UnicodeDecodeError):
        return "is not a safetensors file (its header is not JSON)"
    except OSError as exc:
        return f"cannot be read ({exc.strerror or exc})"
    if not isinstance(header, dict):
        return "is not a safetensors file (its header is not a JSON object)"
    try:
        end = max((int(v["data_offsets"][1]) for k, v in header.items() if k != "__metadata__"), default=0)
    except (KeyError, TypeError, ValueError, IndexError):
        return "is not a safetensors file (its header has no valid data_offsets)"
    want = 8 + n + end
    if size < want:
        return f"is truncated ({size} bytes, its header needs {want})"
    return None


def _from_pretrained(path: str, dtype: torch.dtype | None, *, local: bool = False,
                     placement: dict[str, Any] | None = None) -> tuple[torch.nn.Module, Any]:
    from transformers import AutoModelForImageTextToText, AutoProcessor

    what = f"model directory {path!r}" if local else f"model {path!r}"
    try:
        processor = AutoProcessor.from_pretrained(path)
        load = lambda **kw: AutoModelForImageTextToText.from_pretrained(  # noqa: E731
            path, dtype=dtype or "auto", output_loading_info=True, use_kernels=False, **(placement or {}), **kw)
        try:
            model, info = load(attn_implementation="sdpa")
        except ValueError as exc:  # a part without SDPA (Gemma 2's softcapped attention): transformers' own choice
            if "scaled_dot_product_attention" not in str(exc):
                raise
            model, info = load()
    except OSError as exc:
        fix = ("Check that the directory is a complete save_pretrained output (config, weights, processor "
               "and tokenizer files)." if local else
               "Use 'default', 'tiny:<family>', a local directory, or a hub id reachable from this machine.")
        raise HeadflowError(f"Cannot load {what}: {_first_line(exc)} {fix}") from exc
    except Exception as exc:  # noqa: BLE001 - transformers/safetensors raise many types for broken files
        raise HeadflowError(f"Cannot load {what}: {type(exc).__name__}: {_first_line(exc)} "
                            "Check that it is a complete, supported image-text model.") from exc
    missing = sorted(info.get("missing_keys") or [])
    mismatched = sorted(str(k[0]) if isinstance(k, tuple) else str(k) for k in info.get("mismatched_keys") or [])
    if missing or mismatched:  # transformers would fill them with random values: a silently wrong model
        kind, keys = ("missing", missing) if missing else ("of the wrong shape", mismatched)
        shown = ", ".join(keys[:3]) + (", ..." if len(keys) > 3 else "")
        raise HeadflowError(f"Cannot load {what}: {len(keys)} weights are {kind} in its weights files ({shown}), so "
                            "they would be random. Use weights that match its config.json.")
    return model, processor


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    line = text.splitlines()[0].strip() if text else type(exc).__name__
    return line if line.endswith((".", "!", "?")) else line + "."
