"""torch.hub entry points with the official names.

    model = torch.hub.load("path/to/detr-course", "detr_resnet50", source="local", pretrained=False)

`pretrained=True` downloads the official COCO weights (or pass `weights=` a local path or URL);
`pretrained=False` builds a random model without touching the network. As in the official hub,
the models have no auxiliary outputs; `return_postprocessor=True` also returns a PostProcess.
"""

dependencies = ["torch", "torchvision", "scipy"]

from detr_full.build import build_detr  # noqa: E402
from detr_full.checkpoint import OFFICIAL_URLS, load_checkpoint, load_model_weights  # noqa: E402
from detr_full.config import DETRConfig  # noqa: E402


def _make_detr(entry: str, backbone: str, dilation: bool, pretrained: bool, num_classes: int,
               return_postprocessor: bool, weights: str = ""):
    cfg = DETRConfig(backbone=backbone, dilation=dilation, num_classes=num_classes, aux_loss=False)
    model, _, postprocess = build_detr(cfg)
    if pretrained or weights:
        source = weights or OFFICIAL_URLS[entry]
        load_model_weights(model, load_checkpoint(source)["model"], source=source)
    return (model, postprocess) if return_postprocessor else model


def detr_resnet50(pretrained=False, num_classes=91, return_postprocessor=False, weights=""):
    """DETR R50, 42.0 AP on COCO val5k."""
    return _make_detr("detr_resnet50", "resnet50", False, pretrained, num_classes, return_postprocessor, weights)


def detr_resnet50_dc5(pretrained=False, num_classes=91, return_postprocessor=False, weights=""):
    """DETR-DC5 R50, 43.3 AP on COCO val5k."""
    return _make_detr("detr_resnet50_dc5", "resnet50", True, pretrained, num_classes, return_postprocessor, weights)


def detr_resnet101(pretrained=False, num_classes=91, return_postprocessor=False, weights=""):
    """DETR R101, 43.5 AP on COCO val5k."""
    return _make_detr("detr_resnet101", "resnet101", False, pretrained, num_classes, return_postprocessor, weights)


def detr_resnet101_dc5(pretrained=False, num_classes=91, return_postprocessor=False, weights=""):
    """DETR-DC5 R101, 44.9 AP on COCO val5k."""
    return _make_detr("detr_resnet101_dc5", "resnet101", True, pretrained, num_classes, return_postprocessor,
                      weights)
