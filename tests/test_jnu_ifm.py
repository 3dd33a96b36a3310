"""JNU-IFM converter on a tiny tree in the released layout (video folders with image / mask / mask_enhance)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from data_prep.convert_common import CountMismatchError
from data_prep.jnu_ifm import convert_jnu_ifm, group_videos_by_time, main, remap_mask

H, W = 6, 8
# 7 videos -> 5 patients by the heuristic: the first two are 15 min apart, the 3rd 55 min after
# the 2nd (start to start), the 4th is 3 h later the same day, then two more days.
VIDEOS = [
    "20190909T101500",
    "20190909T103000",
    "20190909T112500",
    "20190909T142500",
    "20190910T090000",
    "20190911T090000",
    "20190911T093000",
]
EXPECTED_PATIENT = {
    "20190909T101500": "JNU001",
    "20190909T103000": "JNU001",
    "20190909T112500": "JNU001",
    "20190909T142500": "JNU002",
    "20190910T090000": "JNU003",
    "20190911T090000": "JNU004",
    "20190911T093000": "JNU004",
}
FRAMES_PER_VIDEO = 3


def _mask(kind: str) -> np.ndarray:
    mask = np.zeros((H, W), np.uint8)
    if kind in ("both", "sp_only"):
        mask[4:6, 0:3] = 7
    if kind in ("both", "head_only"):
        mask[0:3, 3:8] = 8
    return mask


def _save(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def _build(root: Path, bad_value: bool = False) -> dict:
    """Write the release; return what the converter should find."""
    rng = np.random.default_rng(0)
    images: dict[str, np.ndarray] = {}
    for v, video in enumerate(VIDEOS):
        folder = root / "JNU-IFM" / video
        rows = ["frame_id,frame_label"]
        for f in range(FRAMES_PER_VIDEO):
            stem = f"{video}_{f:04d}"
            image = rng.integers(0, 256, size=(H, W), dtype=np.uint8)
            kind = "both"
            if v == 1 and f == 2:
                kind = "sp_only"  # no head -> dropped
            if v == 3 and f == 0:
                kind = "neither"
            mask = _mask(kind)
            if bad_value and v == 2 and f == 1:
                mask[0, 0] = 9
            _save(folder / "image" / f"{stem}.png", image)
            _save(folder / "mask" / f"{stem}_mask.png", mask)
            if not (v == 0 and f == 1):  # one frame lacks its mask_enhance rendering
                colour = np.zeros((H, W, 3), np.uint8)
                colour[mask == 7] = (255, 0, 0)
                colour[mask == 8] = (0, 255, 0)
                _save(folder / "mask_enhance" / f"{stem}_mask.png", colour)
            rows.append(f"{f:04d},{6 if kind == 'both' else 4}")
            images[stem] = image
        (folder / "framelabel.csv").write_text("\n".join(rows) + "\n")
    # an extra image without any mask: outside the intersection
    _save(root / "JNU-IFM" / VIDEOS[0] / "image" / f"{VIDEOS[0]}_0099.png", np.zeros((H, W), np.uint8))
    return images


def _frames_in_intersection() -> int:
    return len(VIDEOS) * FRAMES_PER_VIDEO - 1


SPLIT_OPTIONS = {"fewshot_patients": 1, "fewshot_max_images": 2, "num_draws": 2, "num_seeds": 1}


def _convert(raw: Path, out: Path, **kwargs):
    return convert_jnu_ifm(
        raw,
        out,
        expect_frames=_frames_in_intersection(),
        expect_videos=len(VIDEOS),
        split_options=SPLIT_OPTIONS,
        **kwargs,
    )


def test_remap_hand_checked():
    mask = np.array([[0, 7], [8, 8]], np.uint8)
    assert remap_mask(mask, "m.png").tolist() == [[0, 1], [2, 2]]
    with pytest.raises(ValueError, match=r"m.png: unexpected mask value\(s\) \[3\]"):
        remap_mask(np.array([[0, 3]], np.uint8), "m.png")


def test_heuristic_grouping():
    assert group_videos_by_time(VIDEOS, max_gap_minutes=60) == EXPECTED_PATIENT
    tight = group_videos_by_time(VIDEOS, max_gap_minutes=10)
    assert len(set(tight.values())) == len(VIDEOS)


def test_convert(tmp_path):
    images = _build(tmp_path / "raw")
    out = tmp_path / "out"
    report = _convert(tmp_path / "raw", out)

    datalist = json.loads((out / "datalist.json").read_text())
    assert datalist["labels"] == {"background": 0, "pubic_symphysis": 1, "head": 2}
    items = {item["id"]: item for item in datalist["training"]}
    # dropped: the frame without head and the frame with neither structure
    assert report["counts"]["frames_intersection"] == _frames_in_intersection()
    assert report["counts"]["frames_dropped"] == 2
    assert report["dropped_by_reason"] == {"neither": 1, "no_head": 1}
    assert {d["frame"] for d in report["dropped_frames"]} == {f"{VIDEOS[1]}_0002", f"{VIDEOS[3]}_0000"}
    assert len(items) == _frames_in_intersection() - 2
    assert f"{VIDEOS[0]}_0001" not in items  # missing mask_enhance
    assert report["outside_intersection"]["image"] == [
        f"JNU-IFM/{VIDEOS[0]}/image/{VIDEOS[0]}_0001.png",
        f"JNU-IFM/{VIDEOS[0]}/image/{VIDEOS[0]}_0099.png",
    ]
    assert report["outside_intersection"]["mask"] == [f"JNU-IFM/{VIDEOS[0]}/mask/{VIDEOS[0]}_0001_mask.png"]

    stem = f"{VIDEOS[2]}_0001"
    item = items[stem]
    assert item["patient"] == EXPECTED_PATIENT[VIDEOS[2]] and item["video"] == VIDEOS[2]
    assert item["frame_label"] == 6
    label = np.asarray(Image.open(out / item["label"]))
    expected = np.zeros((H, W), np.uint8)
    expected[4:6, 0:3] = 1
    expected[0:3, 3:8] = 2
    assert np.array_equal(label, expected)
    assert np.array_equal(np.asarray(Image.open(out / item["image"])), images[stem])

    with open(out / "patients.csv") as stream:
        table = {row["video"]: row for row in csv.DictReader(stream)}
    assert {v: row["patient"] for v, row in table.items()} == EXPECTED_PATIENT
    assert table[VIDEOS[3]]["frames_kept"] == str(FRAMES_PER_VIDEO - 1)

    split_docs = [json.loads((out / name).read_text()) for name in report["split_files"] if "index" not in name]
    assert split_docs
    for document in split_docs:
        sections = [{i["patient"] for i in document[s]} for s in ("training", "validation", "test")]
        assert not (sections[0] & sections[1]) and not (sections[0] & sections[2]) and not (sections[1] & sections[2])
        videos_by_section = [{i["video"] for i in document[s]} for s in ("training", "validation", "test")]
        # videos of one patient stay together
        assert {VIDEOS[0], VIDEOS[1]} & videos_by_section[2] in (set(), {VIDEOS[0], VIDEOS[1]})


def test_patient_table_overrides_heuristic(tmp_path):
    _build(tmp_path / "raw")
    table = tmp_path / "patients.csv"
    table.write_text("video,patient\n" + "\n".join(f"{v},X{i // 2}" for i, v in enumerate(VIDEOS)) + "\n")
    report = _convert(tmp_path / "raw", tmp_path / "out", patient_table=table)
    datalist = json.loads((tmp_path / "out" / "datalist.json").read_text())
    assert {i["patient"] for i in datalist["training"] if i["video"] == VIDEOS[2]} == {"X1"}
    assert report["counts"]["patients"] == 4
    table.write_text("video,patient\n" + f"{VIDEOS[0]},A\n")
    with pytest.raises(ValueError, match="no patient for 6 video"):
        _convert(tmp_path / "raw", tmp_path / "out2", patient_table=table)


def test_unexpected_value_names_the_file(tmp_path):
    _build(tmp_path / "raw", bad_value=True)
    with pytest.raises(ValueError, match=rf"{VIDEOS[2]}_0001_mask.png: unexpected mask value\(s\) \[9\]"):
        _convert(tmp_path / "raw", tmp_path / "out")


def test_count_check_and_cli(tmp_path, capsys):
    _build(tmp_path / "raw")
    with pytest.raises(CountMismatchError, match=r"found 20 frames, expected 6224; found 7 videos, expected 78"):
        convert_jnu_ifm(tmp_path / "raw", tmp_path / "out")
    code = main([str(tmp_path / "raw"), str(tmp_path / "cli"), "--no-count-check", "--no-splits"])
    assert code == 0
    assert "18 of 20 frames kept (2 dropped" in capsys.readouterr().out
