import itertools

import torch

from detr_full.matcher import HungarianMatcher


def _random_batch(sizes, num_queries=6, num_classes=5):
    b = len(sizes)
    outputs = {"pred_logits": torch.randn(b, num_queries, num_classes + 1),
               "pred_boxes": torch.rand(b, num_queries, 4) * 0.5 + 0.1}
    targets = [{"labels": torch.randint(0, num_classes, (n,)), "boxes": torch.rand(n, 4) * 0.5 + 0.1} for n in sizes]
    return outputs, targets


def _assert_same(indices, expected):
    assert len(indices) == len(expected)
    for (q, t), (q_ref, t_ref) in zip(indices, expected):
        assert q.dtype == t.dtype == torch.int64
        assert torch.equal(q, q_ref) and torch.equal(t, t_ref)


def test_golden_indices_and_costs(golden):
    outputs, targets, ref = golden["outputs"], golden["targets"], golden["matcher"]
    matcher = HungarianMatcher(**ref["costs"])
    _assert_same(matcher(outputs, targets), ref["indices"])
    for aux, aux_ref in zip(outputs["aux_outputs"], ref["aux_indices"]):
        _assert_same(matcher(aux, targets), aux_ref)
    cost = matcher.cost_matrix(outputs, targets)
    for b, ref_cost in enumerate(ref["cost_matrices"]):
        if ref_cost.numel():
            ours = cost[b, :, : ref_cost.shape[1]]
            assert (ours - ref_cost).abs().max() <= 2e-4 * ref_cost.abs().max()


def test_golden_unit_with_an_empty_image(golden):
    u = golden["units"]["matcher"]
    matcher = HungarianMatcher(u["cost_class"], u["cost_bbox"], u["cost_giou"])
    _assert_same(matcher(u["outputs"], u["targets"]), u["indices"])
    cost = matcher.cost_matrix(u["outputs"], u["targets"])
    for b, ref_cost in enumerate(u["cost_matrices"]):
        if ref_cost.numel():  # image 1 has no targets
            torch.testing.assert_close(cost[b, :, : ref_cost.shape[1]], ref_cost, rtol=0, atol=2e-4 * ref_cost.abs().max())


def test_padding_columns_stay_finite():
    outputs, targets = _random_batch([1, 3])
    assert torch.isfinite(HungarianMatcher(1, 5, 2).cost_matrix(outputs, targets)).all()


def test_matches_brute_force_over_permutations():
    matcher = HungarianMatcher(1, 5, 2)
    for _ in range(20):
        outputs, targets = _random_batch([3], num_queries=4)
        cost = matcher.cost_matrix(outputs, targets)[0]                   # (Q, T)
        best = min(sum(cost[q, t] for t, q in enumerate(perm)) for perm in itertools.permutations(range(4), 3))
        q, t = matcher(outputs, targets)[0]
        assert torch.isclose(cost[q, t].sum(), best)


def test_batched_matching_equals_per_image_matching():
    matcher = HungarianMatcher(1, 5, 2)
    outputs, targets = _random_batch([2, 0, 4, 1])
    batched = matcher(outputs, targets)
    for b, target in enumerate(targets):
        single = {k: v[b: b + 1] for k, v in outputs.items()}
        _assert_same([batched[b]], matcher(single, [target]))


def test_no_targets_anywhere():
    outputs, targets = _random_batch([0, 0])
    for q, t in HungarianMatcher()(outputs, targets):
        assert q.shape == t.shape == (0,) and q.dtype == torch.int64


def test_more_targets_than_queries_matches_every_query():
    outputs, targets = _random_batch([8], num_queries=5)
    q, t = HungarianMatcher()(outputs, targets)[0]
    assert torch.equal(q, torch.arange(5)) and len(set(t.tolist())) == 5


def test_matching_every_layer_at_once_equals_matching_each_on_its_own():
    """One cost for (L, B, Q, T), one transfer: the same assignment per layer and image as `forward`,
    empty images, more targets than queries and ties included."""
    matcher = HungarianMatcher(1, 5, 2)
    for sizes, num_queries in (([3, 0, 5, 1], 6), ([7, 2], 4), ([0, 0], 3)):
        layers = [_random_batch(sizes, num_queries) for _ in range(3)]
        targets = layers[0][1]
        logits = torch.stack([out["pred_logits"] for out, _ in layers])           # (L, B, Q, K)
        boxes = torch.stack([out["pred_boxes"] for out, _ in layers])             # (L, B, Q, 4)
        matching = matcher.match_layers(logits, boxes, targets)
        assert len(matching.sizes) == 3
        for layer in range(3):
            expected = matcher({"pred_logits": logits[layer], "pred_boxes": boxes[layer]}, targets)
            _assert_same(matching.layer(layer).per_image(len(targets)), expected)
    # ties: every query predicts the same class and box, so every assignment costs the same
    tied = {"pred_logits": torch.zeros(2, 5, 6), "pred_boxes": torch.full((2, 5, 4), 0.5)}
    _, targets = _random_batch([3, 2], 5)
    matching = matcher.match_layers(tied["pred_logits"][None], tied["pred_boxes"][None], targets)
    _assert_same(matching.per_image(2), matcher(tied, targets))


def test_golden_indices_of_every_layer_in_one_call(golden):
    outputs, targets, ref = golden["outputs"], golden["targets"], golden["matcher"]
    readouts = outputs["aux_outputs"] + [outputs]
    matching = HungarianMatcher(**ref["costs"]).match_layers(
        torch.stack([r["pred_logits"] for r in readouts]), torch.stack([r["pred_boxes"] for r in readouts]), targets)
    for layer, expected in enumerate(ref["aux_indices"] + [ref["indices"]]):
        _assert_same(matching.layer(layer).per_image(len(targets)), expected)


def test_non_finite_outputs_are_a_clear_error():
    import pytest

    from detr_full.matcher import NonFiniteCostError
    outputs, targets = _random_batch([2])
    outputs["pred_boxes"][0, 1, 0] = float("nan")
    with pytest.raises(NonFiniteCostError, match="NaN or inf"):
        HungarianMatcher(1, 5, 2)(outputs, targets)
