"""lconnx: collapse near-linear MLP blocks (LayerCollapse) in exported ONNX graphs.

The public API never imports torch or onnxruntime; those are optional extras.
"""

from lconnx._version import __version__
from lconnx.budget import collapse_with_budget
from lconnx.collapse import DEFAULT_TOLERANCE, CollapseResult, analyze, collapse
from lconnx.errors import LconnxError
from lconnx.report import Report, Site

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
