"""The DETR encoder-decoder transformer (paper section 3.2 and figure 10).

Dimension key: B batch, Q queries, D hidden (d_model), H heads, h w feature map, L = h*w.

Differences from the official `models/transformer.py` (itself a modified copy of nn.Transformer):
- batch-first everywhere: (B, L, D), never (L, B, D);
- attention calls `F.scaled_dot_product_attention` and only materialises the (B, Lq, Lk) weight
  matrix when asked (`attention.return_weights = True`, what the attention-map notebook does).
  The official layers ask nn.MultiheadAttention for weights at every call and then discard them;
- `memory + pos`, the cross-attention keys' input, is computed once instead of once per decoder layer;
- relu only (the official activation flag is never set by main.py).
Parameter names are the official ones, so official checkpoints load unchanged.
"""

from __future__ import annotations

import copy
from typing import Callable, NamedTuple, Optional, Sequence, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class Memory(NamedTuple):
    """The tokens a decoder layer's cross-attention reads (one level of them: the encoder's output, or a
    successor's extra level) and where they are."""
    tokens: Tensor        # (B, L, D) the values
    pos: Tensor           # (B, L, D) their position encodings, added to the keys
    padding_mask: Tensor  # (B, L) True on padding


# A decoder's guide (None in DETR): called before every layer with the previous layer's normalised
# output (B, Q, D) (None before the first), it returns this layer's query positions (B, Q, D) (None:
# keep the current ones) and a bias on its cross-attention logits, (B, Q, L) or per head (B, H, Q, L)
# (None: no bias). A successor steers the queries with it, e.g. towards reference boxes it refines.
Guide = Callable[[Optional[Tensor]], tuple[Optional[Tensor], Optional[Tensor]]]


