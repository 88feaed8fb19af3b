"""`python -m agentpool_tools.monitoring`: regenerate (or `--check`) the chart's generated
files; see `gen.py`."""

from __future__ import annotations

import sys

from agentpool_tools.monitoring.gen import main

if __name__ == "__main__":
    sys.exit(main())
