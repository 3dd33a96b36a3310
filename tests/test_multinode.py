"""Two torchrun "nodes" on loopback train on shards exactly like one process on the same global batches.

Two launchers (``torchrun --nnodes 2 --nproc-per-node 1 --rdzv-backend c10d``) meet on 127.0.0.1 and
train the pretrain bundle with gloo over a 4-shard set. The test checks that

* the ranks read disjoint frames whose union is one pass over the set (the bundle's sample ledger);
* the logged losses (means over ranks) equal those of a one-process run on the same global batches
  (``tests/virtual_ranks.py``) within rtol 1e-5 (measured: at most 2e-7). The runs differ only in the order of float
  reductions (DDP's gradient all-reduce, the distributed Sinkhorn-Knopp sums); KoLeo (a
  nearest-neighbour term within each rank's batch) and stochastic depth (noise drawn per rank)
  are switched off because they depend on how the batch is split.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from data_prep.phantom import PLANE_CLASSES, render_plane
from data_prep.shards import write_shards
from ultradino_monai.data.datalist import write_datalist
from ultradino_monai.data.shards import read_shard_index

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "bundles" / "pretrain" / "configs"
TINY = [
    "--backbone_overrides", "{'depth': 2, 'embed_dim': 48, 'num_heads': 2}",
    "--patch_size", "8", "--global_crops_size", "32", "--local_crops_size", "16", "--n_local_crops", "2",
    "--num_prototypes", "64", "--head_hidden_dim", "64", "--head_bottleneck_dim", "32",
    "--global_batch_size", "4", "--epochs", "2", "--epoch_length", "2", "--log_interval", "1",
    "--checkpoint_interval", "100", "--warmup_teacher_temp_epochs", "1", "--knn_datalist", "none",
    "--drop_path_rate", "0.0", "--koleo_loss_weight", "0.0", "--log_samples", "true", "--shuffle_buffer", "4",
]  # fmt: skip


def make_shards(root: Path) -> Path:
    """4 patients x 4 frames; a shard holds one patient, so each of the 2 ranks owns 2 shards = 8 frames."""
    rng = np.random.default_rng(0)
    frames = []
    for index in range(16):
        path = root / "ingested" / "images" / f"P{index // 4}" / f"F{index}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(render_plane(PLANE_CLASSES[index % 6], rng, shape=(72, 96)).image).save(path)
        frames.append({"image": str(path), "patient": f"P{index // 4}"})
    write_datalist(root / "ingested" / "datalist.json", {"training": frames})
    largest_patient = max(
        sum((root / "ingested" / f["image"]).stat().st_size + 3072 for f in frames[p * 4 : p * 4 + 4]) for p in range(4)
    )
    write_shards(root / "ingested", root / "shards", shard_size_mb=1.5 * largest_patient / 2**20)
    assert [shard.num_samples for shard in read_shard_index(root / "shards").shards] == [4, 4, 4, 4]
    return root / "shards"


def bundle_command(configs, shards: Path, out: Path, *extra) -> list[str]:
    config = "[" + ",".join(f"'{CONFIGS / name}'" for name in configs) + "]"
    return ["-m", "monai.bundle", "run", "--config_file", config, "--dataset_dir", str(shards),
            "--bundle_root", str(out), "--run_name", "run", *TINY, *extra]  # fmt: skip


def run_two_launchers(args: list[str], env: dict, timeout: float = 300) -> tuple[list[int], list[str]]:
    """Start two torchrun launchers on one rendezvous; a failure of either stops both at once."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    # The test hosts the rendezvous store, so both launchers are its clients. When a launcher hosts it,
    # the other can lose it at torchrun's exit barrier once the host leaves first, and then waits out the
    # barrier's 300 s (seen once in CI after both ranks had finished training).
    store = torch.distributed.TCPStore("127.0.0.1", port, is_master=True, wait_for_workers=False)
    launcher = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc-per-node", "1",
                "--rdzv-backend", "c10d", "--rdzv-endpoint", f"127.0.0.1:{port}", "--rdzv-id", f"test{port}",
                "--rdzv-conf", "join_timeout=120", "--max-restarts", "0"]  # fmt: skip
    procs = [
        subprocess.Popen(
            [*launcher, *args],
            cwd=REPO,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )  # fmt: skip
        for _ in range(2)
    ]
    deadline = time.monotonic() + timeout
    while any(p.poll() is None for p in procs):
        # a launcher whose peer failed would wait up to 300 s at torchrun's exit barrier
        if any(p.returncode not in (None, 0) for p in procs) or time.monotonic() > deadline:
            for p in procs:
                if p.poll() is None:
                    os.killpg(p.pid, signal.SIGTERM)
            break
        time.sleep(0.2)
    outputs = []
    for p in procs:
        try:
            outputs.append(p.communicate(timeout=30)[0])
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            outputs.append(p.communicate()[0])
    del store
    return [p.returncode for p in procs], outputs


def train_losses(out: Path) -> list[dict]:
    lines = (out / "runs" / "run" / "metrics.jsonl").read_text().splitlines()
    return [record for record in map(json.loads, lines) if record["kind"] == "train"]


def ledger(out: Path, rank: int) -> dict[int, list[str]]:
    lines = (out / "runs" / "run" / "samples" / f"rank{rank}.txt").read_text().splitlines()
    return {int(line.split()[0]): line.split()[1:] for line in lines}


def test_two_nodes_read_disjoint_frames_and_match_one_process(tmp_path):
    shards = make_shards(tmp_path)
    env = dict(os.environ, PYTHONPATH=f"{REPO}{os.pathsep}{REPO / 'tests'}", OMP_NUM_THREADS="1",
               GLOO_SOCKET_IFNAME="lo")  # fmt: skip

    two_nodes = tmp_path / "two_nodes"
    codes, outputs = run_two_launchers(bundle_command(("train.json", "multi_gpu_train.json"), shards, two_nodes), env)
    assert codes == [0, 0], "\n".join(output[-3000:] for output in outputs)
    assert "identical on all 2 ranks" in "".join(outputs)

    one_process = tmp_path / "one_process"
    reference = subprocess.run(
        [sys.executable, *bundle_command(("train.json",), shards, one_process,
                                         "--train#dataloader#_target_", "virtual_ranks.global_batch_loader")],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert reference.returncode == 0, reference.stdout[-3000:] + reference.stderr[-3000:]

    # the ranks read disjoint frames, and together exactly one pass (4 iterations x 2 ranks x 2 frames)
    rank0, rank1 = ledger(two_nodes, 0), ledger(two_nodes, 1)
    seen0 = [key for keys in rank0.values() for key in keys]
    seen1 = [key for keys in rank1.values() for key in keys]
    assert len(seen0) == len(seen1) == 8
    assert set(seen0).isdisjoint(seen1)
    assert sorted(seen0 + seen1) == sorted(f"images/P{i // 4}/F{i}" for i in range(16))
    # the reference trained on the same global batches ...
    joined = ledger(one_process, 0)
    assert all(joined[i] == rank0[i] + rank1[i] for i in range(1, 5))
    # ... and logged the same losses
    distributed, single = train_losses(two_nodes), train_losses(one_process)
    assert [r["iteration"] for r in distributed] == [r["iteration"] for r in single] == [1, 2, 3, 4]
    for name in ("loss", "dino_loss", "ibot_loss"):
        a = np.array([r[name] for r in distributed])
        b = np.array([r[name] for r in single])
        np.testing.assert_allclose(a, b, rtol=1e-5, err_msg=name)
    # the losses moved: a run that ignored its data or never stepped would not match by accident
    assert len({round(r["loss"], 6) for r in single}) == 4