class MultiheadAttention(nn.Module):
    """Batch-first multi-head attention with nn.MultiheadAttention's parameter names
    (`in_proj_weight`, `in_proj_bias`, `out_proj`).

    forward returns `(output, weights)` like nn.MultiheadAttention; `weights` (B, Lq, Lk), averaged
    over heads, is None unless `self.return_weights` is True.
    """

    def __init__(self, embed_dim: int, num_heads: int, dropout: float = 0.0):
        super().__init__()
        if embed_dim % num_heads:
            raise ValueError(f"hidden_dim={embed_dim} must be divisible by nheads={num_heads}.")
        self.embed_dim, self.num_heads, self.dropout = embed_dim, num_heads, dropout
        self.in_proj_weight = nn.Parameter(torch.empty(3 * embed_dim, embed_dim))
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * embed_dim))
        self.out_proj = nn.Linear(embed_dim, embed_dim)
        self.return_weights = False
        nn.init.xavier_uniform_(self.in_proj_weight)
        nn.init.zeros_(self.out_proj.bias)

    def forward(self, query: Tensor, key: Tensor, value: Tensor, key_padding_mask: Optional[Tensor] = None,
                allowed: Optional[Tensor] = None, bias: Optional[Tensor] = None) -> tuple[Tensor, Optional[Tensor]]:
        """query (B, Lq, D), key and value (B, Lk, D), key_padding_mask (B, Lk) True on padding;
        allowed (Lq, Lk) bool, True where a query may attend to a key (None: everywhere);
        bias (B, Lq, Lk) float, added to every head's attention logits, or (B, H, Lq, Lk) one per head
        (None: nothing)."""
        d, heads = self.embed_dim, self.num_heads
        w, b = self.in_proj_weight, self.in_proj_bias
        if query is key:  # self-attention: q and k share their input, one matmul for both
            q, k = F.linear(query, w[: 2 * d], b[: 2 * d]).chunk(2, dim=-1)
        else:
            q, k = F.linear(query, w[:d], b[:d]), F.linear(key, w[d: 2 * d], b[d: 2 * d])
        v = F.linear(value, w[2 * d:], b[2 * d:])
        bsz, lq, lk = query.shape[0], query.shape[1], key.shape[1]
        q = q.view(bsz, lq, heads, d // heads).transpose(1, 2)             # (B, H, Lq, D/H)
        k = k.view(bsz, lk, heads, d // heads).transpose(1, 2)             # (B, H, Lk, D/H)
        v = v.view(bsz, lk, heads, d // heads).transpose(1, 2)
        # SDPA's boolean mask means "may attend", the opposite of key_padding_mask.
        attend = None if key_padding_mask is None else ~key_padding_mask[:, None, None, :]  # (B, 1, 1, Lk)
        if allowed is not None:
            attend = allowed if attend is None else attend & allowed                 # (B, 1, Lq, Lk) or (Lq, Lk)
        if bias is not None:  # SDPA adds a float mask to the logits; -inf where attention is not allowed
            bias = (bias[:, None] if bias.dim() == 3 else bias).to(q.dtype)          # (B, 1 or H, Lq, Lk)
            attend = bias if attend is None else bias.masked_fill(~attend, float("-inf"))
        dropout = self.dropout if self.training else 0.0
        weights = None
        if self.return_weights:
            scores = (q * (d // heads) ** -0.5) @ k.transpose(-2, -1)       # (B, H, Lq, Lk)
            if attend is not None and attend.dtype == torch.bool:
                scores = scores.masked_fill(~attend, float("-inf"))
            elif attend is not None:
                scores = scores + attend
            attn = scores.softmax(-1)
            weights = attn.mean(1)                                          # (B, Lq, Lk)
            out = F.dropout(attn, dropout, self.training) @ v
        else:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=attend, dropout_p=dropout)
        out = out.transpose(1, 2).reshape(bsz, lq, d)                       # (B, Lq, D)
        return self.out_proj(out), weights


class TransformerEncoderLayer(nn.Module):
    """Self-attention + FFN; the position encoding is added to queries and keys, never to values."""

    def __init__(self, d_model: int, nhead: int, dim_feedforward: int = 2048, dropout: float = 0.1,
                 normalize_before: bool = False):
        super().__init__()
        self.self_attn = MultiheadAttention(d_model, nhead, dropout=dropout)
        self.linear1 = nn.Linear(d_model, dim_feedforward)
        self.linear2 = nn.Linear(dim_feedforward, d_model)
        self.norm1, self.norm2 = nn.LayerNorm(d_model), nn.LayerNorm(d_model)
        self.dropout, self.dropout1, self.dropout2 = (nn.Dropout(dropout) for _ in range(3))
        self.normalize_before = normalize_before

    def _ffn(self, x: Tensor) -> Tensor:
        return self.linear2(self.dropout(F.relu(self.linear1(x))))

    def forward(self, src: Tensor, padding_mask: Optional[Tensor], pos: Tensor) -> Tensor:
        """src, pos (B, L, D); padding_mask (B, L) True on padding -> (B, L, D)."""
        if self.normalize_before:
            x = self.norm1(src)
            q = k = x + pos
            src = src + self.dropout1(self.self_attn(q, k, x, padding_mask)[0])
            return src + self.dropout2(self._ffn(self.norm2(src)))
        q = k = src + pos
        src = self.norm1(src + self.dropout1(self.self_attn(q, k, src, padding_mask)[0]))
        return self.norm2(src + self.dropout2(self._ffn(src)))


class TransformerDecoderLayer(nn.Module):
    """Self-attention among queries, cross-attention to the encoder memory, FFN."""

    def __init__(self, d_model: int, nhead: int, dim_feedforward: int = 2048, dropout: float = 0.1,
                 normalize_before: bool = False):
        super().__init__()
        self.self_attn = MultiheadAttention(d_model, nhead, dropout=dropout)
        self.multihead_attn = MultiheadAttention(d_model, nhead, dropout=dropout)
        self.linear1 = nn.Linear(d_model, dim_feedforward)
        self.linear2 = nn.Linear(dim_feedforward, d_model)
        self.norm1, self.norm2, self.norm3 = (nn.LayerNorm(d_model) for _ in range(3))
        self.dropout, self.dropout1, self.dropout2, self.dropout3 = (nn.Dropout(dropout) for _ in range(4))
        self.normalize_before = normalize_before

    def _ffn(self, x: Tensor) -> Tensor:
        return self.linear2(self.dropout(F.relu(self.linear1(x))))

    def forward(self, tgt: Tensor, memory: Tensor, memory_with_pos: Tensor,
                memory_padding_mask: Optional[Tensor], query_pos: Tensor,
                query_allowed: Optional[Tensor] = None, memory_bias: Optional[Tensor] = None) -> Tensor:
        """tgt, query_pos (B, Q, D); memory, memory_with_pos (B, L, D); mask (B, L) -> (B, Q, D).
        query_allowed (Q, Q): which queries each query may attend to (None: all, as in DETR);
        memory_bias (B, Q, L) or (B, H, Q, L): added to the cross-attention logits (None: nothing, as in DETR)."""
        if self.normalize_before:
            x = self.norm1(tgt)
            q = k = x + query_pos
            tgt = tgt + self.dropout1(self.self_attn(q, k, x, allowed=query_allowed)[0])
            x = self.norm2(tgt)
            tgt = tgt + self.dropout2(self.multihead_attn(x + query_pos, memory_with_pos, memory,
                                                          memory_padding_mask, bias=memory_bias)[0])
            return tgt + self.dropout3(self._ffn(self.norm3(tgt)))
        q = k = tgt + query_pos
        tgt = self.norm1(tgt + self.dropout1(self.self_attn(q, k, tgt, allowed=query_allowed)[0]))
        tgt = self.norm2(tgt + self.dropout2(self.multihead_attn(tgt + query_pos, memory_with_pos, memory,
                                                                 memory_padding_mask, bias=memory_bias)[0]))
        return self.norm3(tgt + self.dropout3(self._ffn(tgt)))


class TransformerEncoder(nn.Module):
    def __init__(self, layer: TransformerEncoderLayer, num_layers: int, norm: Optional[nn.LayerNorm]):
        super().__init__()
        self.layers = nn.ModuleList(copy.deepcopy(layer) for _ in range(num_layers))
        self.norm = norm  # only with pre-norm: the last layer's output is otherwise un-normalised

    def forward(self, src: Tensor, padding_mask: Optional[Tensor], pos: Tensor) -> Tensor:
        for layer in self.layers:
            src = layer(src, padding_mask, pos)
        return src if self.norm is None else self.norm(src)


class TransformerDecoder(nn.Module):
    def __init__(self, layer: TransformerDecoderLayer, num_layers: int, norm: nn.LayerNorm):
        super().__init__()
        self.layers = nn.ModuleList(copy.deepcopy(layer) for _ in range(num_layers))
        self.norm = norm  # shared by every layer's readout, which feeds the auxiliary losses

    def forward(self, tgt: Tensor, levels: Sequence[Sequence[Memory]], query_pos: Optional[Tensor],
                query_allowed: Optional[Tensor] = None, guide: Optional[Guide] = None) -> Tensor:
        """tgt (B, Q, D), the queries' content; levels[i]: the memory levels layer i reads (DETR: the
        encoder's output, for every layer); query_pos (B, Q, D), or None when the guide gives the first
        layer's. -> (num_layers, B, Q, D): the normalised output of every layer."""
        position, memory_bias = guide(None) if guide is not None else (None, None)
        query_pos = query_pos if position is None else position
        reads = _cross_attention_inputs(levels)
        outputs: list[Tensor] = []
        for i, (layer, (memory, memory_with_pos, mask)) in enumerate(zip(self.layers, reads, strict=True)):
            if i > 0 and guide is not None:
                position, memory_bias = guide(outputs[-1])
                query_pos = query_pos if position is None else position
            tgt = layer(tgt, memory, memory_with_pos, mask, query_pos, query_allowed, memory_bias)
            outputs.append(self.norm(tgt))
        return torch.stack(outputs)


def _cross_attention_inputs(levels: Sequence[Sequence[Memory]]) -> list[tuple[Tensor, Tensor, Tensor]]:
    """Per layer: the values (B, L, D), keys (B, L, D) and padding mask (B, L) over the levels it reads,
    concatenated; each level's keys (tokens + pos) and each combination are computed once. The official
    layers add pos to the memory in every layer."""
    keys: dict[int, Tensor] = {}
    combined: dict[tuple[int, ...], tuple[Tensor, Tensor, Tensor]] = {}
    for layer_levels in levels:
        ids = tuple(map(id, layer_levels))
        if ids in combined:
            continue
        values = torch.cat([m.tokens for m in layer_levels], 1) if len(layer_levels) > 1 else layer_levels[0].tokens
        for m in layer_levels:
            if id(m) not in keys:
                keys[id(m)] = m.tokens + m.pos                                  # (B, L_i, D)
        level_keys = [keys[id(m)] for m in layer_levels]
        combined[ids] = (values, torch.cat(level_keys, 1) if len(level_keys) > 1 else level_keys[0],
                         torch.cat([m.padding_mask for m in layer_levels], 1) if len(layer_levels) > 1
                         else layer_levels[0].padding_mask)
    return [combined[tuple(map(id, layer_levels))] for layer_levels in levels]


class Transformer(nn.Module):
    def __init__(self, d_model: int = 512, nhead: int = 8, num_encoder_layers: int = 6,
                 num_decoder_layers: int = 6, dim_feedforward: int = 2048, dropout: float = 0.1,
                 normalize_before: bool = False, pos_at_input: bool = False):
        """pos_at_input: add the spatial encoding to the encoder's input once, and to no attention
        (the paper's Table 3 ablation; False = official: to every attention's queries and keys)."""
        super().__init__()
        self.pos_at_input = pos_at_input
        enc = TransformerEncoderLayer(d_model, nhead, dim_feedforward, dropout, normalize_before)
        self.encoder = TransformerEncoder(enc, num_encoder_layers,
                                          nn.LayerNorm(d_model) if normalize_before else None)
        dec = TransformerDecoderLayer(d_model, nhead, dim_feedforward, dropout, normalize_before)
        self.decoder = TransformerDecoder(dec, num_decoder_layers, nn.LayerNorm(d_model))
        self.d_model, self.nhead = d_model, nhead
        for p in self.parameters():
            if p.dim() > 1:
                nn.init.xavier_uniform_(p)

    def forward(self, src: Tensor, mask: Tensor, query_embed: Tensor, pos_embed: Tensor) -> tuple[Tensor, Tensor]:
        """src (B, D, h, w); mask (B, h, w) True on padding; query_embed (Q, D), the object queries;
        pos_embed (B, D, h, w). Returns hs (num_decoder_layers, B, Q, D) and memory (B, D, h, w)."""
        b, d, h, w = src.shape
        memory = self.encode(src, mask, pos_embed)
        hs = self.decode(memory, query_embed)
        return hs, memory.tokens.transpose(1, 2).reshape(b, d, h, w)

    def encode(self, src: Tensor, mask: Tensor, pos_embed: Tensor) -> Memory:
        """src (B, D, h, w); mask (B, h, w); pos_embed (B, D, h, w) -> the encoder's output tokens (B, L, D),
        with their positions and padding mask, as the decoder reads them."""
        src = src.flatten(2).transpose(1, 2)                               # (B, L, D)
        pos = pos_embed.flatten(2).transpose(1, 2)                         # (B, L, D)
        if self.pos_at_input:                                              # Table 3's "sine at input"
            src, pos = src + pos, torch.zeros_like(pos)
        mask = mask.flatten(1)                                             # (B, L)
        return Memory(self.encoder(src, mask, pos), pos, mask)

    def decode(self, memory: Union[Memory, Sequence[Sequence[Memory]]], query_pos: Optional[Tensor],
               query_content: Optional[Tensor] = None, query_allowed: Optional[Tensor] = None,
               guide: Optional[Guide] = None) -> Tensor:
        """-> hs (num_decoder_layers, B, Q, D). memory: the encoder's, read by every layer, or per layer
        the list of memory levels it reads; query_pos (Q, D) or (B, Q, D): the object queries, added to
        every attention's queries (None: the guide makes them); query_content (B, Q, D): the decoder's
        input (None: zeros, as in DETR); query_allowed (Q, Q) bool and guide: see
        TransformerDecoderLayer and `Guide` (None in DETR)."""
        levels = [[memory]] * len(self.decoder.layers) if isinstance(memory, Memory) else memory
        if query_pos is not None:
            query_pos = query_pos.expand(len(levels[0][0].tokens), -1, -1)  # (B, Q, D)
        # the decoder starts from zeros; queries enter as positions
        tgt = torch.zeros_like(query_pos) if query_content is None else query_content
        return self.decoder(tgt, levels, query_pos, query_allowed, guide)  # (layers, B, Q, D)
