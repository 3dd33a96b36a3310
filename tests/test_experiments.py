"""Experiment runner (``python -m ultradino_monai.experiments``): spec validation, cell expansion,
resume, report numbers and figures; ``-m slow``: kill the runner mid-grid and rerun.

The default tests plan real grids on the tiny demo data and run the runner's real process
machinery on short command jobs; the slow test runs real (tiny) linear-probe bundle cells.
"""

from __future__ import annotations

import csv
import json
import math
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image
from scipy import stats

from ultradino_monai.evaluation.aggregate import make_record, write_result
from ultradino_monai.experiments import plan as grid_plan
from ultradino_monai.experiments import runner as grid
from ultradino_monai.experiments.parse import load_spec, parse_spec
from ultradino_monai.experiments.prepare import prepare_datasets
from ultradino_monai.experiments.readme import BLOCK_PATTERN, block_markers, replace_block, results_snippet
from ultradino_monai.experiments.report import label_efficiency_points, load_cell_records, render_report
from ultradino_monai.experiments.spec import SpecError

REPO = Path(__file__).resolve().parents[1]


# ----------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """Tiny demo FASS + planes, and a tiny random ViT saved as an UltraDINO export (with sidecar)."""
    import torch

    from data_prep.demo import SCALES, generate_fass, generate_planes
    from ultradino_monai.networks.checkpoints import save_backbone
    from ultradino_monai.networks.vit import build_vit

    root = tmp_path_factory.mktemp("experiments")
    generate_fass(root, seed=0, scale=SCALES["tiny"])
    generate_planes(root, seed=0, scale=SCALES["tiny"])
    torch.manual_seed(0)
    model = build_vit("vit_tiny", patch_size=16, depth=4, embed_dim=32, num_heads=2, img_size=32)
    save_backbone(model, root / "models" / "backbone.pt", {"arch": "vit_tiny"})  # as the pretrain bundle's export
    return root


def _document(root: Path, results: Path) -> dict:
    return {
        "name": "tiny",
        "results_dir": str(results),
        "datasets": {
            "fass": {
                "datalist": str(root / "fass" / "datalist.json"),
                "splits": {
                    "protocol": "fass",
                    "out_dir": str(root / "splits" / "fass"),
                    "options": {"num_draws": 2, "num_seeds": 2, "fewshot_images": 2, "label_percentages": [10, 50]},
                },
                "nnunet": {"dataset_id": 977, "name": "TinyFASS", "size": 32},
            },
            "planes": {
                "datalist": str(root / "planes" / "datalist.json"),
                "splits": {
                    "protocol": "holdout",
                    "out_dir": str(root / "splits" / "planes"),
                    "options": {"num_seeds": 2},
                },
            },
        },
        "backbones": {
            "pre": {"method": "UltraDINO", "label": "tiny", "checkpoint": str(root / "models" / "backbone.pt")},
            "rnd": {"method": "scratch", "label": "tiny", "checkpoint": None, "arch_like": "pre"},
            "unet": {"kind": "nnunet", "trainer": "nnUNetTrainer_UltraDINOShort", "device": "cpu"},
        },
        "tasks": {
            "fewshot": {
                "kind": "segmentation",
                "dataset": "fass",
                "splits": "fewshot_n2_draw*",
                "seeds": [0, 1],
                "column": "FASS (n=2)",
                "overrides": {"max_iterations": 3},
                "backbones": ["pre", "rnd"],
            },
            "full": {
                "kind": "segmentation",
                "dataset": "fass",
                "splits": ["full_seed0", "full_seed1"],
                "pairing": "replicate",
                "column": "FASS (full)",
            },
            "label_eff": {
                "kind": "segmentation",
                "dataset": "fass",
                "splits": ["label_efficiency_p*_seed0"],
                "seeds": [0],
            },
            "ft": {
                "kind": "classification_finetune",
                "dataset": "planes",
                "splits": "full_seed*",
                "pairing": "replicate",
                "column": "FT F1",
            },
            "lp": {
                "kind": "classification_linear_probe",
                "dataset": "planes",
                "splits": "full_seed0",
                "backbones": ["pre"],
                "column": "LP F1",
            },
        },
        "report": {
            "label_efficiency": {"tasks": ["label_eff", "full"]},
            "fewshot_bars": {"task": "fewshot"},
            "attention": {"backbones": ["rnd", "pre"], "dataset": "fass", "images": 2, "image_size": 32},
        },
    }


@pytest.fixture()
def planned(tiny, tmp_path):
    spec = parse_spec(_document(tiny, tmp_path / "results"))
    prepare_datasets(spec)
    return spec, grid_plan.plan_jobs(spec)


