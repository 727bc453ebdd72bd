import pytest
import torch

from detr_full.postprocess import PostProcess, nms


def _assert_results(ours, ref):
    for o, r in zip(ours, ref, strict=True):
        torch.testing.assert_close(o["scores"], r["scores"], rtol=1e-4, atol=0)
        assert torch.equal(o["labels"], r["labels"])
        torch.testing.assert_close(o["boxes"], r["boxes"], rtol=0, atol=0.1)


def test_golden_postprocess(golden):
    ref = golden["postprocess"]
    _assert_results(PostProcess()(golden["outputs"], ref["target_sizes_orig"]), ref["results_orig"])
    _assert_results(PostProcess()(golden["outputs"], ref["target_sizes_size"]), ref["results_size"])


def test_golden_unit(golden):
    u = golden["units"]["postprocess"]
    outputs = golden["units"]["criterion"]["outputs"]  # the unit post-processes the criterion unit's outputs
    _assert_results(PostProcess()(outputs, u["target_sizes"]), u["results"])


def test_no_object_is_never_a_label_and_boxes_are_absolute_xyxy():
    logits = torch.tensor([[[0.0, 1.0, 5.0]]])      # no-object (index 2) is the most likely
    boxes = torch.tensor([[[0.5, 0.5, 0.5, 1.0]]])
    (result,) = PostProcess()({"pred_logits": logits, "pred_boxes": boxes}, torch.tensor([[100, 200]]))
    assert result["labels"].tolist() == [1]
    torch.testing.assert_close(result["boxes"], torch.tensor([[50., 0., 150., 100.]]))


def test_nms_drops_a_box_that_overlaps_a_better_one_of_its_class_per_image():
    boxes = torch.tensor([[0., 0., 10., 10.], [1., 0., 11., 10.], [0., 0., 10., 10.], [50., 50., 60., 60.]])
    result = {"scores": torch.tensor([0.9, 0.8, 0.7, 0.6]), "labels": torch.tensor([1, 1, 2, 1]), "boxes": boxes}
    # box 1 overlaps box 0 (same class) by IoU 90/110 = 0.82; box 2 is another class; box 3 overlaps nothing
    (kept,) = nms([result], iou=0.7)
    assert kept["scores"].tolist() == pytest.approx([0.9, 0.7, 0.6]) and kept["labels"].tolist() == [1, 2, 1]
    assert torch.equal(kept["boxes"], boxes[[0, 2, 3]])
    (kept,) = nms([result], iou=0.85)                                   # above their IoU: both stay
    assert len(kept["scores"]) == 4
    other = {k: v.clone() for k, v in result.items()}
    assert [len(r["scores"]) for r in nms([result, other], iou=0.7)] == [3, 3]   # images are never compared
