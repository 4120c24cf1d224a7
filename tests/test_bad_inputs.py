"""Bad input through the command line: one line on stderr naming what is wrong, exit code 2, no traceback.

The table covers every command; each row is (arguments, text the one line must contain). ``{tmp}`` is a
fresh directory, ``{run}`` a finished tiny attribution run, ``{file}`` an existing plain file.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from headflow.cli import app

T = ["--model", "tiny:llava"]
A = ["attribute", *T, "--out", "{tmp}/a", "--images", "1", "--keep-wrong"]
F = ["flow", *T, "--out", "{tmp}/f", "--images", "1", "--keep-wrong"]

BAD = [
    # attribute: parameters
    ([*A, "--masks", "3"], "'n_masks' parameter of HeadAttribution must be an int in [8, inf) or None. Got 3"),
    ([*A, "--masks", "abc"], "Invalid value for '--masks'"),
    ([*A, "--ablation-prob", "1.5"], "'ablation_prob' parameter of HeadAttribution must be a float in (0, 1)"),
    ([*A, "--ablation-prob", "0"], "'ablation_prob' parameter"),
    ([*A, "--ablation-prob", ""], "--ablation-prob must be a number or a comma-separated list"),
    ([*A, "--ablation-prob", ","], "--ablation-prob must be a number or a comma-separated list"),
    ([*A, "--ablation-prob", "0.1,x"], "--ablation-prob must be a number or a comma-separated list"),
    ([*A, "--ablation-prob", "0.1,0.2,1.5"], "Got 1.5 instead"),
    ([*A, "--baseline", "median"], "'baseline' parameter of HeadAttribution must be one of mean, zero, blank"),
    ([*A, "--target", "loss"], "'target' parameter of HeadAttribution must be one of logit, logprob, margin, prob"),
    ([*A, "--fit", "svm"], "'fit' parameter of HeadAttribution must be one of ols, ridge, lasso"),
    ([*A, "--penalty", "0"], "'penalty' parameter of HeadAttribution must be a float in (0, inf)"),
    ([*A, "--penalty", "x"], "Invalid value for '--penalty'"),
    ([*A, "--val-masks", "2"], "'n_val' parameter of HeadAttribution must be an int in [8, inf)"),
    ([*A, "--batch-size", "0"], "'batch_size' parameter of HeadAttribution must be an int in [1, inf) or 'auto'"),
    ([*A, "--batch-size", "big"], "'batch_size' parameter of HeadAttribution"),
    ([*A, "--question", ""], "'question' parameter of HeadAttribution must be a non-empty str"),
    ([*A, "--seed", "x"], "Invalid value for '--seed'"),
    ([*A, "--images", "-"], "Invalid value for '--images'"),
    ([*A, "--nonsense"], "No such option: --nonsense"),
    ([*A, "--workers", "2"], "--workers needs --ray"),
    ([*A, "--gpus-per-worker", "2"], "--gpus-per-worker needs --ray"),
    ([*A, "--device-map", "everywhere"], "Unknown device map 'everywhere'"),
    ([*A, "--max-memory", "0=1GiB"], "need --device-map"),
    # attribute --method patching
    ([*A, "--method", "gradient"], "--method must be one of regression, patching, hybrid. Got 'gradient'"),
    ([*A, "--method", "patching", "--masks", "16"], "--masks applies to --method regression only"),
    ([*A, "--method", "patching", "--ablation-prob", "0.2"], "--ablation-prob applies to --method regression only"),
    ([*A, "--method", "patching", "--fit", "ridge"], "--fit applies to --method regression only"),
    ([*A, "--mix", "kv"], "--mix applies to --method patching or hybrid only"),
    ([*A, "--n-check", "2"], "--n-check applies to --method patching only"),
    ([*A, "--method", "patching", "--mix", "qk"], "'mix' parameter of HeadAttributionPatching must be one of output, kv"),
    ([*A, "--method", "patching", "--mix", "kv", "--baseline", "knockout"], "the knockout baseline has none"),
    ([*A, "--method", "patching", "--n-check", "-1"], "'n_check' parameter of HeadAttributionPatching must be an int"),
    ([*A, "--method", "patching", "--ray", "local"], "drop --ray/--workers"),
    # attribute --method hybrid
    ([*A, "--screen-coverage", "0.5"], "--screen-coverage applies to --method hybrid only"),
    ([*A, "--method", "patching", "--screen-heads", "3"], "--screen-heads applies to --method hybrid only"),
    ([*A, "--method", "hybrid", "--screen-coverage", "0"],
     "'screen_coverage' parameter of HeadAttributionHybrid must be a float in (0, 1]"),
    ([*A, "--method", "hybrid", "--screen-coverage", "x"], "Invalid value for '--screen-coverage'"),
    ([*A, "--method", "hybrid", "--screen-heads", "0"], "'screen_heads' parameter of HeadAttributionHybrid must be"),
    ([*A, "--method", "hybrid", "--n-check", "2"], "--n-check applies to --method patching only"),
    ([*A, "--method", "hybrid", "--ablation-prob", "0.1,0.2"], "--ablation-prob takes one number with --method hybrid"),
    ([*A, "--method", "hybrid", "--masks", "3"], "'n_masks' parameter of HeadAttributionHybrid must be an int in [8, inf)"),
    ([*A, "--method", "hybrid", "--mix", "kv", "--baseline", "knockout"], "the knockout baseline has none"),
    ([*A, "--method", "hybrid", "--ray", "local"], "drop --ray/--workers"),
    # attribute: model, device, data, output
    (["attribute", "--model", "tiny:gpt9", "--out", "{tmp}/a"], "Unknown family 'gpt9'"),
    (["attribute", "--model", "{tmp}/nothing-here", "--out", "{tmp}/a"], "nothing-here"),
    (["attribute", "--model", "{tmp}", "--out", "{tmp}/a"], "config.json"),
    ([*A, "--device", "cuda"], "cuda"),
    ([*A, "--device", "toaster"], "toaster"),
    ([*A, "--dtype", "float7"], "float7"),
    ([*A, "--data", "nope"], "Unknown dataset spec 'nope'"),
    ([*A, "--data", "folder:{tmp}/missing"], "missing"),
    ([*A, "--data", "coco:{tmp}/x.json:{tmp}/imgs"], "x.json"),
    ([*A, "--label-column", "kind"], "'label_column' option of load_dataset applies only to hf:"),
    (["attribute", *T, "--out", "{file}", "--images", "1", "--keep-wrong", "--masks", "8", "--val-masks", "8"],
     "{file}"),
    (["attribute", *T, "--out", "{file}/sub", "--images", "1", "--keep-wrong", "--masks", "8", "--val-masks", "8"],
     "{file}"),
    (["attribute", *T, "--images", "1"], "Missing option '--out'"),
    # attribute: a finished run with other parameters
    (["attribute", *T, "--out", "{run}", "--images", "2", "--keep-wrong", "--masks", "24", "--val-masks", "8"],
     "different configuration (differs in: n_masks)"),
    # validate
    (["validate", "{tmp}/none"], "is not an attribution run directory"),
    (["validate", "{run}", "--seed", "x"], "Invalid value for '--seed'"),
    (["validate", "{run}", "--max-images", "0"], "'max_images' parameter of Validation must be an int in [1, inf)"),
    (["validate", "{run}", "--k-grid", "1,a"], "'--k-grid' option of validate must be a comma-separated list of ints"),
    (["validate", "{run}", "--batch-size", "-1"], "'batch_size' parameter of Validation"),
    (["validate", "{run}", "--workers", "2"], "--workers needs --ray"),
    (["validate", "{run}", "--model", "tiny:qwen2_vl"], "it is not the run's model"),
    # flow
    ([*F, "--window", "0"], "'window' parameter of TokenFlow must be an int in [1, inf) or None"),
    ([*F, "--window", "9"], "'window' parameter of TokenFlow must be None or an int in [1, 2]"),
    ([*F, "--pairs", "image:answer"], "A flow pair must be 'source:target'"),
    ([*F, "--pairs", ""], "must name at least one pair"),
    ([*F, "--heads", "top:3"], "--heads top:K needs --from-run"),
    ([*F, "--heads", "top:x", "--from-run", "{run}"], "top:K with K in"),
    ([*F, "--heads", "{tmp}/heads.txt"], "does not exist"),
    ([*F, "--heads", "top:2", "--from-run", "{tmp}"], "No head attribution found"),
    ([*F, "--heads", "{heads_bad_json}"], "cannot be read"),
    ([*F, "--heads", "{heads_one_column}"], "holds something other than (layer, head) pairs"),
    ([*F, "--heads", "{heads_dict}"], "cannot be read"),
    ([*F, "--heads", "{heads_npy}"], "must have shape (2, 4)"),
    ([*F, "--bootstrap", "0"], "'n_bootstrap' parameter of TokenFlow must be an int in [1, inf)"),
    ([*F, "--objects", "maybe"], "'objects' parameter of TokenFlow"),
    ([*F, "--object-layers", "0,x"], "'--object-layers' option of flow must be a comma-separated list of ints"),
    ([*F, "--object-layers", "7"], "'object_layers' parameter of TokenFlow must be None or layers in [0, 2)"),
    ([*F, "--threshold", "2"], "'threshold' parameter of TokenFlow must be a float in (0, 1]"),
    ([*F, "--maps", "-1"], "'n_maps' parameter of TokenFlow must be an int in [0, inf)"),
    ([*F, "--n-random", "-1"], "'n_random' parameter of TokenFlow must be an int in [0, inf)"),
    # plan
    (["plan", "--model", "tiny:llava", "--memory", "lots"], "'--memory' option of plan must be a size"),
    (["plan", "--model", "tiny:llava", "--images", "0"], "'images' option of plan must be an int in [1, inf)"),
    (["plan", "--model", "tiny:llava", "--batch-size", "0"], "'batch_size' option of plan must be an int in [1, inf)"),
    (["plan", "--model", "{tmp}/none"], "does not exist"),
    # compare
    (["compare", "{run}"], "needs at least two run directories; got 1"),
    (["compare", "{run}", "{run}"], "is given twice"),
    (["compare", "{run}", "{tmp}"], "is not a finished attribution run"),
    (["compare", "{run}", "{tmp}/none"], "does not exist"),
    (["compare", "{run}", "{tmp}", "--top-k", "0"], "'top_k' parameter of CompareRuns must be an int in [1, inf)"),
    (["compare", "{run}", "{tmp}", "--top-fractions", "2"], "'top_fractions' parameter of CompareRuns"),
    (["compare", "{run}", "{tmp}", "--top-fractions", "a,b"], "comma-separated list"),
    (["compare", "{run}", "{tmp}", "--depth-bins", "1"], "'depth_bins' parameter of CompareRuns"),
    # steer
    (["steer", "{tmp}/none"], "is not an attribution run directory"),
    (["steer", "{run}", "--factors", "-1"], "'factors' parameter of HeadSteering must be a non-empty list of floats >= 0"),
    (["steer", "{run}", "--factors", "a,b"], "'--factors' option of steer must be a comma-separated list of floats"),
    (["steer", "{run}", "--factors", ""], "'factors' parameter of HeadSteering"),
    (["steer", "{run}", "--corrupt", "fog:1"], "A corruption must be KIND:PARAM"),
    (["steer", "{run}", "--corrupt", "noise:2"], "The parameter of noise must be"),
    (["steer", "{run}", "--corrupt", "blur:0"], "The parameter of blur must be"),
    (["steer", "{run}", "--corrupt", "occlude:x"], "occlude takes mask or box"),
    (["steer", "{run}", "--corrupt", "blur:2,blur:2"], "is given twice"),
    (["steer", "{run}", "--k", "0"], "'k' parameter of HeadSteering must be an int in [1, inf)"),
    (["steer", "{run}", "--k", "99"], "must be at most the model's 8 heads"),
    (["steer", "{run}", "--max-images", "0"], "'max_images' parameter of HeadSteering"),
    (["steer", "{run}", "--batch-size", "0"], "'batch_size' parameter of HeadSteering"),
    (["steer", "{run}", "--model", "tiny:qwen2_vl"], "it is not the run's model"),
    # semantics
    (["route", "--ask", "size", "--ask", "class=x", "--out", "{tmp}/r"], "--ask takes TYPE=QUESTION"),
    (["route", "--ask", "class=x", "--out", "{tmp}/r"], "at least 2 question types"),
    (["route", "--ask", "class=x", "--ask", "shape=y", "--images", "4", "--out", "{tmp}/r"],
     "No answers for question type 'shape'"),
    (["route", "--ask", "class=x", "--ask", "size=y", "--n-permutations", "0", "--out", "{tmp}/r"],
     "'n_permutations' parameter of SemanticAnalysis"),
    (["semantics", "{tmp}/none"], "does not exist"),
    (["semantics", "{run}", "--similarity", "euclid"], "must be one of cosine, spearman, jaccard:K"),
    (["semantics", "{run}", "--n-permutations", "0"], "'n_permutations' parameter of SemanticAnalysis"),
    (["semantics", "{run}", "--cv-folds", "1"], "'cv_folds' parameter of SemanticAnalysis must be an int in [2, inf)"),
    (["semantics", "{run}", "--significance-level", "1"], "'significance_level' parameter of SemanticAnalysis"),
    (["semantics", "{run}", "--factors", "colour"], "must be an array with at least 4 images"),
    # study, demo, report, check, inspect, model-card, data
    (["study", *T, "--out", "{tmp}/s", "--batch-size", "0"], "'batch_size' parameter"),
    (["study", *T, "--out", "{tmp}/s", "--data", "nope"], "Unknown dataset spec 'nope'"),
    (["study", "--model", "tiny:gpt9", "--out", "{tmp}/s"], "Unknown family 'gpt9'"),
    (["demo", "--device", "toaster"], "toaster"),
    (["report", "{tmp}/none"], "none"),
    (["check", "--model", "tiny:gpt9"], "Unknown family 'gpt9'"),
    (["check", "--model", "tiny:llava", "--device", "toaster"], "toaster"),
    (["inspect", "--model", "tiny:gpt9"], "Unknown family 'gpt9'"),
    (["model-card", "tiny:gpt9"], "Unknown family 'gpt9'"),
    (["model-card", "--images", "x"], "Invalid value for '--images'"),
    # --adapter FILE (every command that loads a model)
    (["inspect", *T, "--adapter", "{tmp}/nope.py"], "Adapter file '{tmp}/nope.py' does not exist"),
    (["check", *T, "--adapter", "{file}"], "Adapter file '{file}' is not a .py file"),
    ([*A, "--adapter", "{adapter_broken}"],
     "Adapter file '{adapter_broken}' failed to import: ModuleNotFoundError: No module named 'no_such_module_xyz'"),
    (["validate", "{run}", "--adapter", "{adapter_empty}"], "Adapter file '{adapter_empty}' registers no family adapter"),
    ([*F, "--adapter", "{adapter_empty}"], "registers no family adapter"),
    (["study", *T, "--out", "{tmp}/s", "--adapter", "{tmp}/nope.py"], "does not exist"),
    (["model-card", "--adapter", "{adapter_broken}"], "failed to import"),
    (["demo", "--adapter", "{file}"], "is not a .py file"),
    (["data", "export", "{file}", "--n", "2"], "{file}"),
    (["data", "export", "{tmp}/e", "--n", "0"], "Invalid value for '--n'"),
    (["data", "export", "{tmp}/e", "--spec", "nope"], "nope"),
    (["frobnicate"], "No such command 'frobnicate'"),
]


@pytest.fixture(scope="module")
def places(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("bad")
    run = tmp / "run"
    res = CliRunner().invoke(app, ["attribute", *T, "--out", str(run), "--images", "2", "--keep-wrong", "--masks", "16",
                                   "--val-masks", "8"])
    assert res.exit_code == 0, res.output
    plain = tmp / "plain.txt"
    plain.write_text("not a directory\n")
    (tmp / "bad.json").write_text("{not json")
    (tmp / "one.txt").write_text("0\n1\n")
    (tmp / "dict.json").write_text('{"layers": [1, 2]}')
    np.save(tmp / "wrong.npy", np.ones((3, 3)))
    (tmp / "broken_adapter.py").write_text('"""An adapter file that cannot import."""\nimport no_such_module_xyz\n')
    (tmp / "empty_adapter.py").write_text('"""An adapter file that registers nothing."""\nx = 1\n')
    return {"run": str(run), "file": str(plain), "heads_bad_json": str(tmp / "bad.json"),
            "heads_one_column": str(tmp / "one.txt"), "heads_dict": str(tmp / "dict.json"),
            "heads_npy": str(tmp / "wrong.npy"), "adapter_broken": str(tmp / "broken_adapter.py"),
            "adapter_empty": str(tmp / "empty_adapter.py")}


def test_the_table_covers_every_command_and_sixty_inputs():
    import typer.main

    commands = set(typer.main.get_command(app).commands)
    assert commands <= {args[0] for args, _ in BAD} and len(BAD) >= 60


@pytest.mark.parametrize(("args", "expected"), BAD, ids=[" ".join(a[:3]) + (" --adapter" if "--adapter" in a[3:] else "") + f"#{i}"
                                                 for i, (a, _) in enumerate(BAD)])
def test_bad_input_is_one_line_and_exit_code_2(places, tmp_path, args, expected):
    fill = {"tmp": str(tmp_path), **places}
    argv = [a.format(**fill) for a in args]
    summary = Path(places["run"]) / "summary.json"
    before = summary.read_bytes()
    res = CliRunner().invoke(app, argv)
    lines = [line for line in res.output.splitlines() if line.strip()]
    assert res.exit_code == 2, (argv, res.output, res.exception)
    assert len(lines) == 1 and lines[0].startswith("error: "), (argv, res.output)
    assert expected.format(**fill) in lines[0], (argv, lines[0])
    assert summary.read_bytes() == before  # a refused command never touches the earlier run


# -- the re-runs that used to exit 0 with a wrong result (the reliability issue's list) -------------------------

ATTRIBUTE = ["attribute", *T, "--images", "2", "--keep-wrong", "--masks", "16", "--val-masks", "8"]


def _one_line_refusal(argv: list[str], must_contain: str) -> None:
    res = CliRunner().invoke(app, argv)
    lines = [line for line in res.output.splitlines() if line.strip()]
    assert res.exit_code == 2, (argv, res.output, res.exception)
    assert len(lines) == 1 and lines[0].startswith("error: ") and must_contain in lines[0], (argv, res.output)


def _finished(run: Path) -> dict[str, bytes]:
    res = CliRunner().invoke(app, [*ATTRIBUTE, "--out", str(run)])
    assert res.exit_code == 0, res.output
    return {p.name: p.read_bytes() for p in run.iterdir() if p.is_file() and p.suffix in (".json", ".npy")}


@pytest.mark.parametrize("damage", ["delete", "truncate"])
def test_a_damaged_targets_file_is_refused_not_refilled_with_zeros(tmp_path, damage):
    run = tmp_path / "run"
    before = _finished(run)
    targets = run / "targets.npy"
    if damage == "delete":
        targets.unlink()
    else:
        targets.write_bytes(targets.read_bytes()[:-64])
    _one_line_refusal([*ATTRIBUTE, "--out", str(run)], "targets.npy")
    assert (run / "summary.json").read_bytes() == before["summary.json"]
    assert (run / "attributions.npy").read_bytes() == before["attributions.npy"]


def test_a_run_that_lost_its_config_is_refused_with_other_parameters(tmp_path):
    run = tmp_path / "run"
    before = _finished(run)
    (run / "config.json").unlink()
    _one_line_refusal([*ATTRIBUTE, "--ablation-prob", "0.3", "--out", str(run)], "config.json")
    assert (run / "summary.json").read_bytes() == before["summary.json"]
    assert not (run / "config.json").exists()  # refused, not re-created


def test_finished_flow_validation_and_semantics_refuse_other_parameters(tmp_path):
    run = tmp_path / "run"
    _finished(run)
    flow = ["flow", *T, "--images", "2", "--keep-wrong", "--bootstrap", "10", "--maps", "0", "--out", str(tmp_path / "f")]
    assert CliRunner().invoke(app, flow).exit_code == 0
    flow_json = (tmp_path / "f" / "flow.json").read_bytes()
    _one_line_refusal([*flow, "--window", "2"], "differs in: window")
    assert (tmp_path / "f" / "flow.json").read_bytes() == flow_json
    assert CliRunner().invoke(app, ["validate", str(run), "--max-images", "1"]).exit_code == 0
    validation = (run / "validation.json").read_bytes()
    _one_line_refusal(["validate", str(run), "--max-images", "1", "--seed", "1"], "differs in: seed")
    assert (run / "validation.json").read_bytes() == validation
