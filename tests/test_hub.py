from pathlib import Path

import torch

from conftest import golden_path

REPO = Path(__file__).resolve().parents[1]


def _official_keys(section: str = "DETR R50") -> dict[str, tuple]:
    shapes = {}
    for line in golden_path("official_r50_state_dict.tsv").read_text().splitlines():
        if line.startswith("#"):
            if shapes:  # only the first block: the R50 default
                break
            continue
        name, shape = line.split("\t")[:2]
        shapes[name] = tuple(int(s) for s in shape.strip("()").split(",") if s.strip())
    return shapes


def test_hub_resnet50_has_the_official_state_dict_offline():
    model = torch.hub.load(str(REPO), "detr_resnet50", source="local", pretrained=False)
    ours = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert ours == _official_keys()
    assert sum(p.numel() for p in model.parameters()) == 41_524_768
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == 41_302_368


def test_hub_entries_exist_and_return_postprocessors():
    model, postprocess = torch.hub.load(str(REPO), "detr_resnet101_dc5", source="local", pretrained=False,
                                        return_postprocessor=True)
    assert model.backbone[0].body.layer4[1].conv2.dilation == (2, 2)
    assert type(postprocess).__name__ == "PostProcess"
    assert "aux_outputs" not in model(torch.randn(1, 3, 64, 64))
