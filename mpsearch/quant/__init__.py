"""Quantization: model preparation (trace, fold BN), calibration, fake quantization and learned
quantization (AdaRound / BRECQ rounding, LSQ activation steps, QAT with distillation)."""

from mpsearch.quant.calibration import calibrate
from mpsearch.quant.fake import ActQuant, QuantLayer, fake_quant_act, fake_quant_weight, quantize_, quantize_weight
from mpsearch.quant.learned import LearnedModel, Learner, cached_learn
from mpsearch.quant.learners import make_learners
from mpsearch.quant.prepare import LayerInfo, PreparedModel, prepare_model
from mpsearch.quant.qat import QatKd, QatSettings
from mpsearch.quant.reconstruct import Reconstruction, ReconstructionSettings, graph_blocks

__all__ = [
    "ActQuant", "LayerInfo", "LearnedModel", "Learner", "PreparedModel", "QatKd", "QatSettings", "QuantLayer",
    "Reconstruction", "ReconstructionSettings", "cached_learn", "calibrate", "fake_quant_act", "fake_quant_weight",
    "graph_blocks", "make_learners", "prepare_model", "quantize_", "quantize_weight",
]
