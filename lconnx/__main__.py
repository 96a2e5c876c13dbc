"""``python -m lconnx``: same as the ``lconnx`` console script."""

from lconnx.cli import main

raise SystemExit(main())
