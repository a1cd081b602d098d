#!/usr/bin/env python
"""Prefill efficiency benchmark; same options as `stop-hf bench` (see `--help`)."""

import sys

from stop_hf.cli import main

if __name__ == "__main__":
    sys.exit(main(["bench", *sys.argv[1:]]))
