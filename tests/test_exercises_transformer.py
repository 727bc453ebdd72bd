"""The notebook 04 checkers: a correct solution passes, wrong ones fail with a hint, nothing raises."""

from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from detr_full.exercises.transformer import check_decoder_layer, check_encoder_layer, check_multi_head_attention


def attention(query: Tensor, key: Tensor, value: Tensor, in_proj_weight: Tensor, in_proj_bias: Tensor,
              out_proj_weight: Tensor, out_proj_bias: Tensor, num_heads: int,
              key_padding_mask: Optional[Tensor] = None, scale_by_head: bool = True, use_mask: bool = True):
    d = query.shape[-1]
    (w_q, w_k, w_v), (b_q, b_k, b_v) = in_proj_weight.chunk(3), in_proj_bias.chunk(3)
    b, lq, lk, dh = query.shape[0], query.shape[1], key.shape[1], d // num_heads
    q = F.linear(query, w_q, b_q).view(b, lq, num_heads, dh).transpose(1, 2)
    k = F.linear(key, w_k, b_k).view(b, lk, num_heads, dh).transpose(1, 2)
    v = F.linear(value, w_v, b_v).view(b, lk, num_heads, dh).transpose(1, 2)
    scores = q @ k.transpose(-2, -1) / (dh if scale_by_head else d) ** 0.5
    if key_padding_mask is not None and use_mask:
        scores = scores.masked_fill(key_padding_mask[:, None, None, :], float("-inf"))
    attn = scores.softmax(-1)
    out = (attn @ v).transpose(1, 2).reshape(b, lq, d)
    return F.linear(out, out_proj_weight, out_proj_bias), attn.mean(1)


def test_attention_checker(capsys):
    assert check_multi_head_attention(attention)
    assert capsys.readouterr().out.startswith("OK:")
    assert not check_multi_head_attention(lambda *a, **k: attention(*a, **k, scale_by_head=False))
    assert "sqrt(D/H)" in capsys.readouterr().out
    assert not check_multi_head_attention(lambda *a, **k: attention(*a, **k, use_mask=False))
    assert "-inf" in capsys.readouterr().out


def test_checkers_never_raise_on_a_stub(capsys):
    def stub(*args, **kwargs):
        raise NotImplementedError

    for check in (check_multi_head_attention, check_encoder_layer, check_decoder_layer):
        assert check(stub) is False
        assert capsys.readouterr().out.startswith("not yet:")
    assert check_multi_head_attention(lambda *a, **k: None) is False
    assert check_encoder_layer(lambda *a: torch.zeros(3)) is False
    assert "shape" in capsys.readouterr().out


def encoder_layer(layer, src, padding_mask, pos, pos_in_values=False):
    attn = layer.self_attn
    if layer.normalize_before:
        x = layer.norm1(src)
        src = src + attn(x + pos, x + pos, x, padding_mask)[0]
        x = layer.norm2(src)
        return src + layer.linear2(F.relu(layer.linear1(x)))
    v = src + pos if pos_in_values else src
    src = layer.norm1(src + attn(src + pos, src + pos, v, padding_mask)[0])
    return layer.norm2(src + layer.linear2(F.relu(layer.linear1(src))))


def test_encoder_layer_checker(capsys):
    assert check_encoder_layer(encoder_layer)
    assert capsys.readouterr().out.startswith("OK:")
    assert not check_encoder_layer(lambda *a: encoder_layer(*a, pos_in_values=True))
    assert "queries and keys only" in capsys.readouterr().out


def decoder_layer(layer, tgt, memory, mask, pos, query_pos, keys_with_pos=True):
    keys = memory + pos if keys_with_pos else memory
    if layer.normalize_before:
        x = layer.norm1(tgt)
        tgt = tgt + layer.self_attn(x + query_pos, x + query_pos, x)[0]
        x = layer.norm2(tgt)
        tgt = tgt + layer.multihead_attn(x + query_pos, keys, memory, mask)[0]
        return tgt + layer.linear2(F.relu(layer.linear1(layer.norm3(tgt))))
    tgt = layer.norm1(tgt + layer.self_attn(tgt + query_pos, tgt + query_pos, tgt)[0])
    tgt = layer.norm2(tgt + layer.multihead_attn(tgt + query_pos, keys, memory, mask)[0])
    return layer.norm3(tgt + layer.linear2(F.relu(layer.linear1(tgt))))


def test_decoder_layer_checker(capsys):
    assert check_decoder_layer(decoder_layer)
    assert capsys.readouterr().out.startswith("OK:")
    assert not check_decoder_layer(lambda *a: decoder_layer(*a, keys_with_pos=False))
    assert "memory + pos" in capsys.readouterr().out