# ------------------------------------------------------------------------- validation
@pytest.mark.parametrize(
    "change, message",
    [
        (lambda d: d["tasks"]["fewshot"].update(dataset="nope"), r"tasks\.fewshot\.dataset: unknown dataset 'nope'"),
        (lambda d: d["tasks"]["fewshot"].update(kind="detection"), r"tasks\.fewshot\.kind must be one of"),
        (lambda d: d["tasks"]["fewshot"].update(colour="red"), r"tasks\.fewshot: unknown key\(s\) \['colour'\]"),
        (lambda d: d["tasks"]["fewshot"].update(pairing="cross"), r"tasks\.fewshot\.pairing must be one of"),
        (lambda d: d["tasks"]["full"].update(seeds=[0]), r"tasks\.full: pairing 'replicate' takes the seed"),
        (lambda d: d["tasks"]["fewshot"].update(seeds=[0, 0]), r"tasks\.fewshot\.seeds has duplicates"),
        (lambda d: d["tasks"]["ft"].update(backbones=["unet"]), r"tasks\.ft\.backbones: unet \(nnunet\) cannot run"),
        (
            lambda d: d["backbones"]["pre"].update(checkpoint="/nowhere/backbone.pt"),
            r"backbones\.pre\.checkpoint: file not found: /nowhere/backbone\.pt",
        ),
        (
            lambda d: d["backbones"]["pre"].update(checkpoint="${NO_SUCH_VARIABLE_UD}/b.pt"),
            r"backbones\.pre\.checkpoint: environment variable NO_SUCH_VARIABLE_UD is not set",
        ),
        (
            lambda d: d["backbones"]["rnd"].update(arch_like="ghost"),
            r"backbones\.rnd\.arch_like: unknown backbone 'ghost'",
        ),
        (lambda d: d["backbones"]["rnd"].update(label="tiny", method="UltraDINO"), r"Table 1 rows would merge"),
        (lambda d: d["backbones"]["pre"].update(source="imagenet"), r"backbones\.pre\.source must be one of"),
        (
            lambda d: d["datasets"]["fass"].update(datalist="/nowhere/datalist.json"),
            r"datasets\.fass\.datalist: file not found: /nowhere/datalist\.json",
        ),
        (
            lambda d: d["datasets"]["fass"].pop("nnunet"),
            r"tasks\.fewshot: nnU-Net runs on dataset 'fass', which has no 'nnunet'",
        ),
        (lambda d: d["report"].update(fewshot_bars={"task": "ghost"}), r"report\.fewshot_bars: unknown task 'ghost'"),
        (lambda d: d.update(backbones={}), r"'backbones' is required"),
    ],
)
def test_invalid_specs_name_the_key(tiny, tmp_path, change, message):
    document = _document(tiny, tmp_path / "results")
    document["tasks"]["fewshot"]["backbones"] = ["pre", "rnd", "unet"]
    document["tasks"]["fewshot"]["seeds"] = [0]
    change(document)
    with pytest.raises(SpecError, match=message):
        parse_spec(document)


def test_env_defaults_expand_and_checkpoint_check_can_be_deferred(tiny, tmp_path, monkeypatch):
    document = _document(tiny, tmp_path / "results")
    document["backbones"]["pre"]["checkpoint"] = "${UD_TEST_CKPT:-/nowhere/backbone.pt}"
    monkeypatch.delenv("UD_TEST_CKPT", raising=False)
    with pytest.raises(SpecError, match="file not found: /nowhere/backbone.pt"):
        parse_spec(document)
    parse_spec(document, check_files=False)  # the paper grid on a machine without the files
    monkeypatch.setenv("UD_TEST_CKPT", str(tiny / "models" / "backbone.pt"))
    assert parse_spec(document).backbones["pre"].checkpoint == tiny / "models" / "backbone.pt"


def test_split_patterns_that_match_nothing_fail_before_running(tiny, tmp_path):
    document = _document(tiny, tmp_path / "results")
    document["tasks"]["fewshot"]["splits"] = "fewshot_n20_draw*"  # the tiny data has n = 2 draws only
    spec = parse_spec(document)
    with pytest.raises(SpecError, match=r"tasks\.fewshot\.splits: no split file matches 'fewshot_n20_draw\*'"):
        prepare_datasets(spec)


def test_shipped_experiment_files_parse(monkeypatch):
    """experiments/paper.yaml (placeholders) and demo.yaml validate; paper's grid has the paper's shape."""
    monkeypatch.chdir(REPO)
    paper = load_spec(REPO / "experiments" / "paper.yaml", check_files=False)
    assert {t.column for t in paper.tasks.values() if t.column} == {
        "JNU (p=4)",
        "FASS (n=20)",
        "FASS (full)",
        "FT F1",
        "LP F1",
    }
    pairs = {(t.name, b.name) for t, b in paper.pairs()}
    assert ("fetal_planes_linear_probe", "vit_s16_scratch") not in pairs  # Table 1: "–"
    assert ("fetal_planes_finetune", "nnunet") not in pairs
    assert ("jnu_fewshot", "nnunet") in pairs and ("jnu_fewshot", "usfm_vitb16") in pairs
    assert len(paper.backbones) == 11
    demo = load_spec(REPO / "experiments" / "demo.yaml", check_files=False)
    assert {b.kind for b in demo.backbones.values()} == {"vit", "nnunet"}
    assert demo.backbones["random_init"].arch_like == "ultradino"


