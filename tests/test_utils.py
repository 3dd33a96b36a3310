"""Shared helpers: atomic writers (permissions, failure, temporaries), file hashes, rank and unwrapping."""

from __future__ import annotations

import hashlib
import os
import stat

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from data_prep.ingest.atomic import TEMP_PREFIX, sweep_temporaries
from ultradino_monai.utils.distributed import get_rank, get_world_size, is_main_process, unwrap_model
from ultradino_monai.utils.files import (
    atomic_write,
    sha256_file,
    write_bytes_atomic,
    write_json_atomic,
    write_png_atomic,
)


def test_atomic_write_gives_open_permissions_and_leaves_no_temporary(tmp_path):
    umask = os.umask(0)
    os.umask(umask)
    target = write_json_atomic(tmp_path / "sub" / "doc.json", {"a": 1})
    assert target.read_text() == '{\n  "a": 1\n}\n'
    # what open() gives a new file (0o644 under the usual 0o022), not mkstemp's owner-only 0o600
    assert stat.S_IMODE(target.stat().st_mode) == 0o666 & ~umask
    assert sorted(p.name for p in target.parent.iterdir()) == ["doc.json"]


def test_a_failed_write_keeps_the_old_file_and_removes_its_temporary(tmp_path):
    target = tmp_path / "result.bin"
    target.write_bytes(b"old")
    seen = []

    def fail(temporary):
        temporary.write_bytes(b"half")
        seen.append(temporary.name)
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        atomic_write(target, fail)
    assert target.read_bytes() == b"old"
    assert seen[0].startswith(".result.bin.") and seen[0].endswith(".tmp")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["result.bin"]


def test_a_prefixed_temporary_left_by_a_kill_is_swept(tmp_path):
    leftovers = []

    def killed(temporary):
        leftovers.append(temporary)
        raise KeyboardInterrupt  # the temporary is removed on any exception ...

    with pytest.raises(KeyboardInterrupt):
        atomic_write(tmp_path / "frame.png", killed, prefix=TEMP_PREFIX)
    assert leftovers[0].name.startswith(TEMP_PREFIX) and not leftovers[0].exists()
    # ... but not on kill -9: simulate one and check the ingest sweep recognises the name
    leftovers[0].write_bytes(b"partial")
    write_bytes_atomic(tmp_path / "kept.bin", b"data", prefix=TEMP_PREFIX)
    assert sweep_temporaries(tmp_path) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["kept.bin"]


def test_png_writer_round_trips_and_refuses_ambiguous_arrays(tmp_path):
    grey = (np.arange(48 * 40) % 251).astype(np.uint8).reshape(48, 40)
    fast = write_png_atomic(tmp_path / "fast.png", grey, compress_level=1)
    small = write_png_atomic(tmp_path / "small.png", grey)
    for path in (fast, small):
        with Image.open(path) as image:
            assert image.mode == "L"
            np.testing.assert_array_equal(np.asarray(image), grey)
    rgb = np.stack([grey, grey // 2, 255 - grey], axis=-1)
    with Image.open(write_png_atomic(tmp_path / "rgb.png", rgb)) as image:
        np.testing.assert_array_equal(np.asarray(image), rgb)
    for bad in (grey.astype(np.float32), grey.astype(np.int64), rgb[..., :2], grey[None]):
        with pytest.raises(ValueError, match="write_png_atomic expects"):
            write_png_atomic(tmp_path / "bad.png", bad)
    assert not (tmp_path / "bad.png").exists()


def test_sha256_file_reads_past_its_block_size(tmp_path):
    data = bytes(range(256)) * (5 * 4096 + 7)  # 5 MiB + 1.75 KiB: several 1 MiB blocks and a partial one
    path = tmp_path / "blob"
    path.write_bytes(data)
    assert sha256_file(path) == hashlib.sha256(data).hexdigest()


def test_single_process_rank_and_world():
    assert not torch.distributed.is_initialized()
    assert (get_rank(), get_world_size(), is_main_process()) == (0, 1, True)


def test_unwrap_strips_nested_wrappers_in_any_order():
    model = nn.Linear(3, 2)
    assert unwrap_model(model) is model
    assert unwrap_model(nn.DataParallel(torch.compile(model))) is model
    assert unwrap_model(torch.compile(nn.DataParallel(model))) is model
