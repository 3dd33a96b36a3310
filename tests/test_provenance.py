"""The names result records use (one helper for both engines) and the shared model.json reader."""

from __future__ import annotations

import json

import pytest

from ultradino_monai.engines.classification import read_model_sidecar
from ultradino_monai.engines.model_json import read_model_json, write_model_json
from ultradino_monai.engines.segmentation import read_model_spec, spec_backbone_name
from ultradino_monai.evaluation.provenance import METHOD_NAMES, backbone_name


def test_backbone_name_canonical_custom_and_family():
    assert backbone_name("vit_small", 384, 12, 16) == "vit_small_patch16"
    # a resized arch is named by its size; the segmentation records prefix the family, classification's do not
    assert backbone_name("custom", 192, 6, 16) == "custom_d192x6_patch16"
    assert backbone_name(None, 192, 6, 14, family="vit") == "vit_custom_d192x6_patch14"
    assert backbone_name("vit_base", 768, 12, 16, family="vit") == "vit_base_patch16"
    assert backbone_name("usfm", 768, 12, 16, family="beit") == "beit_usfm_patch16"
    assert backbone_name("beit", 768, 12, 16, family="beit") == "beit_patch16"


def test_spec_backbone_name_reads_the_model_json_layout():
    spec = {"backbone": {"kind": "vit", "config": {"arch": "custom", "embed_dim": 32, "depth": 4, "patch_size": 16}}}
    assert spec_backbone_name(spec) == "vit_custom_d32x4_patch16"
    assert METHOD_NAMES["dinov2"] == "DINOv2" and METHOD_NAMES["scratch"] == "scratch"


def test_model_json_round_trip_and_format_check(tmp_path):
    path = write_model_json(tmp_path / "models" / "model.json", {"format": "ultradino_monai.classifier", "x": 1})
    assert json.loads(path.read_text()) == {"format": "ultradino_monai.classifier", "x": 1}
    assert read_model_sidecar(path)["x"] == 1
    # the segmentation reader finds model.json next to model.pt and refuses a classifier's description
    with pytest.raises(ValueError, match="is not a segmenter description"):
        read_model_spec(tmp_path / "models" / "model.pt")
    with pytest.raises(FileNotFoundError, match="fine-tune first"):
        read_model_sidecar(tmp_path / "elsewhere.json")
    with pytest.raises(FileNotFoundError, match="needs the model description"):
        read_model_json(
            tmp_path / "none.json", "ultradino_monai.segmenter", "segmenter description", "needs the model description"
        )
