"""Diagnosing DETR's slow start: how stable the matching is, and whether the queries collapse.

Two symptoms of the stuck phase that the loss curves do not show (notebook 12):
- **matching instability** (DN-DETR, Li et al. 2022, section 3.1 and Fig. 2): the Hungarian
  matcher decides afresh at every step which query answers for which object, and early in
  training a ground-truth box changes query from one evaluation to the next, so each query's box
  target keeps jumping. We measure it on the validation set, whose images and target order are the
  same at every evaluation: the % of ground-truth boxes whose matched query (final decoder layer)
  differs from the previous evaluation's;
- **box collapse**: an untrained DETR predicts nearly the same "mean" box from every query. The
  spread of the predicted centres across the queries of an image (their standard deviation,
  normalised by the image size, averaged over images) is near 0 then, and grows as queries
  specialise.
The third number of the chapter, the class error of the matched queries, is `class_error`.

`MatchingMonitor` is fed by `engine.evaluate(..., monitor=...)`; `python -m detr_full.train
--diagnostics` keeps one across the run's evaluations and logs `test_matching_instability` (from
the second evaluation on) and `test_box_spread`, which `plot_logs` draws like any other field.
With several processes each one measures its own share of the val set; rank 0's is logged.
"""

from __future__ import annotations

from torch import Tensor


def box_spread(pred_boxes: Tensor) -> Tensor:
    """pred_boxes (B, Q, 4) cxcywh -> (B,): the standard deviation of the Q predicted centres,
    sqrt(var(cx) + var(cy)) over the queries (population variance): 0 when every query predicts
    the same centre."""
    centres = pred_boxes[..., :2]                                              # (B, Q, 2)
    return centres.var(dim=1, unbiased=False).sum(-1).sqrt()                  # (B,)


class MatchingMonitor:
    """Each image's final-layer matching, kept from one evaluation to the next."""

    def __init__(self) -> None:
        self.previous: dict[int, list[int]] = {}   # image_id -> matched query of each target, in target order
        self.current: dict[int, list[int]] = {}
        self.spreads: list[float] = []

    def update(self, outputs: dict, targets: list[dict], indices: list[tuple[Tensor, Tensor]]) -> None:
        """outputs of one val batch, its targets (with `image_id`) and the matcher's indices for them."""
        for target, (query_idx, target_idx) in zip(targets, indices):
            query_of_target = [0] * len(target_idx)
            for q, t in zip(query_idx.tolist(), target_idx.tolist()):
                query_of_target[t] = q
            self.current[int(target["image_id"].reshape(-1)[0])] = query_of_target
        self.spreads.extend(box_spread(outputs["pred_boxes"].detach()).tolist())

    def summarize(self) -> dict[str, float]:
        """This evaluation's numbers; the current matching becomes the one the next is compared with.
        `matching_instability` (%) is absent at the first evaluation (nothing to compare with)."""
        stats = {}
        if self.spreads:
            stats["box_spread"] = sum(self.spreads) / len(self.spreads)
        changed = total = 0
        for image_id, queries in self.current.items():
            before = self.previous.get(image_id)
            if before is not None and len(before) == len(queries):
                changed += sum(a != b for a, b in zip(before, queries))
                total += len(queries)
        if total:
            stats["matching_instability"] = 100.0 * changed / total
        self.previous, self.current, self.spreads = self.current, {}, []
        return stats
