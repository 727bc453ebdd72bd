"""Checkers for the exercises of notebooks/04_transformer.ipynb.

Each checker calls the learner's function on small seeded cases, compares it with
`detr_full.transformer`, prints "OK: ..." or "not yet: <hint>", and returns True or False.
A wrong answer never raises: the learner's exceptions are caught and reported as hints.

Dimension key: B batch, Lq queries, Lk keys, D hidden, H heads.

    check_multi_head_attention(fn)  fn(query, key, value, in_proj_weight, in_proj_bias, out_proj_weight,
                                       out_proj_bias, num_heads, key_padding_mask=None) -> (output, weights)
    check_encoder_layer(fn)         fn(layer, src, padding_mask, pos) -> (B, L, D)
    check_decoder_layer(fn)         fn(layer, tgt, memory, memory_padding_mask, pos, query_pos) -> (B, Q, D)
"""

from __future__ import annotations

from typing import Callable, Optional

import torch
from torch import Tensor

from detr_full.transformer import MultiheadAttention, TransformerDecoderLayer, TransformerEncoderLayer
from detr_full.exercises.checking import call, verdict, close

AttentionFn = Callable[..., tuple[Tensor, Tensor]]


def _shape_hint(name: str, got: object, want: Tensor) -> Optional[str]:
    if not isinstance(got, Tensor):
        return f"{name} should be a Tensor, got {type(got).__name__}."
    if got.shape != want.shape:
        return f"{name} has shape {tuple(got.shape)}, expected {tuple(want.shape)}."
    return None


