"""Quantization: model preparation (trace, fold BN), calibration and fake quantization."""

from mpsearch.quant.calibration import calibrate
from mpsearch.quant.fake import ActQuant, QuantLayer, fake_quant_act, fake_quant_weight, quantize_, quantize_weight
from mpsearch.quant.prepare import LayerInfo, PreparedModel, prepare_model

__all__ = [
    "ActQuant", "LayerInfo", "PreparedModel", "QuantLayer", "calibrate", "fake_quant_act", "fake_quant_weight",
    "prepare_model", "quantize_", "quantize_weight",
]
