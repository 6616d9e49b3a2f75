"""The benchmark package (``bench/``) lives beside ``src/``, not inside an installed package:
put the repository root on the path so its modules can be tested."""

import sys
from pathlib import Path

ROOT = str(Path(__file__).resolve().parents[3])
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)
