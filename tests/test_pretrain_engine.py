"""DinoTrainer: resumability, determinism, NaN guard and sampler semantics on a tiny model."""

from __future__ import annotations

import pytest
import torch
from ignite.engine import Events
from monai.handlers import CheckpointSaver

from ultradino_monai.data.sampling import InfiniteSeededSampler, SeededTransformDataset, mix_seed
from ultradino_monai.engines import pretrain
from ultradino_monai.engines.dino_trainer import DinoTrainer, NonFiniteLossError
from ultradino_monai.engines.handlers import ResumeFromLatest
from ultradino_monai.networks.dino_model import DinoModel
from ultradino_monai.networks.heads import DINOHead
from ultradino_monai.networks.vit import build_vit
from ultradino_monai.optim import build_adamw
from ultradino_monai.ssl import DINOLoss, KoLeoLoss, build_dino_schedules, iBOTPatchLoss

K = 64
BATCH = 4
EPOCH_LENGTH = 3


class RandomCrops:
    """A seeded stand-in for the multi-crop transform: noise crops drawn from the sample seed."""

    def set_random_state(self, seed=None, state=None):
        self.generator = torch.Generator().manual_seed(int(seed))
        return self

    def __call__(self, item):
        g = self.generator
        crops = {f"global_{i}": torch.randn(1, 32, 32, generator=g) + item for i in range(2)}
        crops.update({f"local_{i}": torch.randn(1, 16, 16, generator=g) + item for i in range(2)})
        return crops


class Scalars(torch.utils.data.Dataset):
    def __len__(self):
        return 10

    def __getitem__(self, index):
        return float(index) / 10


def build_trainer(tmp_path, handlers=(), nan_after=None, max_epochs=2):
    pretrain.configure_run(seed=0, deterministic=True)
    backbone = build_vit("vit_tiny", depth=2, embed_dim=32, num_heads=2, patch_size=8, img_size=32, drop_path_rate=0.1)
    student = DinoModel(backbone, DINOHead(32, K, hidden_dim=32, bottleneck_dim=16))
    teacher = pretrain.make_teacher(student)
    optimizer = build_adamw(student, lr=0.0, weight_decay=0.0, layer_decay_rate=0.9, patch_embed_lr_mult=0.2)
    sampler = InfiniteSeededSampler(10, seed=3)
    loader = torch.utils.data.DataLoader(
        SeededTransformDataset(Scalars(), RandomCrops()),
        batch_size=BATCH,
        sampler=sampler,
        collate_fn=pretrain.SampleSeededMaskCollate(n_tokens=16, seed=3),
    )
    schedules = build_dino_schedules(0.004, BATCH, 2, EPOCH_LENGTH, 1, 1e-6, 0.04, 0.4, 0.992, 1.0, 0.07, 0.04, 1, 1)
    trainer = DinoTrainer(
        "cpu",
        max_epochs,
        EPOCH_LENGTH,
        loader,
        student,
        teacher,
        optimizer,
        schedules,
        DINOLoss(K),
        iBOTPatchLoss(K),
        KoLeoLoss(),
        n_local_crops=2,
        train_handlers=list(handlers),
    )
    losses = []
    trainer.add_event_handler(Events.ITERATION_COMPLETED, lambda e: losses.append(e.state.output["loss"]))
    if nan_after is not None:

        def poison(engine):
            if engine.state.iteration == nan_after:
                with torch.no_grad():
                    next(engine.student.dino_head.parameters()).fill_(float("nan"))

        trainer.add_event_handler(Events.ITERATION_COMPLETED, poison)
    return trainer, losses


def checkpoint_dict(trainer):
    return {
        "student": trainer.student,
        "teacher": trainer.teacher,
        "optimizer": trainer.optimizer,
        "dino_loss": trainer.dino_loss,
        "ibot_loss": trainer.ibot_loss,
        "trainer": trainer,
    }


