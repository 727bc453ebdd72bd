"""detr_full.diagnostics: matching instability and box spread, by hand."""

import math

import torch

from detr_full.diagnostics import MatchingMonitor, box_spread


def _batch(image_ids, num_targets):
    return [{"image_id": torch.tensor([i]), "labels": torch.zeros(n, dtype=torch.int64)}
            for i, n in zip(image_ids, num_targets)]


def test_box_spread_by_hand():
    boxes = torch.tensor([[[0.2, 0.5, 0.1, 0.1], [0.6, 0.5, 0.3, 0.3]],      # centres 0.4 apart in x
                          [[0.5, 0.5, 0.1, 0.1], [0.5, 0.5, 0.9, 0.9]]])     # the same centre twice
    torch.testing.assert_close(box_spread(boxes), torch.tensor([0.2, 0.0]))   # population std: |dx| / 2


def test_matching_instability_counts_targets_whose_query_changed():
    monitor = MatchingMonitor()
    boxes = torch.rand(2, 5, 4)
    targets = _batch([7, 9], [3, 2])
    # image 7: targets 0, 1, 2 -> queries 4, 1, 3 (given in query order, as the matcher returns them)
    first = [(torch.tensor([1, 3, 4]), torch.tensor([1, 2, 0])), (torch.tensor([0, 2]), torch.tensor([0, 1]))]
    monitor.update({"pred_boxes": boxes}, targets, first)
    stats = monitor.summarize()
    assert "matching_instability" not in stats                         # nothing to compare with yet
    assert math.isclose(stats["box_spread"], box_spread(boxes).mean().item(), rel_tol=1e-6)
    # next evaluation: image 7's target 1 moved from query 1 to query 2; image 9 unchanged
    second = [(torch.tensor([2, 3, 4]), torch.tensor([1, 2, 0])), (torch.tensor([0, 2]), torch.tensor([0, 1]))]
    monitor.update({"pred_boxes": boxes}, targets, second)
    assert math.isclose(monitor.summarize()["matching_instability"], 100 * 1 / 5)
    monitor.update({"pred_boxes": boxes}, targets, second)               # compared with the last one only
    assert monitor.summarize()["matching_instability"] == 0.0
