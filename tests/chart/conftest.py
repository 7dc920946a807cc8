"""The chart tests share the e2e suite's helm helpers (e2e/chart.py): make the repository root
importable when pytest runs as a script (`.venv/bin/pytest tests/chart`), as `python -m pytest` does."""

import sys
from pathlib import Path

REPO = str(Path(__file__).resolve().parents[2])
if REPO not in sys.path:
    sys.path.insert(0, REPO)