# -------------------------------------------------------------------------- expansion
def test_cells_expand_as_backbone_x_task_x_split_x_seed(planned):
    spec, jobs = planned
    cells = [job for job in jobs if job.kind == "cell"]
    by_task = {}
    for job in cells:
        by_task.setdefault(job.task, []).append(job)
    # fewshot: 2 draws x 2 seeds x 2 ViTs; full: 2 replicates x 3 backbones; label_eff: p10/p50 x 1 seed x 3;
    # ft: 2 replicates x 2 ViTs; lp: 1 split x 1 backbone
    assert {task: len(jobs_) for task, jobs_ in by_task.items()} == {
        "fewshot": 8,
        "full": 6,
        "label_eff": 6,
        "ft": 4,
        "lp": 1,
    }
    assert sorted(j.cell_id for j in by_task["full"] if j.backbone == "pre") == ["full_seed0_seed0", "full_seed1_seed1"]
    prepares = [job for job in jobs if job.kind == "prepare"]
    assert [job.job_id for job in prepares] == ["_prepare/unet/fass"]
    # one nnU-Net export holds every split file the nnU-Net cells train on (full x 2, label_eff x 2)
    export = prepares[0].description["stages"][0]["argv"]
    assert len(export[export.index("--split-file") + 1 : export.index("--dataset-id")]) == 4
    for job in cells:
        assert job.result_path == spec.results_dir / job.task / job.backbone / job.cell_id / "result.json"
        assert job.requires == (["_prepare/unet/fass"] if job.backbone == "unet" else [])


def test_nnunet_refuses_two_cells_on_one_split_file(tiny, tmp_path):
    document = _document(tiny, tmp_path / "results")
    document["tasks"]["fewshot"]["backbones"].append("unet")  # seeds [0, 1]: two models for one nnU-Net fold
    spec = parse_spec(document)
    prepare_datasets(spec)
    with pytest.raises(SpecError, match=r"nnU-Net \(unet\) trains one model per split file, but fewshot_n2_draw0"):
        grid_plan.plan_jobs(spec)


def test_cell_overrides_follow_the_repeat_contract(planned, tiny):
    spec, jobs = planned
    cell = {job.job_id: job for job in jobs}
    pre = cell["fewshot/pre/fewshot_n2_draw1_seed1"].description
    assert pre["kind"] == "bundle"
    overrides = pre["run"]["overrides"]
    run_dir = spec.results_dir / "fewshot" / "pre" / "fewshot_n2_draw1_seed1"
    assert overrides["seed"] == 1 and overrides["split_file"].endswith("fewshot_n2_draw1.json")
    assert overrides["output_dir"] == str(run_dir) and overrides["result_path"] == str(run_dir / "result.json")
    assert overrides["model_dir"] == str(run_dir / "models") and overrides["run_name"] == "fewshot_n2_draw1_seed1"
    assert overrides["pretrained_ckpt"] == str(tiny / "models" / "backbone.pt")
    assert overrides["max_iterations"] == 3 and overrides["method"] == "UltraDINO"
    assert pre["configs"][0].endswith("bundles/segmentation/configs/train.json")
    assert pre["eval_configs"][0].endswith("bundles/segmentation/configs/evaluate.json")
    # random init: "none" (the bundle CLI drops null overrides), the export's shape
    rnd = cell["fewshot/rnd/fewshot_n2_draw0_seed0"].description["run"]["overrides"]
    assert rnd["pretrained_ckpt"] == "none" and rnd["scratch_arch"] == "vit_tiny"
    assert rnd["scratch_overrides"] == {"patch_size": 16, "embed_dim": 32, "depth": 4, "num_heads": 2, "mlp_ratio": 4.0}
    ft = cell["ft/rnd/full_seed1_seed1"].description["run"]["overrides"]
    # merged into the classification config's own random_init (keeps its LayerScale init 0.1)
    assert ft["random_init"] == {
        "arch": "vit_tiny",
        "depth": 4,
        "init_values": 0.1,
        "patch_size": 16,
        "embed_dim": 32,
        "num_heads": 2,
        "mlp_ratio": 4.0,
        "num_register_tokens": 4,
    }
    assert ft["if_missing"] == "error" and ft["pretrained_ckpt"] == "none"
    lp = cell["lp/pre/full_seed0_seed0"].description
    assert lp["eval_configs"] is None and lp["configs"][0].endswith("linear_probe.json")
    assert lp["run"]["overrides"]["cache_dir"] == str(spec.results_dir / "_work" / "feature_cache")
    unet = cell["full/unet/full_seed1_seed1"].description
    train, predict, score = (stage["argv"] for stage in unet["stages"])
    assert train[3] == "train" and train[train.index("--fold") + 1].endswith("full_seed1.json")
    assert score[score.index("--out") + 1] == str(
        spec.results_dir / "full" / "unet" / "full_seed1_seed1" / "result.json"
    )


def _record(job, value: float, kind: str = "segmentation") -> dict:
    metric = "foreground_dice" if kind == "segmentation" else "macro_f1"
    split = json.loads(Path(job.split_file).read_text())["split"]
    return make_record(
        task=kind,
        dataset=split["dataset"],
        split_file=job.split_file,
        split_kind=split["kind"],
        seed=job.seed,
        backbone="bundle_name",
        method="bundle_method",
        metrics={metric: value},
        budget="demo",
    )


