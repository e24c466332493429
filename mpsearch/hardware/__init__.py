"""Hardware cost: profiles, the Backend seam, and the TVM backend (imported lazily: ``import mpsearch``
never imports TVM; use ``mpsearch.hardware.tvm_backend.TVMBackend``)."""

from mpsearch.hardware.base import ESTIMATED, MEASURED, Backend, LatencySource, LayerCostTable, Measurement
from mpsearch.hardware.memory import weight_mode, weight_storage_bytes
from mpsearch.hardware.peaks import resolve_peak
from mpsearch.hardware.profile import (HwProfile, MeasureSettings, PeakRates, Precisions, RPCSettings, TuningSettings,
                                       load_profile)
from mpsearch.hardware.session import Device, Session, make_device

__all__ = [
    "ESTIMATED", "MEASURED", "Backend", "HwProfile", "LatencySource", "LayerCostTable", "MeasureSettings", "Measurement", "TuningSettings", "load_profile",
    "weight_mode", "weight_storage_bytes", "PeakRates", "Precisions", "resolve_peak", "RPCSettings", "Device", "Session", "make_device",
]
