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
import torch.nn.functional as F
from torch import Tensor

from detr_full.transformer import MultiheadAttention, TransformerDecoderLayer, TransformerEncoderLayer
from detr_full.exercises.checking import STUB, call, close, failure, mistake, verdict

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
    if masked:  # every image has padding and real keys, so a mask used the wrong way round shows
        mask = torch.zeros(2, key.shape[1], dtype=torch.bool)
        mask[0, -1:] = True                  # image 0: its last key is padding
        mask[1, key.shape[1] // 2:] = True   # image 1: the second half of its keys is padding
    with torch.no_grad():
        out, weights = ref(query, key, value, mask)
    args = (query, key, value, ref.in_proj_weight.detach(), ref.in_proj_bias.detach(),
            ref.out_proj.weight.detach(), ref.out_proj.bias.detach(), heads)
    return args, mask, out, weights


def _attention_mistake(args: tuple, mask: Optional[Tensor], how: str) -> tuple[Tensor, Tensor]:
    """(output, weights) of multi-head attention with one likely mistake `how`, to name it in a hint."""
    query, key, value, w_in, b_in, w_out, b_out, heads = args
    (b, lq, d), dh = query.shape, query.shape[-1] // heads
    if how == "no_in_bias":
        b_in = torch.zeros_like(b_in)
    (w_q, w_k, w_v), (b_q, b_k, b_v) = w_in.chunk(3), b_in.chunk(3)
    if how == "kqv_order":
        (w_q, w_k, b_q, b_k) = (w_k, w_q, b_k, b_q)

    def project(x: Tensor, w: Tensor, bias: Tensor) -> Tensor:
        return (x @ w if how == "w_not_transposed" else x @ w.T) + bias

    def split(x: Tensor) -> Tensor:                                          # (B, L, D) -> (B, H, L, D/H)
        if how == "split_no_transpose":
            return x.reshape(b, heads, x.shape[1], dh)
        return x.view(b, x.shape[1], heads, dh).transpose(1, 2)

    q, k, v = split(project(query, w_q, b_q)), split(project(key, w_k, b_k)), split(project(value, w_v, b_v))
    scale = {"no_scale": 1.0, "scale_d": d ** 0.5, "scale_no_sqrt": float(dh)}.get(how, dh ** 0.5)
    scores = q @ k.transpose(-2, -1) / scale                                 # (B, H, Lq, Lk)
    if mask is not None and how != "no_mask":
        padded = (~mask if how == "mask_inverted" else mask)[:, None, None, :]  # (B, 1, 1, Lk)
        if how == "mask_zero":
            scores = scores.masked_fill(padded, 0.0)
        elif how != "mask_after_softmax":
            scores = scores.masked_fill(padded, float("-inf"))
    attn = scores.softmax(-2 if how == "softmax_queries" else -1)
    if how == "mask_after_softmax":
        attn = attn.masked_fill(mask[:, None, None, :], 0.0)
    weights = attn.sum(1) if how == "sum_heads" else attn.mean(1)          # (B, Lq, Lk)
    out = attn @ v                                                           # (B, H, Lq, D/H)
    out = out.reshape(b, lq, d) if how == "merge_no_transpose" else out.transpose(1, 2).reshape(b, lq, d)
    if how == "no_out_bias":
        b_out = torch.zeros_like(b_out)
    return (out if how == "no_out_proj" else out @ w_out.T + b_out), weights


_WEIGHT_MISTAKES = [
    ("w_not_transposed", "project with F.linear(x, W_q, b_q), i.e. x @ W_q.T + b_q: nn.Linear's weight is "
                         "(out_features, in_features), so use its transpose."),
    ("kqv_order", "in_proj_weight stacks the projections in the order q, k, v: rows 0 .. D-1 project the "
                  "query, D .. 2D-1 the key, 2D .. 3D-1 the value."),
    ("no_in_bias", "add the in_proj biases (the three blocks of in_proj_bias) to the projections."),
    ("no_scale", "scale the scores by 1 / sqrt(D/H) (the head size) before the softmax."),
    ("scale_d", "scale by 1/sqrt(D/H), the head size, not by 1/sqrt(D): each head's dot product sums D/H "
                "terms."),
    ("scale_no_sqrt", "scale by 1/sqrt(D/H), the square root of the head size, not by 1/(D/H)."),
    ("softmax_queries", "the softmax runs over the keys (the last dim), so each query's weights sum to 1."),
    ("split_no_transpose", "split the heads as (B, L, D) -> (B, L, H, D/H), then transpose to (B, H, L, D/H); "
                           "reshaping (B, L, D) straight to (B, H, L, D/H) mixes positions and features."),
    ("sum_heads", "average the weights over the heads (mean over dim 1), don't sum them."),
    ("no_mask", "padded keys (True in key_padding_mask) must get -inf scores before the softmax, so their "
                "weight is exactly 0; broadcast the mask (B, Lk) to (B, 1, 1, Lk)."),
    ("mask_inverted", "the mask is the wrong way round: True in key_padding_mask marks padding, the keys to "
                      "hide (masked_fill(mask, -inf)), not the real ones."),
    ("mask_zero", "fill the padded keys' scores with float('-inf'), not 0: exp(0) = 1 still gives them weight."),
    ("mask_after_softmax", "mask the scores before the softmax (-inf), not the weights after it: zeroing "
                           "weights afterwards leaves rows that no longer sum to 1."),
]
_OUTPUT_MISTAKES = [
    ("merge_no_transpose", "merge the heads back with a transpose first: (B, H, Lq, D/H) -> (B, Lq, H, D/H) "
                           "-> (B, Lq, D); a reshape alone mixes heads and positions."),
    ("no_out_bias", "add out_proj_bias after the output projection: F.linear(out, out_proj_weight, "
                    "out_proj_bias)."),
    ("no_out_proj", "apply the output projection to the merged heads: F.linear(out, out_proj_weight, "
                    "out_proj_bias)."),
]


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
            return failure(error, "" if error == STUB else hint)
        if not (isinstance(result, tuple) and len(result) == 2):
            return verdict(False, "return a pair (output (B, Lq, D), weights (B, Lq, Lk)).")
        out, weights = result
        bad_shape = _shape_hint("weights", weights, w_ref) or _shape_hint("output", out, out_ref)
        if bad_shape and isinstance(weights, Tensor):
            b, lq, lk = w_ref.shape
            if tuple(weights.shape) == (b, kw["heads"], lq, lk):
                bad_shape += " Average the weights over the heads: weights.mean(1)."
            elif tuple(weights.shape) == (b, lq, lq) and lq != lk:
                bad_shape += (" The keys and values come from the `key` and `value` arguments, not from "
                              "`query` (this is cross-attention).")
        if bad_shape:
            return verdict(False, f"[{name}] {bad_shape}")
        if not close(weights, w_ref):
            named = mistake(weights, w_ref, [(lambda how=how: _attention_mistake(args, mask, how)[1], why)
                                             for how, why in _WEIGHT_MISTAKES])
            return verdict(False, f"[{name}] the attention weights differ: {named or hint}")
        if not close(out, out_ref):
            named = mistake(out, out_ref, [(lambda how=how: _attention_mistake(args, mask, how)[0], why)
                                           for how, why in _OUTPUT_MISTAKES])
            return verdict(False, f"[{name}] the weights are right but the output differs: " + (
                named or "per head, weights @ v (B, H, Lq, D/H); merge the heads back to (B, Lq, D) "
                         "(transpose, then reshape), then apply out_proj."))
    return verdict(True, "your attention matches detr_full.transformer.MultiheadAttention "
                          "(heads, scaling, padding mask, output projection).")


def _randomised(layer: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Perturb every parameter (LayerNorms included), so that each one matters to the output."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in layer.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.2)
    return layer.eval()


def _ffn(layer: torch.nn.Module, x: Tensor, how: str) -> Tensor:
    hidden = layer.linear1(x)
    activation = {"no_relu": lambda t: t, "gelu": F.gelu}.get(how, F.relu)
    return layer.linear2(activation(hidden))


def _encoder_mistake(layer: TransformerEncoderLayer, src: Tensor, mask: Tensor, pos: Tensor, how: str) -> Tensor:
    """One encoder layer's forward with one likely mistake `how`, to name it in a hint."""
    pre_norm = layer.normalize_before != (how == "other_norm")
    x = layer.norm1(src) if pre_norm else src
    q = k = x if how == "no_pos" else x + pos
    k = x if how == "keys_no_pos" else k
    v = x + pos if how == "pos_in_values" else x
    attended = layer.self_attn(q, k, v, {"no_mask": None, "mask_inverted": ~mask}.get(how, mask))[0]
    residual = None if how == "no_attn_residual" else (src + pos if how == "pos_in_residual" else src)
    src = attended if residual is None else residual + attended
    src = src if pre_norm else layer.norm1(src)
    x = layer.norm2(src) if pre_norm else src
    src = _ffn(layer, x, how) + (0 if how == "no_ffn_residual" else src)
    return src if pre_norm else layer.norm2(src)


_ENCODER_MISTAKES = [
    ("other_norm", "this layer has normalize_before={pre_norm}, but you computed {other}: read "
                   "layer.normalize_before. {formula}"),
    ("pos_in_values", "add pos to the queries and keys only; the values are src itself."),
    ("no_pos", "add the position encoding pos to the queries and keys."),
    ("keys_no_pos", "add pos to the keys as well as the queries: q = k = src + pos (the values stay src)."),
    ("no_mask", "pass padding_mask to self_attn as the key padding mask."),
    ("mask_inverted", "the mask is the wrong way round: padding_mask is True on padding, the keys to hide; "
                      "pass it as it is."),
    ("pos_in_residual", "the residual adds the attention output to src, not to src + pos: pos only enters "
                        "the attention's queries and keys."),
    ("no_attn_residual", "keep the residual connection around the attention: src + attn(...)."),
    ("no_ffn_residual", "keep the residual connection around the feed-forward block: src + ffn(...)."),
    ("no_relu", "the feed-forward block is linear2(relu(linear1(x))): a ReLU between the two linears."),
    ("gelu", "DETR's feed-forward block uses ReLU, not GELU: linear2(relu(linear1(x)))."),
]


def _nan_hint(got: Tensor) -> Optional[str]:
    if torch.isnan(got).any():
        return ("the output has NaN: a query whose keys are all masked gets a softmax over nothing. Is the "
                "mask the wrong way round? True marks padding, and only padded keys are hidden.")
    return None


def _attention_error_hint(error: str) -> str:
    if "tuple" in error:
        return "the attention modules return a pair (output, weights): take [0]."
    return ""


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
    formulas = {
        True: "pre-norm normalises before each sub-layer: x = norm1(src); src = src + attn(x + pos, "
              "x + pos, x); then src = src + ffn(norm2(src)), with no norm after the residual sum.",
        False: "post-norm: src = norm1(src + attn(src + pos, src + pos, src)); "
               "then norm2(src + linear2(relu(linear1(src)))).",
    }
    kinds = {True: "pre-norm", False: "post-norm"}
    for pre_norm in (False, True):
        layer = _randomised(TransformerEncoderLayer(16, 4, 32, dropout=0.0, normalize_before=pre_norm), 1)
        with torch.no_grad():
            want = layer(src, mask, pos)
        got, error = call(fn, layer, src, mask, pos)
        if error:
            return failure(error, _attention_error_hint(error))
        bad_shape = _shape_hint("the output", got, want)
        if bad_shape:
            return verdict(False, bad_shape)
        if close(got, want):
            continue
        kind = kinds[pre_norm]
        hint = _nan_hint(got) or mistake(got, want, [
            (lambda how=how: _encoder_mistake(layer, src, mask, pos, how),
             why.format(pre_norm=pre_norm, other=kinds[not pre_norm], formula=formulas[pre_norm]))
            for how, why in _ENCODER_MISTAKES])
        return verdict(False, f"[{kind}] " + (hint or f"the output differs. {formulas[pre_norm]}"))
    return verdict(True, "your encoder layer matches detr_full's TransformerEncoderLayer (post-norm and pre-norm).")


def _decoder_mistake(layer: TransformerDecoderLayer, tgt: Tensor, memory: Tensor, mask: Tensor, pos: Tensor,
                     query_pos: Tensor, how: str) -> Tensor:
    """One decoder layer's forward with one likely mistake `how`, to name it in a hint."""
    pre_norm = layer.normalize_before != (how == "other_norm")
    if how != "no_self_attn":
        x = layer.norm1(tgt) if pre_norm else tgt
        q = k = x if how == "self_no_pos" else x + query_pos
        k = x if how == "self_keys_no_pos" else k
        attended = layer.self_attn(q, k, x + query_pos if how == "self_values_with_pos" else x)[0]
        tgt = attended + (0 if how == "no_self_residual" else tgt)
        tgt = tgt if pre_norm else layer.norm1(tgt)
    x = layer.norm2(tgt) if pre_norm else tgt
    keys = memory if how == "cross_keys_no_pos" else memory + pos
    values = memory + pos if how == "cross_values_with_pos" else memory
    attended = layer.multihead_attn(x if how == "cross_query_no_pos" else x + query_pos, keys, values,
                                    {"no_mask": None, "mask_inverted": ~mask}.get(how, mask))[0]
    tgt = attended + (0 if how == "no_cross_residual" else tgt)
    tgt = tgt if pre_norm else layer.norm2(tgt)
    x = layer.norm3(tgt) if pre_norm else tgt
    tgt = _ffn(layer, x, how) + (0 if how == "no_ffn_residual" else tgt)
    return tgt if pre_norm else layer.norm3(tgt)


_DECODER_MISTAKES = [
    ("other_norm", "this layer has normalize_before={pre_norm}, but you computed {other}: read "
                   "layer.normalize_before. {formula}"),
    ("cross_keys_no_pos", "the cross-attention keys are memory + pos (the values stay memory)."),
    ("cross_values_with_pos", "the cross-attention values are memory itself; pos goes on the keys only."),
    ("cross_query_no_pos", "add query_pos to the cross-attention queries too: tgt + query_pos."),
    ("self_no_pos", "add query_pos to the self-attention queries and keys: tgt + query_pos."),
    ("self_keys_no_pos", "add query_pos to the self-attention keys as well as its queries: q = k = tgt + "
                         "query_pos."),
    ("self_values_with_pos", "the self-attention values are tgt itself; query_pos goes on the queries and "
                             "keys only."),
    ("no_mask", "pass memory_padding_mask to the cross-attention (multihead_attn) as the key padding mask."),
    ("mask_inverted", "the mask is the wrong way round: memory_padding_mask is True on padding, the keys to "
                      "hide; pass it as it is."),
    ("no_self_attn", "the layer starts with self-attention among the queries (layer.self_attn), before the "
                     "cross-attention to memory."),
    ("no_self_residual", "keep the residual connection around the self-attention: tgt + self_attn(...)."),
    ("no_cross_residual", "keep the residual connection around the cross-attention: tgt + multihead_attn(...)."),
    ("no_ffn_residual", "keep the residual connection around the feed-forward block: tgt + ffn(...)."),
    ("no_relu", "the feed-forward block is linear2(relu(linear1(x))): a ReLU between the two linears."),
    ("gelu", "DETR's feed-forward block uses ReLU, not GELU: linear2(relu(linear1(x)))."),
]


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
    formulas = {
        True: "pre-norm: x = norm1(tgt); tgt = tgt + self_attn(x + query_pos, x + query_pos, x); "
              "x = norm2(tgt); tgt = tgt + multihead_attn(x + query_pos, memory + pos, memory, mask); "
              "tgt + ffn(norm3(tgt)).",
        False: "post-norm: tgt = norm1(tgt + self_attn(tgt + query_pos, tgt + query_pos, tgt)); "
               "tgt = norm2(tgt + multihead_attn(tgt + query_pos, memory + pos, memory, mask)); "
               "norm3(tgt + ffn(tgt)).",
    }
    kinds = {True: "pre-norm", False: "post-norm"}
    for pre_norm in (False, True):
        layer = _randomised(TransformerDecoderLayer(16, 4, 32, dropout=0.0, normalize_before=pre_norm), 2)
        with torch.no_grad():
            want = layer(tgt, memory, memory + pos, mask, query_pos)
        got, error = call(fn, layer, tgt, memory, mask, pos, query_pos)
        if error:
            return failure(error, _attention_error_hint(error))
        bad_shape = _shape_hint("the output", got, want)
        if bad_shape and isinstance(got, Tensor) and got.shape == memory.shape:
            bad_shape += (" The cross-attention queries come from tgt (+ query_pos); memory gives its keys "
                          "(+ pos) and values, so the output has one row per query.")
        if bad_shape:
            return verdict(False, bad_shape)
        if close(got, want):
            continue
        kind = kinds[pre_norm]
        hint = _nan_hint(got) or mistake(got, want, [
            (lambda how=how: _decoder_mistake(layer, tgt, memory, mask, pos, query_pos, how),
             why.format(pre_norm=pre_norm, other=kinds[not pre_norm], formula=formulas[pre_norm]))
            for how, why in _DECODER_MISTAKES])
        return verdict(False, f"[{kind}] " + (hint or f"the output differs. {formulas[pre_norm]}"))
    return verdict(True, "your decoder layer matches detr_full's TransformerDecoderLayer (post-norm and pre-norm).")
