"""The shard writer (``python -m data_prep.shards``) and the shard stream the pretrain bundle reads."""

from __future__ import annotations

import hashlib
import io
import json
import os
import subprocess
import sys
import tarfile
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from torch.utils.data import DataLoader

from data_prep.shards import ShardError, main, write_shards
from ultradino_monai.data.shards import ShardIndexError, ShardStream, read_shard_index, reader_shards

REPO = Path(__file__).resolve().parents[1]


def make_ingest_dir(root: Path, patients: int = 6, frames_per_patient=(3, 9, 5, 7, 4, 8), seed: int = 0) -> Path:
    """A folder shaped like a data_prep.ingest output: datalist.json + images/<patient>/<frame>.png."""
    rng = np.random.default_rng(seed)
    items = []
    for p in range(patients):
        for f in range(frames_per_patient[p % len(frames_per_patient)]):
            rel = f"images/P{p:03d}/S0/I{f:03d}_0000.png"
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            pixels = rng.integers(0, 256, size=(24 + 4 * (f % 3), 32), dtype=np.uint8)
            Image.fromarray(pixels).save(root / rel)
            items.append({"image": rel, "patient": f"P{p:03d}", "frame": f})
    # interleave patients in the datalist, as a multi-threaded export could
    items.sort(key=lambda item: (item["frame"], item["patient"]))
    (root / "datalist.json").write_text(json.dumps({"training": items}))
    return root


def tar_members(path: Path) -> list[str]:
    with tarfile.open(path) as archive:
        return archive.getnames()


@pytest.fixture
def ingest_dir(tmp_path):
    return make_ingest_dir(tmp_path / "ingested")


