"""Classification bundle end to end on the tiny demo planes: fine-tune, evaluate, linear probe, export, inference.

The runs use the bundle's own configs through MONAI's ``ConfigWorkflow`` (and the
``python -m monai.bundle`` CLI for the export and inference), shrunk with overrides
(docs/bundles.md §6): tiny demo data, a 4-block ViT-Ti exported as a
"pretrained" backbone file, 32 px inputs, a couple of epochs.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from ignite.engine import Events
from monai.bundle import ConfigWorkflow, ckpt_export, onnx_export, verify_metadata, verify_net_in_out
from PIL import Image

from ultradino_monai.data.datalist import load_datalist
from ultradino_monai.engines.classification import (
    classifier_from_sidecar,
    decode_dicom_frame,
    inference_transforms,
    load_task_backbone,
    read_model_sidecar,
)
from ultradino_monai.evaluation.aggregate import validate_record
from ultradino_monai.evaluation.linear_probe import head_grid
from ultradino_monai.evaluation.metrics import macro_f1
from ultradino_monai.networks.checkpoints import CheckpointError, load_backbone, save_backbone
from ultradino_monai.networks.vit import build_vit
from ultradino_monai.utils.files import sha256_file

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "bundles" / "classification" / "configs"
META = str(CONFIGS / "metadata.json")
SIZE = 32
CLASSES = ["Other", "Maternal cervix", "Fetal abdomen", "Fetal brain", "Fetal femur", "Fetal thorax"]


def run_workflow(configs: list[str], overrides: dict, workflow_type: str = "train") -> ConfigWorkflow:
    workflow = ConfigWorkflow(
        config_file=[str(CONFIGS / name) for name in configs],
        meta_file=META,
        logging_file=False,
        workflow_type=workflow_type,
        **overrides,
    )
    workflow.initialize()
    return workflow


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from data_prep.demo import generate_demo

    root = tmp_path_factory.mktemp("classification")
    generate_demo(root / "demo", seed=0, scale="tiny")
    torch.manual_seed(0)
    save_backbone(build_vit("vit_tiny", depth=4, img_size=SIZE), root / "backbone.pt")
    overrides = {
        "bundle_root": str(root / "bundle"),
        "demo_dir": str(root / "demo"),
        "dataset_dir": str(root / "demo" / "planes"),
        "pretrained_ckpt": str(root / "backbone.pt"),
        "if_missing": "error",
        "image_size": SIZE,
        "batch_size": 4,
    }
    return root, overrides


@pytest.fixture(scope="module")
def finetuned(setup):
    root, overrides = setup
    train = run_workflow(["train.json"], {**overrides, "epochs": 2})
    assert train.check_properties() == []
    val_history: list[float] = []
    train.parser.get_parsed_content("validate#evaluator").add_event_handler(
        Events.EPOCH_COMPLETED, lambda engine: val_history.append(engine.state.metrics["val_macro_f1"])
    )
    train.run()
    train.finalize()
    evaluate = run_workflow(["train.json", "evaluate.json"], overrides)
    evaluate.run()
    evaluate.finalize()
    models = root / "bundle" / "models"
    return root, overrides, models, val_history


def _model(models: Path) -> torch.nn.Module:
    network = classifier_from_sidecar(models / "model.json")
    network.load_state_dict(torch.load(models / "model.pt", map_location="cpu", weights_only=True))
    return network.eval()


def test_metadata_and_network_io(setup):
    root, overrides = setup
    verify_metadata(meta_file=META, filepath=str(REPO / "bundles" / "meta_schema.json"))
    verify_net_in_out(
        "network_def",
        meta_file=META,
        config_file=str(CONFIGS / "train.json"),
        device="cpu",
        n=2,
        **{k: v for k, v in overrides.items() if k != "batch_size"},
    )


def test_missing_backbone_is_an_error_unless_random_init_is_asked_for(tmp_path):
    with pytest.raises(CheckpointError, match="Run the pretrain bundle first"):
        load_task_backbone(tmp_path / "absent.pt", img_size=SIZE)
    loaded = load_task_backbone(
        tmp_path / "absent.pt", img_size=SIZE, if_missing="random_init", random_init={"arch": "vit_tiny", "depth": 2}
    )
    assert loaded.source == "scratch" and loaded.model.n_blocks == 2 and loaded.model.num_register_tokens == 4


def test_finetune_then_evaluate_writes_a_result_record(finetuned):
    root, overrides, models, val_history = finetuned
    for name in ("model.pt", "model_final.pt", "model.json"):
        assert (models / name).is_file()
    sidecar = read_model_sidecar(models / "model.json")
    assert sidecar["classes"] == CLASSES and sidecar["spatial_size"] == [SIZE, SIZE]
    assert sidecar["normalization"] == "fus" and sidecar["backbone"]["depth"] == 4
    # model.pt is the epoch with the HIGHEST validation macro F1 (quirk (b) fixed), model_final.pt the last
    assert len(val_history) == 2
    transforms = inference_transforms(sidecar)
    val_items = load_datalist(Path(overrides["dataset_dir"]) / "datalist.json", "validation")
    val_labels = np.asarray([item["label"] for item in val_items])
    for weights, expected_f1 in (("model.pt", max(val_history)), ("model_final.pt", val_history[-1])):
        network = classifier_from_sidecar(models / "model.json")
        network.load_state_dict(torch.load(models / weights, map_location="cpu", weights_only=True))
        network.eval()
        with torch.no_grad():
            predicted = torch.cat(
                [network(transforms({"image": i["image"]})["image"][None]) for i in val_items]
            ).argmax(-1)
        assert macro_f1(predicted.numpy(), val_labels, 6) == pytest.approx(expected_f1, abs=1e-9)

    record = json.loads((root / "bundle" / "runs" / "finetune_demo" / "result.json").read_text())
    validate_record(record)
    assert record["task"] == "classification_finetune" and record["section"] == "test"
    assert record["checkpoint_sha256"] == sha256_file(root / "backbone.pt") and record["method"] == "UltraDINO"
    assert record["budget"] == "demo" and record["seed"] == 0
    assert set(record["metrics"]["f1_per_class"]) == set(CLASSES)
    matrix = np.asarray(record["metrics"]["confusion_matrix"])
    test_items = load_datalist(Path(overrides["dataset_dir"]) / "datalist.json", "test")
    assert matrix.shape == (6, 6) and matrix.sum() == len(test_items)
    with Image.open(root / "bundle" / "runs" / "finetune_demo" / record["confusion_matrix_png"]) as png:
        assert png.format == "PNG" and png.size[0] > 300

    # the record's numbers are what the saved model predicts on the preprocessed test images
    network = _model(models)
    with torch.no_grad():
        logits = torch.cat([network(transforms({"image": item["image"]})["image"][None]) for item in test_items])
    predictions = logits.argmax(-1).numpy()
    labels = np.asarray([item["label"] for item in test_items])
    assert record["metrics"]["accuracy"] == pytest.approx(float((predictions == labels).mean()))
    expected = np.zeros((6, 6), dtype=int)
    np.add.at(expected, (labels, predictions), 1)
    assert np.array_equal(matrix, expected)


def test_linear_probe_bundle_selects_a_head_and_keeps_the_backbone(setup):
    root, overrides = setup
    workflow = run_workflow(["linear_probe.json"], {**overrides, "epochs": 3, "warmup_epochs": 1})
    backbone = workflow.parser.get_parsed_content("backbone").model
    workflow.run()
    workflow.finalize()
    reference = load_backbone(overrides["pretrained_ckpt"], img_size=SIZE).model.state_dict()
    after = backbone.state_dict()
    assert all(torch.equal(reference[k], after[k]) for k in reference)
    out = root / "bundle" / "runs" / "linear_probe_demo"
    record = json.loads((out / "result.json").read_text())
    validate_record(record)
    assert record["task"] == "classification_linear_probe" and record["num_heads"] == 52
    heads = json.loads((out / "heads_val_accuracy.json").read_text())
    names = [spec.name for spec in head_grid()]
    assert set(heads["accuracy"]) == set(names) and heads["best_head"] == record["best_head"]["name"]
    best = max(heads["accuracy"][n] for n in names)
    first_best = next(n for n in names if heads["accuracy"][n] == best)
    assert record["best_head"]["name"] == first_best and record["best_head"]["val_accuracy"] == best
    assert record["settings"]["feature_cache"] is True
    caches = sorted(p.name.split("-")[0] for p in (root / "bundle" / "runs" / "feature_cache").glob("*.pt"))
    assert caches == ["test", "training", "validation"]


def _cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    result = subprocess.run(
        [sys.executable, "-m", "monai.bundle", *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def test_torchscript_and_onnx_exports_match_eager(finetuned, tmp_path):
    import onnxruntime

    root, overrides, models, _ = finetuned
    # the functions behind `python -m monai.bundle ckpt_export / onnx_export` (docs/README.md has the commands)
    common = {
        "ckpt_file": str(models / "model.pt"),
        "meta_file": META,
        "config_file": str(CONFIGS / "inference.json"),
        "bundle_root": overrides["bundle_root"],
        "use_trace": True,
        "input_shape": [1, 1, SIZE, SIZE],
    }
    ckpt_export("network_def", filepath=str(tmp_path / "model.ts"), **common)
    onnx_export(
        "network_def",
        filepath=str(tmp_path / "model.onnx"),
        **common,
        converter_kwargs={"dynamo": False, "input_names": ["image"], "output_names": ["pred"]},
    )
    network = _model(models)
    image = torch.randn(1, 1, SIZE, SIZE, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        eager = network(image)
        scripted = torch.jit.load(str(tmp_path / "model.ts"))(image)
    session = onnxruntime.InferenceSession(str(tmp_path / "model.onnx"), providers=["CPUExecutionProvider"])
    onnx_out = session.run(["pred"], {"image": image.numpy()})[0]
    assert eager.shape == (1, 6)
    assert torch.max(torch.abs(scripted - eager)).item() <= 1e-4
    assert np.max(np.abs(onnx_out - eager.numpy())) <= 1e-4


def test_quantize_config_writes_an_int8_model_and_its_agreement_report(finetuned, tmp_path):
    import onnx
    import onnxruntime

    root, overrides, models, _ = finetuned
    model_dir = tmp_path / "models"
    model_dir.mkdir()
    (model_dir / "model.json").write_text((models / "model.json").read_text())
    onnx_export(
        "network_def",
        filepath=str(model_dir / "model.onnx"),
        ckpt_file=str(models / "model.pt"),
        meta_file=META,
        config_file=str(CONFIGS / "inference.json"),
        bundle_root=overrides["bundle_root"],
        use_trace=True,
        input_shape=[1, 1, SIZE, SIZE],
        converter_kwargs={"dynamo": False, "input_names": ["image"], "output_names": ["pred"]},
    )
    check_dir = Path(overrides["demo_dir"]) / "planes" / "images"
    workflow = ConfigWorkflow(
        config_file=str(CONFIGS / "quantize.json"),
        meta_file=META,
        logging_file=False,
        workflow_type="infer",
        bundle_root=overrides["bundle_root"],
        model_dir=str(model_dir),
        demo_dir=overrides["demo_dir"],
        max_check_frames=10,
    )
    workflow.initialize()
    workflow.run()
    int8 = model_dir / "model_int8.onnx"
    assert {node.op_type for node in onnx.load(str(int8)).graph.node} >= {"DynamicQuantizeLinear", "MatMulInteger"}
    report = json.loads((model_dir / "model_int8.json").read_text())
    # the same comparison, by hand: the first 10 check images through both sessions
    sidecar = read_model_sidecar(model_dir / "model.json")
    transforms = inference_transforms(sidecar)
    sessions = [
        onnxruntime.InferenceSession(str(p), providers=["CPUExecutionProvider"])
        for p in (model_dir / "model.onnx", int8)
    ]
    agree, change = [], 0.0
    for path in sorted(check_dir.glob("*.png"))[:10]:
        frame = np.asarray(
            transforms({"image": str(path), "source": path.name, "frame": -1})["image"], dtype=np.float32
        )[None]
        probs = [torch.softmax(torch.from_numpy(s.run(None, {"image": frame})[0]), -1).numpy() for s in sessions]
        agree.append(probs[0].argmax() == probs[1].argmax())
        change = max(change, float(np.abs(probs[0] - probs[1]).max()))
    assert report["frames"] == 10
    assert report["top1_agreement"] == pytest.approx(np.mean(agree))
    assert report["max_abs_probability_change"] == pytest.approx(change, abs=1e-6)
    assert 0 < change < 0.05  # int8 changes the outputs, but only slightly


def test_inference_on_a_folder_of_pngs_and_dicoms(finetuned, tmp_path):
    from phi_fixtures import SyntheticStudy, make_us_dataset

    from data_prep.dicom_synth import write_dataset

    root, overrides, models, _ = finetuned
    folder = tmp_path / "input"
    test_items = load_datalist(Path(overrides["dataset_dir"]) / "datalist.json", "test")[:2]
    for item in test_items:
        (folder / "pngs").mkdir(parents=True, exist_ok=True)
        (folder / "pngs" / Path(item["image"]).name).write_bytes(Path(item["image"]).read_bytes())
    dataset, _ = make_us_dataset(
        SyntheticStudy("CLS1"),
        rows=120,
        columns=160,
        frames=3,
        region=(20, 30, 139, 109),
        banner_height=20,
        photometric="MONOCHROME2",
    )
    write_dataset(folder / "study" / "US0001.dcm", dataset)
    (folder / "notes.txt").write_text("not an image")
    out_csv = tmp_path / "out" / "predictions.csv"
    _cli(
        "run",
        "--config_file",
        str(CONFIGS / "inference.json"),
        "--meta_file",
        META,
        "--bundle_root",
        overrides["bundle_root"],
        "--input_dir",
        str(folder),
        "--output_csv",
        str(out_csv),
    )
    with open(out_csv) as stream:
        rows = list(csv.DictReader(stream))
    assert [(r["source"], r["frame"]) for r in rows] == (
        [(f"pngs/{Path(i['image']).name}", "") for i in sorted(test_items, key=lambda i: Path(i["image"]).name)]
        + [("study/US0001.dcm", str(f)) for f in range(3)]
    )
    network = _model(models)
    transforms = inference_transforms(read_model_sidecar(models / "model.json"))
    for row in rows:
        probabilities = np.asarray([float(row[f"p_{name}"]) for name in CLASSES])
        assert probabilities.sum() == pytest.approx(1.0, abs=1e-4)
        assert row["predicted_class"] == CLASSES[int(probabilities.argmax())]
        if row["frame"] == "":
            source = str(folder / row["source"])
        else:  # the region crop of the ingest decoder removes the 20-row banner above the fan
            frame = decode_dicom_frame(folder / row["source"], int(row["frame"]))
            assert frame.shape == (80, 120)
            source = frame
        with torch.no_grad():
            expected = torch.softmax(network(transforms({"image": source, "frame": -1})["image"][None]), -1)[0]
        assert np.max(np.abs(probabilities - expected.numpy())) <= 1e-4


def test_repeat_driver_runs_the_linear_probe_over_seeds(setup, tmp_path):
    from ultradino_monai.evaluation.repeat import repeat

    root, overrides = setup
    summary = repeat(
        str(CONFIGS / "linear_probe.json"),
        tmp_path / "sweep",
        seeds=[0, 1],
        overrides={**overrides, "epochs": 2, "warmup_epochs": 1},
        meta_file=META,
        in_process=True,
        stop_on_error=True,
    )
    assert not summary.failed and summary.metric == "macro_f1"
    (row,) = summary.rows
    assert row["n"] == 2 and row["task"] == "classification_linear_probe"
    seeds = sorted(json.loads((tmp_path / "sweep" / f"seed{s}" / "result.json").read_text())["seed"] for s in (0, 1))
    assert seeds == [0, 1]


@pytest.mark.slow
def test_pretrained_demo_backbone_beats_random_init_in_the_linear_probe(tmp_path, demo_backbone):
    """The pretrain bundle's demo backbone vs a random init of the same ViT: linear-probe test macro F1 on the
    demo planes. The backbone is the ``demo_backbone`` fixture (tests/conftest.py).
    """
    from data_prep.demo import generate_demo

    demo_dir = REPO / "demo_data"
    generate_demo(demo_dir, seed=0)
    backbone = demo_backbone
    sidecar = json.loads(backbone.with_suffix(".json").read_text())
    common = {
        "bundle_root": str(tmp_path / "classification"),
        "demo_dir": str(demo_dir),
        "dataset_dir": str(demo_dir / "planes"),
        "image_size": int(sidecar["img_size"]),
        "in_chans": int(sidecar["in_chans"]),
    }
    scores = {}
    for name, checkpoint in (("pretrained", str(backbone)), ("random", "none")):
        workflow = run_workflow(
            ["linear_probe.json"],
            {
                **common,
                "run_name": name,
                "pretrained_ckpt": checkpoint,
                "if_missing": "error",
                # the same architecture and initialisation (LayerScale init included) as the pretrained run
                "random_init": {
                    "arch": "vit_small",
                    **{
                        key: sidecar[key]
                        for key in (
                            "embed_dim",
                            "depth",
                            "num_heads",
                            "mlp_ratio",
                            "num_register_tokens",
                            "patch_size",
                            "init_values",
                        )
                    },
                },
            },
        )
        workflow.run()
        workflow.finalize()
        record = json.loads((tmp_path / "classification" / "runs" / name / "result.json").read_text())
        scores[name] = record["metrics"]["macro_f1"]
    print(
        f"linear-probe test macro F1 on the demo planes: pretrained {100 * scores['pretrained']:.1f}, "
        f"random init {100 * scores['random']:.1f}"
    )
    assert scores["pretrained"] - scores["random"] >= 0.15
