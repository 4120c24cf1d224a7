"""One model over several devices (issue 18): ``load_model(device_map=...)`` and ``--device-map``.

This machine has one device (the CPU), so a split over real devices is checked by ``benchmarks/split_check.py``
on a GPU machine (``benchmarks/gpu.sh``: half the layers on ``cuda:0``, half on the CPU). Here the split is the one
a CPU allows and that big models really use: some modules' weights kept on the disk (``"disk"``) or kept aside
on the CPU, brought in by accelerate's hooks layer by layer while their parameters wait on the ``meta`` device.
That exercises what a split changes for headflow — the model is no longer where its first parameter is, and every
layer runs under a hook that moves its inputs — and every result must equal the unsplit model's.
"""

import json

import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from headflow import load_model
from headflow.cli import app
from headflow.errors import HeadflowError
from headflow.intervene import Baseline, Intervention, InterventionEngine
from headflow.intervene.check import run_checks

pytest.importorskip("accelerate")

runner = CliRunner()
QUESTION = "What is the main object in the image?"


def offload_map(lm) -> dict[str, str]:
    """Every other language-model layer, the input embeddings and the output head on the disk; the rest on the CPU."""
    lm_module = lm.adapter.language_model()
    names = {module: name for name, module in lm.model.named_modules()}
    mapping: dict[str, str] = {}

    def place(module: torch.nn.Module) -> None:
        inside = [m for m in module.modules() if m is lm_module]
        if not inside:
            mapping[names[module]] = "cpu"
            return
        for child in module.children():
            if child is lm_module.layers:
                for i, layer in enumerate(child):
                    mapping[names[layer]] = "disk" if i % 2 == 0 else "cpu"
            elif child is lm.model.get_input_embeddings():
                mapping[names[child]] = "disk"
            elif any(True for _ in child.parameters()) or any(True for _ in child.buffers()):
                place(child)

    place(lm.model)
    head = lm.model.get_output_embeddings()
    if head is not None and names.get(head) in mapping:
        mapping[names[head]] = "disk"
    return mapping


def rows(lm) -> list[Intervention]:
    g = torch.Generator().manual_seed(0)
    out = [Intervention()]
    for _ in range(3):
        heads = [(layer, head) for layer in range(lm.n_layers) for head in range(lm.n_heads)
                 if torch.rand((), generator=g) < 0.4]
        out.append(Intervention(ablate=heads))
    return out


def outputs(lm) -> dict[str, torch.Tensor]:
    engine = InterventionEngine(lm)
    image = Image.new("RGB", (64, 64), (200, 40, 40))
    prompt = engine.prepare(image, QUESTION)
    baseline = Baseline.mean([prompt, engine.prepare(Image.new("RGB", (64, 64), (20, 90, 200)), QUESTION)])
    batch = rows(lm)
    return {"clean": prompt.clean_logits, "auto": engine.run(prompt, batch, baseline=baseline).logits,
            "full": engine.run(prompt, batch, baseline=baseline, path="full").logits,
            "attention": prompt.image_attention}


@pytest.mark.parametrize("family", ["llava", "qwen2_vl", "gemma3"])
def test_weights_offloaded_to_disk_give_the_unsplit_models_results(family, tmp_path, tiny_models):
    """A model built in memory (``tiny:``) dispatched with accelerate: clean logits, ablations on both paths and the
    recorded attention equal the unsplit model's; ``lm.device`` is where the inputs go, not ``meta``."""
    plain = tiny_models(family)
    split = load_model(f"tiny:{family}", device_map=offload_map(plain), offload_folder=tmp_path / "offload")
    assert any(p.device.type == "meta" for p in split.model.parameters())  # really offloaded
    assert split.device == torch.device("cpu") and split.dtype == torch.float32
    assert "disk" in split.device_map.values() and split.describe()["device_map"] == split.device_map
    want, got = outputs(plain), outputs(split)
    for key in want:
        torch.testing.assert_close(got[key], want[key], rtol=0, atol=1e-5, msg=key)


