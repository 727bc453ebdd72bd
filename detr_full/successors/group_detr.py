"""Group DETR (Chen et al. 2022, arXiv 2207.13085): one-to-many supervision with query groups.

DETR's one-to-one matching gives each ground-truth object exactly one positive query per image,
so early in training most queries learn only "no object" and the few positives are reassigned
from step to step. Group DETR trains K groups of Q object queries at once: each group is matched
to the targets on its own (one-to-one inside the group, so K positives per object in all), and the
decoder's self-attention is masked so that groups cannot see each other: every group is a full
DETR decoding, sharing all weights. At inference only the first group runs, so the model, its
outputs and its cost are plain DETR's.

Used through `DETRConfig.num_query_groups` (1 = off, the official DETR). What it changes:
- `query_embed` holds K * Q rows (its state-dict shape says so); `DETR.forward` uses all of them
  in training mode, with `group_attention_mask`, and the first Q in eval mode;
- the criterion (successors/criterion.py) splits training outputs into K groups (`split_groups`),
  computes the Hungarian loss of each and averages them (`average_groups`; the paper sums; the
  mean keeps logged losses comparable with plain DETR, and with gradient clipping and AdamW the
  update barely depends on the scale). `class_error` and `cardinality_error` are those of the
  first group, the one used at inference.
"""

from __future__ import annotations

import torch
from torch import Tensor


def group_attention_mask(num_groups: int, num_queries: int, device: torch.device | str = "cpu") -> Tensor:
    """(K*Q, K*Q) bool, True where query i may attend to query j: only within its own group."""
    group = torch.arange(num_groups * num_queries, device=device) // num_queries      # (K*Q,)
    return group[:, None] == group[None, :]


def group_queries(query_embed: Tensor, num_queries: int, training: bool) -> tuple[Tensor, Tensor | None]:
    """The queries a Group DETR decodes: all K*Q rows of `query_embed` (K*Q, D) with the group mask
    in training, the first group's Q rows and no mask at inference."""
    if not training:
        return query_embed[:num_queries], None
    return query_embed, group_attention_mask(len(query_embed) // num_queries, num_queries, query_embed.device)


def split_groups(outputs: dict, num_queries: int) -> list[dict]:
    """Outputs over K*Q queries -> K outputs dicts over Q queries each (aux_outputs and the stacked
    decoder_layers split alike)."""
    total = outputs["pred_logits"].shape[1]
    if total % num_queries:
        raise ValueError(f"split_groups: {total} queries is not a multiple of num_queries={num_queries}.")
    groups = []
    for start in range(0, total, num_queries):
        part = slice(start, start + num_queries)
        group = {"pred_logits": outputs["pred_logits"][:, part], "pred_boxes": outputs["pred_boxes"][:, part]}
        if "aux_outputs" in outputs:
            group["aux_outputs"] = [{k: v[:, part] for k, v in aux.items()} for aux in outputs["aux_outputs"]]
        if "decoder_layers" in outputs:                                    # (layers, B, K*Q, .) -> this group's
            group["decoder_layers"] = {k: v[:, :, part] for k, v in outputs["decoder_layers"].items()}
        groups.append(group)
    return groups


def average_groups(per_group: list[dict[str, Tensor]]) -> dict[str, Tensor]:
    """The loss terms of K groups -> their mean; the logged error rates are the first group's."""
    losses = dict(per_group[0])
    for k in losses:
        if not k.startswith(("class_error", "cardinality_error")):
            losses[k] = torch.stack([g[k] for g in per_group]).mean()
    return losses