def test_resume_plans_only_cells_without_results(planned):
    spec, jobs = planned
    cells = [job for job in jobs if job.kind == "cell"]
    finished = cells[::3]
    kinds = {"ft": "classification_finetune", "lp": "classification_linear_probe"}
    for job in finished:
        write_result(job.result_path, _record(job, 0.5, kinds.get(job.task, "segmentation")))
    again = grid_plan.plan_jobs(spec)
    assert [job.job_id for job in again if job.kind == "cell" and job.is_done()] == [job.job_id for job in finished]
    todo = [job for job in again if job.kind == "cell" and not job.is_done()]
    assert len(todo) == len(cells) - len(finished)


def _command_job(root: Path, job_id: str, code: str, result: bool = True, requires=()) -> grid_plan.Job:
    run_dir = root / job_id
    result_path = run_dir / "result.json"
    argv = [sys.executable, "-c", code]
    return grid_plan.Job(
        job_id=job_id,
        kind="cell",
        run_dir=run_dir,
        task=job_id.split("/")[0],
        backbone=job_id.split("/")[1],
        cell_id=job_id.split("/")[2],
        result_path=result_path,
        requires=list(requires),
        description={
            "kind": "commands",
            "run_dir": str(run_dir),
            "result_path": str(result_path),
            "stages": [{"name": "work", "argv": argv}],
        },
    )


def test_runner_skips_done_cells_runs_the_rest_in_parallel_and_retries_failures(planned, tmp_path):
    """The runner's process machinery on two CPU workers with short command jobs (no bundle involved)."""
    spec, _ = planned
    out = tmp_path / "cmd"
    write = (
        "import json,time,os; time.sleep(0.5); "
        "open({!r},'w').write(json.dumps({{'omp': os.environ.get('OMP_NUM_THREADS')}}))"
    )
    jobs = [_command_job(out, f"t/b/c{i}", write.format(str(out / f"t/b/c{i}" / "result.json"))) for i in range(4)]
    jobs.append(_command_job(out, "t/b/bad", "import sys; print('boom: broken cell'); sys.exit(3)"))
    jobs[0].result_path.parent.mkdir(parents=True)
    jobs[0].result_path.write_text("{}")  # already finished: must not run
    before = jobs[0].result_path.stat().st_mtime_ns
    environments = [{"OMP_NUM_THREADS": "1", "UD_SLOT": "a"}, {"OMP_NUM_THREADS": "1", "UD_SLOT": "b"}]
    command = ["python", "-m", "ultradino_monai.experiments", "run", "exp.yaml", "--gpus", "0,0"]
    runner = grid.GridRunner(spec, jobs, environments, poll_seconds=0.05, command=command)
    started = time.perf_counter()
    summary = runner.run()
    assert time.perf_counter() - started < 15
    assert summary.skipped == ["t/b/c0"] and jobs[0].result_path.stat().st_mtime_ns == before
    assert sorted(summary.finished) == ["t/b/c1", "t/b/c2", "t/b/c3"]
    assert list(summary.failed) == ["t/b/bad"] and "exit code" in summary.failed["t/b/bad"]
    failed = json.loads((out / "t/b/bad/failed.json").read_text())
    assert "boom: broken cell" in failed["log_tail"]
    assert {json.loads(job.result_path.read_text())["omp"] for job in jobs[1:4]} == {"1"}
    status = json.loads((spec.results_dir / "status.json").read_text())
    assert status["counts"] == {"done": 4, "running": 0, "failed": 1, "pending": 0}
    assert status["command"] == command  # the README block shows the command that ran the grid
    # rerun: the failed cell's folder moves to _attempts (its log kept) and it runs again
    jobs[-1].description["stages"][0]["argv"][-1] = "print('fixed')"
    jobs[-1].description["result_path"] = None
    summary = grid.GridRunner(spec, jobs, environments, poll_seconds=0.05).run()
    assert sorted(summary.skipped) == ["t/b/c0", "t/b/c1", "t/b/c2", "t/b/c3"]
    assert list(summary.failed) == ["t/b/bad"] and "without writing its result" in summary.failed["t/b/bad"]
    attempts = list((spec.results_dir / "_attempts" / "t/b/bad").iterdir())
    assert len(attempts) == 1 and "boom: broken cell" in (attempts[0] / "cell.log").read_text()


def test_a_failed_prerequisite_fails_its_cells_without_running_them(planned, tmp_path):
    spec, _ = planned
    out = tmp_path / "cmd"
    prepare = _command_job(out, "_prepare/u/d", "import sys; sys.exit(1)")
    prepare.kind, prepare.result_path = "prepare", None
    prepare.marker = (out / "marker.json", {"x": 1})
    cell = _command_job(out, "t/u/c0", "open('never','w')", requires=["_prepare/u/d"])
    summary = grid.GridRunner(spec, [prepare, cell], [{}], poll_seconds=0.05).run()
    assert summary.failed["t/u/c0"] == "prerequisite _prepare/u/d failed"
    assert not cell.run_dir.exists()


