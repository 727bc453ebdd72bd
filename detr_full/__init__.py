"""detr_full: the complete DETR (Carion et al. 2020), numerically the official implementation."""

from detr_full.config import DETRConfig, TrainConfig
from detr_full.criterion import SetCriterion
from detr_full.detr import DETR, MLP, build_detr
from detr_full.matcher import HungarianMatcher
from detr_full.postprocess import PostProcess

__all__ = ["DETR", "DETRConfig", "HungarianMatcher", "MLP", "PostProcess", "SetCriterion", "TrainConfig",
           "build_detr"]
