import torch

from detr_full.postprocess import PostProcess


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
