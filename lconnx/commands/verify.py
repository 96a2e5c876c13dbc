"""``lconnx verify``: compare two models' outputs (and accuracy) in onnxruntime."""

from __future__ import annotations

import argparse

from lconnx.commands.common import console, emit_json, json_file, shapes


def run_verify(args: argparse.Namespace) -> int:
    from lconnx.files.outputs import OutputPlan
    from lconnx.render.verify import render_verify
    from lconnx.runtime.verify import verify

    plan = OutputPlan().read(args.original, "original model").read(args.optimized, "model")
    if args.data:
        plan.read(args.data, "--data")
    plan.write(json_file(args.json), "JSON output").check()
    result = verify(
        args.original,
        args.optimized,
        data=args.data,
        shapes=shapes(args),
        seed=args.seed,
        provider=args.provider,
        max_error=args.max_error,
        max_accuracy_drop=args.max_accuracy_drop,
        label_output=args.label_output,
    )
    emit_json(args.json, result.to_dict())
    title = f"lconnx verify {args.original} {args.optimized}"
    console(args.json).print(render_verify(result, title=title))
    result.raise_for_failures()
    return 0
