"""`python -m stop_hf.cli ...`: what `accelerate launch -m stop_hf.cli eval ...` runs on every rank."""

import sys

from . import main

sys.exit(main())
