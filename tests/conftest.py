"""Tests mirror the package's rooms (tests/files, tests/passes, ...); the shared builders
(graphs.py, hostile.py, strategies.py) stay here, importable from every folder."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
