"""The DMN network (visual, language, synthesis, upsampling modules), its config and losses."""

from .config import PRESETS, DMNConfig, preset
from .losses import masked_bce_with_logits, soft_iou_loss
from .network import DMN

__all__ = ["DMN", "DMNConfig", "PRESETS", "preset", "masked_bce_with_logits", "soft_iou_loss"]