# ----------------------------------------------------------------------------- likely wrong answers

def attention_with(query, key, value, in_proj_weight, in_proj_bias, out_proj_weight, out_proj_bias, num_heads,
                   key_padding_mask=None, *, mistake):
    """Multi-head attention written as a learner would, with one mistake."""
    b, lq, d = query.shape
    dh = d // num_heads
    (w_q, w_k, w_v), (b_q, b_k, b_v) = in_proj_weight.chunk(3), in_proj_bias.chunk(3)
    if mistake == "k, q, v order":
        (w_q, w_k), (b_q, b_k) = (w_k, w_q), (b_k, b_q)
    if mistake == "no bias":
        b_q, b_k, b_v = (torch.zeros_like(x) for x in (b_q, b_k, b_v))
    project = (lambda x, w, bias: x @ w + bias) if mistake == "x @ W" else F.linear
    if mistake == "reshape heads":
        def split(x):
            return x.reshape(b, num_heads, x.shape[1], dh)
    else:
        def split(x):
            return x.view(b, x.shape[1], num_heads, dh).transpose(1, 2)
    q, k, v = split(project(query, w_q, b_q)), split(project(key, w_k, b_k)), split(project(value, w_v, b_v))
    scores = q @ k.transpose(-2, -1) * {"no scale": 1.0, "1/dh": dh ** -1.0}.get(mistake, dh ** -0.5)
    if key_padding_mask is not None:
        padded = key_padding_mask[:, None, None, :]
        if mistake == "inverted mask":
            scores = scores.masked_fill(~padded, float("-inf"))
        elif mistake == "fill 0":
            scores = scores.masked_fill(padded, 0.0)
        elif mistake != "mask after softmax":
            scores = scores.masked_fill(padded, float("-inf"))
    attn = scores.softmax(-2 if mistake == "softmax over queries" else -1)
    if mistake == "mask after softmax" and key_padding_mask is not None:
        attn = attn.masked_fill(key_padding_mask[:, None, None, :], 0.0)
    out = attn @ v
    out = out.reshape(b, lq, d) if mistake == "merge without transpose" else out.transpose(1, 2).reshape(b, lq, d)
    weights = {"heads kept": attn, "sum over heads": attn.sum(1)}.get(mistake, attn.mean(1))
    if mistake == "no out bias":
        return F.linear(out, out_proj_weight), weights
    return (out if mistake == "no out_proj" else F.linear(out, out_proj_weight, out_proj_bias)), weights


def test_attention_checker_names_each_mistake(capsys):
    for wrong, words in (("x @ W", "use its transpose"), ("no bias", "in_proj biases"),
                         ("no scale", "scale the scores by 1 / sqrt(D/H)"), ("1/dh", "square root of the head size"),
                         ("softmax over queries", "over the keys"), ("reshape heads", "mixes positions and features"),
                         ("sum over heads", "don't sum"), ("heads kept", "weights.mean(1)"),
                         ("inverted mask", "wrong way round"), ("fill 0", "not 0"),
                         ("mask after softmax", "before the softmax"),
                         ("merge without transpose", "a reshape alone"), ("no out_proj", "output projection"),
                         ("k, q, v order", "in the order q, k, v"), ("no out bias", "add out_proj_bias")):
        assert not check_multi_head_attention(lambda *a, **k: attention_with(*a, **k, mistake=wrong))
        out = capsys.readouterr().out
        assert out.startswith("not yet:") and words in out, (wrong, out)
    assert check_multi_head_attention(lambda *a, **k: attention_with(*a, **k, mistake=None))
    assert capsys.readouterr().out.startswith("OK:")

    def self_attention_only(query, key, value, *weights, key_padding_mask=None):
        return attention(query, query, query, *weights)

    assert not check_multi_head_attention(self_attention_only)
    assert "`key` and `value` arguments" in capsys.readouterr().out


def encoder_with(layer, src, padding_mask, pos, *, mistake):
    """One encoder layer written as a learner would, with one mistake."""
    pre_norm = layer.normalize_before != (mistake == "ignores normalize_before")
    attend = lambda q, k, v, m: layer.self_attn(q, k, v, m)[0]  # noqa: E731
    x = layer.norm1(src) if pre_norm else src
    q = k = x if mistake == "no pos" else x + pos
    k = x if mistake == "keys without pos" else k
    mask = {"no mask": None, "inverted mask": ~padding_mask}.get(mistake, padding_mask)
    a = attend(q, k, x, mask)
    if mistake == "in place":
        src += a
    else:
        src = (src + pos if mistake == "pos in residual" else src) + a
    src = src if pre_norm else layer.norm1(src)
    x = layer.norm2(src) if pre_norm else src
    hidden = {"no relu": lambda t: t, "gelu": F.gelu}.get(mistake, F.relu)(layer.linear1(x))
    src = layer.linear2(hidden) + (0 if mistake == "no ffn residual" else src)
    return src if pre_norm else layer.norm2(src)


