"""Training-side LayerCollapse (arXiv 2311.17943) for PyTorch models.

Make MLP blocks collapsible (swap their activation for a ``CollapsiblePReLU``), regularise the
slopes towards 1 while fine-tuning, then fold the now-linear blocks in PyTorch
(``collapse_``) or export to ONNX (``export_onnx``) and let ``lconnx.collapse`` fold them.

This subpackage needs torch (``pip install lconnx[train]``); ``import lconnx`` never imports it.
"""

from lconnx.errors import Rejection

from .convert import CollapsibleReport, make_collapsible
from .discovery import Block, Discovery, TraceError, discover
from .export import export_onnx
from .fit import fit_negative_slopes
from .fold import FoldedBlock, FoldReport, SkippedBlock, collapse_, fold, slope_deviation
from .partial import (
    PartialCollapseRegularizer,
    PartialReport,
    UnitStats,
    linear_units,
    partial_penalty,
    select_units,
    snap_linear_units_,
)
from .prelu import CollapsiblePReLU, prelu_last_axis
from .progressive import ProgressiveReport, ProgressiveStep, progressive_collapse
from .regularizer import LayerCollapseRegularizer, RegularizerReport, SlopeStats
from .schedules import schedule_factor
from .slope_penalty import collapse_penalty, collapsible_modules, param_groups

__all__ = [
    "Block",
    "CollapsiblePReLU",
    "CollapsibleReport",
    "Discovery",
    "FoldReport",
    "FoldedBlock",
    "LayerCollapseRegularizer",
    "PartialCollapseRegularizer",
    "PartialReport",
    "ProgressiveReport",
    "ProgressiveStep",
    "RegularizerReport",
    "Rejection",
    "SkippedBlock",
    "SlopeStats",
    "TraceError",
    "UnitStats",
    "collapse_",
    "collapse_penalty",
    "collapsible_modules",
    "discover",
    "export_onnx",
    "fit_negative_slopes",
    "fold",
    "linear_units",
    "make_collapsible",
    "param_groups",
    "partial_penalty",
    "prelu_last_axis",
    "progressive_collapse",
    "schedule_factor",
    "select_units",
    "slope_deviation",
    "snap_linear_units_",
]