def test_cli_dry_run_and_status(planned):
    spec, jobs = planned
    cells = [job for job in jobs if job.kind == "cell"]
    write_result(cells[0].result_path, _record(cells[0], 0.4))
    grid_plan.write_experiment_snapshot(spec, jobs)
    document = yaml.safe_dump(_document(Path(spec.datasets["fass"].datalist).parents[1], spec.results_dir))
    path = spec.results_dir / "exp.yaml"
    path.write_text(document)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    listed = subprocess.run(
        [sys.executable, "-m", "ultradino_monai.experiments", "run", str(path), "--dry_run", "--tasks", "fewshot"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert listed.returncode == 0, listed.stderr
    lines = listed.stdout.splitlines()
    assert len(lines) == 8 and lines[0].startswith("done  fewshot/pre/")
    assert f"done  {cells[0].job_id}" in lines
    from ultradino_monai.experiments.__main__ import main

    status = grid.read_status(spec.results_dir)
    assert status["counts"] == {"done": 1, "pending": len(cells) - 1}
    assert main(["status", str(spec.results_dir)]) == 0


def test_a_repeated_gpu_id_puts_that_many_workers_on_the_gpu():
    """``--gpus 0,0,1`` (experiments/gpu.sh shares one GPU between 4 workers): two workers on GPU 0, one on 1."""
    from ultradino_monai.experiments.__main__ import build_parser

    args = build_parser().parse_args(["run", "experiments/gpu.yaml", "--gpus", "0,0,1"])
    assert args.gpus == ["0", "0", "1"]
    environments = grid.worker_environments(args.gpus, None)
    assert [env["CUDA_VISIBLE_DEVICES"] for env in environments] == ["0", "0", "1"]


# ------------------------------------------------------------------------------ report
def test_report_numbers_equal_hand_computed_mean_and_sem(planned, tmp_path):
    spec, jobs = planned
    cells = {job.job_id: job for job in jobs if job.kind == "cell"}
    fewshot_pre = {
        "fewshot/pre/fewshot_n2_draw0_seed0": 0.50,
        "fewshot/pre/fewshot_n2_draw0_seed1": 0.60,
        "fewshot/pre/fewshot_n2_draw1_seed0": 0.70,
        "fewshot/pre/fewshot_n2_draw1_seed1": 0.64,
    }
    fewshot_rnd = {"fewshot/rnd/fewshot_n2_draw0_seed0": 0.30, "fewshot/rnd/fewshot_n2_draw1_seed1": 0.36}
    full = {"full/pre/full_seed0_seed0": 0.80, "full/pre/full_seed1_seed1": 0.84, "full/unet/full_seed0_seed0": 0.75}
    label_eff = {
        "label_eff/pre/label_efficiency_p10_seed0_seed0": 0.55,
        "label_eff/pre/label_efficiency_p50_seed0_seed0": 0.72,
    }
    ft = {"ft/pre/full_seed0_seed0": 0.91, "ft/pre/full_seed1_seed1": 0.93}
    for values, kind in (
        (fewshot_pre, "segmentation"),
        (fewshot_rnd, "segmentation"),
        (full, "segmentation"),
        (label_eff, "segmentation"),
        (ft, "classification_finetune"),
    ):
        for job_id, value in values.items():
            write_result(cells[job_id].result_path, _record(cells[job_id], value, kind))
    grid_plan.write_experiment_snapshot(spec, jobs)

    outputs = render_report(spec.results_dir)

    def cell(values):
        array = np.array(list(values))
        sem = array.std(ddof=1) / math.sqrt(array.size) if array.size > 1 else 0.0
        return f"{100 * array.mean():.2f} ± {100 * sem:.2f}"

    table = (spec.results_dir / "report" / "table1.md").read_text().splitlines()
    assert table[0] == "| Method (backbone) | FASS (n=2) | FASS (full) | FT F1 | LP F1 |"
    rows = {line.split(" | ")[0].lstrip("| "): line for line in table[2:]}
    assert rows["UltraDINO (tiny) [reduced budget: demo]"] == (
        f"| UltraDINO (tiny) [reduced budget: demo] | {cell(fewshot_pre.values())} | {cell([0.80, 0.84])} | "
        f"{cell(ft.values())} | – |"
    )
    assert rows["scratch (tiny) [reduced budget: demo]"] == (
        f"| scratch (tiny) [reduced budget: demo] | {cell(fewshot_rnd.values())} | – | – | – |"
    )
    assert rows["nnUNet (UNet) [reduced budget: demo]"].split(" | ")[2] == "75.00 ± 0.00"
    assert cell(fewshot_pre.values()) == "61.00 ± 4.20"  # by hand: sqrt(0.0212 / 3) / sqrt(4) = 0.0420
    csv_lines = (spec.results_dir / "report" / "table1.csv").read_text().splitlines()
    assert csv_lines[1].split(",")[1] == cell(fewshot_pre.values())
    # label efficiency: p10, p50 from label_eff and 100 % from the full task
    points = label_efficiency_points(load_cell_records(spec.results_dir), ["label_eff", "full"])
    ultradino = points["UltraDINO (tiny)"]
    assert sorted(ultradino) == [10.0, 50.0, 100.0]
    assert ultradino[100.0][0] == pytest.approx(0.82) and ultradino[100.0][1] == pytest.approx(0.02)
    assert ultradino[10.0] == (pytest.approx(0.55), 0.0, 1)
    # every figure is a real PNG of a sensible size
    assert set(outputs["figures"]) == {"label_efficiency", "fewshot_bars", "attention", "paired_differences"}
    for path in outputs["figures"].values():
        with Image.open(path) as image:
            assert image.format == "PNG" and image.size[0] > 400 and image.size[1] > 300
    report = (spec.results_dir / "report" / "report.md").read_text()
    assert "![attention](attention.png)" in report and "61.00 ± 4.20" in report


def _t_interval(differences):
    """Hand computation of the 95 % t interval: mean ± t_{0.975, n-1} · sd / √n."""
    d = np.array(differences, dtype=float)
    half = stats.t.ppf(0.975, d.size - 1) * d.std(ddof=1) / math.sqrt(d.size)
    return d.mean(), d.mean() - half, d.mean() + half


def test_report_verdicts_equal_hand_computed_paired_intervals(planned, tmp_path, capsys):
    spec, jobs = planned
    cells = {job.job_id: job for job in jobs if job.kind == "cell"}
    values = {
        # few-shot: every pair +0.08 to +0.10 -> ahead
        "fewshot/pre/fewshot_n2_draw0_seed0": 0.50,
        "fewshot/pre/fewshot_n2_draw0_seed1": 0.60,
        "fewshot/pre/fewshot_n2_draw1_seed0": 0.70,
        "fewshot/pre/fewshot_n2_draw1_seed1": 0.64,
        "fewshot/rnd/fewshot_n2_draw0_seed0": 0.40,
        "fewshot/rnd/fewshot_n2_draw0_seed1": 0.52,
        "fewshot/rnd/fewshot_n2_draw1_seed0": 0.61,
        "fewshot/rnd/fewshot_n2_draw1_seed1": 0.55,
        # full: pre - unet = +0.05, -0.02 -> within noise; pre - rnd = -0.10, -0.09 -> behind
        "full/pre/full_seed0_seed0": 0.80,
        "full/pre/full_seed1_seed1": 0.84,
        "full/unet/full_seed0_seed0": 0.75,
        "full/unet/full_seed1_seed1": 0.86,
        "full/rnd/full_seed0_seed0": 0.90,
        "full/rnd/full_seed1_seed1": 0.93,
        # label efficiency p10: one pair only -> no interval, within noise
        "label_eff/pre/label_efficiency_p10_seed0_seed0": 0.55,
        "label_eff/rnd/label_efficiency_p10_seed0_seed0": 0.35,
    }
    for job_id, value in values.items():
        write_result(cells[job_id].result_path, _record(cells[job_id], value))
    grid_plan.write_experiment_snapshot(spec, jobs)
    readme = tmp_path / "README.md"
    begin, end = block_markers(spec.name)
    readme.write_text(f"# Project\n\nprose before\n{begin}\nold numbers: ahead by miles\n{end}\nprose after\n")

    from ultradino_monai.experiments.__main__ import main

    assert main(["report", str(spec.results_dir), "--no_attention", "--readme", str(readme)]) == 0
    printed = capsys.readouterr().out

    rows = {
        (r["task"], r["split_kind"], r["baseline_backbone"]): r
        for r in csv.DictReader((spec.results_dir / "report" / "verdicts.csv").open())
    }
    assert set(rows) == {
        ("fewshot", "fewshot_n2", "rnd"),
        ("full", "full", "rnd"),
        ("full", "full", "unet"),
        ("label_eff", "label_efficiency_p10", "rnd"),
    }
    expected = {
        ("fewshot", "fewshot_n2", "rnd"): ([0.10, 0.08, 0.09, 0.09], "ahead"),
        ("full", "full", "rnd"): ([-0.10, -0.09], "behind"),
        ("full", "full", "unet"): ([0.05, -0.02], "within noise"),
    }
    for key, (differences, verdict) in expected.items():
        mean, low, high = _t_interval(differences)
        row = rows[key]
        assert int(row["n"]) == len(differences) and row["verdict"] == verdict
        assert float(row["mean_difference"]) == pytest.approx(mean)
        assert float(row["low"]) == pytest.approx(low) and float(row["high"]) == pytest.approx(high)
    # by hand, without scipy: t_{0.975, 1} = 12.706205; pre - rnd on full: -0.095 ± 12.706205 · 0.005
    assert float(rows[("full", "full", "rnd")]["high"]) == pytest.approx(-0.095 + 12.706205 * 0.005, abs=1e-6)
    single = rows[("label_eff", "label_efficiency_p10", "rnd")]
    assert single["n"] == "1" and single["verdict"] == "within noise" and single["low"] == "-inf"
    # every comparison row states both arms' budgets (the Short trainer is nnU-Net's own schedule: not matched)
    assert rows[("fewshot", "fewshot_n2", "rnd")]["treatment_budget"] == "3 steps × batch 8"
    assert rows[("full", "full", "rnd")]["matched_by"] == "steps x batch"  # two ViT arms of one config
    assert rows[("full", "full", "unet")]["matched_by"] == "none"  # the Short trainer: nnU-Net's own schedule
    assert rows[("full", "full", "unet")]["baseline_budget"].startswith("nnUNetTrainer_UltraDINOShort")
    # the same words in verdicts.md, report.md, the printout and the README block; prose outside untouched
    ahead_line = (
        "| FASS (n=2) | fewshot_n2 | UltraDINO (tiny) | scratch (tiny) | 4 | +9.00 | [+7.70, +10.30] | **ahead** |"
    )
    assert _t_interval([0.10, 0.08, 0.09, 0.09])[1] == pytest.approx(0.0770, abs=5e-5)
    for text in (
        (spec.results_dir / "report" / "verdicts.md").read_text(),
        (spec.results_dir / "report" / "report.md").read_text(),
        printed,
        readme.read_text(),
    ):
        assert ahead_line in text
        assert "| FASS (full) | full | UltraDINO (tiny) | nnUNet (UNet) | 2 | +1.50 |" in text
    text = readme.read_text()
    assert "old numbers" not in text and text.startswith("# Project\n\nprose before\n") and "prose after" in text
    assert "python -m ultradino_monai.experiments report" in text
    assert text.count(begin) == 1 and text.count(end) == 1
    with Image.open(spec.results_dir / "report" / "paired_differences.png") as image:
        assert image.format == "PNG" and image.size[1] > 200


def test_the_readme_results_blocks_are_the_generated_ones():
    """README.md holds the demo and GPU blocks (``report --readme`` replaces them), no verdict word outside them."""
    text = (REPO / "README.md").read_text()
    markers = [(m.start(), m.group(0).split(":")[1].split()[0], m.group(1)) for m in re.finditer(BLOCK_PATTERN, text)]
    names = [name for _, kind, name in markers if kind == "begin"]
    assert sorted(names) == ["demo", "gpu"]
    assert [kind for _, kind, _ in markers] == ["begin", "end"] * len(names)  # blocks do not nest or overlap
    outside, position = [], 0
    for (start, _, name), (stop, _, closing) in zip(markers[::2], markers[1::2]):
        assert closing == name
        outside.append(text[position:start])
        position = stop
    outside.append(text[position:])
    for word in ("within noise", "**ahead**", "**behind**"):
        assert all(word not in part for part in outside)


def test_the_block_shows_the_recorded_run_command_and_invents_no_options():
    snapshot = {"spec_file": "/nowhere/exp.yaml", "document": {"results_dir": "/r"}}
    outputs = {"records": 1, "cells": 2, "table1": "T", "budgets": "B", "verdicts": "V"}
    recorded = ["python", "-m", "ultradino_monai.experiments", "run", "exp.yaml", "--gpus", "0,0", "--tasks", "a b"]
    lines = results_snippet(snapshot, outputs, "/r", run_command=recorded).splitlines()
    assert lines[1] == "python -m ultradino_monai.experiments run exp.yaml --gpus 0,0 --tasks 'a b'"
    lines = results_snippet(snapshot, outputs, "/r").splitlines()
    assert lines[1] == "python -m ultradino_monai.experiments run /nowhere/exp.yaml"
    assert lines[2] == "python -m ultradino_monai.experiments report /r --readme README.md"


def test_replacing_one_block_keeps_the_others(tmp_path):
    readme = tmp_path / "README.md"
    demo, gpu = block_markers("demo"), block_markers("gpu")
    readme.write_text(f"intro\n{demo[0]}\nold demo\n{demo[1]}\nmiddle\n{gpu[0]}\nold gpu\n{gpu[1]}\nend\n")
    replace_block(readme, "new gpu table\n", "gpu")
    assert readme.read_text() == (
        f"intro\n{demo[0]}\nold demo\n{demo[1]}\nmiddle\n{gpu[0]}\nnew gpu table\n{gpu[1]}\nend\n"
    )
    with pytest.raises(ValueError, match="needs exactly one"):
        replace_block(readme, "x", "paper")
    assert "new gpu table" in readme.read_text()


@pytest.mark.parametrize(
    "steps, schedule",
    [(200, (8, 25)), (60, (3, 20)), (7, (1, 7)), (1, (1, 1)), (2503, (101, 25)), (101, (5, 25)), (2000, (80, 25))],
)
def test_nnunet_schedule_splits_steps_into_epochs(steps, schedule):
    from ultradino_monai.experiments.budget import nnunet_schedule

    assert nnunet_schedule(steps) == schedule
    epochs, per_epoch = schedule
    # exact unless steps has no divisor that keeps the epochs at most 100 (then rounded up by < 25 steps)
    assert 0 <= epochs * per_epoch - steps < 25 and per_epoch <= 25


def test_matched_budget_gives_nnunet_the_vit_steps_x_batch(tiny, tmp_path):
    document = _document(tiny, tmp_path / "results")
    document["backbones"]["unet"] = {"kind": "nnunet", "budget": "matched", "device": "cpu"}
    document["tasks"]["full"]["overrides"] = {"max_iterations": 60, "batch_size": 4}
    document["tasks"]["label_eff"]["budget"] = {"match": "wall_clock", "nnunet_steps": 50, "note": "measured"}
    spec = parse_spec(document)
    prepare_datasets(spec)
    jobs = grid_plan.plan_jobs(spec)
    trainers = {}
    for job in jobs:
        if job.kind == "cell" and job.backbone == "unet":
            argv = job.description["stages"][0]["argv"]
            trainers.setdefault(job.task, set()).add(argv[argv.index("--trainer") + 1])
    # full: 60 steps x batch 4 = 3 epochs x 20; label_eff: wall-clock, 50 steps at the bundle's batch 8
    assert trainers == {
        "full": {"nnUNetTrainer_UltraDINOBudget_3x20_b4"},
        "label_eff": {"nnUNetTrainer_UltraDINOBudget_2x25_b8"},
    }
    wall = grid_plan.arm_budgets(spec, spec.tasks["label_eff"])
    assert wall["matched_by"] == "wall-clock (measured)"
    assert wall["arms"]["pre"] == "200 steps × batch 8" and wall["arms"]["unet"].startswith("50 steps × batch 8")
    budget = grid_plan.arm_budgets(spec, spec.tasks["full"])
    assert budget["matched_by"] == "steps x batch"
    assert budget["arms"]["pre"] == "60 steps × batch 4"
    assert budget["arms"]["unet"] == "60 steps × batch 4 (3 epochs × 20, nnUNetTrainer_UltraDINOBudget_3x20_b4)"
    assert grid_plan.arm_budgets(spec, spec.tasks["ft"]) == {
        "matched_by": "recipe",
        "arms": {"pre": "6 epochs × batch 16", "rnd": "6 epochs × batch 16"},
    }
    # a ViT arm that trains longer than the others breaks the match, and the report says so
    document["backbones"]["pre"]["overrides"] = {"segmentation": {"max_iterations": 80}}
    assert grid_plan.arm_budgets(parse_spec(document), spec.tasks["full"])["matched_by"] == "none"
    with pytest.raises(SpecError, match=r"match 'wall_clock' needs nnunet_steps"):
        document["tasks"]["full"]["budget"] = {"match": "wall_clock"}
        parse_spec(document)
    document["tasks"]["full"].pop("budget")
    with pytest.raises(SpecError, match="budget must be 'matched'"):
        parse_spec({**document, "backbones": {**document["backbones"], "unet": {"kind": "nnunet", "budget": 3}}})


# ------------------------------------------------------------------- slow: kill + rerun
@pytest.mark.slow
def test_killing_the_runner_and_rerunning_finishes_only_the_remaining_cells(tiny, tmp_path):
    """Four real linear-probe cells (tiny ViT, 32 px, 1 epoch) on one worker: SIGKILL the runner
    itself after the first result, check that its cell processes die with it, rerun, and check that
    the finished cell is not run again (same file, same mtime)."""
    document = _document(tiny, tmp_path / "results")
    document["tasks"] = {
        "lp": {
            "kind": "classification_linear_probe",
            "dataset": "planes",
            "splits": "full_seed*",
            "seeds": [0, 1],
            "overrides": {"image_size": 32, "epochs": 1, "warmup_epochs": 0, "batch_size": 8},
        }
    }
    document["backbones"] = {"pre": document["backbones"]["pre"]}
    document.pop("report")
    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump(document))
    command = [sys.executable, "-m", "ultradino_monai.experiments", "run", str(path), "--workers", "1"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    results = tmp_path / "results" / "lp" / "pre"
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    status_path = tmp_path / "results" / "status.json"

    def second_cell_running() -> bool:
        if not list(results.glob("*/result.json")) or not status_path.is_file():
            return False
        jobs = json.loads(status_path.read_text())["jobs"]
        return any(
            entry["state"] == "running" and not (results / job.split("/")[-1] / "result.json").is_file()
            for job, entry in jobs.items()
        )

    deadline = time.monotonic() + 600
    while not second_cell_running():  # one cell finished, the next one is in flight
        assert process.poll() is None, process.stdout.read()
        assert time.monotonic() < deadline
        time.sleep(0.2)
    time.sleep(2)  # let the in-flight cell start its bundle process
    process.send_signal(signal.SIGKILL)
    process.wait()
    first = list(results.glob("*/result.json"))
    assert len(first) == 1
    mtimes = {p: p.stat().st_mtime_ns for p in first}
    status = json.loads((tmp_path / "results" / "status.json").read_text())
    running = [entry["pid"] for entry in status["jobs"].values() if entry["state"] == "running"]
    time.sleep(5)  # the cell's watchdog notices the dead runner within about a second
    for pid in running:
        with pytest.raises(ProcessLookupError):
            os.killpg(pid, 0)
    assert not list(results.glob("*/result.json"))[1:], "a killed cell must not finish on its own"

    rerun = subprocess.run(command, env=env, capture_output=True, text=True, timeout=900)
    assert rerun.returncode == 0, rerun.stdout[-3000:] + rerun.stderr[-3000:]
    assert "1 cell(s) already have results" in rerun.stderr + rerun.stdout
    assert "4 cell(s): 1 already done, 3 run now, 0 failed" in rerun.stdout
    assert len(list(results.glob("*/result.json"))) == 4
    assert {p: p.stat().st_mtime_ns for p in first} == mtimes
    assert list((tmp_path / "results" / "_attempts").rglob("cell.log"))  # the interrupted attempt's log is kept
