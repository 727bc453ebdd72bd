"""detr_full: the complete DETR (Carion et al. 2020), numerically the official implementation.

The paper's model reads in detr.py, transformer.py, backbone.py, matcher.py, criterion.py and
postprocess.py; DETR's successors' ideas live in detr_full/successors/, off by default.
"""

from detr_full.build import build_detr
from detr_full.config import DETRConfig, TrainConfig
from detr_full.criterion import SetCriterion
from detr_full.detr import DETR, MLP
from detr_full.matcher import HungarianMatcher
from detr_full.postprocess import PostProcess

__all__ = ["DETR", "DETRConfig", "HungarianMatcher", "MLP", "PostProcess", "SetCriterion", "TrainConfig",
           "build_detr"]
