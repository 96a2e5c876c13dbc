"""One module per subcommand: each runs its command from parsed arguments and returns the exit
code. ``lconnx.cli`` only parses, dispatches and turns errors into one line."""

from lconnx.commands.analyze import run_analyze
from lconnx.commands.bench import run_bench
from lconnx.commands.optimize import run_optimize
from lconnx.commands.verify import run_verify

__all__ = ["run_analyze", "run_bench", "run_optimize", "run_verify"]