def test_encoder_layer_checker_names_each_mistake(capsys):
    for wrong, words in (("ignores normalize_before", "normalize_before=False, but you computed pre-norm"),
                         ("no pos", "add the position encoding"), ("no mask", "pass padding_mask"),
                         ("inverted mask", "wrong way round"), ("pos in residual", "not to src + pos"),
                         ("no ffn residual", "around the feed-forward block"), ("no relu", "ReLU"),
                         ("keys without pos", "keys as well as the queries"), ("gelu", "not GELU"),
                         ("in place", "changed its input (argument 2) in place")):
        assert not check_encoder_layer(lambda *a: encoder_with(*a, mistake=wrong))
        out = capsys.readouterr().out
        assert out.startswith("not yet:") and words in out, (wrong, out)
    assert check_encoder_layer(lambda *a: encoder_with(*a, mistake=None))
    assert capsys.readouterr().out.startswith("OK:")

    def post_norm_only(layer, src, padding_mask, pos):   # right for post-norm, ignores normalize_before
        return encoder_layer(layer.eval(), src, padding_mask, pos) if not layer.normalize_before else \
            encoder_with(layer, src, padding_mask, pos, mistake="ignores normalize_before")

    assert not check_encoder_layer(post_norm_only)
    assert "normalize_before=True, but you computed post-norm" in capsys.readouterr().out

    def no_index(layer, src, padding_mask, pos):         # forgets that attention returns (output, weights)
        return layer.norm1(src + layer.self_attn(src + pos, src + pos, src, padding_mask))

    assert not check_encoder_layer(no_index)
    assert "take [0]" in capsys.readouterr().out


def decoder_with(layer, tgt, memory, mask, pos, query_pos, *, mistake):
    """One decoder layer written as a learner would, with one mistake."""
    pre_norm = layer.normalize_before
    if mistake != "no self-attention":
        x = layer.norm1(tgt) if pre_norm else tgt
        q = k = x if mistake == "self without query_pos" else x + query_pos
        k = x if mistake == "self keys without query_pos" else k
        tgt = tgt + layer.self_attn(q, k, x + query_pos if mistake == "self values with query_pos" else x)[0]
        tgt = tgt if pre_norm else layer.norm1(tgt)
    x = layer.norm2(tgt) if pre_norm else tgt
    q = x if mistake == "cross without query_pos" else x + query_pos
    values = memory + pos if mistake == "values with pos" else memory
    attended = layer.multihead_attn(q, memory + pos, values, None if mistake == "no mask" else mask)[0]
    tgt = attended if mistake == "no cross residual" else tgt + attended
    tgt = tgt if pre_norm else layer.norm2(tgt)
    x = layer.norm3(tgt) if pre_norm else tgt
    tgt = tgt + layer.linear2((F.gelu if mistake == "gelu" else F.relu)(layer.linear1(x)))
    return tgt if pre_norm else layer.norm3(tgt)


def test_decoder_layer_checker_names_each_mistake(capsys):
    for wrong, words in (("self without query_pos", "self-attention queries and keys"),
                         ("self values with query_pos", "self-attention values are tgt itself"),
                         ("cross without query_pos", "cross-attention queries too"),
                         ("values with pos", "values are memory itself"), ("no mask", "pass memory_padding_mask"),
                         ("no self-attention", "starts with self-attention"),
                         ("no cross residual", "around the cross-attention"),
                         ("self keys without query_pos", "keys as well as its queries"), ("gelu", "not GELU")):
        assert not check_decoder_layer(lambda *a: decoder_with(*a, mistake=wrong))
        out = capsys.readouterr().out
        assert out.startswith("not yet:") and words in out, (wrong, out)
    assert check_decoder_layer(lambda *a: decoder_with(*a, mistake=None))
    assert capsys.readouterr().out.startswith("OK:")

    def queries_from_memory(layer, tgt, memory, mask, pos, query_pos):   # cross-attention the wrong way round
        return layer.multihead_attn(memory + pos, tgt + query_pos, tgt)[0]

    assert not check_decoder_layer(queries_from_memory)
    assert "one row per query" in capsys.readouterr().out
