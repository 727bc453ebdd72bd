"""The notebook-03 checkers accept a correct solution, reject wrong ones with a hint, never raise;
their references agree with detr_full.position_encoding."""

import torch

from detr_full.exercises.position_encoding import (check_learned_encoding, check_normalized_positions,
                                                   check_sine_1d, reference_normalized_positions,
                                                   reference_sine_1d)
from detr_full.position_encoding import PositionEmbeddingSine


def _sine_1d(positions, num_pos_feats, temperature):
    out = torch.zeros(len(positions), num_pos_feats)
    for c in range(num_pos_feats):
        angle = positions / temperature ** (2 * (c // 2) / num_pos_feats)
        out[:, c] = angle.sin() if c % 2 == 0 else angle.cos()
    return out


def test_references_agree_with_the_package():
    mask = torch.zeros(2, 3, 5, dtype=torch.bool)
    mask[1, 2:, :] = True
    mask[1, :, 4:] = True
    ref = PositionEmbeddingSine(8, normalize=True)(mask)                              # (B, 16, h, w)
    y_embed, x_embed = reference_normalized_positions(mask)
    for b in range(2):
        ours_y = reference_sine_1d(y_embed[b].reshape(-1), 8).T.reshape(8, 3, 5)
        ours_x = reference_sine_1d(x_embed[b].reshape(-1), 8).T.reshape(8, 3, 5)
        torch.testing.assert_close(torch.cat([ours_y, ours_x]), ref[b], rtol=0, atol=1e-6)
    row = PositionEmbeddingSine(6, temperature=20)(torch.zeros(1, 1, 4, dtype=torch.bool))[0, 6:, 0].T
    torch.testing.assert_close(reference_sine_1d(torch.arange(1.0, 5.0), 6, 20), row, rtol=0, atol=1e-6)


def test_check_sine_1d(capsys):
    assert check_sine_1d(_sine_1d)
    assert capsys.readouterr().out.startswith("OK:")

    def blocks(p, f, t):
        angles = p[:, None] / t ** (2 * (torch.arange(f) // 2) / f)
        return torch.cat([angles[:, 0::2].sin(), angles[:, 1::2].cos()], 1)

    assert not check_sine_1d(blocks)
    assert "interleave" in capsys.readouterr().out

    def per_channel(p, f, t):
        angles = p[:, None] / t ** (torch.arange(f) / f)
        out = angles.clone()
        out[:, 0::2], out[:, 1::2] = angles[:, 0::2].sin(), angles[:, 1::2].cos()
        return out

    assert not check_sine_1d(per_channel)
    assert "share one frequency" in capsys.readouterr().out
    assert not check_sine_1d(lambda p, f, t: None)
    assert not check_sine_1d(lambda p, f, t: p.unsqueeze(0))
    assert "not yet" in capsys.readouterr().out


def test_check_normalized_positions(capsys):
    assert check_normalized_positions(reference_normalized_positions)

    def exact_division(mask, scale):   # counts / valid length without the 1e-6: close enough to pass
        not_mask = (~mask).float()
        y, x = not_mask.cumsum(1), not_mask.cumsum(2)
        return y / y[:, -1:].clamp(min=1) * scale, x / x[:, :, -1:].clamp(min=1) * scale

    assert check_normalized_positions(exact_division)
    assert capsys.readouterr().out.count("OK:") == 2

    def padding_unaware(mask, scale):
        b, h, w = mask.shape
        y = torch.arange(1, h + 1.0)[None, :, None].expand(b, h, w) / h * scale
        x = torch.arange(1, w + 1.0)[None, None, :].expand(b, h, w) / w * scale
        return y, x

    assert not check_normalized_positions(padding_unaware)
    assert "valid" in capsys.readouterr().out
    assert not check_normalized_positions(lambda m, s: reference_normalized_positions(m, s)[::-1])
    assert "swapped" in capsys.readouterr().out
    assert not check_normalized_positions(lambda m, s: reference_normalized_positions(m, 1.0))
    assert "scale" in capsys.readouterr().out
    assert not check_normalized_positions(lambda m, s: None)
    assert "not yet" in capsys.readouterr().out


def _learned(row_weight, col_weight, h, w):
    x = col_weight[:w][None].expand(h, -1, -1)                  # (h, w, F)
    y = row_weight[:h][:, None].expand(-1, w, -1)               # (h, w, F)
    return torch.cat([x, y], dim=-1).permute(2, 0, 1)


def test_check_learned_encoding(capsys):
    before = torch.random.get_rng_state()
    assert check_learned_encoding(_learned)
    assert torch.equal(torch.random.get_rng_state(), before)    # the caller's seed stream is untouched
    assert capsys.readouterr().out.startswith("OK:")
    def y_first(row_weight, col_weight, h, w):
        pos = _learned(row_weight, col_weight, h, w)
        return torch.cat([pos[row_weight.shape[1]:], pos[:row_weight.shape[1]]])

    assert not check_learned_encoding(y_first)
    assert "x) features first" in capsys.readouterr().out
    assert not check_learned_encoding(lambda r, c, h, w: None)
    assert "not yet" in capsys.readouterr().out


# ----------------------------------------------------------------------------- likely wrong answers

def _interleave(angles, even=torch.sin, odd=torch.cos):
    out = torch.empty_like(angles)
    out[:, 0::2], out[:, 1::2] = even(angles[:, 0::2]), odd(angles[:, 1::2])
    return out


def _angles(p, f, t, exponent=lambda c, f: 2 * (c // 2) / f):
    return p[:, None] / t ** exponent(torch.arange(f), f)


def test_check_sine_1d_names_each_mistake(capsys):
    log_space = lambda p, f, t: _interleave(  # noqa: E731  the right frequencies, computed as exp(-log t * ...)
        p[:, None] * torch.exp(-torch.log(torch.tensor(float(t))) * 2 * (torch.arange(f) // 2) / f))
    assert check_sine_1d(log_space)
    assert capsys.readouterr().out.startswith("OK:")
    def in_place(p, f, t):
        p.unsqueeze_(1)                # (N, 1) to broadcast, but the caller's tensor changes shape
        return _interleave(p / t ** (2 * (torch.arange(f) // 2) / f))

    for wrong, words in (
            (lambda p, f, t: _interleave(_angles(p, f, t), torch.cos, torch.sin), "sin and cos are swapped"),
            (lambda p, f, t: _sine_1d(p, f, 10000), "hard-coded 10000"),
            (lambda p, f, t: _interleave(_angles(p, f, t, lambda c, f: (c // 2) / f)), "factor 2"),
            (lambda p, f, t: _interleave(p[:, None] * t ** (2 * (torch.arange(f) // 2) / f)), "don't multiply"),
            (lambda p, f, t: _sine_1d(p, f, t).T, "transposed"),
            (lambda p, f, t: _interleave(_angles(p, f, t, lambda c, f: 2 * c / f)), "not 2 * c / F"),
            (lambda p, f, t: _interleave(p[:, None] / (t ** (2 * torch.arange(f // 2) / f)).repeat(2)),
             "don't repeat(2)"),
            (lambda p, f, t: _interleave(2 * torch.pi * _angles(p, f, t)), "no 2 pi here"),
            (lambda p, f, t: _interleave(_angles(p, f, t, lambda c, f: torch.arange(f) / f)), "share one frequency"),
            (lambda p, f, t: torch.stack([_angles(p, f, t)[:, 0::2].sin(), _angles(p, f, t)[:, 1::2].cos()], 1)
             .flatten(1), "interleave them"),                                        # (N, 2, F/2): sin block, cos block
            (in_place, "changed its input `p` in place")):
        assert not check_sine_1d(wrong)
        out = capsys.readouterr().out
        assert out.startswith("not yet:") and words in out, out


def test_check_normalized_positions_names_each_mistake(capsys):
    def counts(mask):
        not_mask = (~mask).float()
        return not_mask.cumsum(1), not_mask.cumsum(2)

    def per_image_max(mask, scale):                     # the same on a top-left valid region: right
        y, x = counts(mask)
        return y / y.amax((1, 2), keepdim=True) * scale, x / x.amax((1, 2), keepdim=True) * scale

    assert check_normalized_positions(per_image_max)
    assert capsys.readouterr().out.startswith("OK:")

    def zero_based(mask, scale):
        y, x = counts(mask)
        return (y - 1) / y[:, -1:] * scale, (x - 1) / x[:, :, -1:] * scale

    def batch_max(mask, scale):
        y, x = counts(mask)
        return y / y.max() * scale, x / x.max() * scale

    def padding_counted(mask, scale):
        y, x = mask.float().cumsum(1), mask.float().cumsum(2)
        return y / (y[:, -1:] + 1e-6) * scale, x / (x[:, :, -1:] + 1e-6) * scale

    def minus_half(mask, scale):                        # Deformable DETR's offset
        y, x = counts(mask)
        return (y - 0.5) / (y[:, -1:] + 1e-6) * scale, (x - 0.5) / (x[:, :, -1:] + 1e-6) * scale

    def normalisers_swapped(mask, scale):
        y, x = counts(mask)
        return y / (x[:, :, -1:] + 1e-6) * scale, x / (y[:, -1:] + 1e-6) * scale

    def padded_size(mask, scale):                       # padding-unaware: divides by the padded h, w
        y, x = counts(mask)
        return y / mask.shape[1] * scale, x / mask.shape[2] * scale

    for wrong, words in ((zero_based, "count from 1"), (batch_max, "largest count"), (padded_size, "*valid*"),
                         (minus_half, "subtract 0.5"), (normalisers_swapped, "not the other way round"),
                         (lambda m, s: reference_normalized_positions(m, s)[::-1], "swapped"),
                         (lambda m, s: [v / s ** 2 for v in reference_normalized_positions(m, s)], "don't divide"),
                         (lambda m, s: reference_normalized_positions(m), "hard-coded 2 pi"),
                         (padding_counted, "True on padding"), (lambda m, s: counts(m), "normalise the counts"),
                         (lambda m, s: reference_normalized_positions(m, s)[0], "pair")):
        assert not check_normalized_positions(wrong)
        out = capsys.readouterr().out
        assert out.startswith("not yet:") and words in out, out


def test_check_learned_encoding_names_each_mistake(capsys):
    assert check_learned_encoding(lambda r, c, h, w: _learned(r, c, h, w).contiguous())
    assert capsys.readouterr().out.startswith("OK:")
    for wrong, words in (
            (lambda r, c, h, w: _learned(c, r, h, w), "tables are swapped"),
            (lambda r, c, h, w: _learned(r[1:], c[1:], h, w), "index the tables from 0"),
            (lambda r, c, h, w: _learned(r, c, h, w).permute(1, 2, 0), "channels first"),
            (lambda r, c, h, w: _learned(r, c, h, w).permute(1, 2, 0).reshape(-1, h, w), "permute(2, 0, 1)"),
            (lambda r, c, h, w: _learned(r, c, h, w).permute(1, 2, 0).transpose(0, 2), "swaps h and w"),
            (lambda r, c, h, w: torch.cat([r[:h][:, None].expand(-1, w, -1), c[:w][None].expand(h, -1, -1)], -1)
             .permute(2, 0, 1), "x) features first"),
            (lambda r, c, h, w: c[:w][None].expand(h, -1, -1).permute(2, 0, 1) + r[:h][:, None].expand(-1, w, -1)
             .permute(2, 0, 1), "don't add them")):
        assert not check_learned_encoding(wrong)
        out = capsys.readouterr().out
        assert out.startswith("not yet:") and words in out, out
