"""One module per CLI subcommand; each exposes `register(subparsers)` and sets `func` on its parser."""
