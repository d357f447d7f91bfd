"""What every benchmark does before it times anything."""

from __future__ import annotations

import argparse
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


def dataset_args(doc: str, *, port: int, work: str, out: str) -> argparse.Namespace:
    """The command line of a benchmark on serve_bench's dataset (analysts x days), parsed."""
    ap = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--users", type=int, default=200)
    ap.add_argument("--days", type=int, default=60)
    ap.add_argument("--seconds", type=float, default=8)
    ap.add_argument("--port", type=int, default=port)
    ap.add_argument("--work", default=work)
    ap.add_argument("--reuse", action="store_true", help="keep a dataset an earlier run built in the last 12 hours")
    ap.add_argument("--out", default=out)
    return ap.parse_args()
