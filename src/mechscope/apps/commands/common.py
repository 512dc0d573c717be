"""Options shared by subcommands: which model, where results go."""

from __future__ import annotations

import argparse

from mechscope.core.hooked import HookedModel


def add_model_option(parser: argparse.ArgumentParser) -> None:
    """Add `--model`, `--device` and `--dtype` (which model to load, where, in what precision) to `parser`.

    Example:
        >>> parser = argparse.ArgumentParser()
        >>> add_model_option(parser)
        >>> parser.parse_args(["--model", "gemma3-270m"]).model
        'gemma3-270m'
    """
    parser.add_argument("--model", default=None,
                        help="model: smollm2-135m (default), gemma3-270m, a .gguf file, a saved folder or a hub id")
    parser.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    parser.add_argument("--dtype", default=None, help="float32 (default), bfloat16, float16")


def add_output_options(parser: argparse.ArgumentParser, png: bool = True) -> None:
    """Add `--json` (and, with `png`, `--png`) result paths and `--force` to `parser`.

    Example:
        >>> parser = argparse.ArgumentParser()
        >>> add_output_options(parser, png=False)
        >>> parser.parse_args(["--json", "out.json"]).json_path
        'out.json'
    """
    parser.add_argument("--json", dest="json_path", default=None, metavar="PATH", help="write the result as JSON")
    if png:
        parser.add_argument("--png", dest="png_path", default=None, metavar="PATH", help="write a plot as PNG")
    parser.add_argument("--force", action="store_true", help="overwrite files that mechscope did not write")


def check_outputs(args: argparse.Namespace) -> None:
    """Refuse, before any work, output files (`--json`, `--png`, `--html`) that may not be written.

    Example:
        >>> check_outputs(argparse.Namespace(json_path="new.json", force=False))   # a new file: nothing to refuse
    """
    from mechscope.core.files import check_writable

    for attr in ("json_path", "png_path", "html_path"):
        if getattr(args, attr, None):
            check_writable(getattr(args, attr), getattr(args, "force", False))


def load(args: argparse.Namespace) -> HookedModel:
    """The model named by `--model` (after `check_outputs`, so a refused output costs no loading).

    Example:
        >>> model = load(argparse.Namespace(model="smollm2-135m", device="cpu", dtype=None))   # doctest: +SKIP
    """
    from mechscope.core.loading import load_model

    check_outputs(args)
    return load_model(args.model, device=args.device, dtype=args.dtype)