def _attention_case(d: int, heads: int, lq: int, lk: int, masked: bool, self_attention: bool, seed: int):
    g = torch.Generator().manual_seed(seed)
    ref = MultiheadAttention(d, heads).eval()
    with torch.no_grad():
        for p in ref.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    ref.return_weights = True
    query = torch.randn(2, lq, d, generator=g)
    key = query if self_attention else torch.randn(2, lk, d, generator=g)
    value = torch.randn(2, key.shape[1], d, generator=g)
    mask = None
    if masked:
        mask = torch.zeros(2, key.shape[1], dtype=torch.bool)
        mask[1, key.shape[1] // 2:] = True  # image 1: the second half of its keys is padding
    with torch.no_grad():
        out, weights = ref(query, key, value, mask)
    args = (query, key, value, ref.in_proj_weight.detach(), ref.in_proj_bias.detach(),
            ref.out_proj.weight.detach(), ref.out_proj.bias.detach(), heads)
    return args, mask, out, weights


def check_multi_head_attention(fn: AttentionFn) -> bool:
    """Check `fn(query, key, value, in_proj_weight, in_proj_bias, out_proj_weight, out_proj_bias,
    num_heads, key_padding_mask=None) -> (output, weights)`.

    query (B, Lq, D), key and value (B, Lk, D); in_proj_weight (3D, D) stacks the q, k, v
    projections; key_padding_mask (B, Lk) bool, True on padding. Returns output (B, Lq, D) and the
    attention weights (B, Lq, Lk) averaged over heads, as `detr_full.transformer.MultiheadAttention`
    (with `return_weights = True`) and `nn.MultiheadAttention` do. Prints OK or a hint; returns True when it passes.
    """
    # From simple to hard, so the first failure points at one idea.
    cases = [
        ("one head, no mask", dict(d=8, heads=1, lq=3, lk=5, masked=False, self_attention=False),
         "with one head, weights = softmax over keys of (q @ k^T) / sqrt(D), with q, k, v the three "
         "row blocks of in_proj (q = query @ W_q^T + b_q, ...)."),
        ("4 heads, no mask", dict(d=16, heads=4, lq=3, lk=5, masked=False, self_attention=False),
         "split D into H heads of D/H features: (B, L, D) -> (B, L, H, D/H) -> (B, H, L, D/H); scale "
         "by 1/sqrt(D/H), the head size; return the weights averaged over heads (B, Lq, Lk)."),
        ("self-attention", dict(d=16, heads=4, lq=6, lk=6, masked=False, self_attention=True),
         "self-attention is the same computation with key = query."),
        ("padding mask", dict(d=16, heads=4, lq=3, lk=6, masked=True, self_attention=False),
         "padded keys (True in key_padding_mask) must get -inf scores before the softmax, so their "
         "weight is exactly 0; broadcast the mask (B, Lk) to (B, 1, 1, Lk)."),
    ]
    for seed, (name, kw, hint) in enumerate(cases):
        args, mask, out_ref, w_ref = _attention_case(**kw, seed=seed)
        result, error = call(fn, *args, key_padding_mask=mask)
        if error:
            return verdict(False, error)
        if not (isinstance(result, tuple) and len(result) == 2):
            return verdict(False, "return a pair (output (B, Lq, D), weights (B, Lq, Lk)).")
        out, weights = result
        bad_shape = _shape_hint("weights", weights, w_ref) or _shape_hint("output", out, out_ref)
        if bad_shape:
            return verdict(False, f"[{name}] {bad_shape}")
        if not close(weights, w_ref):
            return verdict(False, f"[{name}] the attention weights differ: {hint}")
        if not close(out, out_ref):
            return verdict(False, f"[{name}] the weights are right but the output differs: per head, "
                                   "weights @ v (B, H, Lq, D/H); merge the heads back to (B, Lq, D) "
                                   "(transpose, then reshape), then apply out_proj.")
    return verdict(True, "your attention matches detr_full.transformer.MultiheadAttention "
                          "(heads, scaling, padding mask, output projection).")


def _randomised(layer: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Perturb every parameter (LayerNorms included), so that each one matters to the output."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in layer.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.2)
    return layer.eval()


def _encoder_variant(layer: TransformerEncoderLayer, src: Tensor, mask: Tensor, pos: Tensor, how: str) -> Tensor:
    """Common mistakes, to name them in the hints."""
    attn = layer.self_attn
    if how == "pos_in_values":
        x = src + pos
        src = layer.norm1(src + attn(x, x, x, mask)[0])
    elif how == "no_pos":
        src = layer.norm1(src + attn(src, src, src, mask)[0])
    elif how == "no_mask":
        x = src + pos
        src = layer.norm1(src + attn(x, x, src, None)[0])
    return layer.norm2(src + layer._ffn(src))


def check_encoder_layer(fn: Callable[..., Tensor]) -> bool:
    """Check `fn(layer, src, padding_mask, pos) -> (B, L, D)`, one encoder layer's forward.

    `layer` is a `detr_full.transformer.TransformerEncoderLayer`: use its modules (`self_attn`,
    `linear1`, `linear2`, `norm1`, `norm2`) and honour `layer.normalize_before` (pre-norm). src, pos
    (B, L, D); padding_mask (B, L) True on padding. Dropout is 0 here. Prints OK or a hint; returns True when it passes.
    """
    g = torch.Generator().manual_seed(0)
    src, pos = torch.randn(2, 7, 16, generator=g), torch.randn(2, 7, 16, generator=g)
    mask = torch.zeros(2, 7, dtype=torch.bool)
    mask[1, 4:] = True
    for pre_norm in (False, True):
        layer = _randomised(TransformerEncoderLayer(16, 4, 32, dropout=0.0, normalize_before=pre_norm), 1)
        with torch.no_grad():
            want = layer(src, mask, pos)
        got, error = call(fn, layer, src, mask, pos)
        if error:
            return verdict(False, error)
        bad_shape = _shape_hint("the output", got, want)
        if bad_shape:
            return verdict(False, bad_shape)
        if close(got, want):
            continue
        kind = "pre-norm" if pre_norm else "post-norm"
        if not pre_norm:
            with torch.no_grad():
                for how, hint in (
                        ("pos_in_values", "add pos to the queries and keys only; the values are src itself."),
                        ("no_pos", "add the position encoding pos to the queries and keys."),
                        ("no_mask", "pass padding_mask to self_attn as the key padding mask.")):
                    if close(got, _encoder_variant(layer, src, mask, pos, how)):
                        return verdict(False, f"[{kind}] {hint}")
        hint = ("pre-norm normalises before each sub-layer: x = norm1(src); src = src + attn(x + pos, "
                "x + pos, x); then src = src + ffn(norm2(src)), with no norm after the residual sum."
                if pre_norm else
                "post-norm: src = norm1(src + attn(src + pos, src + pos, src)); "
                "then norm2(src + linear2(relu(linear1(src)))).")
        return verdict(False, f"[{kind}] the output differs. {hint}")
    return verdict(True, "your encoder layer matches detr_full's TransformerEncoderLayer (post-norm and pre-norm).")


def check_decoder_layer(fn: Callable[..., Tensor]) -> bool:
    """Check `fn(layer, tgt, memory, memory_padding_mask, pos, query_pos) -> (B, Q, D)`.

    `layer` is a `detr_full.transformer.TransformerDecoderLayer` (modules `self_attn`,
    `multihead_attn`, `linear1`, `linear2`, `norm1..3`; honour `layer.normalize_before`).
    tgt, query_pos (B, Q, D); memory, pos (B, L, D); memory_padding_mask (B, L) True on padding.
    Dropout is 0 here. Prints OK or a hint; returns True when it passes.
    """
    g = torch.Generator().manual_seed(0)
    tgt, query_pos = torch.randn(2, 5, 16, generator=g), torch.randn(2, 5, 16, generator=g)
    memory, pos = torch.randn(2, 9, 16, generator=g), torch.randn(2, 9, 16, generator=g)
    mask = torch.zeros(2, 9, dtype=torch.bool)
    mask[1, 6:] = True
    for pre_norm in (False, True):
        layer = _randomised(TransformerDecoderLayer(16, 4, 32, dropout=0.0, normalize_before=pre_norm), 2)
        with torch.no_grad():
            want = layer(tgt, memory, memory + pos, mask, query_pos)
        got, error = call(fn, layer, tgt, memory, mask, pos, query_pos)
        if error:
            return verdict(False, error)
        bad_shape = _shape_hint("the output", got, want)
        if bad_shape:
            return verdict(False, bad_shape)
        if close(got, want):
            continue
        kind = "pre-norm" if pre_norm else "post-norm"
        if not pre_norm:
            with torch.no_grad():
                # the most common slip: forgetting pos on the cross-attention keys
                x = layer.norm1(tgt + layer.self_attn(tgt + query_pos, tgt + query_pos, tgt)[0])
                x = layer.norm2(x + layer.multihead_attn(x + query_pos, memory, memory, mask)[0])
                if close(got, layer.norm3(x + layer._ffn(x))):
                    return verdict(False, f"[{kind}] the cross-attention keys are memory + pos "
                                           "(the values stay memory).")
        hint = ("pre-norm: x = norm1(tgt); tgt = tgt + self_attn(x + query_pos, x + query_pos, x); "
                "x = norm2(tgt); tgt = tgt + multihead_attn(x + query_pos, memory + pos, memory, mask); "
                "tgt + ffn(norm3(tgt))." if pre_norm else
                "post-norm: tgt = norm1(tgt + self_attn(tgt + query_pos, tgt + query_pos, tgt)); "
                "tgt = norm2(tgt + multihead_attn(tgt + query_pos, memory + pos, memory, mask)); "
                "norm3(tgt + ffn(tgt)).")
        return verdict(False, f"[{kind}] the output differs. {hint}")
    return verdict(True, "your decoder layer matches detr_full's TransformerDecoderLayer (post-norm and pre-norm).")

