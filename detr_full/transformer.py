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
from typing import Callable, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from detr_full.fine_memory import FineTokens

# a decoder layer's normalised output (B, Q, D) -> the next layer's (memory_bias, query_pos or None)
Refine = Callable[[Tensor], tuple[Optional[Tensor], Optional[Tensor]]]


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
        bias (B, Lq, Lk) float, added to every head's attention logits (None: nothing)."""
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
            bias = bias[:, None].to(q.dtype)                                         # (B, 1, Lq, Lk)
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
        memory_bias (B, Q, L): added to the cross-attention logits (None: nothing, as in DETR)."""
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

    def forward(self, tgt: Tensor, memory: Tensor, memory_padding_mask: Optional[Tensor], pos: Tensor,
                query_pos: Tensor, query_allowed: Optional[Tensor] = None,
                memory_bias: Optional[Tensor] = None, refine: Optional[Refine] = None,
                fine: Optional[FineTokens] = None) -> Tensor:
        """-> (num_layers, B, Q, D): the normalised output of every layer. `refine`, when given, maps
        a layer's normalised output to the next layer's (memory_bias, query_pos); a None query_pos
        keeps the current one. `fine` (fine_memory.py) joins the memory of every layer after the
        first, whose memory_bias must then cover both (B, Q, L + L2)."""
        memory_with_pos = memory + pos
        levels = [(memory, memory_with_pos, memory_padding_mask)]                  # layer 0's memory
        if fine is not None:                                                       # (B, L + L2, D), (B, L + L2)
            levels.append((torch.cat([memory, fine.memory], 1), torch.cat([memory_with_pos, fine.memory + fine.pos], 1),
                            torch.cat([memory_padding_mask, fine.mask], 1)))
        outputs = []
        for i, layer in enumerate(self.layers):
            keys, keys_with_pos, keys_mask = levels[min(i, len(levels) - 1)]
            tgt = layer(tgt, keys, keys_with_pos, keys_mask, query_pos, query_allowed, memory_bias)
            outputs.append(self.norm(tgt))
            if refine is not None and i + 1 < len(self.layers):
                memory_bias, next_pos = refine(outputs[-1])
                query_pos = query_pos if next_pos is None else next_pos
        return torch.stack(outputs)


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

    def forward(self, src: Tensor, mask: Tensor, query_embed: Tensor, pos_embed: Tensor,
                query_allowed: Optional[Tensor] = None, memory_bias: Optional[Tensor] = None,
                refine: Optional[Refine] = None, query_content: Optional[Tensor] = None) -> tuple[Tensor, Tensor]:
        """src (B, D, h, w); mask (B, h, w) True on padding; query_embed (Q, D); pos_embed (B, D, h, w).
        Hooks for DETR's successors, None in DETR: query_allowed (Q, Q) bool, the decoder
        self-attention mask (query groups); memory_bias (B, Q, h*w), added to the first decoder
        layer's cross-attention logits, and refine, which makes the next layer's memory_bias and
        query positions from a layer's output (reference boxes refined layer by layer: spatial
        prior, anchor queries); query_content (B, Q, D), the
        decoder's input instead of zeros, with query_embed then (B, Q, D) too (denoising queries).
        Returns hs (num_decoder_layers, B, Q, D) and memory (B, D, h, w)."""
        b, d, h, w = src.shape
        memory, mask, pos = self.encode(src, mask, pos_embed)             # (B, L, D), (B, L), (B, L, D)
        hs = self.decode(memory, mask, pos, query_embed, query_allowed, memory_bias, refine, query_content)
        return hs, memory.transpose(1, 2).reshape(b, d, h, w)

    def encode(self, src: Tensor, mask: Tensor, pos_embed: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """src (B, D, h, w); mask (B, h, w); pos_embed (B, D, h, w) -> the encoder's output memory
        (B, L, D), with the flattened mask (B, L) and the positions (B, L, D) the decoder adds to it."""
        src = src.flatten(2).transpose(1, 2)                               # (B, L, D)
        pos = pos_embed.flatten(2).transpose(1, 2)                         # (B, L, D)
        if self.pos_at_input:                                              # Table 3's "sine at input"
            src, pos = src + pos, torch.zeros_like(pos)
        mask = mask.flatten(1)                                             # (B, L)
        return self.encoder(src, mask, pos), mask, pos

    def decode(self, memory: Tensor, mask: Tensor, pos: Tensor, query_embed: Tensor,
               query_allowed: Optional[Tensor] = None, memory_bias: Optional[Tensor] = None,
               refine: Optional[Refine] = None, query_content: Optional[Tensor] = None,
               fine: Optional[FineTokens] = None) -> Tensor:
        """`encode`'s three outputs and `forward`'s query arguments -> hs (num_decoder_layers, B, Q, D).
        `fine`: more memory for the layers after the first (fine_memory.py)."""
        query_pos = query_embed.expand(len(memory), -1, -1)                # (B, Q, D)
        # the decoder starts from zeros; queries enter as positions
        tgt = torch.zeros_like(query_pos) if query_content is None else query_content
        return self.decoder(tgt, memory, mask, pos, query_pos, query_allowed, memory_bias, refine,
                            fine)                                           # (layers, B, Q, D)
