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
