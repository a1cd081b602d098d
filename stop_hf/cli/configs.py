"""`stop-hf configs` (list the presets) and `stop-hf config show NAME` (the resolved config, every default filled)."""

from __future__ import annotations

import argparse


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    listing = subparsers.add_parser(
        "configs",
        help="list the shipped presets, one line each",
        description="Lists the preset names accepted by --config and stop_config=, with a one-line description.",
    )
    listing.set_defaults(func=list_configs)

    config = subparsers.add_parser(
        "config", help="inspect a config", description="Inspect a preset or a YAML config."
    )
    actions = config.add_subparsers(dest="action", required=True, metavar="ACTION")
    show = actions.add_parser(
        "show",
        help="print the resolved config (every setting, defaults filled in)",
        description="Prints the config as YAML with every setting resolved: method parameters and the SToP "
        "weights take the method's reference defaults when the preset leaves them unset.",
    )
    show.add_argument("name", help="preset name (see `stop-hf configs`) or a YAML path")
    show.set_defaults(func=show_config)


def list_configs(args: argparse.Namespace) -> int:
    from ..config import list_presets, preset_description

    presets = list_presets()
    width = max((len(name) for name in presets), default=0)
    for name, path in presets.items():
        print(f"{name:<{width}}  {preset_description(path)}")
    return 0


def show_config(args: argparse.Namespace) -> int:
    import yaml

    from ..config import StopConfig

    resolved = StopConfig.from_any(args.name).resolved()
    print(f"# {args.name}: resolved (unset values show the method's reference defaults)")
    print(yaml.safe_dump(resolved, sort_keys=False).rstrip())
    return 0
