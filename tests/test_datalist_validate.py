"""The datalist check (ultradino_monai.data.validate), the argument checks and the one-line exit, in process.

Every corruption a hospital data engineer might hand a bundle is applied to a copy of a tiny datalist and must
be refused with a message naming the datalist, the section, the entry index and the file; the bundle-level
contract (exit code 2, no traceback, nothing written) is tests/test_bundle_bad_input.py's.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from data_prep.phantom import PLANE_CLASSES, render_plane
from ultradino_monai.data.datalist import DatalistError, write_datalist
from ultradino_monai.data.validate import check_datalist
from ultradino_monai.engines.config_values import check_count, optional_int, require_dataset_dir
from ultradino_monai.engines.inputs import check_run_inputs
from ultradino_monai.utils.errors import MissingInputError, UserInputError, debug_requested, find_user_error

REPO = Path(__file__).resolve().parents[1]
FASS_LABELS = {"background": 0, "artery": 1, "liver": 2, "stomach": 3, "vein": 4}


def make_segmentation_set(root: Path, n: int = 4, shape=(24, 32)) -> Path:
    """n images + label maps (values 0..4) per section, relative paths, the FASS label mapping."""
    rng = np.random.default_rng(0)
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    sections = {}
    for section in ("training", "validation", "test"):
        items = []
        for index in range(n):
            stem = f"{section}_{index}"
            Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8)).save(root / "images" / f"{stem}.png")
            Image.fromarray(rng.integers(0, 5, shape, dtype=np.uint8)).save(root / "labels" / f"{stem}.png")
            items.append({"image": f"images/{stem}.png", "label": f"labels/{stem}.png", "patient": stem})
        sections[section] = items
    (root / "datalist.json").write_text(json.dumps({"labels": FASS_LABELS, **sections}))
    return root / "datalist.json"


def make_classification_set(root: Path, per_section: int = 6) -> Path:
    rng = np.random.default_rng(0)
    (root / "images").mkdir(parents=True)
    sections = {}
    for section in ("training", "validation", "test"):
        items = []
        for index in range(per_section):
            image = render_plane(PLANE_CLASSES[index % 6], rng, shape=(48, 64)).image
            path = root / "images" / f"{section}_{index}.png"
            Image.fromarray(image).save(path)
            items.append({"image": str(path), "label": index % 6, "patient": f"{section}{index}"})
        sections[section] = items
    write_datalist(root / "datalist.json", sections, classes=list(PLANE_CLASSES))
    return root / "datalist.json"


@pytest.fixture()
def seg(tmp_path):
    return make_segmentation_set(tmp_path / "seg")


@pytest.fixture()
def cls(tmp_path):
    return make_classification_set(tmp_path / "cls")


def edit(path: Path, change) -> None:
    document = json.loads(path.read_text())
    change(document)
    path.write_text(json.dumps(document))


def paint_label(datalist: Path, section: str, index: int, value: int) -> str:
    entry = json.loads(datalist.read_text())[section][index]
    path = datalist.parent / entry["label"]
    array = np.asarray(Image.open(path)).copy()
    array[0, :3] = value
    Image.fromarray(array).save(path)
    return entry["label"]


# --------------------------------------------------------------------------------------- segmentation table
def _missing_file(datalist):
    (datalist.parent / "images" / "training_2.png").unlink()
    return r"training\[2\] image file not found: images/training_2\.png"


def _invalid_json(datalist):
    datalist.write_text('{"labels": {"background": 0,')
    return r"datalist\.json: not valid JSON"


def _empty_section(datalist):
    edit(datalist, lambda d: d.update(training=[]))
    return r"section 'training' is empty"


def _zero_byte_png(datalist):
    (datalist.parent / "labels" / "training_1.png").write_bytes(b"")
    return r"training\[1\] label file is empty \(0 bytes\): labels/training_1\.png"


def _not_an_image(datalist):
    (datalist.parent / "images" / "training_3.png").write_bytes(b"this is not a PNG file")
    return r"training\[3\] image file is not a readable image: images/training_3\.png"


def _size_mismatch(datalist):
    Image.fromarray(np.zeros((20, 32), np.uint8)).save(datalist.parent / "labels" / "training_0.png")
    return r"training\[0\] label map is 20x32 but the image is 24x32 .*labels/training_0\.png"


def _label_255(datalist):
    paint_label(datalist, "training", 3, 255)
    return (
        r"datalist\.json: training\[3\] label value 255 not in labels \{0\.\.4\} \(file labels/training_3\.png\); "
        r"pass --ignore_index 255 if it marks ignored pixels"
    )


def _missing_label_key(datalist):
    edit(datalist, lambda d: d["training"][1].pop("label"))
    return r"training\[1\] has no 'label' entry"


def _image_is_a_number(datalist):
    edit(datalist, lambda d: d["training"][2].update(image=123))
    return r"training\[2\] 'image' is 123, not a file path"


def _labels_not_contiguous(datalist):
    edit(datalist, lambda d: d.update(labels={"background": 0, "liver": 2}))
    return r"label indices \[0, 2\] are not the integers 0\.\.1"


def _entry_not_an_object(datalist):
    edit(datalist, lambda d: d["training"].__setitem__(0, "images/training_0.png"))
    return r"training\[0\] is a str, not an object"


@pytest.mark.parametrize(
    "corrupt",
    [
        _missing_file,
        _invalid_json,
        _empty_section,
        _zero_byte_png,
        _not_an_image,
        _size_mismatch,
        _label_255,
        _missing_label_key,
        _image_is_a_number,
        _labels_not_contiguous,
        _entry_not_an_object,
    ],
)
def test_segmentation_datalist_errors_name_the_entry_and_file(seg, corrupt):
    pattern = corrupt(seg)
    with pytest.raises(DatalistError, match=pattern) as caught:
        check_datalist(seg, ["training", "validation"], "segmentation")
    assert isinstance(caught.value, UserInputError) and str(seg) in str(caught.value)


def test_a_clean_segmentation_datalist_passes_with_absolute_paths(seg):
    checked = check_datalist(seg, ["training", "validation", "test"], "segmentation", decode="full")
    assert [len(checked[s]) for s in ("training", "validation", "test")] == [4, 4, 4]
    entry = checked["training"][0]
    assert entry["image"] == str(seg.parent / "images" / "training_0.png") and os.path.isabs(entry["label"])
    assert entry["patient"] == "training_0"


def test_ignore_index_is_allowed_where_asked_and_refused_in_training(seg):
    paint_label(seg, "validation", 1, 255)
    with pytest.raises(DatalistError, match=r"validation\[1\] label value 255 .*pass --ignore_index 255"):
        check_datalist(seg, ["training", "validation"], "segmentation")
    checked = check_datalist(seg, ["training", "validation"], "segmentation", ignore_index=255)
    assert len(checked["validation"]) == 4
    # the bundle allows it in the evaluated section only: a 255 in training is still an error, with its own hint
    check_datalist(seg, ["training", "validation"], "segmentation", ignore_index=255, ignore_sections=["validation"])
    paint_label(seg, "training", 2, 255)
    with pytest.raises(DatalistError, match=r"training\[2\] label value 255 .*applies to evaluated sections only"):
        check_datalist(seg, ["training"], "segmentation", ignore_index=255, ignore_sections=["validation"])
    # another stray value is an error even with an ignore_index
    paint_label(seg, "validation", 0, 7)
    with pytest.raises(DatalistError, match=r"validation\[0\] label value 7 not in labels"):
        check_datalist(seg, ["validation"], "segmentation", ignore_index=255)


def test_the_metric_leaves_ignored_pixels_out_and_rejects_them_without_ignore_index():
    """What ``--ignore_index 255`` does in evaluation: the pixels drop out of the pooled Dice counts."""
    from ultradino_monai.evaluation.metrics import PooledDice

    label = torch.tensor([[[0, 1], [255, 1]]])
    pred = torch.tensor([[[0, 1], [0, 0]]])
    with_ignore = PooledDice(2, ignore_index=255)
    with_ignore.update(pred, label)
    without = PooledDice(2, ignore_index=None)
    with pytest.raises(ValueError, match=r"label values \[255\] outside 0\.\.1"):
        without.update(pred, label)
    # background: pred {0,0,0} (ignored pixel dropped) vs label {0}: 2*1 / (2 + 1); class 1: 2*1 / (1 + 2)
    result = with_ignore.compute()
    assert result["per_class"] == pytest.approx([2 / 3, 2 / 3])


def test_header_check_misses_a_truncated_png_and_full_decode_finds_it(seg):
    path = seg.parent / "images" / "training_1.png"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    check_datalist(seg, ["training"], "segmentation")  # the header is intact
    with pytest.raises(DatalistError, match=r"training\[1\] image file cannot be decoded: images/training_1\.png"):
        check_datalist(seg, ["training"], "segmentation", decode="full")


def test_large_sections_sample_label_values_and_say_so(seg, caplog):
    paint_label(seg, "training", 1, 255)  # indices 0 and 3 are the evenly spaced sample of 2 out of 4
    with caplog.at_level(logging.WARNING, logger="ultradino_monai.data.validate"):
        check_datalist(seg, ["training"], "segmentation", label_value_limit=2)
    assert "label values read in 2 of 4 label maps" in caplog.text
    with pytest.raises(DatalistError, match=r"training\[1\] label value 255"):
        check_datalist(seg, ["training"], "segmentation", label_value_limit=2, decode="full")


def test_decode_none_opens_no_file(seg):
    (seg.parent / "images" / "training_0.png").unlink()
    assert len(check_datalist(seg, ["training"], "segmentation", decode="none")["training"]) == 4
    with pytest.raises(DatalistError, match="image file not found"):
        check_datalist(seg, ["training"], "segmentation", decode="exists")


# ------------------------------------------------------------------------------------- classification table
@pytest.mark.parametrize(
    "label, pattern",
    [
        (2.7, r"training\[1\] label 2\.7 is not an integer class index 0\.\.5 or a class name"),
        (True, r"training\[1\] label True is not an integer class index"),
        ("2", r"training\[1\] label '2' is not one of the classes \['Other'"),
        (9, r"training\[1\] label 9 is not a class index 0\.\.5 of \['Other'"),
        (-1, r"training\[1\] label -1 is not a class index 0\.\.5"),
        ("Fetal heart", r"training\[1\] label 'Fetal heart' is not one of the classes"),
        (None, r"training\[1\] label None is not an integer class index"),
    ],
)
def test_classification_labels_must_be_class_indices_or_names(cls, label, pattern):
    edit(cls, lambda d: d["training"][1].update(label=label))
    with pytest.raises(DatalistError, match=pattern):
        check_datalist(cls, ["training"], "classification", decode="none")


def test_classification_entry_errors(cls):
    edit(cls, lambda d: d["validation"][4].pop("label"))
    with pytest.raises(DatalistError, match=r"validation\[4\] has no 'label' entry \(file .*validation_4\.png\)"):
        check_datalist(cls, ["validation"], "classification")
    edit(cls, lambda d: d["test"][0].update(image=123))
    with pytest.raises(DatalistError, match=r"test\[0\] 'image' is 123, not a file path"):
        check_datalist(cls, ["test"], "classification")
    edit(cls, lambda d: d.pop("classes"))
    with pytest.raises(DatalistError, match="needs a top-level 'classes' list"):
        check_datalist(cls, ["training"], "classification")


def test_class_names_map_to_their_indices(cls):
    edit(cls, lambda d: d["training"][0].update(label="Fetal brain"))
    checked = check_datalist(cls, ["training"], "classification")
    assert checked["training"][0]["label"] == PLANE_CLASSES.index("Fetal brain")
    assert [e["label"] for e in checked["training"][1:]] == [1, 2, 3, 4, 5]


def test_auto_task_and_images_task(cls, seg):
    assert check_datalist(cls, ["training"])["training"][3]["label"] == 3  # auto: 'classes' -> classification
    edit(seg, lambda d: d["training"][0].update(label=None))
    check_datalist(seg, ["training"], "images")  # pretraining reads images only
    (seg.parent / "images" / "training_3.png").write_bytes(b"")
    with pytest.raises(DatalistError, match=r"training\[3\] image file is empty"):
        check_datalist(seg, ["training"], "images")


# ------------------------------------------------------------------------------------------ argument checks
@pytest.mark.parametrize(
    "value, pattern",
    [
        (0, r"--batch_size must be >= 1, got 0"),
        (-3, r"must be >= 1, got -3"),
        (2.5, "must be an integer"),
        (True, "got True"),
    ],
)
def test_counts_must_be_positive_integers(value, pattern):
    with pytest.raises(UserInputError, match=pattern):
        check_count("batch_size", value)
    assert check_count("epochs", 0, minimum=0) == 0


def test_argument_and_file_checks(tmp_path, cls):
    with pytest.raises(UserInputError, match="--dataset_dir is empty"):
        require_dataset_dir("  ")
    assert optional_int("ignore_index", "none") is None and optional_int("ignore_index", "255") == 255
    with pytest.raises(UserInputError, match=r"--ignore_index must be an integer, got 2\.5"):
        optional_int("ignore_index", 2.5)
    with pytest.raises(MissingInputError, match=r"--model_path: file not found: .*absent\.pt"):
        check_run_inputs(cls, "classification", ["training"], files={"model_path": str(tmp_path / "absent.pt")})
    with pytest.raises(UserInputError, match=r"--epochs must be >= 1, got -1"):
        check_run_inputs(cls, "classification", ["training"], counts={"epochs": -1})
    assert check_run_inputs(None, "images", [], files={"pretrained_ckpt": "none"}) is None
    with pytest.raises(UserInputError, match=r"--warmup_iterations \(20\) must be less than --max_iterations \(2\)"):
        check_run_inputs(None, "images", [], less_than={"warmup_iterations": (20, "max_iterations", 2)})
    with pytest.raises(UserInputError, match=r"--warmup_epochs \(7\) must not exceed --epochs \(6\)"):
        check_run_inputs(None, "images", [], at_most={"warmup_epochs": (7, "epochs", 6)})
    check_run_inputs(None, "images", [], less_than={"warmup_iterations": (1, "max_iterations", 2)})


def test_crash_aware_saver_writes_the_final_file_only_on_completion(tmp_path):
    from ignite.engine import Engine, Events

    from ultradino_monai.engines.handlers import CrashAwareCheckpointSaver, latest_checkpoint

    model = torch.nn.Linear(2, 2)

    def run(folder, fail_at):
        engine = Engine(lambda engine, batch: None)

        @engine.on(Events.ITERATION_COMPLETED)
        def maybe_fail(engine):
            if engine.state.iteration == fail_at:
                raise RuntimeError("boom")

        CrashAwareCheckpointSaver(
            save_dir=str(folder),
            save_dict={"model": model},
            save_final=True,
            final_filename="model_final.pt",
            crash_filename="model_crashed.pt",
        ).attach(engine)
        engine.run(range(4), max_epochs=1)

    with pytest.raises(RuntimeError, match="boom"):
        run(tmp_path / "crashed", fail_at=2)
    assert sorted(p.name for p in (tmp_path / "crashed").iterdir()) == ["model_crashed.pt"]
    saved = torch.load(tmp_path / "crashed" / "model_crashed.pt", weights_only=True)
    assert torch.equal(saved["weight"], model.weight.detach())
    run(tmp_path / "done", fail_at=-1)
    assert sorted(p.name for p in (tmp_path / "done").iterdir()) == ["model_final.pt"]

    # a newer crash checkpoint is never resumed from silently
    ckpts = tmp_path / "ckpts"
    ckpts.mkdir()
    for name in ("checkpoint_iteration=4.pt", "checkpoint_final_iteration=8.pt", "crashed_iteration=11.pt"):
        torch.save({}, ckpts / name)
    assert Path(latest_checkpoint(ckpts)).name == "checkpoint_final_iteration=8.pt"


# ------------------------------------------------------------------------------------------ the exit hook
def test_user_errors_are_found_through_monai_style_wrapping():
    try:
        try:
            raise DatalistError("x.json: training[0] image file not found: a.png")
        except DatalistError as error:
            raise RuntimeError("Failed to evaluate ConfigExpression") from error
    except RuntimeError as wrapped:
        assert isinstance(find_user_error(wrapped), DatalistError)
    try:
        try:
            raise UserInputError("inner")
        except UserInputError:
            raise KeyError("during handling")  # noqa: B904 - the implicit __context__ is what is tested
    except KeyError as chained:
        assert str(find_user_error(chained)) == "inner"
    assert find_user_error(RuntimeError("no user error")) is None
    assert debug_requested(["x", "--debug"], {}) and debug_requested(["x"], {"ULTRADINO_DEBUG": "1"})
    assert not debug_requested(["x", "--debug", "false"], {}) and not debug_requested(["x"], {"ULTRADINO_DEBUG": "0"})


SCRIPT = textwrap.dedent(
    """
    import sys
    import ultradino_monai.engines  # installs the hook, as a bundle config's imports do
    from ultradino_monai.utils.errors import UserInputError
    kind = sys.argv[1]
    try:
        if kind == "user":
            raise UserInputError("--batch_size must be >= 1, got 0", hint="pass a positive batch size")
        raise KeyError("an internal bug")
    except Exception as error:
        raise RuntimeError("Failed to evaluate ConfigExpression") from error
    """
)


@pytest.mark.parametrize(
    "kind, extra, env, code, one_line",
    [
        ("user", [], {}, 2, True),
        ("user", ["--debug"], {}, 2, False),
        ("user", [], {"ULTRADINO_DEBUG": "1"}, 2, False),
        ("internal", [], {}, 1, False),
    ],
)
def test_the_exit_hook_prints_one_line_and_exits_2(tmp_path, kind, extra, env, code, one_line):
    script = tmp_path / "script.py"
    script.write_text(SCRIPT)
    environment = {k: v for k, v in os.environ.items() if k != "ULTRADINO_DEBUG"}
    environment.update(PYTHONPATH=str(REPO), **env)
    result = subprocess.run(
        [sys.executable, str(script), kind, *extra], capture_output=True, text=True, env=environment, timeout=120
    )
    assert result.returncode == code, result.stderr
    if one_line:
        assert result.stderr == "error: --batch_size must be >= 1, got 0\nhint: pass a positive batch size\n"
    else:
        assert "Traceback" in result.stderr and "Failed to evaluate" in result.stderr
        # the debug run still ends with the one line; an internal error has none
        assert result.stderr.endswith(
            "error: --batch_size must be >= 1, got 0\nhint: pass a positive batch size\n"
        ) == (kind == "user")


def test_the_experiment_runner_checks_dataset_datalists(seg):
    from ultradino_monai.experiments.prepare import check_dataset_datalist
    from ultradino_monai.experiments.spec import SpecError

    check_dataset_datalist("fass", seg)
    paint_label(seg, "test", 2, 9)
    with pytest.raises(SpecError, match=r"datasets\.fass\.datalist: .*test\[2\] label value 9 not in labels"):
        check_dataset_datalist("fass", seg)
