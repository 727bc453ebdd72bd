"""DETR's successors' ideas, each an option off by default, composed in one model.

The official DETR (detr_full/detr.py and the core modules beside it) knows none of them by name.
Each option lives in its own file here and plugs into the core through an interface that says
what it carries:
- a classification rule (detr_full/classification.py), given to the class head, the matcher, the
  criterion and PostProcess: focal.py;
- reference boxes that the decoder refines, and what each layer's queries are told from them
  (reference_boxes.py, the transformer's `Guide`): query positions (anchor_queries.py) and attention
  priors, biases on the cross-attention logits (spatial_prior.py, conditional.py);
- the first reference boxes: learned (spatial_prior.py) or proposed by the encoder (query_selection.py);
- the memory each decoder layer reads (a list of transformer.Memory, one per layer): fine_memory.py;
- the object queries: query groups (group_detr.py), denoising queries (denoising.py);
- extra loss terms on extra outputs (criterion.py: SuccessorCriterion).
model.py's SuccessorDETR is where they meet: with every option off it computes DETR's outputs.

How to add an option (Conditional DETR's conditional spatial query, conditional.py, was added so):
1. Its own file here: the module, a docstring that says what the paper does, what ours does and
   how it differs, and which interface it plugs into (above). A new attention prior needs nothing
   else from the core: `prior(memories)` returns a function (layer, boxes, previous output) -> bias.
2. Register it: a DETRConfig field (config.py, off by default, with a comment), its rules (which
   options it needs or excludes) in config.check_config, the construction line in
   SuccessorDETR.__init__ (after the others: a new module must not change the random initialisation
   of the existing ones), and its name in config.SUCCESSOR_OPTIONS and the build_detr call.
3. A test file, tests/test_<option>.py: what it computes, checked by hand on a tiny case; that it is
   off by default (the official state dict is unchanged: tests/test_successors.py); its rules.
"""

from detr_full.successors.criterion import SuccessorCriterion
from detr_full.successors.model import SuccessorDETR

__all__ = ["SuccessorCriterion", "SuccessorDETR"]
