"""optim.py: the official two parameter groups; the linear warm-up composed with the StepLR."""

import pytest
import torch

from detr_full.build import build_detr
from detr_full.config import DETRConfig, TrainConfig
from detr_full.optim import LinearWarmup, build_optimizer


def test_backbone_gets_its_own_lr_and_frozen_weights_no_group():
    model = build_detr(DETRConfig(backbone="resnet18", hidden_dim=32, enc_layers=1, dec_layers=1, dim_feedforward=64,
                                  nheads=2, num_queries=5, num_classes=3))[0]
    optimizer = build_optimizer(model, TrainConfig(lr=1e-4, lr_backbone=1e-5, weight_decay=0.5))
    rest, backbone = optimizer.param_groups
    names = {id(p): n for n, p in model.named_parameters()}
    assert [g["lr"] for g in optimizer.param_groups] == [1e-4, 1e-5]
    assert all(g["weight_decay"] == 0.5 for g in optimizer.param_groups)
    assert backbone["params"] and all(names[id(p)].startswith("backbone.") for p in backbone["params"])
    assert rest["params"] and not any(names[id(p)].startswith("backbone.") for p in rest["params"])
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert len(rest["params"]) + len(backbone["params"]) == len(trainable) < len(list(model.parameters()))


def _lrs(warmup_steps: int, drop_at: int, steps: int = 6) -> tuple[list[float], list[float]]:
    """Per-iteration lrs of the two param groups with a warm-up and a StepLR drop before `drop_at`."""
    param = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([{"params": [param]}, {"params": [], "lr": 1e-5}], lr=1e-4)
    step_lr = torch.optim.lr_scheduler.StepLR(optimizer, 1)
    warmup = LinearWarmup(optimizer, warmup_steps)
    lrs = []
    for i in range(steps):
        if i == drop_at:
            step_lr.step()   # an epoch boundary: x 0.1
        lrs.append([group["lr"] for group in optimizer.param_groups])
        optimizer.step()
        warmup.step()
    return [lr[0] for lr in lrs], [lr[1] for lr in lrs]


def test_linear_warmup_composes_with_step_lr():
    lrs, _ = _lrs(warmup_steps=4, drop_at=3)
    assert lrs == pytest.approx([2.5e-5, 5e-5, 7.5e-5, 1e-5, 1e-5, 1e-5], rel=1e-9)
    # After the warm-up the lrs are exactly StepLR's own (no rounding drift from the factors).
    assert _lrs(warmup_steps=2, drop_at=4)[1][2:] == _lrs(warmup_steps=0, drop_at=4)[1][2:]


def test_the_fused_adamw_agrees_with_the_default_within_float_rounding():
    """On a GPU build_optimizer takes the fused AdamW; here both run on the CPU, 20 steps on the same grads."""
    torch.manual_seed(0)
    small = DETRConfig(backbone="resnet18", hidden_dim=32, enc_layers=1, dec_layers=1, dim_feedforward=64, nheads=2,
                       num_queries=5, num_classes=3, dropout=0.0)
    model, twin = build_detr(small)[0], build_detr(small)[0]
    twin.load_state_dict(model.state_dict())
    cfg = TrainConfig(lr=1e-3, lr_backbone=1e-4, weight_decay=1e-4)
    default = build_optimizer(model, cfg)
    assert not default.defaults["fused"]                                 # on the CPU: the default implementation
    fused = torch.optim.AdamW(build_optimizer(twin, cfg).param_groups, fused=True)
    images = torch.randn(2, 3, 64, 64)
    for _ in range(20):
        for net, optimizer in ((model, default), (twin, fused)):
            optimizer.zero_grad()
            out = net(images)
            (out["pred_logits"].square().mean() + out["pred_boxes"].sum()).backward()
            optimizer.step()
    for (name, a), b in zip(model.state_dict().items(), twin.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6, msg=name)
