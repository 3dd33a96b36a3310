"""The shared seed / split-file driver: planning, overrides, stages, skipping, failures, mean ± SEM."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from ultradino_monai.evaluation import repeat
from ultradino_monai.evaluation.aggregate import load_results

REPO = Path(__file__).resolve().parents[1]

# A real (small) bundle: the train stage writes an artefact from its overrides, the evaluate
# stage reads it back and writes a result record whose score is a known function of seed and split.
TRAIN = {
    "imports": ["$import os", "$import json"],
    "seed": 0,
    "split_file": "none",
    "run_name": "default",
    "output_dir": "unset",
    "model_dir": "unset",
    "fail_seed": -1,
    "artefact": "$@model_dir + '/trained.json'",
    "run": [
        "$os.makedirs(@model_dir, exist_ok=True)",
        "$(_ for _ in ()).throw(RuntimeError('planned failure')) if @seed == @fail_seed else None",
        "$open(@artefact, 'w').write(json.dumps({'seed': @seed, 'split_file': @split_file, 'run_name': @run_name}))",
    ],
}
EVALUATE = {
    "imports": ["$import json", "$from ultradino_monai.evaluation.aggregate import write_result"],
    "trained": "$json.load(open(@artefact))",
    "score": "$0.5 + 0.1 * @trained['seed'] + (0.01 if @trained['split_file'].endswith('b.json') else 0.0)",
    "result_path": "unset",
    "run": [
        "$write_result(@result_path, {'task': 'segmentation', 'dataset': 'toy', 'split_file': @split_file, "
        "'split_kind': 'fewshot_n20', 'seed': @seed, 'backbone': 'vit_toy', 'checkpoint': None, "
        "'checkpoint_sha256': None, 'method': 'toy', 'budget': 'paper', 'metrics': {'foreground_dice': @score}, "
        "'created': '2025-01-01T00:00:00+00:00', 'run_name': @trained['run_name']})"
    ],
}


@pytest.fixture
def bundle(tmp_path):
    configs = tmp_path / "configs"
    configs.mkdir()
    (configs / "train.json").write_text(json.dumps(TRAIN))
    (configs / "evaluate.json").write_text(json.dumps(EVALUATE))
    splits = []
    for name in ("a.json", "b.json"):
        (tmp_path / name).write_text("{}")
        splits.append(str(tmp_path / name))
    return configs / "train.json", configs / "evaluate.json", splits


def test_plan_runs_names_folders_and_overrides(tmp_path, bundle):
    _, _, splits = bundle
    runs = repeat.plan_runs(tmp_path / "out", seeds=[0, 2], split_files=splits, overrides={"lr": 0.1})
    assert [r.run_id for r in runs] == ["a_seed0", "a_seed2", "b_seed0", "b_seed2"]
    run = runs[3]
    assert run.overrides == {
        "seed": 2,
        "run_name": "b_seed2",
        "output_dir": str(tmp_path / "out" / "b_seed2"),
        "model_dir": str(tmp_path / "out" / "b_seed2" / "models"),
        "result_path": str(tmp_path / "out" / "b_seed2" / "result.json"),
        "split_file": splits[1],
        "lr": 0.1,
    }
    assert [r.run_id for r in repeat.plan_runs(tmp_path / "out", seeds=[1])] == ["seed1"]
    renamed = repeat.plan_runs(tmp_path / "out", seeds=[1], keys={"seed": "random_seed"})[0]
    assert renamed.overrides["random_seed"] == 1 and "seed" not in renamed.overrides
    with pytest.raises(repeat.RepeatError, match="duplicate seeds"):
        repeat.plan_runs(tmp_path, seeds=[1, 1])
    with pytest.raises(repeat.RepeatError, match="not found"):
        repeat.plan_runs(tmp_path, split_files=[tmp_path / "missing.json"])
    with pytest.raises(repeat.RepeatError, match="must not set"):
        repeat.plan_runs(tmp_path, seeds=[0], overrides={"seed": 3})
    with pytest.raises(repeat.RepeatError, match="unknown key role"):
        repeat.plan_runs(tmp_path, keys={"sed": "x"})
    with pytest.raises(repeat.RepeatError, match=r"\['pretrained_ckpt'\] are None.*'none'"):
        repeat.plan_runs(tmp_path, seeds=[0], overrides={"pretrained_ckpt": None})
    assert repeat.parse_override("lr=1e-4") == ("lr", 1e-4)
    assert repeat.parse_override("ckpt=null") == ("ckpt", None)
    assert repeat.parse_override("name=a=b") == ("name", "a=b")


def test_sweep_runs_both_stages_and_reports_mean_and_sem(tmp_path, bundle):
    train, evaluate, splits = bundle
    out = tmp_path / "out"
    summary = repeat.repeat(train, out, seeds=[0, 1], split_files=splits, eval_config_file=evaluate, in_process=True)
    assert summary.failed == {} and summary.skipped == [] and summary.metric == "foreground_dice"
    records = load_results(out)
    assert len(records) == 4
    by_run = {r["run_name"]: r for r in records}  # the evaluate stage saw the train stage's artefact
    assert by_run["b_seed1"]["metrics"]["foreground_dice"] == pytest.approx(0.61)
    assert by_run["a_seed0"]["split_file"] == splits[0]
    assert json.loads((out / "a_seed1" / "models" / "trained.json").read_text())["seed"] == 1
    assert json.loads((out / "a_seed1" / "evaluate_args.json").read_text())["seed"] == 1
    (row,) = summary.rows
    values = [0.5, 0.6, 0.51, 0.61]
    mean = sum(values) / 4
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / 3)
    assert row["n"] == 4 and row["mean"] == pytest.approx(mean) and row["sem"] == pytest.approx(std / 2)
    assert json.loads((out / "summary.json").read_text())["rows"][0]["n"] == 4
    assert (out / "summary.csv").read_text().splitlines()[0].startswith("method,backbone,task,dataset,split_kind")

    # a second sweep finds every result and runs nothing (a failing config would otherwise raise)
    again = repeat.repeat(
        train,
        out,
        seeds=[0, 1],
        split_files=splits,
        eval_config_file=evaluate,
        overrides={"fail_seed": 0},
        in_process=True,
        stop_on_error=True,
    )
    assert sorted(again.skipped) == ["a_seed0", "a_seed1", "b_seed0", "b_seed1"] and again.rows[0]["n"] == 4


def test_failed_run_is_reported_and_the_rest_aggregated(tmp_path, bundle, capsys):
    train, evaluate, _ = bundle
    out = tmp_path / "out"
    code = repeat.main(
        [
            "--config_file",
            str(train),
            "--eval_config_file",
            str(evaluate),
            "--seeds",
            "0",
            "1",
            "2",
            "--output_dir",
            str(out),
            "--override",
            "fail_seed=1",
            "--in_process",
        ]
    )
    printed = capsys.readouterr().out
    assert code == 1
    assert "FAILED seed1" in printed and "1 failed" in printed
    assert "| toy | vit_toy | segmentation | toy | fewshot_n20 | 2 | 60.00 ± 10.00 |" in printed
    assert not (out / "seed1" / "result.json").exists()
    with pytest.raises(RuntimeError, match="planned failure"):
        repeat.repeat(
            train,
            out,
            seeds=[1],
            eval_config_file=evaluate,
            overrides={"fail_seed": 1},
            in_process=True,
            stop_on_error=True,
        )


def test_run_without_a_result_is_an_error(tmp_path, bundle):
    train, _, _ = bundle
    summary = repeat.repeat(train, tmp_path / "out", seeds=[0], in_process=True)
    assert "wrote no" in summary.failed["seed0"] and summary.rows == []


def test_stages_run_in_monai_bundle_subprocesses(tmp_path, bundle, capsys):
    train, evaluate, splits = bundle
    out = tmp_path / "out"
    # one stage that trains and evaluates (what a bundle without a separate evaluate.json does)
    combined = tmp_path / "configs" / "train_and_evaluate.json"
    combined.write_text(
        json.dumps(
            {
                **TRAIN,
                **EVALUATE,
                "imports": TRAIN["imports"] + EVALUATE["imports"],
                "run": TRAIN["run"] + EVALUATE["run"],
            }
        )
    )
    # default mode: every stage is a `python -m monai.bundle run --config_file [...] --args_file ...` process
    code = repeat.main(
        [
            "--config_file",
            str(combined),
            "--split_files",
            splits[1],
            "--seeds",
            "2",
            "--output_dir",
            str(out),
            "--logging_file",
            "False",
        ]
    )
    printed = capsys.readouterr().out
    assert code == 0, printed
    assert "71.00 ± 0.00" in printed  # 0.5 + 0.1 * seed 2 + 0.01 for split b
    record = json.loads((out / "b_seed2" / "result.json").read_text())
    assert record["metrics"]["foreground_dice"] == pytest.approx(0.71)
    assert (out / "b_seed2" / "train.log").is_file()
    assert json.loads((out / "b_seed2" / "train_args.json").read_text())["split_file"] == splits[1]
    assert (
        repeat.main(
            [
                "--config_file",
                str(train),
                "--split_files",
                splits[1],
                "--seeds",
                "2",
                "3",
                "--output_dir",
                str(out),
                "--dry_run",
            ]
        )
        == 0
    )
    printed = capsys.readouterr().out
    assert "b_seed2 [done]" in printed and "b_seed3 [todo]" in printed


def test_module_entry_point_reports_bad_arguments(tmp_path):
    completed = subprocess.run(
        [
            sys.executable,
            "-m",
            "ultradino_monai.evaluation.repeat",
            "--config_file",
            str(tmp_path / "missing.json"),
            "--output_dir",
            str(tmp_path / "out"),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert completed.returncode == 2 and "config file not found" in completed.stderr
