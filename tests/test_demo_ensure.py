"""The one way to the shared demo folder: ``data_prep.demo.ensure_demo`` and friends (locked, seed 0, idempotent)."""

import fcntl
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from data_prep import demo

REPO = Path(__file__).resolve().parents[1]


def _mtimes(root: Path) -> dict[str, int]:
    return {p.relative_to(root).as_posix(): p.stat().st_mtime_ns for p in sorted(root.rglob("*")) if p.is_file()}


def test_bundle_hook_makes_the_demo_once_with_the_demo_seed(tmp_path):
    """A first bundle run makes the demo with seed 0; a later one (another part, any training seed) reuses it."""
    root = tmp_path / "demo"
    assert demo.prepare_demo_dataset(root / "planes", root, scale="tiny") == str(root / "planes")
    marker = json.loads((root / demo.MARKER).read_text())
    assert (marker["seed"], marker["scale"]) == (demo.DEMO_SEED, "tiny") == (0, "tiny")
    assert (root / "planes" / "datalist.json").is_file()
    before = _mtimes(root)
    assert demo.prepare_demo_dataset(root / "fass", root, scale="tiny") == str(root / "fass")
    assert demo.ensure_demo(root, scale="tiny")["regenerated"] is False
    assert _mtimes(root) == before


def test_bundle_hook_uses_an_existing_demo_datalist_as_it_is(tmp_path):
    """As before: a demo part whose datalist exists (here made with seed 3) is read, not regenerated."""
    root = tmp_path / "demo"
    demo.generate_demo(root, seed=3, scale="tiny")
    before = _mtimes(root)
    demo.prepare_demo_dataset(root / "planes", root, scale="tiny")
    assert _mtimes(root) == before and json.loads((root / demo.MARKER).read_text())["seed"] == 3


def test_bundle_hook_leaves_other_datasets_alone(tmp_path):
    real = tmp_path / "fetal_planes"
    assert demo.prepare_demo_dataset(real, tmp_path / "demo", scale="tiny") == str(real)
    assert not (tmp_path / "demo").exists() and not real.exists()


def _blocked_on(path: Path) -> set[int]:
    """PIDs of processes waiting for an ``flock`` on ``path``: the ``->`` rows of Linux's /proc/locks."""
    info = path.stat()
    inode = f"{os.major(info.st_dev):02x}:{os.minor(info.st_dev):02x}:{info.st_ino}"
    waiting = set()
    for line in Path("/proc/locks").read_text().splitlines():
        fields = line.split()
        if len(fields) > 6 and fields[1] == "->" and fields[2] == "FLOCK" and fields[6] == inode:
            waiting.add(int(fields[5]))
    return waiting


def test_command_line_and_ingested_demo_wait_for_the_lock(tmp_path):
    """Runs sharing one demo folder never generate into it together: both wait for the holder of the lock.

    The wait is observed directly, not guessed from timing: while the test holds the lock, the kernel's
    lock table (/proc/locks) must list both processes as blocked on the lock file, and neither may have
    written the demo. A process that ignored the lock would never show up there and would finish instead.
    """
    root = tmp_path / "demo"
    root.mkdir()
    ingest = (
        "import sys; from data_prep.demo import ensure_ingested_demo; "
        "print(ensure_ingested_demo(sys.argv[1], scale='tiny'))"
    )
    with open(root / demo.LOCK_FILE, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        waiting = [
            subprocess.Popen(
                [sys.executable, "-m", "data_prep.demo", str(root), "--scale", "tiny"],
                cwd=REPO,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            ),
            subprocess.Popen(
                [sys.executable, "-c", ingest, str(root)],
                cwd=REPO,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            ),
        ]
        try:
            pids = {process.pid for process in waiting}
            deadline = time.monotonic() + 240  # the children import torch/MONAI before they reach the lock
            while not pids <= _blocked_on(root / demo.LOCK_FILE):
                finished = [process.args for process in waiting if process.poll() is not None]
                assert not finished, f"{finished} finished although the test held the lock"
                assert time.monotonic() < deadline, "the demo processes never blocked on the lock file"
                time.sleep(0.1)
            assert not (root / demo.MARKER).exists() and [process.poll() for process in waiting] == [None, None]
        except BaseException:
            for process in waiting:
                process.kill()
                process.communicate()
            raise
    (cli_out, cli_err), (ingest_out, ingest_err) = [process.communicate(timeout=300) for process in waiting]
    assert waiting[0].returncode == 0, cli_err[-2000:]
    assert waiting[1].returncode == 0, ingest_err[-2000:]
    assert json.loads(cli_out)["seed"] == 0
    assert ingest_out.strip() == str(root / "ingested" / "datalist.json")
    assert (root / "ingested" / "datalist.json").is_file()
    assert (root / "demo_secret.key").read_text() == demo.DEMO_SECRET


def test_experiment_runner_reports_a_failing_demo_command(tmp_path):
    """The runner calls ``python -m data_prep.demo`` as a command; its failure names the command and its output."""
    from ultradino_monai.experiments.prepare import make_demo_data
    from ultradino_monai.experiments.spec import SpecError

    (tmp_path / "file").write_text("not a folder")
    with pytest.raises(SpecError, match=r"data_prep\.demo .*file.*failed") as error:
        make_demo_data(tmp_path / "file")
    assert "NotADirectoryError" in str(error.value)
