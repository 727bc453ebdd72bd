import pytest
import torch

from detr_minimal import DETRMinimal


def _tiny():
    return DETRMinimal(num_classes=5, hidden_dim=32, nheads=2, num_encoder_layers=1, num_decoder_layers=1,
                       num_queries=7).eval()


def test_batched_outputs_equal_one_image_at_a_time():
    model = _tiny()
    images = torch.randn(3, 3, 64, 96)
    with torch.no_grad():
        batched = model(images)
        for i in range(3):
            single = model(images[i: i + 1])
            torch.testing.assert_close(batched["pred_logits"][i], single["pred_logits"][0], rtol=1e-4, atol=1e-5)
            torch.testing.assert_close(batched["pred_boxes"][i], single["pred_boxes"][0], rtol=1e-4, atol=1e-5)
    assert batched["pred_logits"].shape == (3, 7, 6) and batched["pred_boxes"].shape == (3, 7, 4)


@pytest.mark.filterwarnings("ignore:enable_nested_tensor")  # the sequence-first reference, not our model
def test_same_as_the_demo_notebook_sequence_first_forward():
    """The demo runs nn.Transformer sequence-first on one image; batch-first must give the same."""
    model = _tiny()
    image = torch.randn(1, 3, 64, 64)
    b = model.backbone
    with torch.no_grad():
        x = b.layer4(b.layer3(b.layer2(b.layer1(b.maxpool(b.relu(b.bn1(b.conv1(image))))))))
        h = model.conv(x)
        H, W = h.shape[-2:]
        pos = torch.cat([model.col_embed[:W].unsqueeze(0).repeat(H, 1, 1),
                         model.row_embed[:H].unsqueeze(1).repeat(1, W, 1)], dim=-1).flatten(0, 1).unsqueeze(1)
        seq_first = torch.nn.Transformer(32, 2, 1, 1)
        seq_first.load_state_dict(model.transformer.state_dict())
        hs = seq_first.eval()(pos + 0.1 * h.flatten(2).permute(2, 0, 1), model.query_pos.unsqueeze(1)).transpose(0, 1)
        torch.testing.assert_close(model(image)["pred_logits"], model.linear_class(hs), rtol=1e-4, atol=1e-5)


def test_demo_checkpoint_names():
    keys = DETRMinimal().state_dict().keys()
    for name in ("backbone.conv1.weight", "backbone.layer4.2.bn3.running_var", "conv.weight",
                 "transformer.encoder.norm.weight", "transformer.decoder.layers.5.multihead_attn.in_proj_weight",
                 "linear_class.weight", "linear_bbox.bias", "query_pos", "row_embed", "col_embed"):
        assert name in keys
    assert not any(k.startswith("backbone.fc") for k in keys)
