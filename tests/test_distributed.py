"""Two gloo processes on CPU give the single-process result for the same global batch.

Training: 4 images, one process with batch 4 vs two DDP processes with 2 each. Every image has
2 boxes, so each process's cross-entropy normalisation (the sum of class weights) is the same and
the mean over processes equals the global mean, as in the official code. Loss terms, gradients and
updated weights must agree within 1e-5. Evaluation: 3 validation images (the DistributedSampler
pads one process with a repeated image) scored by an oracle model; gathered COCO stats must match.
"""

import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import Tensor, nn
from torch.utils.data import DataLoader, DistributedSampler

from detr_full.box_ops import box_xyxy_to_cxcywh
from detr_full.build import build_detr
from detr_full.config import DETRConfig
from detr_full.data.coco import build_dataset, coco_api
from detr_full.data.collate import collate_fn
from detr_full.data.shapes import make_shapes
from detr_full.distributed import all_gather_object, get_rank, get_world_size, init_distributed, reduce_mean_dict
from detr_full.engine import evaluate, train_one_epoch

CFG = DETRConfig(backbone="resnet18", hidden_dim=32, enc_layers=1, dec_layers=2, dim_feedforward=64, nheads=2,
                 num_queries=5, num_classes=19, dropout=0.0, lr_backbone=1e-5)
GLOBAL_BATCH = 4


def fixed_batch() -> tuple[Tensor, Tensor, list[dict]]:
    """4 images 3x64x64 (no padding: same size) with 2 boxes each."""
    g = torch.Generator().manual_seed(1)
    images = torch.randn(GLOBAL_BATCH, 3, 64, 64, generator=g)
    mask = torch.zeros(GLOBAL_BATCH, 64, 64, dtype=torch.bool)
    targets = []
    for _ in range(GLOBAL_BATCH):
        xy0 = torch.rand(2, 2, generator=g) * 0.5
        boxes_xyxy = torch.cat([xy0, xy0 + 0.2 + 0.3 * torch.rand(2, 2, generator=g)], dim=1)
        targets.append({"labels": torch.randint(1, 19, (2,), generator=g), "boxes": box_xyxy_to_cxcywh(boxes_xyxy)})
    return images, mask, targets


class OracleDETR(nn.Module):
    """Predicts each validation image's ground truth (boxes slightly shifted), found by image content."""

    def __init__(self, dataset, num_queries: int = 5, num_classes: int = 19):
        super().__init__()
        self.answers = {}
        for i in range(len(dataset)):
            image, target = dataset[i]
            logits = torch.full((num_queries, num_classes + 1), -5.0)
            logits[:, -1] = 5.0                                       # no object
            boxes = torch.full((num_queries, 4), 0.5)
            n = min(num_queries, len(target["labels"]))
            logits[torch.arange(n), target["labels"][:n]] = 5.0 + torch.arange(n)  # distinct scores
            logits[:n, -1] = -5.0
            boxes[:n] = target["boxes"][:n] + torch.tensor([0.01 * (i + 1), 0.0, 0.0, 0.0])
            self.answers[self.key(image)] = (logits, boxes)

    @staticmethod
    def key(image: Tensor) -> float:
        return round(float(image.double().sum()), 2)

    def forward(self, images: Tensor, padding_mask: Tensor) -> dict:
        logits, boxes = zip(*(self.answers[self.key(img)] for img in images))
        return {"pred_logits": torch.stack(logits), "pred_boxes": torch.stack(boxes)}


def run(shapes) -> dict:
    """The same computation in each process; the batch is split across processes."""
    rank, world_size = get_rank(), get_world_size()
    torch.manual_seed(0)
    model, criterion, postprocess = build_detr(CFG)
    images, mask, targets = fixed_batch()
    per = GLOBAL_BATCH // world_size
    part = slice(rank * per, (rank + 1) * per)
    batch = (images[part], mask[part], targets[part])
    trained = nn.parallel.DistributedDataParallel(model) if world_size > 1 else model
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    stats = train_one_epoch(trained, criterion, [batch], optimizer, "cpu", epoch=0, max_norm=0.1, progress=False)
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    val_set = build_dataset("val", shapes, scales=[64], max_size=96, val_size=64)
    sampler = DistributedSampler(val_set, shuffle=False) if world_size > 1 else None
    loader = DataLoader(val_set, batch_size=1, sampler=sampler, collate_fn=collate_fn)
    test_stats, coco_eval = evaluate(OracleDETR(val_set), criterion, postprocess, loader, coco_api(val_set), "cpu",
                                     progress=False)
    reduced = reduce_mean_dict({"rank": torch.tensor(float(rank))})
    return {"stats": stats, "grads": grads, "weights": model.state_dict(), "test_stats": test_stats,
            "has_coco_eval": coco_eval is not None, "gathered": all_gather_object(rank), "mean_rank": reduced["rank"]}


def _worker(rank: int, world_size: int, port: int, shapes, out_dir) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      WORLD_SIZE=str(world_size), LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    assert init_distributed("cpu")
    try:
        torch.save(run(shapes), out_dir / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_match_one(tmp_path):
    shapes = make_shapes(tmp_path / "shapes", num_train=1, num_val=3)
    mp.spawn(_worker, args=(2, _free_port(), shapes, tmp_path), nprocs=2, join=True)
    results = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2)]

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        single = run(shapes)  # not distributed: the wrappers fall back to one process
    finally:
        torch.set_num_threads(threads)

    for r, res in enumerate(results):
        assert res["gathered"] == [0, 1] and float(res["mean_rank"]) == 0.5
        assert res["has_coco_eval"] == (r == 0)
        # Training: averaged logs, gradients and updated weights equal the one-process run.
        assert res["stats"].keys() == single["stats"].keys()
        for k, v in single["stats"].items():
            assert res["stats"][k] == pytest.approx(v, rel=1e-5, abs=1e-5), k
        assert res["grads"].keys() == single["grads"].keys()
        for k, g in single["grads"].items():
            torch.testing.assert_close(res["grads"][k], g, rtol=1e-5, atol=1e-5, msg=k)
        for k, w in single["weights"].items():
            torch.testing.assert_close(res["weights"][k], w, rtol=1e-5, atol=1e-5, msg=k)
        # Evaluation: detections of both processes gathered, the padded repeat counted once.
        assert res["test_stats"]["coco_eval_bbox"] == single["test_stats"]["coco_eval_bbox"]
    assert single["test_stats"]["coco_eval_bbox"][1] > 0.5  # the oracle is good: AP50 is not trivially 0
