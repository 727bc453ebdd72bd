import pytest
import torch
from torch import nn

from detr_full.backbone import Backbone, FrozenBatchNorm2d, build_backbone
from detr_full.position_encoding import PositionEmbeddingSine


def test_frozen_bn_golden(golden):
    u = golden["units"]["frozen_bn"]
    bn = FrozenBatchNorm2d(8)
    bn.load_state_dict(u["buffers"])
    torch.testing.assert_close(bn(u["input"]), u["output"], rtol=0, atol=1e-6)
    assert "num_batches_tracked" not in bn.state_dict()


def test_frozen_bn_equals_eval_batchnorm_and_drops_num_batches_tracked():
    ref = nn.BatchNorm2d(4).eval()
    ref.running_mean.uniform_(-1, 1)
    ref.running_var.uniform_(0.5, 2)
    ref.weight.data.uniform_(0.5, 2)
    ref.bias.data.uniform_(-1, 1)
    bn = FrozenBatchNorm2d(4)
    bn.load_state_dict(ref.state_dict())  # has num_batches_tracked: must load
    x = torch.randn(2, 4, 3, 3)
    torch.testing.assert_close(bn(x), ref(x))
    assert not list(bn.parameters())


def test_padding_mask_is_downsampled_with_the_features():
    backbone = Backbone("resnet18")
    images = torch.randn(2, 3, 96, 128)
    mask = torch.zeros(2, 96, 128, dtype=torch.bool)
    mask[1, :, 64:] = True  # image 1 is 96 x 64, padded to 128 wide
    features, small = backbone(images, mask)
    assert features.shape == (2, 512, 3, 4) and small.shape == (2, 3, 4)
    assert not small[0].any() and small[1, :, 2:].all() and not small[1, :, :2].any()


def test_stem_and_layer1_are_frozen():
    backbone = Backbone("resnet18")
    trainable = {n.split(".")[0] for n, p in backbone.body.named_parameters() if p.requires_grad}
    assert trainable == {"layer2", "layer3", "layer4"}
    assert not any(p.requires_grad for p in Backbone("resnet18", train_backbone=False).parameters())


def test_dc5_keeps_stride_16_and_the_state_dict():
    images, mask = torch.randn(1, 3, 128, 128), torch.zeros(1, 128, 128, dtype=torch.bool)
    plain = build_backbone("resnet50", PositionEmbeddingSine(8, normalize=True))
    dc5 = build_backbone("resnet50", PositionEmbeddingSine(8, normalize=True), dilation=True)
    assert {k: v.shape for k, v in plain.state_dict().items()} == {k: v.shape for k, v in dc5.state_dict().items()}
    assert plain(images, mask)[0].shape[-2:] == (4, 4)
    assert dc5(images, mask)[0].shape[-2:] == (8, 8)


def test_dc5_on_basic_blocks_is_a_clear_error():
    with pytest.raises(ValueError, match="Bottleneck"):
        Backbone("resnet18", dilation=True)


def test_golden_backbone_features_and_masks(golden_model, golden):
    inp, ref = golden["inputs"], golden["intermediates"]
    features, mask, pos = golden_model.backbone(inp["tensors"], inp["mask"])
    assert torch.equal(mask, ref["backbone_masks"]["0"])
    err = (features - ref["backbone_features"]["0"]).abs().max()
    assert err <= 2e-5 * ref["backbone_features"]["0"].abs().max()
    torch.testing.assert_close(pos, ref["pos"][0], rtol=0, atol=1e-6)


def test_random_init_options_train_everything_at_stride_16():
    backbone = Backbone("resnet18", frozen_bn=False, train_stem=True, stride=16)
    assert backbone.num_channels == 256
    assert all(p.requires_grad for p in backbone.parameters())
    assert any(isinstance(m, nn.BatchNorm2d) for m in backbone.modules())
    assert not any(k.startswith("body.layer4") for k in backbone.state_dict())
    features, mask = backbone(torch.randn(2, 3, 64, 96), torch.zeros(2, 64, 96, dtype=torch.bool))
    assert features.shape == (2, 256, 4, 6) and mask.shape == (2, 4, 6)
    with pytest.raises(ValueError, match="stride"):
        Backbone("resnet18", stride=4)


