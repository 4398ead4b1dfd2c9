"""Calibration callbacks over a converted model: the protocol, the loop, ROMER, save/load."""

from .base import CalibrationCallback, CalibrationReport, calibrate, split_holdout
from .io import load_calibration, save_calibration
from .reports import CallbackReport, ReplicaPair, RomerLayer, RomerReport, RouterAlignLayer, RouterAlignReport
from .romer import Romer, reset_replacements, routing_metrics
from .romer_auto import RomerAuto
from .router_align import RouterAlign

__all__ = [
    "CalibrationCallback",
    "CalibrationReport",
    "CallbackReport",
    "ReplicaPair",
    "Romer",
    "RomerAuto",
    "RomerLayer",
    "RomerReport",
    "RouterAlignLayer",
    "RouterAlignReport",
    "RouterAlign",
    "calibrate",
    "load_calibration",
    "reset_replacements",
    "routing_metrics",
    "save_calibration",
    "split_holdout",
]
