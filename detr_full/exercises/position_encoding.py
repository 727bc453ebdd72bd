"""Checkers for notebook 03 (positional encodings).

Each `check_*` calls the learner's function on a few small cases, compares the answers with
`detr_full`, prints "OK: ..." or "not yet: <hint>", and returns True or False. A wrong answer, an
exception or an unfilled stub (returning None) never raises.

    check_sine_1d(fn)               fn(positions (N,), num_pos_feats, temperature) -> (N, num_pos_feats)
    check_normalized_positions(fn)  fn(padding_mask (B, h, w) bool, scale) -> y_embed, x_embed, each (B, h, w)
    check_learned_encoding(fn)      fn(row_weight, col_weight (50, F), h, w) -> (2F, h, w)
"""

from __future__ import annotations

import math
from typing import Callable

import torch
from torch import Tensor

from detr_full.position_encoding import PositionEmbeddingLearned
from detr_full.exercises.checking import call, failure, mistake, shape_problem, verdict


# ----------------------------------------------------------------------------- 1-D sine encoding

def reference_sine_1d(positions: Tensor, num_pos_feats: int, temperature: float = 10000) -> Tensor:
    """positions (N,) -> (N, F): channels 2i and 2i+1 are sin and cos of p / temperature^(2i / F).
    For positions 1..w this is the x half of PositionEmbeddingSine(F, temperature) on an unpadded row."""
    dim_t = temperature ** (2 * (torch.arange(num_pos_feats) // 2) / num_pos_feats)   # (F,)
    angles = positions.float()[:, None] / dim_t                                        # (N, F)
    out = torch.empty_like(angles)
    out[:, 0::2], out[:, 1::2] = angles[:, 0::2].sin(), angles[:, 1::2].cos()
    return out


def check_sine_1d(fn: Callable[[Tensor, int, float], Tensor]) -> bool:
    """fn(positions (N,) float, num_pos_feats F (even), temperature) -> (N, F), the sine encoding
    of one coordinate, as one half of PositionEmbeddingSine's channels. Prints OK or a hint."""
    name = "matches the x half of detr_full.position_encoding.PositionEmbeddingSine"
    cases = [(torch.arange(1, 9, dtype=torch.float32), 16, 10000.0),
             (torch.arange(1, 6, dtype=torch.float32), 8, 20.0),
             (torch.tensor([0.0, 0.5, math.pi, 2 * math.pi]), 6, 10000.0)]
    formula = ("one frequency per channel pair, temperature ** (2 * (c // 2) / F), then sin on even "
               "channels, cos on odd ones.")
    for positions, feats, temperature in cases:
        out, error = call(fn, positions.clone(), feats, temperature)
        if error:
            return failure(error, formula)
        problem = shape_problem(out, (len(positions), feats))
        if problem:
            return verdict(False, f"{problem} Hint: {formula}")
        expected = reference_sine_1d(positions, feats, temperature)
        if torch.allclose(out.float(), expected, atol=1e-5):
            continue
        c = torch.arange(feats)

        def interleaved(angles: Tensor, even: Callable[[Tensor], Tensor] = torch.sin,
                        odd: Callable[[Tensor], Tensor] = torch.cos) -> Tensor:
            result = torch.empty_like(angles)
            result[:, 0::2], result[:, 1::2] = even(angles[:, 0::2]), odd(angles[:, 1::2])
            return result

        angles = positions[:, None] / temperature ** (2 * (c // 2) / feats)                  # (N, F)
        pair_frequencies = temperature ** (2 * torch.arange(feats // 2) / feats)              # (F/2,)
        hint = mistake(out, expected, [
            (lambda: torch.cat([angles[:, 0::2].sin(), angles[:, 1::2].cos()], dim=1),
             "right values, wrong order: interleave them, sin in channel 2i and cos in channel 2i + 1."),
            (lambda: interleaved(positions[:, None] / temperature ** (c / feats)),
             "channels 2i and 2i + 1 share one frequency: divide by temperature ** (2 * (c // 2) / F), "
             "not temperature ** (c / F)."),
            (lambda: interleaved(positions[:, None] / temperature ** (2 * c / feats)),
             "channels 2i and 2i + 1 share one frequency: the exponent is 2 * (c // 2) / F, not 2 * c / F "
             "(which falls to temperature ** -2)."),
            (lambda: interleaved(positions[:, None] / pair_frequencies.repeat(2)),
             "each frequency serves one channel pair, 2i and 2i + 1: repeat_interleave(2) the F / 2 "
             "frequencies, don't repeat(2) them as a block."),
            (lambda: interleaved(2 * math.pi * angles),
             "no 2 pi here: the positions go in as they are (the 2 pi scale belongs to the normalised "
             "coordinates of the next exercise)."),
            (lambda: interleaved(positions[:, None] / temperature ** ((c // 2) / feats)),
             "the exponent is 2 * (c // 2) / F: you dropped the factor 2, so the frequencies only fall to "
             "temperature ** -0.5 instead of about 1 / temperature."),
            (lambda: interleaved(angles, torch.cos, torch.sin),
             "sin and cos are swapped: sin on even channels, cos on odd ones."),
            (lambda: interleaved(positions[:, None] / 10000 ** (2 * (c // 2) / feats)),
             f"use the `temperature` argument (here {temperature:g}), not a hard-coded 10000."),
            (lambda: interleaved(positions[:, None] * temperature ** (2 * (c // 2) / feats)),
             "divide the position by temperature ** (2 * (c // 2) / F), don't multiply: the frequencies "
             "fall from 1 in channel 0 to about 1 / temperature."),
        ])
        hint = hint or "angle[c] = p / temperature ** (2 * (c // 2) / F); sin on even c, cos on odd c."
        return verdict(False, f"for F = {feats}, temperature = {temperature}: {hint}")
    return verdict(True, name)


# ----------------------------------------------------------------------------- normalised coordinates

def reference_normalized_positions(padding_mask: Tensor, scale: float = 2 * math.pi) -> tuple[Tensor, Tensor]:
    """padding_mask (B, h, w) True on padding -> y_embed, x_embed (B, h, w): 1-based row and column
    counts over valid cells, divided by the image's valid height / width (+1e-6) and times `scale`,
    as PositionEmbeddingSine(normalize=True) computes them."""
    not_mask = ~padding_mask
    y_embed = not_mask.cumsum(1, dtype=torch.float32)
    x_embed = not_mask.cumsum(2, dtype=torch.float32)
    eps = 1e-6
    return y_embed / (y_embed[:, -1:, :] + eps) * scale, x_embed / (x_embed[:, :, -1:] + eps) * scale


def _padded_masks() -> list[Tensor]:
    masks = []
    for sizes, (h_max, w_max) in (([(4, 6), (3, 4)], (4, 6)), ([(5, 5), (2, 7), (5, 3)], (5, 7))):
        mask = torch.ones(len(sizes), h_max, w_max, dtype=torch.bool)
        for i, (h, w) in enumerate(sizes):
            mask[i, :h, :w] = False
        masks.append(mask)
    return masks


def check_normalized_positions(fn: Callable[[Tensor, float], tuple[Tensor, Tensor]]) -> bool:
    """fn(padding_mask (B, h, w) bool True on padding, scale) -> (y_embed, x_embed), each (B, h, w)
    float: the coordinates PositionEmbeddingSine(normalize=True) feeds to its sines. Prints OK or a hint."""
    name = "the padding-aware normalised coordinates of PositionEmbeddingSine"
    for mask in _padded_masks():
        for scale in (2 * math.pi, 1.0):
            out, error = call(fn, mask.clone(), scale)
            if error:
                return failure(error, "cumsum of ~padding_mask along rows / columns.")
            if out is None:
                return verdict(False, "the function returns None; return a pair (y_embed, x_embed).")
            if not isinstance(out, (tuple, list)) or len(out) != 2:
                return verdict(False, "return a pair (y_embed, x_embed).")
            problem = shape_problem(out[0], tuple(mask.shape)) or shape_problem(out[1], tuple(mask.shape))
            if problem:
                return verdict(False, problem)
            y_ref, x_ref = reference_normalized_positions(mask, scale)
            y_out, x_out = out[0].float(), out[1].float()
            valid = ~mask                     # values on padding are never used: compare valid cells
            if torch.allclose(y_out[valid], y_ref[valid], atol=1e-4) and \
                    torch.allclose(x_out[valid], x_ref[valid], atol=1e-4):
                continue
            b, h_max, w_max = mask.shape
            y_count, x_count = valid.cumsum(1).float(), valid.cumsum(2).float()              # (B, h, w)
            y_height, x_width = y_count[:, -1:, :], x_count[:, :, -1:]    # valid height / width per column / row
            unaware_y = torch.arange(1, h_max + 1.0)[None, :, None].expand(b, h_max, w_max)
            unaware_x = torch.arange(1, w_max + 1.0)[None, None, :].expand(b, h_max, w_max)
            wrong_answers = [
                ((y_count - 1) / y_height * scale, (x_count - 1) / x_width * scale,
                 "count from 1, as the cumsum does: the first valid row is 1 / height * scale and the last "
                 "exactly scale."),
                (unaware_y / h_max * scale, unaware_x / w_max * scale,
                 "divide by the number of *valid* rows of each image (the cumsum's last row), not by the "
                 "padded height (or the batch's largest count): an image's encoding must not depend on its "
                 "batch-mates."),
                (y_count / y_count.max() * scale, x_count / x_count.max() * scale,
                 "divide by the number of *valid* rows of each image (the cumsum's last row), not by the "
                 "padded height (or the batch's largest count): an image's encoding must not depend on its "
                 "batch-mates."),
                (y_ref / scale, x_ref / scale,
                 "multiply by `scale`, so coordinates run up to scale (2 pi by default)."),
                (y_ref / scale * 2 * math.pi, x_ref / scale * 2 * math.pi,
                 "use the `scale` argument (the checker also tries scale = 1), not a hard-coded 2 pi."),
                (mask.cumsum(1).float(), mask.cumsum(2).float(),
                 "count the valid cells, cumsum of ~padding_mask: padding_mask is True on padding."),
                (y_count, x_count, "normalise the counts: divide by the cumsum's last row (+ 1e-6), times scale."),
                ((y_count - 0.5) / y_height * scale, (x_count - 0.5) / x_width * scale,
                 "DETR does not subtract 0.5 from the counts (Deformable DETR does): the last valid row is "
                 "exactly scale."),
                (y_count / x_width * scale, x_count / y_height * scale,
                 "divide y_embed by the valid height (y's cumsum, last row) and x_embed by the valid width "
                 "(x's cumsum, last column), not the other way round."),
                (y_ref / scale ** 2, x_ref / scale ** 2, "multiply by `scale`, don't divide by it."),
            ]

            def same(a: Tensor, b: Tensor) -> bool:
                return torch.allclose(a[valid], b[valid], atol=1e-4)

            hint = None
            if same(x_out, y_ref) or same(y_out, x_ref):
                hint = "y and x are swapped: y counts down the rows (dim 1), x along the columns (dim 2)."
            for y_wrong, x_wrong, wrong_hint in wrong_answers:   # either coordinate may carry the mistake
                if hint is None and ((same(y_out, y_wrong) and not same(y_wrong, y_ref))
                                     or (same(x_out, x_wrong) and not same(x_wrong, x_ref))):
                    hint = wrong_hint
            hint = hint or ("y_embed = cumsum of ~padding_mask along dim 1 (1, 2, ..., valid height), divided "
                            "by its last row + 1e-6, times scale; x_embed likewise along dim 2.")
            return verdict(False, f"for a {tuple(mask.shape)} mask, scale {scale:.3g}: {hint}")
    return verdict(True, name)


# ----------------------------------------------------------------------------- learned encoding

def check_learned_encoding(fn: Callable[[Tensor, Tensor, int, int], Tensor]) -> bool:
    """fn(row_weight (50, F), col_weight (50, F), h, w) -> (2F, h, w): the learned encoding of an
    h x w feature map. Compared with PositionEmbeddingLearned holding those weights."""
    name = "matches detr_full.position_encoding.PositionEmbeddingLearned"
    torch_state = torch.random.get_rng_state()    # the module's uniform_ init must not move the caller's RNG
    try:
        torch.manual_seed(0)
        cases = [(PositionEmbeddingLearned(8), 3, 5), (PositionEmbeddingLearned(4), 6, 2)]
    finally:
        torch.random.set_rng_state(torch_state)
    for module, h, w in cases:
        row, col = module.row_embed.weight.detach(), module.col_embed.weight.detach()
        feats = row.shape[1]
        out, error = call(fn, row.clone(), col.clone(), h, w)
        layout = ("col_weight[:w] gives (w, F), row_weight[:h] gives (h, F); broadcast both to (h, w, F), "
                  "concatenate, move channels first.")
        if error:
            return failure(error, layout)
        problem = shape_problem(out, (2 * feats, h, w))
        if problem and isinstance(out, Tensor) and tuple(out.shape) == (h, w, 2 * feats):
            problem = f"expected shape {(2 * feats, h, w)}, got {tuple(out.shape)}: put the channels first."
        elif problem and isinstance(out, Tensor) and tuple(out.shape) == (2 * feats, w, h):
            problem = (f"expected shape {(2 * feats, h, w)}, got {tuple(out.shape)}: transpose(0, 2) swaps h and "
                       "w too; permute(2, 0, 1) takes (h, w, 2F) to (2F, h, w).")
        elif problem and isinstance(out, Tensor) and tuple(out.shape) == (feats, h, w):
            problem = (f"expected shape {(2 * feats, h, w)}, got {tuple(out.shape)}: concatenate the x and y "
                       "features along the channels (2F of them), don't add them.")
        if problem:
            return verdict(False, f"{problem} Hint: {layout}")
        with torch.no_grad():
            expected = module(torch.zeros(1, h, w, dtype=torch.bool))[0]
        if torch.equal(out.detach(), expected):
            continue

        def encoding(x_table: Tensor, y_table: Tensor, x_first: bool = True) -> Tensor:
            x = x_table[None].expand(h, -1, -1)                                # (h, w, F)
            y = y_table[:, None].expand(-1, w, -1)                             # (h, w, F)
            return torch.cat([x, y] if x_first else [y, x], dim=-1).permute(2, 0, 1)  # (2F, h, w)

        hint = mistake(out.detach(), expected, [
            (lambda: encoding(col[:w], row[:h], x_first=False),
             "y came first. The learned encoding puts the column (x) features first, then the row (y) "
             "ones: the opposite of the sine encoding."),
            (lambda: encoding(row[:w], col[:h]),
             "the tables are swapped: col_weight embeds the column index (x, along the width), "
             "row_weight the row index (y, along the height)."),
            (lambda: encoding(col[:w], row[:h]).permute(1, 2, 0).reshape(2 * feats, h, w),
             "reshape keeps the memory order, so it scrambles the (h, w, 2F) values: move the channels "
             "first with permute(2, 0, 1)."),
            (lambda: encoding(col[1:w + 1], row[1:h + 1]),
             "index the tables from 0 (row_weight[:h], col_weight[:w]): the learned table has no 1-based "
             "offset, unlike the sine encoding's cumsum."),
        ], rtol=0, atol=0)
        hint = hint or ("channel c < F at (i, j) is col_weight[j, c]; channel F + c is row_weight[i, c] "
                        "(row index i = y, column index j = x).")
        return verdict(False, f"for F = {feats}, h = {h}, w = {w}: {hint}")
    return verdict(True, name)
