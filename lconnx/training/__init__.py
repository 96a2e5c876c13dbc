"""Training-side LayerCollapse (arXiv 2311.17943) for PyTorch models.

Make MLP blocks collapsible (swap their activation for a ``CollapsiblePReLU``), regularise the
slopes towards 1 while fine-tuning, then fold the now-linear blocks in PyTorch
(``collapse_``) or export to ONNX (``export_onnx``) and let ``lconnx.collapse`` fold them.

This subpackage needs torch (``pip install lconnx[train]``); ``import lconnx`` never imports it.
"""

from .convert import CollapsibleReport, make_collapsible
from .discovery import Block, Discovery, Rejection, TraceError, discover
from .fit import fit_negative_slopes
from .prelu import CollapsiblePReLU, prelu_last_axis

__all__ = [
    "Block",
    "CollapsiblePReLU",
    "CollapsibleReport",
    "Discovery",
    "Rejection",
    "TraceError",
    "discover",
    "fit_negative_slopes",
    "make_collapsible",
    "prelu_last_axis",
]
