"""int8 quantisation and frame streaming with ONNX Runtime (ultradino_monai.engines.onnx_deploy)."""

from __future__ import annotations

import warnings

import numpy as np
import onnx
import pytest
import torch

from ultradino_monai.engines.onnx_deploy import FrameStream, cpu_session, prediction_agreement, quantize_int8
from ultradino_monai.networks.classifier import Classifier
from ultradino_monai.networks.vit import build_vit

SIZE = 32


def _export(model: torch.nn.Module, path) -> None:
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        torch.onnx.export(model, torch.zeros(1, 1, SIZE, SIZE), str(path), input_names=["image"],
                          output_names=["pred"], dynamo=False)


@pytest.fixture(scope="module")
def classifier(tmp_path_factory):
    torch.manual_seed(0)
    model = Classifier(build_vit("vit_tiny", depth=2, img_size=SIZE), num_classes=6, batch_norm=False).eval()
    with torch.no_grad():  # logits well apart, so int8 rounding cannot flip the top class of most frames
        model.head.linear.weight.mul_(50.0)
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


def test_prediction_agreement_matches_a_hand_count(classifier, tmp_path):
    model, fp32 = classifier
    assert prediction_agreement(fp32, fp32, _frames(4)) == {
        "frames": 4, "top1_agreement": 1.0, "max_abs_probability_change": 0.0}
    # a second model whose head favours class 5 just enough to take over about half of the frames
    frames = _frames(12, seed=3)
    with torch.no_grad():
        logits = torch.cat([model(torch.from_numpy(f)) for f in frames])
        shortfall = logits.max(-1).values - logits[:, 5]
    other = Classifier(build_vit("vit_tiny", depth=2, img_size=SIZE), num_classes=6, batch_norm=False).eval()
    other.load_state_dict(model.state_dict())
    with torch.no_grad():
        other.head.linear.bias[5] += shortfall.median() + 1e-3
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
