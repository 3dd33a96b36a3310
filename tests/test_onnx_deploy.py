"""int8 quantisation and frame streaming with ONNX Runtime (ultradino_monai.engines.onnx_deploy)."""

from __future__ import annotations

import json
import os
import stat
import threading
import warnings
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

import ultradino_monai.engines.onnx_deploy as onnx_deploy
from ultradino_monai.engines.onnx_deploy import (
    FrameStream,
    cpu_session,
    prediction_agreement,
    quantize_and_check,
    quantize_int8,
)
from ultradino_monai.networks.classifier import Classifier
from ultradino_monai.networks.vit import build_vit

SIZE = 32


def _export(model: torch.nn.Module, path) -> None:
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        torch.onnx.export(
            model, torch.zeros(1, 1, SIZE, SIZE), str(path), input_names=["image"], output_names=["pred"], dynamo=False
        )


@pytest.fixture(scope="module")
def classifier(tmp_path_factory):
    torch.manual_seed(0)
    model = Classifier(build_vit("vit_tiny", depth=2, img_size=SIZE), num_classes=6, batch_norm=False).eval()
    path = tmp_path_factory.mktemp("onnx") / "model.onnx"
    _export(model, path)
    return model, path


def _frames(count: int, seed: int = 1) -> list[np.ndarray]:
    generator = torch.Generator().manual_seed(seed)
    return [torch.randn(1, 1, SIZE, SIZE, generator=generator).numpy() for _ in range(count)]


def test_int8_model_uses_integer_matmuls_and_stays_close_to_fp32(classifier, tmp_path):
    model, fp32 = classifier
    int8 = quantize_int8(fp32, tmp_path / "model_int8.onnx")
    graph = onnx.load(str(int8)).graph
    ops = {node.op_type for node in graph.node}
    assert {"DynamicQuantizeLinear", "MatMulInteger"} <= ops
    assert any(init.data_type == onnx.TensorProto.INT8 for init in graph.initializer)
    assert int8.stat().st_size < 0.5 * fp32.stat().st_size
    session = cpu_session(int8)
    frames = _frames(8)
    with torch.no_grad():
        reference = torch.cat([model(torch.from_numpy(f)) for f in frames]).numpy()
    quantized = np.concatenate([session.run(None, {"image": f})[0] for f in frames])
    scale = np.abs(reference).max()
    assert 0 < np.abs(quantized - reference).max() < 0.05 * scale
    assert np.corrcoef(quantized.ravel(), reference.ravel())[0, 1] > 0.999


def test_quantize_rejects_bad_input_and_leaves_the_destination_alone(classifier, tmp_path):
    _, fp32 = classifier
    destination = tmp_path / "model_int8.onnx"
    with pytest.raises(FileNotFoundError, match="onnx_export"):
        quantize_int8(tmp_path / "absent.onnx", destination)
    assert not destination.exists()
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"not a protobuf")
    destination.write_bytes(b"previous")
    with pytest.raises(ValueError, match="not a valid ONNX model"):
        quantize_int8(broken, destination)
    assert destination.read_bytes() == b"previous"
    with pytest.raises(ValueError, match="overwrite its input"):
        quantize_int8(fp32, fp32)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["broken.onnx", "model_int8.onnx"]  # no temporaries


def test_a_failed_quantisation_leaves_the_old_model_and_no_temporary(classifier, tmp_path, monkeypatch):
    _, fp32 = classifier
    destination = tmp_path / "model_int8.onnx"
    destination.write_bytes(b"previous")

    def half_written(source, target):
        Path(target).write_bytes(b"partial")
        raise RuntimeError("disk full")

    monkeypatch.setattr(onnx_deploy, "_quantize_into", half_written)
    with pytest.raises(RuntimeError, match="disk full"):
        quantize_int8(fp32, destination)
    assert destination.read_bytes() == b"previous"
    assert [p.name for p in tmp_path.iterdir()] == ["model_int8.onnx"]


def test_quantize_and_check_reports_on_the_model_it_wrote(classifier, tmp_path):
    model, fp32 = classifier
    destination, report_path = tmp_path / "model_int8.onnx", tmp_path / "model_int8.json"
    report = quantize_and_check(fp32, destination, iter(_frames(5)), report_path)
    assert json.loads(report_path.read_text()) == report
    assert report["frames"] == 5 and report["int8_model"] == str(destination)
    assert report == {**report, **prediction_agreement(fp32, destination, _frames(5))}
    umask = os.umask(0)
    os.umask(umask)
    for written in (destination, report_path):  # the mode open() gives, not mkstemp's owner-only 0600
        assert stat.S_IMODE(written.stat().st_mode) == 0o666 & ~umask
    # a failure while checking: no report is left that vouches for either model
    previous = destination.read_bytes()

    def broken_frames():
        yield _frames(1)[0]
        raise OSError("unreadable image")

    with pytest.raises(OSError, match="unreadable image"):
        quantize_and_check(fp32, destination, broken_frames(), report_path)
    assert not report_path.exists()
    assert destination.read_bytes() == previous
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model_int8.onnx"]


