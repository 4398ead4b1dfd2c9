"""Saving and loading a calibration: kept here for imports of ``romer_aihwkit.calibration.io``.

The implementation lives with the analog modules that hold a calibration
(:mod:`romer_aihwkit.analog.calibration_state`).
"""

from ..analog.calibration_state import load_calibration, save_calibration

__all__ = ["save_calibration", "load_calibration"]
