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