def test_sampler_stream_is_seeded_and_sharded():
    single = InfiniteSeededSampler(7, seed=5, rank=0, world_size=1)
    stream = [next(it) for it in [iter(single)] for _ in range(20)]
    again = list(zip(range(20), iter(InfiniteSeededSampler(7, seed=5, rank=0, world_size=1))))
    assert stream == [pair for _, pair in again]
    # every pass over the data is a permutation
    assert sorted(index for index, _ in stream[:7]) == list(range(7))
    # two ranks interleave the same global stream
    rank0 = iter(InfiniteSeededSampler(7, seed=5, rank=0, world_size=2))
    rank1 = iter(InfiniteSeededSampler(7, seed=5, rank=1, world_size=2))
    interleaved = [pair for _ in range(10) for pair in (next(rank0), next(rank1))]
    assert interleaved == stream
    # resuming skips exactly the consumed samples
    resumed = InfiniteSeededSampler(7, seed=5, rank=0, world_size=1, start=9)
    assert [next(it) for it in [iter(resumed)] for _ in range(5)] == stream[9:14]
    assert mix_seed(1, 2) != mix_seed(2, 1)


def test_two_runs_give_identical_losses(tmp_path):
    first, losses_a = build_trainer(tmp_path)
    first.run()
    second, losses_b = build_trainer(tmp_path)
    second.run()
    assert len(losses_a) == 2 * EPOCH_LENGTH
    assert losses_a == losses_b
    for a, b in zip(first.teacher.state_dict().values(), second.teacher.state_dict().values()):
        assert torch.equal(a, b)


def test_resume_matches_uninterrupted_run(tmp_path):
    straight, straight_losses = build_trainer(tmp_path)
    straight.run()

    ckpt_dir = tmp_path / "ckpt"
    interrupted, first_losses = build_trainer(tmp_path, max_epochs=1)
    CheckpointSaver(
        str(ckpt_dir),
        checkpoint_dict(interrupted),
        save_final=True,
        final_filename="checkpoint_3.pt",
        epoch_level=False,
    ).attach(interrupted)
    interrupted.run()
    assert pretrain.latest_checkpoint(ckpt_dir).endswith("checkpoint_3.pt")

    resumed, resumed_losses = build_trainer(tmp_path)
    ResumeFromLatest(ckpt_dir, checkpoint_dict(resumed)).attach(resumed)
    resumed.run()

    assert resumed.state.iteration == 2 * EPOCH_LENGTH
    assert first_losses + resumed_losses == straight_losses
    for name, value in straight.teacher.state_dict().items():
        assert torch.equal(value, resumed.teacher.state_dict()[name]), name


def test_non_finite_loss_names_iteration_and_term(tmp_path):
    trainer, _ = build_trainer(tmp_path, nan_after=2)
    with pytest.raises(NonFiniteLossError, match=r"iteration 3: loss term '(dino_loss|ibot_loss)'"):
        trainer.run()


def test_last_layer_frozen_during_first_epoch_and_teacher_in_eval(tmp_path):
    trainer, _ = build_trainer(tmp_path, max_epochs=1)
    last_layer_before = {n: p.clone() for n, p in trainer.student.dino_head.last_layer.named_parameters()}
    learning = {
        n: p.detach().clone() for n, p in trainer.student.named_parameters() if not n.startswith("dino_head.last_layer")
    }
    trainer.run()
    for name, parameter in trainer.student.dino_head.last_layer.named_parameters():
        assert torch.equal(parameter, last_layer_before[name]), name
    assert not trainer.teacher.training
    assert all(not p.requires_grad for p in trainer.teacher.parameters())
    # The rest did learn in the same epoch: every backbone tensor (mask token included, through the
    # iBOT masks) and the head's MLP moved, so the freeze is confined to the last layer.
    after = dict(trainer.student.named_parameters())
    assert any(name.startswith("backbone.") for name in learning)
    assert [name for name, before in learning.items() if torch.equal(after[name], before)] == []


@pytest.mark.parametrize("value", [None, False, "", "none", "None ", "off", "false", "null"])
def test_optional_path_switches_off(value):
    assert pretrain.optional_path(value) is None


def test_optional_path_keeps_a_path():
    assert pretrain.optional_path(" demo_data/planes/datalist.json ") == "demo_data/planes/datalist.json"
