"""Model loading reliability: one clear ``HeadflowError`` line for every broken model or device, and
local model paths recorded absolute."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from headflow.errors import HeadflowError, MissingFileError
from headflow.models.loading import (available_devices, check_model_dir, default_model_dir, load_model,
                                     resolve_device)


@pytest.fixture
def model_copy(tmp_path):
    """A copy of the embedded default model, free to break."""
    path = tmp_path / "model"
    shutil.copytree(default_model_dir(), path)
    return path


def _one_line(exc: pytest.ExceptionInfo) -> str:
    text = str(exc.value)
    assert "\n" not in text and "Traceback" not in text
    return text


def test_a_directory_that_is_not_a_model(tmp_path, model_copy):
    (tmp_path / "empty").mkdir()
    with pytest.raises(HeadflowError, match=r"'.*empty' is not a model directory: it has no config.json "
                                            r"\(it holds: nothing\)\. Use a directory written by save_pretrained"):
        load_model(tmp_path / "empty")
    (model_copy / "model.safetensors").unlink()
    with pytest.raises(HeadflowError, match=r"has a config.json but no weights \(none of model.safetensors, "):
        load_model(str(model_copy))
    (tmp_path / "file").write_text("x")
    with pytest.raises(HeadflowError, match="is a file, not a model directory"):
        load_model(tmp_path / "file")


def test_truncated_or_garbage_weights_name_the_file(model_copy):
    weights = model_copy / "model.safetensors"
    raw = weights.read_bytes()
    weights.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(HeadflowError, match=rf"{weights} is truncated \(\d+ bytes, its header needs {len(raw)}\)\. "
                                            "Download or copy the weights again") as info:
        load_model(model_copy)
    _one_line(info)
    weights.write_bytes(b"\x00" * 4096)
    with pytest.raises(HeadflowError, match=rf"{weights} is not a safetensors file \(its header is not JSON\)"):
        load_model(model_copy)
    weights.write_bytes(b"<html>not found</html>" * 10)
    with pytest.raises(HeadflowError, match=rf"{weights} is not a safetensors file \(its header length is garbage\)"):
        load_model(model_copy)


def test_weights_that_do_not_match_the_config_are_refused(model_copy):
    from safetensors.torch import save_file

    save_file({"unrelated": torch.zeros(2)}, str(model_copy / "model.safetensors"))  # a valid file, wrong model
    with pytest.raises(HeadflowError, match=r"Cannot load model directory .*: \d+ weights are missing in its weights "
                                            r"files \(.*\), so they would be random") as info:
        load_model(model_copy)
    _one_line(info)


def test_an_invalid_config_names_the_file_and_the_json_error(model_copy):
    config = model_copy / "config.json"
    config.write_text('{"model_type": "llava",,}')
    with pytest.raises(HeadflowError, match=rf"{config} is not valid JSON \(Expecting property name enclosed in "
                                            r"double quotes at line 1 column 24\)\. Restore it"):
        load_model(model_copy)
    config.write_text(json.dumps({"architectures": ["X"]}))
    with pytest.raises(HeadflowError, match=rf"{config} has no 'model_type'"):
        check_model_dir(model_copy)


@pytest.mark.parametrize("spec", ["./no-such-model", "/no/such/model", "no/such/model", "~/no-such-model"])
def test_a_missing_local_path_is_not_reported_as_a_hub_id(spec):
    with pytest.raises(MissingFileError, match=r"Model directory '.*no.such.model' does not exist \(resolved: /") as info:
        load_model(spec)
    assert "hub id reachable" not in _one_line(info) and isinstance(info.value, FileNotFoundError)


def test_devices_are_checked_first():
    assert available_devices()[0] == "cpu" and resolve_device("cpu") == torch.device("cpu")
    with pytest.raises(HeadflowError, match=r"Unknown device 'banana'\. Available here: cpu"):
        load_model("tiny:llava", device="banana")
    if not torch.cuda.is_available():
        with pytest.raises(HeadflowError, match=r"Device 'cuda' needs CUDA, which this machine does not have .*"
                                                r"Available here: cpu"):
            load_model("default", device="cuda")
        with pytest.raises(HeadflowError, match="Device 'cuda:1' needs CUDA"):
            resolve_device("cuda:1")
    else:
        with pytest.raises(HeadflowError, match="Device 'cuda:99' does not exist"):
            resolve_device("cuda:99")


def test_local_paths_are_recorded_absolute(model_copy, monkeypatch, tmp_path):
    monkeypatch.chdir(model_copy.parent)
    lm = load_model("model")
    assert lm.name == str(model_copy.resolve()) and lm.describe()["name"] == lm.name
    monkeypatch.chdir(tmp_path.parent)  # reopen the recorded name from elsewhere
    assert load_model(lm.name).n_layers == lm.n_layers
    assert load_model("./" + str(model_copy.relative_to(tmp_path.parent))).name == lm.name
    assert load_model("default").name == "default" and load_model("tiny:llava").name == "tiny:llava"
    pair = load_model((lm.model, lm.processor))
    assert pair.name == lm.name
