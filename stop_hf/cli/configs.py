"""`stop-hf configs` (list the presets) and `stop-hf config show NAME` (the resolved config, every default filled)."""

from __future__ import annotations

import argparse


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    listing = subparsers.add_parser(
        "configs",
        help="list the shipped presets, one line each",
        description="Lists the preset names accepted by --config and stop_config=, with their family (baseline: "
        "the paper's baseline rows as the SToP code ran them; stop: the paper's SToP rows; original: the method's "
        "original repository; own: stop-hf's own) and a one-line description naming the code they follow.",
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
    from ..config import list_presets, preset_description, preset_family

    presets = list_presets()
    width = max((len(name) for name in presets), default=0)
    family_width = max((len(preset_family(name)) for name in presets), default=0)
    for name, path in presets.items():
        print(f"{name:<{width}}  {preset_family(name):<{family_width}}  {preset_description(path)}")
    return 0


def show_config(args: argparse.Namespace) -> int:
    import yaml

    from ..config import StopConfig

    resolved = StopConfig.from_any(args.name).resolved()
    print(f"# {args.name}: resolved (unset values show the method's reference defaults)")
    print(yaml.safe_dump(resolved, sort_keys=False).rstrip())
    return 0
