"""What every benchmark does before it times anything."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def compile_service() -> None:
    """Byte-compile the service as an installed package is (pip compiles on install).

    The editable install leaves that to the first import, which PYTHONDONTWRITEBYTECODE=1 turns
    into a compile from source in every process a benchmark times.
    """
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(ROOT / "service")], check=True)
