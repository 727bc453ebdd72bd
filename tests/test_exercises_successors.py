"""Notebook 09's checkers accept correct solutions, reject the likely wrong ones with their hint, never raise."""

import torch

from detr_full.exercises.successors import check_denoising_mask, check_repeat_targets


def _mask(num_groups, group_size, num_queries):       # written out differently from the package's
    n = num_groups * group_size
    allowed = torch.zeros(n + num_queries, n + num_queries, dtype=torch.bool)
    allowed[:, n:] = True
    for g in range(num_groups):
        allowed[g * group_size:(g + 1) * group_size, g * group_size:(g + 1) * group_size] = True
    return allowed


def test_denoising_mask_checker(verdict):
    assert verdict(check_denoising_mask, _mask, "OK:")
    assert not verdict(check_denoising_mask, lambda g, s, q: None, "returns None")
    assert not verdict(check_denoising_mask, lambda g, s, q: ~_mask(g, s, q), "Negate")

    def leaky(g, s, q):                                  # matching queries see the denoising ones
        m = _mask(g, s, q)
        m[g * s:, :g * s] = True
        return m
    assert not verdict(check_denoising_mask, leaky, "does not exist at inference")

    def groups_see_each_other(g, s, q):
        m = _mask(g, s, q)
        m[:g * s, :g * s] = True
        return m
    assert not verdict(check_denoising_mask, groups_see_each_other, "Groups must not see each other")

    def no_self(g, s, q):                                # block-diagonal forgotten entirely
        m = _mask(g, s, q)
        m[:g * s, :g * s] = False
        return m
    assert not verdict(check_denoising_mask, no_self, "its own group")

    def dn_blind_to_matching(g, s, q):
        m = _mask(g, s, q)
        m[:g * s, g * s:] = False
        return m
    assert not verdict(check_denoising_mask, dn_blind_to_matching, "a denoising query cannot see")

    def matching_first(g, s, q):
        n = g * s
        m = torch.zeros(n + q, n + q, dtype=torch.bool)
        m[:, :q] = True
        for i in range(g):
            m[q + i * s:q + (i + 1) * s, q + i * s:q + (i + 1) * s] = True
        return m
    assert not verdict(check_denoising_mask, matching_first, "come first")
    assert not verdict(check_denoising_mask, lambda g, s, q: _mask(g, s, q).float(), "bool")

    def diagonal_only(g, s, q):                          # each denoising query sees only itself
        m = _mask(g, s, q)
        m[:g * s, :g * s] = torch.eye(g * s, dtype=torch.bool)
        return m
    assert not verdict(check_denoising_mask, diagonal_only, "its own group")

    def groups_one_too_wide(g, s, q):                    # off by one: each block reaches into the next group
        m = _mask(g, s, q)
        for i in range(g):
            m[i * s:(i + 1) * s + 1, i * s:(i + 1) * s + 1] = True
        m[g * s:, :g * s] = False
        return m
    assert not verdict(check_denoising_mask, groups_one_too_wide, "Groups must not see each other")
    assert not verdict(check_denoising_mask, lambda g, s, q: _mask(g, s, q).T, "does not exist at inference")

    def matching_blind(g, s, q):
        m = _mask(g, s, q)
        m[g * s:, g * s:] = False
        return m
    assert not verdict(check_denoising_mask, matching_blind, "a matching query cannot see")
    assert not verdict(check_denoising_mask, lambda g, s, q: 1 / 0, "ZeroDivisionError")


def _repeat(targets, k):
    return [{**t, "labels": t["labels"].repeat(k), "boxes": t["boxes"].repeat(k, 1)} for t in targets]


def test_repeat_targets_checker(verdict):
    assert verdict(check_repeat_targets, _repeat, "OK:")
    interleaved = lambda ts, k: [{**t, "labels": t["labels"].repeat_interleave(k),   # noqa: E731
                                  "boxes": t["boxes"].repeat_interleave(k, 0)} for t in ts]
    assert verdict(check_repeat_targets, interleaved, "OK:")             # any order is right
    mixed = lambda ts, k: [{**t, "labels": t["labels"].repeat(k),                  # noqa: E731
                            "boxes": t["boxes"].repeat_interleave(k, 0)} for t in ts]
    assert not verdict(check_repeat_targets, mixed, "another object's label")
    flat = lambda ts, k: [{**t, "labels": t["labels"].repeat(k), "boxes": t["boxes"].repeat(1, k)} for t in ts]  # noqa: E731
    assert not verdict(check_repeat_targets, flat, "repeat(k, 1)")
    once_more = lambda ts, k: _repeat(ts, k + 1)                                   # noqa: E731
    assert not verdict(check_repeat_targets, once_more, "needs labels of shape")
    only_two = lambda ts, k: [{"labels": t["labels"].repeat(k), "boxes": t["boxes"].repeat(k, 1)} for t in ts]  # noqa: E731
    assert not verdict(check_repeat_targets, only_two, "keep the other keys")

    concatenated = lambda ts, k: [{**t, "labels": torch.cat([t["labels"]] * k),   # noqa: E731
                                   "boxes": torch.cat([t["boxes"]] * k)} for t in ts]
    assert verdict(check_repeat_targets, concatenated, "OK:")
    one_fewer = lambda ts, k: _repeat(ts, max(k - 1, 1))                          # noqa: E731
    assert not verdict(check_repeat_targets, one_fewer, "needs labels of shape")
    float_labels = lambda ts, k: [{**t, "labels": t["labels"].float()} for t in _repeat(ts, k)]  # noqa: E731
    assert not verdict(check_repeat_targets, float_labels, "int64")
    first_object = lambda ts, k: [{**t, "labels": t["labels"][:1].repeat(k * len(t["labels"])),  # noqa: E731
                                   "boxes": t["boxes"][:1].repeat(k * len(t["boxes"]), 1)} for t in ts]
    assert not verdict(check_repeat_targets, first_object, "exactly k = 3 times")

    def overwrites_inputs(ts, k):                        # the caller's dicts now hold the copies
        for t in ts:
            t["labels"], t["boxes"] = t["labels"].repeat(k), t["boxes"].repeat(k, 1)
        return ts
    assert not verdict(check_repeat_targets, overwrites_inputs, "you changed the input dicts")

    def in_place(ts, k):
        for t in ts:
            t["boxes"][:, :2] *= 1.0001
        return _repeat(ts, k)
    assert not verdict(check_repeat_targets, in_place, "in place")
    assert not verdict(check_repeat_targets, lambda ts, k: ts[0], "list of 2 dicts")