# ------------------------------------------------------------------- writer
def test_index_lists_counts_sizes_and_sha256_of_every_shard(ingest_dir, tmp_path):
    out = tmp_path / "shards"
    write_shards(ingest_dir, out, shard_size_mb=0.01)
    index = json.loads((out / "index.json").read_text())
    datalist = json.loads((ingest_dir / "datalist.json").read_text())["training"]
    assert len(index["shards"]) >= 4
    assert index["num_samples"] == len(datalist) == sum(shard["num_samples"] for shard in index["shards"])
    assert sorted(path.name for path in out.glob("*.tar")) == [shard["name"] for shard in index["shards"]]
    all_keys = []
    for shard in index["shards"]:
        path = out / shard["name"]
        assert shard["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
        assert shard["bytes"] == path.stat().st_size
        names = tar_members(path)
        keys = [name.rsplit(".", 1)[0] for name in names]
        assert len(names) == 2 * shard["num_samples"] and set(Counter(keys).values()) == {2}
        all_keys += sorted(set(keys))
    # every frame once, keyed by its image path without the extension, PNG bytes unchanged
    assert sorted(all_keys) == sorted(item["image"][: -len(".png")] for item in datalist)
    first = datalist[0]
    for shard in index["shards"]:
        with tarfile.open(out / shard["name"]) as archive:
            name = first["image"][: -len(".png")] + ".png"
            if name in archive.getnames():
                assert archive.extractfile(name).read() == (ingest_dir / first["image"]).read_bytes()
                record = json.loads(archive.extractfile(first["image"][: -len(".png")] + ".json").read())
                assert record == first


def test_patients_stay_in_one_shard_when_they_fit(ingest_dir, tmp_path):
    out = tmp_path / "shards"
    write_shards(ingest_dir, out, shard_size_mb=0.05)
    shards_of = {}
    for path in sorted(out.glob("*.tar")):
        for name in tar_members(path):
            shards_of.setdefault(name.split("/")[1], set()).add(path.name)
    assert len(set().union(*shards_of.values())) > 1  # more than one shard ...
    assert all(len(names) == 1 for names in shards_of.values()), shards_of  # ... but no patient split


def test_a_patient_larger_than_a_shard_fills_consecutive_shards(ingest_dir, tmp_path):
    out = tmp_path / "shards"
    write_shards(ingest_dir, out, shard_size_mb=0.004)  # about two frames per shard
    index = read_shard_index(out)
    assert all(shard.num_samples <= 3 for shard in index.shards)
    order = [name.split("/")[1] for path in sorted(out.glob("*.tar")) for name in tar_members(path)]
    # patients appear in contiguous runs, in order of first appearance
    runs = [patient for i, patient in enumerate(order) if i == 0 or order[i - 1] != patient]
    assert len(runs) == len(set(runs)) == 6


def test_same_input_gives_byte_identical_shards(ingest_dir, tmp_path):
    write_shards(ingest_dir, tmp_path / "a", shard_size_mb=0.01)
    write_shards(ingest_dir, tmp_path / "b", shard_size_mb=0.01, workers=2)
    a = {p.name: p.read_bytes() for p in (tmp_path / "a").glob("*.tar")}
    b = {p.name: p.read_bytes() for p in (tmp_path / "b").glob("*.tar")}
    assert a == b and len(a) >= 4


KILL_AFTER = """
import os, signal, sys
import webdataset as wds
from data_prep.shards import main
count = {"n": 0}
original = wds.TarWriter.write
def write_then_die(self, obj):
    count["n"] += 1
    if count["n"] == int(os.environ["KILL_AT_SAMPLE"]):
        os.kill(os.getpid(), signal.SIGKILL)   # mid-shard: its temporary holds some samples
    return original(self, obj)
wds.TarWriter.write = write_then_die
sys.exit(main(sys.argv[1:]))
"""


def test_killed_run_leaves_only_complete_shards_and_resumes_to_identical_output(ingest_dir, tmp_path):
    clean = tmp_path / "clean"
    write_shards(ingest_dir, clean, shard_size_mb=0.01)
    out = tmp_path / "killed"
    env = dict(os.environ, PYTHONPATH=str(REPO), KILL_AT_SAMPLE="12")
    args = [str(ingest_dir), str(out), "--shard-size-mb", "0.01"]
    killed = subprocess.run([sys.executable, "-c", KILL_AFTER, *args], env=env, capture_output=True, text=True)
    assert killed.returncode == -9
    assert not (out / "index.json").exists()
    finished = sorted(p.name for p in out.glob("shard-*.tar"))
    assert finished and len(finished) < len(list(clean.glob("*.tar")))
    for name in finished:  # only complete shards under final names
        assert (out / name).read_bytes() == (clean / name).read_bytes()
    assert list(out.glob(".shard-tmp-*"))  # the killed shard's temporary
    before = {name: (out / name).stat().st_ino for name in finished}

    assert main(args) == 0
    assert not list(out.glob(".shard-tmp-*")) and not (out / ".progress").exists()
    assert {p.name: p.read_bytes() for p in out.glob("*.tar")} == {p.name: p.read_bytes() for p in clean.glob("*.tar")}
    assert json.loads((out / "index.json").read_text()) == json.loads((clean / "index.json").read_text())
    assert all((out / name).stat().st_ino == inode for name, inode in before.items())  # not rewritten


def run_cli(*args):
    return subprocess.run(
        [sys.executable, "-m", "data_prep.shards", *map(str, args)],
        capture_output=True,
        text=True,
        env=dict(os.environ, PYTHONPATH=str(REPO)),
    )


def test_bad_input_gets_one_line_and_exit_2(ingest_dir, tmp_path):
    missing_dir = run_cli(tmp_path / "nowhere", tmp_path / "out1")
    assert missing_dir.returncode == 2 and "INGEST_DIR not found" in missing_dir.stderr
    (tmp_path / "empty").mkdir()
    missing_datalist = run_cli(tmp_path / "empty", tmp_path / "out1")
    assert missing_datalist.returncode == 2
    assert "datalist not found" in missing_datalist.stderr and "Traceback" not in missing_datalist.stderr

    inside = run_cli(ingest_dir, ingest_dir / "shards")
    assert inside.returncode == 2 and "inside INGEST_DIR" in inside.stderr
    assert not (ingest_dir / "shards").exists()

    datalist = json.loads((ingest_dir / "datalist.json").read_text())
    gone = datalist["training"][7]["image"]
    (ingest_dir / gone).unlink()
    missing_png = run_cli(ingest_dir, tmp_path / "out2", "--shard-size-mb", "0.01")
    assert missing_png.returncode == 2
    assert f"training[7] image file not found: {gone}" in missing_png.stderr
    assert missing_png.stderr.count("\n") == 1 and "Traceback" not in missing_png.stderr
    assert not (tmp_path / "out2").exists() or not list((tmp_path / "out2").iterdir())


def test_shards_of_another_input_are_not_overwritten_silently(ingest_dir, tmp_path):
    out = tmp_path / "shards"
    write_shards(ingest_dir, out, shard_size_mb=0.01)
    other = make_ingest_dir(tmp_path / "other", frames_per_patient=(2, 2, 2, 2, 2, 2), seed=1)
    with pytest.raises(ShardError, match="belongs to another input"):
        write_shards(other, out, shard_size_mb=0.01)
    assert read_shard_index(out).num_samples == 36
    write_shards(other, out, shard_size_mb=0.01, overwrite=True)
    assert read_shard_index(out).num_samples == 12
    assert len(list(out.glob("*.tar"))) == len(read_shard_index(out).shards)


def test_index_that_does_not_match_the_files_is_refused(ingest_dir, tmp_path):
    out = tmp_path / "shards"
    write_shards(ingest_dir, out, shard_size_mb=0.01)
    with open(out / "shard-000001.tar", "ab") as stream:
        stream.write(b"\0" * 512)
    with pytest.raises(ShardIndexError, match=r"shard-000001.tar: \d+ bytes, the index says"):
        read_shard_index(out)


# ------------------------------------------------------------------- stream
@pytest.fixture
def shards(ingest_dir, tmp_path):
    out = tmp_path / "shards"
    write_shards(ingest_dir, out, shard_size_mb=0.01)
    return read_shard_index(out)


def keys_of_pass(index, seed, data_pass, reader, readers):
    """What one reader yields in one pass, from the stream itself (not from the plan)."""
    stream = ShardStream(index, seed=seed, shuffle_buffer=8, rank=0, world_size=1)
    in_pass = sum(s.num_samples for s in reader_shards(index, seed, data_pass, reader, readers))
    before = sum(sum(s.num_samples for s in reader_shards(index, seed, p, reader, readers)) for p in range(data_pass))
    samples = stream.raw_samples(reader, readers, skip=before)
    return [next(samples)[1]["__key__"] for _ in range(in_pass)]


def test_readers_of_a_pass_are_disjoint_and_cover_every_frame(shards, ingest_dir):
    datalist = json.loads((ingest_dir / "datalist.json").read_text())["training"]
    every_frame = {item["image"][: -len(".png")] for item in datalist}
    for data_pass in (0, 1, 2):
        per_reader = [keys_of_pass(shards, 5, data_pass, reader, 4) for reader in range(4)]  # 2 ranks x 2 workers
        union = [key for keys in per_reader for key in keys]
        assert len(union) == len(set(union)) == len(every_frame)
        assert set(union) == every_frame
    # the shard order is reshuffled every pass, identically on every rank
    assert reader_shards(shards, 5, 0, 0, 4) != reader_shards(shards, 5, 1, 0, 4)


def test_stream_is_seeded_and_reproducible(shards):
    def first(seed, n=30):
        stream = iter(ShardStream(shards, seed=seed, shuffle_buffer=16, rank=0, world_size=1))
        return [(sample["key"], sample["seed"]) for sample in (next(stream) for _ in range(n))]

    assert first(3) == first(3)
    assert [key for key, _ in first(3)] != [key for key, _ in first(4)]
    # a whole pass, then the next pass in another order
    keys = [key for key, _ in first(3, 2 * shards.num_samples)]
    assert sorted(keys[: shards.num_samples]) == sorted(keys[shards.num_samples :])
    assert keys[: shards.num_samples] != keys[shards.num_samples :]


def collect(ds, workers, batches):
    loader = DataLoader(ds, batch_size=3, num_workers=workers, collate_fn=lambda batch: batch, drop_last=True)
    iterator = iter(loader)
    return [[(s["key"], s["seed"]) for s in next(iterator)] for _ in range(batches)]


@pytest.mark.parametrize("workers", [0, 2])
def test_resume_continues_without_repeats_or_gaps(shards, workers):
    full = collect(ShardStream(shards, batch_size=3, seed=1, shuffle_buffer=8, rank=1, world_size=2), workers, 14)
    resumed_stream = ShardStream(shards, batch_size=3, seed=1, shuffle_buffer=8, rank=1, world_size=2)
    resumed_stream.set_start_iteration(5)
    resumed = collect(resumed_stream, workers, 9)
    assert resumed == full[5:]


def test_workers_and_ranks_read_disjoint_shards(shards):
    """Two ranks x two DataLoader workers: each batch comes from one reader, readers share no shard."""
    seen = {}
    for rank in (0, 1):
        stream = ShardStream(shards, batch_size=1, seed=2, shuffle_buffer=1, rank=rank, world_size=2)
        for i, batch in enumerate(collect(stream, 2, 8)):
            reader = rank * 2 + i % 2  # the DataLoader takes batches from workers round-robin
            seen.setdefault(reader, []).extend(key for key, _ in batch)
    planned = {}
    for reader in range(4):
        for shard in reader_shards(shards, 2, 0, reader, 4):
            planned.setdefault(reader, []).extend(
                dict.fromkeys(n.rsplit(".", 1)[0] for n in tar_members(shards.root / shard.name))
            )
    keys = [set(planned[reader]) for reader in range(4)]
    assert all(keys[a].isdisjoint(keys[b]) for a in range(4) for b in range(a + 1, 4))
    for reader, got in seen.items():  # unshuffled: the reader's shards in order, up to the end of its pass
        n = min(len(got), len(planned[reader]))
        assert got[:n] == planned[reader][:n]


def test_more_readers_than_shards_is_an_error_that_says_what_to_do(shards):
    stream = ShardStream(shards, rank=0, world_size=len(shards.shards))
    with pytest.raises(ShardIndexError, match="each reader needs a shard"):
        stream.check_readers(num_workers=2)


def test_decoded_samples_match_the_png_files(ingest_dir, shards):
    from ultradino_monai.transforms.ultrasound import LoadUltrasoundImaged

    stream = iter(ShardStream(shards, preprocessing=LoadUltrasoundImaged(keys="image"), rank=0, world_size=1))
    for _ in range(5):
        sample = next(stream)
        expected = np.asarray(Image.open(io.BytesIO((ingest_dir / sample["image_path"]).read_bytes())))
        assert np.array_equal(sample["image"][0].numpy(), expected)
