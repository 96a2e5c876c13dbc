"""LayerCollapse as an Olive graph surgeon.

Olive's ``GraphSurgeries`` pass resolves each surgeon by class name from a registry that every
imported ``Surgeon`` subclass joins (``olive/passes/onnx/graph_surgeries.py``). Importing this
module registers ``LayerCollapse``, so an Olive config can say::

    {"type": "GraphSurgeries",
     "surgeries": [{"surgeon": "LayerCollapse", "tolerance": 0.05}]}

The surgeon runs ``lconnx.collapse`` (onnx.checker included) and logs how many sites folded
and, for each one skipped, why. Needs ``pip install 'lconnx[olive]'``.
"""

from __future__ import annotations

import logging

import onnx
from olive.passes.onnx.graph_surgeries import ProtoSurgeon

from lconnx.passes.whole_block import DEFAULT_TOLERANCE, collapse

logger = logging.getLogger(__name__)


class LayerCollapse(ProtoSurgeon):
    """Fold every ``Linear → near-identity → Linear`` chain; see ``lconnx.collapse``."""

    def __init__(
        self,
        tolerance: float = DEFAULT_TOLERANCE,
        allow_growth: bool = False,
        partial: bool = False,
    ) -> None:
        super().__init__()
        self.tolerance = tolerance
        self.allow_growth = allow_growth
        self.partial = partial

    def __call__(self, model: onnx.ModelProto) -> onnx.ModelProto:
        result = collapse(
            model, tolerance=self.tolerance, allow_growth=self.allow_growth, partial=self.partial
        )
        report = result.report
        logger.info(
            "LayerCollapse: %d of %d site(s) folded, parameters %d -> %d",
            report.folded,
            len(report.sites),
            report.params_before,
            report.params_after,
        )
        for site in report.sites:
            if not site.folded:
                logger.info("LayerCollapse skipped %s: %s", " -> ".join(site.nodes), site.reason)
        return result.model