def test_frozen_bn_keeps_its_affine_until_a_buffer_changes():
    def direct(m, x):                                                    # the official formula, every call
        scale = m.weight * (m.running_var + m.eps).rsqrt()
        return x * scale[None, :, None, None] + (m.bias - m.running_mean * scale)[None, :, None, None]

    bn = FrozenBatchNorm2d(3)
    bn.running_var.copy_(torch.tensor([1.0, 4.0, 0.25]))
    x = torch.randn(2, 3, 4, 4)
    assert torch.equal(bn(x), direct(bn, x))                             # bit for bit: the same ops, once
    assert bn.affine()[0] is bn.affine()[0]                              # computed once
    bn.running_mean.add_(1.0)                                            # an in-place edit
    assert torch.equal(bn(x), direct(bn, x))
    bn.load_state_dict({"weight": torch.full((3,), 2.0), "bias": torch.ones(3), "running_mean": torch.zeros(3),
                        "running_var": torch.ones(3)})
    assert torch.equal(bn(x), direct(bn, x))
    bn.double()                                                          # a move to another dtype
    assert bn(x.double()).dtype == torch.float64 and torch.equal(bn(x.double()), direct(bn, x.double()))


def _randomise_statistics(body):
    g = torch.Generator().manual_seed(0)
    for m in body.modules():
        if isinstance(m, FrozenBatchNorm2d):
            m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
            m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g))
            m.weight.copy_(torch.rand(m.weight.shape, generator=g) + 0.5)
            m.bias.copy_(torch.randn(m.bias.shape, generator=g))


@pytest.mark.parametrize("name", ["resnet18", "mobilenet_v2"])
def test_a_frozen_backbone_runs_with_its_batchnorm_folded_into_the_convolutions(name):
    backbone = Backbone(name, train_backbone=False, stride=16, keep_fine=True)
    _randomise_statistics(backbone.body)
    backbone.double()              # float64: folding only reorders float rounding, so they must agree closely
    images, mask = torch.rand(2, 3, 64, 96, dtype=torch.float64), torch.zeros(2, 64, 96, dtype=torch.bool)
    keys = set(backbone.state_dict())
    with torch.no_grad():
        expected = backbone.body(images.contiguous(memory_format=torch.channels_last))
        out = backbone.run(images, mask)
    assert backbone.frozen
    folded = backbone.folded_body()
    assert not any(isinstance(m, FrozenBatchNorm2d) for m in folded.modules())       # every one folded
    torch.testing.assert_close(out.features, expected, rtol=1e-9, atol=1e-9)
    assert set(backbone.state_dict()) == keys                                        # official keys only
    # new weights (a checkpoint loaded) make a new fold: never the stale one
    state = {k: v * 2 if k.endswith("running_mean") else v for k, v in backbone.state_dict().items()}
    backbone.load_state_dict(state)
    with torch.no_grad():
        torch.testing.assert_close(backbone.run(images, mask).features,
                                   backbone.body(images.contiguous(memory_format=torch.channels_last)),
                                   rtol=1e-9, atol=1e-9)
    assert backbone.folded_body() is not folded


def test_a_trained_backbone_is_never_folded():
    backbone = Backbone("resnet18", train_backbone=True, stride=16)
    assert not backbone.frozen
    images, mask = torch.rand(1, 3, 64, 64), torch.zeros(1, 64, 64, dtype=torch.bool)
    features = backbone.run(images, mask).features
    assert features.requires_grad                                                    # gradients reach layer2-3
    assert "_folded" not in backbone.__dict__


def test_folding_draws_nothing_from_the_random_stream():
    # the first forward of a frozen backbone folds it: a run that folds (or resumes and folds again) must
    # see the same random numbers afterwards as one that does not
    backbone = Backbone("resnet18", train_backbone=False, stride=16)
    torch.manual_seed(0)
    expected = torch.rand(3)
    torch.manual_seed(0)
    backbone.folded_body()
    assert torch.equal(torch.rand(3), expected)
