import sys

from stop_hf.cli import main

sys.exit(main())