def test_a_checkpoint_loads_straight_onto_its_map_and_passes_check(tmp_path, tiny_models):
    """A local directory is loaded by transformers with the map (no CPU copy first); every invariant holds."""
    plain = tiny_models("llava")
    path = tmp_path / "model"
    plain.model.save_pretrained(path)
    plain.processor.save_pretrained(path)
    split = load_model(path, device_map=offload_map(plain), offload_folder=tmp_path / "offload")
    assert "disk" in split.device_map.values()
    results = run_checks(split)
    assert all(r.passed for r in results), [r.failure() for r in results if not r.passed]
    torch.testing.assert_close(outputs(split)["auto"], outputs(plain)["auto"], rtol=0, atol=1e-5)


def test_device_map_auto_on_a_cpu_machine_places_everything_on_the_cpu(tiny_models):
    split = load_model("tiny:llava", device_map="auto")
    assert split.device_map and set(split.device_map.values()) == {"cpu"}
    torch.testing.assert_close(outputs(split)["auto"], outputs(tiny_models("llava"))["auto"], rtol=0, atol=1e-5)


def test_bad_device_maps_are_one_line_errors(monkeypatch):
    with pytest.raises(HeadflowError, match="Unknown device map 'everywhere'"):
        load_model("tiny:llava", device_map="everywhere")
    with pytest.raises(HeadflowError, match="needs CUDA"):
        load_model("tiny:llava", device_map={"model": "cuda:0", "lm_head": "cpu"})
    with pytest.raises(HeadflowError, match="no offload folder"):
        load_model("tiny:llava", device_map={"model": "disk", "lm_head": "cpu"})
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "accelerate" else real(name, *a))
    with pytest.raises(HeadflowError, match=r"pip install 'headflow\[big\]'"):
        load_model("tiny:llava", device_map="auto")


def test_forward_state_on_another_device_moves_the_batch_and_shares_the_outputs():
    """A layer on another device reads a view of the state whose batch lives there; what it records lands in
    the one state the engine reads."""
    from headflow.intervene.attention import ForwardState
    from headflow.intervene.spec import CompiledBatch

    batch = CompiledBatch(2, torch.zeros(2, 3, 4, dtype=torch.bool), None, None, None, 5)
    state = ForwardState("full", 0, 10, torch.tensor([1, 2]), 3, batch=batch, record={})
    assert state.on(torch.device("cpu")) is state
    view = state.on(torch.device("meta"))
    assert view is not state and view.batch.ablate.device.type == "meta" and state.batch.ablate.device.type == "cpu"
    assert state.on(torch.device("meta")) is view  # moved once per device
    view.record[0] = "k"
    view.image_attention[1] = "a"
    assert state.record == {0: "k"} and state.image_attention == {1: "a"}


def test_cli_device_map(tmp_path):
    result = runner.invoke(app, ["check", "--model", "tiny:llava", "--device-map", "auto", "--json"])
    assert result.exit_code == 0, result.output
    assert set(json.loads(result.output)["model"]["device_map"].values()) == {"cpu"}
    plain = load_model("tiny:llava")
    mapping = tmp_path / "map.json"
    mapping.write_text(json.dumps(offload_map(plain)))
    result = runner.invoke(app, ["check", "--model", "tiny:llava", "--device-map", str(mapping), "--offload-folder",
                                 str(tmp_path / "off"), "--json"])
    assert result.exit_code == 0, result.output
    assert "disk" in json.loads(result.output)["model"]["device_map"].values()
    for args, message in [(["--device-map", "everywhere"], "Unknown device map 'everywhere'"),
                          (["--max-memory", "0=1GiB"], "need --device-map"),
                          (["--device-map", "auto", "--max-memory", "lots"], "DEVICE=AMOUNT"),
                          (["--device-map", str(tmp_path / "none.json")], "does not exist")]:
        result = runner.invoke(app, ["inspect", "--model", "tiny:llava", *args])
        assert result.exit_code == 2 and message in result.output and len(result.output.strip().splitlines()) == 1, (
            args, result.output)


