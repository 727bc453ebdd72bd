"""DETR in about 50 lines: the model of the official demo notebook, on batches."""

from detr_minimal.model import DETRMinimal

__all__ = ["DETRMinimal"]
