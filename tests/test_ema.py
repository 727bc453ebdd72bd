"""detr_full.ema.WeightEMA: the average by hand, what is copied instead of averaged, the decay's ramp."""

import pytest
import torch
from torch import nn

from detr_full.config import ConfigError, TrainConfig, check_config
from detr_full.ema import WeightEMA, evaluated_model, weight_ema


def one_weight(value: float) -> nn.Linear:
    layer = nn.Linear(1, 1, bias=False)
    with torch.no_grad():
        layer.weight.fill_(value)
    return layer


def test_the_average_by_hand():
    """decay 0.1 is below the ramp from the first update on ((1 + 1) / (10 + 1) = 0.18), so d = 0.1:
    ema = 0.1 * ema + 0.9 * w."""
    model = one_weight(0.0)
    ema = WeightEMA(model, decay=0.1)
    for w in (1.0, 2.0):
        with torch.no_grad():
            model.weight.fill_(w)            # what an optimizer step does: in place
        ema.update()
    assert ema.module.weight.item() == pytest.approx(0.1 * (0.1 * 0.0 + 0.9 * 1.0) + 0.9 * 2.0)   # 1.89
    assert model.weight.item() == 2.0 and ema.updates == 2


def test_the_ramp_follows_the_model_early_and_reaches_the_decay():
    ema = WeightEMA(one_weight(0.0), decay=0.99)
    assert ema.current_decay() == pytest.approx(2 / 11)       # the first update: mostly the model
    ema.updates = 10_000
    assert ema.current_decay() == 0.99


def test_frozen_weights_and_buffers_are_copied_not_averaged():
    model = nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2))
    model[0].bias.requires_grad_(False)
    ema = WeightEMA(model, decay=0.5)
    with torch.no_grad():
        model[0].weight.fill_(4.0)
        model[0].bias.fill_(3.0)
        model[1].running_mean.fill_(7.0)
    ema.update()
    assert torch.equal(ema.module[0].bias, model[0].bias) and torch.equal(ema.module[1].running_mean,
                                                                           model[1].running_mean)
    assert not torch.equal(ema.module[0].weight, model[0].weight)      # averaged: between init and 4
    assert not any(p.requires_grad for p in ema.module.parameters()) and not ema.module.training


@pytest.mark.parametrize("decay", [0.0, 1.0, -0.5])
def test_a_decay_outside_0_1_is_refused(decay):
    with pytest.raises(ValueError, match="in \\(0, 1\\)"):
        WeightEMA(one_weight(0.0), decay)


def test_the_config_refuses_a_decay_of_1():
    with pytest.raises(ConfigError, match="ema_decay must be in \\[0, 1\\)"):
        check_config(TrainConfig(ema_decay=1.0))


def test_decay_0_makes_no_average_and_evaluates_the_model():
    model = one_weight(1.0)
    assert weight_ema(model, 0.0) is None and evaluated_model(model, None) is model
    ema = weight_ema(model, 0.999)
    assert isinstance(ema, WeightEMA) and evaluated_model(model, ema) is ema.module