def test_every_command_with_device_takes_device_map():
    import typer.main

    commands = typer.main.get_command(app).commands
    opts = {name: {o for p in cmd.params for o in getattr(p, "opts", [])} for name, cmd in commands.items()}
    with_device = {name for name, o in opts.items() if "--device" in o}
    assert with_device >= {"attribute", "validate", "flow", "study", "demo", "check", "inspect", "plan", "steer"}
    assert all({"--device-map", "--max-memory", "--offload-folder"} <= opts[name] for name in with_device)


def test_a_checkpoint_for_an_accelerator_is_loaded_straight_onto_it(monkeypatch, tmp_path, tiny_models):
    """``--device cuda`` on a checkpoint: transformers gets ``device_map="cuda:0"`` (weights land on the GPU, never
    all on the CPU first) and headflow does not move the model again; on the CPU nothing changes."""
    import transformers

    from headflow.models import loading

    plain = tiny_models("llava")
    path = tmp_path / "model"
    plain.model.save_pretrained(path)
    plain.processor.save_pretrained(path)
    seen = []
    real = transformers.AutoModelForImageTextToText.from_pretrained

    def recording(*args, **kwargs):
        seen.append(kwargs.pop("device_map", None))
        model, info = real(*args, **kwargs)
        if seen[-1] is not None:
            model.hf_device_map = {"": seen[-1]}  # what transformers records for a one-device map
        return model, info

    monkeypatch.setattr(transformers.AutoModelForImageTextToText, "from_pretrained", recording)
    monkeypatch.setattr(loading, "resolve_device", lambda device: torch.device("cuda", 0) if "cuda" in str(device)
                        else torch.device("cpu"))
    moved = []
    monkeypatch.setattr(torch.nn.Module, "to", lambda self, *a, **k: moved.append((a, k)) or self)
    lm = load_model(path, device="cuda")
    assert seen == ["cuda:0"] and moved == [] and lm.device_map == {"": "cuda:0"}
    load_model(path, device="cpu")
    assert seen[-1] is None and moved  # the CPU: loaded, then .to(cpu) as before


def test_a_loaded_pair_stays_on_its_device_and_checkpoints_load_without_hub_kernels(monkeypatch, tmp_path,
                                                                                  tiny_models):
    """Found on the GPU machine: ``load_model((model, processor))`` moved a model the user had put on a GPU back to
    the CPU, and transformers 5.25 swapped layers for Hub kernels it downloads (failing offline). A pair is only
    moved when ``device=`` says so; every checkpoint load asks transformers for ``use_kernels=False``."""
    import transformers

    plain = tiny_models("llava")
    moves = []
    real_to = torch.nn.Module.to
    monkeypatch.setattr(torch.nn.Module, "to", lambda self, *a, **k: moves.append(k) or real_to(self, *a, **k))
    load_model((plain.model, plain.processor))
    assert moves and all("device" not in k for k in moves)
    load_model((plain.model, plain.processor), dtype="float32")
    assert moves[-1] == {"dtype": torch.float32}
    load_model((plain.model, plain.processor), device="cpu")
    assert moves[-1] == {"device": torch.device("cpu")}
    monkeypatch.undo()

    path = tmp_path / "model"
    plain.model.save_pretrained(path)
    plain.processor.save_pretrained(path)
    seen = []
    real = transformers.AutoModelForImageTextToText.from_pretrained
    monkeypatch.setattr(transformers.AutoModelForImageTextToText, "from_pretrained",
                        lambda *a, **k: seen.append(k.get("use_kernels")) or real(*a, **k))
    load_model(path)
    load_model("default")
    assert seen == [False, False]
