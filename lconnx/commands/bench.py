"""``lconnx bench``: interleaved onnxruntime timing of models against the first."""

from __future__ import annotations

import argparse

from lconnx.commands.common import STDOUT, console, emit_json, json_file, shapes


def run_bench(args: argparse.Namespace) -> int:
    from lconnx.files.outputs import OutputPlan
    from lconnx.io import external_data_paths, parse_model
    from lconnx.render.bench import bench_payload, load_collapse_report, render_bench, write_outputs
    from lconnx.runtime.bench import benchmark

    given_shapes = shapes(args)
    plan = OutputPlan()
    for model in args.models:
        plan.read(model, "benchmarked model")
        for data in sorted(external_data_paths(parse_model(model, weights=False), model)):
            plan.read(data, "external data of a benchmarked model")
    if args.data:
        plan.read(args.data, "--data")
    if args.report:
        plan.read(args.report, "--report")
    plan.write(json_file(args.json), "JSON output").write(args.markdown, "Markdown output")
    plan.write(args.plot_dir, "plot folder", folder=True)
    plan.check()
    report = load_collapse_report(args.report) if args.report else None
    if args.plot_dir:
        from lconnx.render.plots import require_matplotlib

        require_matplotlib()
    result = benchmark(
        args.models,
        providers=args.provider or ["cpu"],
        batches=args.batch,
        shapes=given_shapes,
        data=args.data,
        threads=args.threads,
        repeat=args.repeat,
        warmup=args.warmup,
        opt_level=args.opt_level,
        spinning=args.spin,
        seed=args.seed,
        progress=True,
    )
    out = console(args.json)
    out.print(render_bench(result))
    plots = write_outputs(
        result,
        json_path=json_file(args.json),
        markdown_path=args.markdown,
        plot_dir=args.plot_dir,
        report=report,
    )
    if args.json == STDOUT:
        emit_json(STDOUT, bench_payload(result, plots, report))
    for written in [json_file(args.json), args.markdown, *plots.values()]:
        if written:
            out.print(f"wrote {written}")
    return 0