def test_frame_stream_returns_each_frames_own_output_in_order(classifier):
    _, fp32 = classifier
    frames = _frames(7, seed=2)
    single = cpu_session(fp32)
    expected = [single.run(None, {"image": f})[0] for f in frames]
    with FrameStream(fp32, streams=3) as stream:
        assert len(stream.sessions) == 3
        outputs = list(stream.map(frames))
        late = stream.submit(frames[4]).result()
    assert len(outputs) == 7
    for out, ref in zip(outputs, expected):
        np.testing.assert_allclose(out, ref, rtol=0, atol=1e-6)
    np.testing.assert_allclose(late, expected[4], rtol=0, atol=1e-6)
    assert not np.allclose(expected[0], expected[1])  # distinct frames: an order mix-up would show
    with pytest.raises(ValueError, match="streams"):
        FrameStream(fp32, streams=0)
    with pytest.raises(ValueError, match="max_in_flight"):
        FrameStream(fp32, streams=2, max_in_flight=1)
    with pytest.raises(FileNotFoundError, match="quantize.json"):
        FrameStream(fp32.parent / "model_int8.onnx")


def test_submit_blocks_while_max_in_flight_frames_are_unfinished(classifier):
    _, fp32 = classifier
    gate = threading.Event()

    class Held:  # a session whose runs wait for the gate: frames stay in flight
        def __init__(self, session):
            self.session = session

        def run(self, *args):
            gate.wait(10)
            return self.session.run(*args)

    frames = _frames(4, seed=4)
    with FrameStream(fp32, streams=2, max_in_flight=3) as stream:
        for session in [stream._free.get() for _ in range(2)]:
            stream._free.put(Held(session))
        futures = [stream.submit(frame) for frame in frames[:3]]  # 2 running, 1 waiting for a session
        fourth = []
        producer = threading.Thread(target=lambda: fourth.append(stream.submit(frames[3])))
        producer.start()
        producer.join(0.5)
        assert producer.is_alive() and not fourth  # no slot: the producer is held back
        gate.set()
        producer.join(10)
        assert len(fourth) == 1
        outputs = [future.result(10) for future in futures + fourth]
    single = cpu_session(fp32)
    for out, frame in zip(outputs, frames):
        np.testing.assert_allclose(out, single.run(None, {"image": frame})[0], rtol=0, atol=1e-6)


def test_prediction_agreement_matches_a_hand_count(classifier, tmp_path):
    model, fp32 = classifier
    assert prediction_agreement(fp32, fp32, _frames(4)) == {
        "frames": 4,
        "top1_agreement": 1.0,
        "max_abs_probability_change": 0.0,
    }
    # a second model whose head favours class 5 just enough to take over about half of the frames
    frames = _frames(12, seed=3)
    with torch.no_grad():
        logits = torch.cat([model(torch.from_numpy(f)) for f in frames])
        shortfall = logits.max(-1).values - logits[:, 5]
    other = Classifier(build_vit("vit_tiny", depth=2, img_size=SIZE), num_classes=6, batch_norm=False).eval()
    other.load_state_dict(model.state_dict())
    with torch.no_grad():
        ordered = shortfall.sort().values  # halfway between the 6th and 7th: class 5 takes over 6 of 12 frames
        other.head.linear.bias[5] += (ordered[5] + ordered[6]) / 2
    _export(other, tmp_path / "other.onnx")
    with torch.no_grad():
        p_a = torch.cat([torch.softmax(model(torch.from_numpy(f)), -1) for f in frames])
        p_b = torch.cat([torch.softmax(other(torch.from_numpy(f)), -1) for f in frames])
    expected_agreement = float((p_a.argmax(-1) == p_b.argmax(-1)).float().mean())
    assert 0 < expected_agreement < 1  # the case really has some disagreement
    result = prediction_agreement(fp32, tmp_path / "other.onnx", frames)
    assert result["frames"] == 12
    assert result["top1_agreement"] == pytest.approx(expected_agreement)
    assert result["max_abs_probability_change"] == pytest.approx(float((p_a - p_b).abs().max()), abs=1e-5)
    with pytest.raises(ValueError, match="at least one frame"):
        prediction_agreement(fp32, fp32, [])
