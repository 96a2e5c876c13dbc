"""lconnx: collapse near-linear MLP blocks (LayerCollapse) in exported ONNX graphs.

The public API never imports torch or onnxruntime; those are optional extras.
"""

from lconnx._version import __version__
from lconnx.calibrate.budget import collapse_with_budget
from lconnx.errors import LconnxError
from lconnx.passes.report import Report, Site
from lconnx.passes.whole_block import DEFAULT_TOLERANCE, CollapseResult, analyze, collapse

__all__ = [
    "DEFAULT_TOLERANCE",
    "CollapseResult",
    "LconnxError",
    "Report",
    "Site",
    "__version__",
    "analyze",
    "collapse",
    "collapse_with_budget",
]
