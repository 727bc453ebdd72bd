import pytest
import torch

from detr_full.position_encoding import PositionEmbeddingLearned, PositionEmbeddingSine, build_position_encoding


def test_golden_sine(golden):
    u = golden["units"]["pos_sine"]
    n = u["num_pos_feats"]
    cases = {"normalize_true": PositionEmbeddingSine(n, normalize=True),
             "normalize_false": PositionEmbeddingSine(n, normalize=False),
             "normalize_true_temp20_scale1": PositionEmbeddingSine(n, temperature=20, normalize=True, scale=1.0)}
    for name, module in cases.items():
        torch.testing.assert_close(module(u["mask"]), u[name], rtol=0, atol=1e-6, msg=name)


def test_golden_learned(golden):
    u = golden["units"]["pos_learned"]
    module = PositionEmbeddingLearned(u["state_dict"]["row_embed.weight"].shape[1])
    module.load_state_dict(u["state_dict"])
    b, _, h, w = u["feature"].shape
    torch.testing.assert_close(module(torch.zeros(b, h, w, dtype=torch.bool)), u["output"], rtol=0, atol=1e-6)


def test_sine_first_channels_encode_y():
    pos = PositionEmbeddingSine(4, normalize=False)(torch.zeros(1, 3, 5, dtype=torch.bool))  # (1, 8, 3, 5)
    # channel 0 is sin(y), y = 1..3 along rows, constant along columns
    torch.testing.assert_close(pos[0, 0], torch.arange(1., 4.)[:, None].sin().expand(3, 5))
    torch.testing.assert_close(pos[0, 4], torch.arange(1., 6.)[None, :].sin().expand(3, 5))


def test_sine_ignores_padding():
    mask = torch.zeros(2, 4, 6, dtype=torch.bool)
    mask[1, :, 3:] = True  # image 1 is 4 x 3
    pos = PositionEmbeddingSine(8, normalize=True)(mask)
    alone = PositionEmbeddingSine(8, normalize=True)(torch.zeros(1, 4, 3, dtype=torch.bool))
    torch.testing.assert_close(pos[1, :, :, :3], alone[0])


def test_scale_without_normalize_and_large_learned_maps_are_errors():
    with pytest.raises(ValueError, match="normalize"):
        PositionEmbeddingSine(8, scale=1.0)
    with pytest.raises(ValueError, match="50x50"):
        PositionEmbeddingLearned(8)(torch.zeros(1, 51, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match="sine"):
        build_position_encoding("fourier", 64)


def test_none_is_zeros_of_the_right_shape():
    from detr_full.position_encoding import build_position_encoding
    mask = torch.zeros(2, 3, 5, dtype=torch.bool)
    pos = build_position_encoding("none", 16)(mask)
    assert pos.shape == (2, 16, 3, 5) and not pos.any()
