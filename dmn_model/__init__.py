"""The DMN network a user builds or loads: visual, language, synthesis and upsampling modules,
its config and presets, and the checkpoint format. Training and evaluation live in ``dmn_train``."""

from .config import PRESETS, DMNConfig, preset
from .network import DMN
from .segmenter import Prediction, Segmenter

__all__ = ["DMN", "DMNConfig", "PRESETS", "Prediction", "Segmenter", "preset"]
