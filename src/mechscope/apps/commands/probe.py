"""`mechscope probe DATA.jsonl --site resid_post`: linear probes per layer with a control task.

Each JSONL line holds `text`, `label` and optionally `token` (the substring whose last token
is read; default the last token of the text).

Example:
    $ mechscope probe sentiment.jsonl --site resid_post --json probe.json --png probe.png
"""

from __future__ import annotations

import argparse
import logging

from mechscope.apps.commands.common import add_model_option, add_output_options, load

log = logging.getLogger(__name__)


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add `mechscope probe` (linear probes per layer on a labelled JSONL dataset) to the CLI.

    Example:
        >>> parser = argparse.ArgumentParser(prog="mechscope")
        >>> register(parser.add_subparsers())
        >>> parser.parse_args(['probe', 'data.jsonl', '--site', 'resid_mid']).site
        'resid_mid'
    """
    parser = subparsers.add_parser("probe", help="linear probes per layer on a labelled JSONL dataset")
    parser.add_argument("data", help="JSONL file: one {text, label[, token]} object per line")
    parser.add_argument("--site", default="resid_post", help="site read at every layer (resid_pre, resid_mid, "
                        "resid_post, attn_out, mlp_out)")
    parser.add_argument("--task", default="auto", choices=["auto", "classification", "regression"])
    parser.add_argument("--regularisation", type=float, default=None, help="L2 strength (logistic) or ridge alpha")
    parser.add_argument("--held-out", type=float, default=0.2, help="held-out fraction")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    add_model_option(parser)
    add_output_options(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Run `mechscope probe`: fit a probe (and its control task) at every layer and print the accuracies; returns 0.

    Example:
        $ mechscope probe data.jsonl --site resid_post --json probe.json --png probe.png
    """
    from mechscope.apps.output import figure_png, write_bytes, write_json
    from mechscope.core.provenance import provenance
    from mechscope.methods.probe_collect import collect_activations, site_hook_names
    from mechscope.methods.probe_data import load_probe_dataset
    from mechscope.methods.probe_plots import plot_probe_report
    from mechscope.methods.probes import fit_probes_by_layer

    model = load(args)
    dataset = load_probe_dataset(args.data)
    positions = dataset.read_positions(model.tokenizer)
    acts = collect_activations(model, dataset.texts, positions, site_hook_names(model, args.site),
                               args.batch_size)
    report = fit_probes_by_layer(acts, dataset.labels, dataset.word_types(model.tokenizer), task=args.task,
                                 regularisation=args.regularisation, held_out_fraction=args.held_out, seed=args.seed)
    data = report.to_dict()
    data["site"] = args.site
    data["data"] = str(args.data)
    data["provenance"] = {**provenance(model, seed=args.seed), **data.get("provenance", {})}
    if args.json_path:
        write_json(args.json_path, data, force=args.force)
    if args.png_path:
        fig = plot_probe_report(report, title=f"{args.site} probes on {model.cfg.name}")
        write_bytes(args.png_path, figure_png(fig, close=True), force=args.force)
    metric = report.metric
    print(f"{len(dataset)} examples, {report.task}; held-out {metric} per layer (control, selectivity):")
    for layer, row in sorted(report.layers.items()):
        control = "" if row.control_score is None else f"  control {row.control_score:.3f}  selectivity {row.selectivity:+.3f}"
        print(f"  layer {layer:3d}  {metric} {row.score:.3f}{control}")
    return 0
