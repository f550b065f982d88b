"""``lesionsam serve`` on the command line: bad arguments fail before anything starts; the real command serves."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from lesionsam.cli.main import main
from lesionsam.serve.server import allowed_hosts_for, host_warning

SRC = Path(__file__).resolve().parents[2] / "src"


@pytest.mark.parametrize(
    ("argv", "words"),
    [
        (["--root", "{w}/missing"], "not an existing folder"),
        (["--root", "{w}", "--port", "70000"], "--port must be in 1..65535"),
        (["--root", "{w}", "--max-upload-mb", "0"], "--max-upload-mb must be > 0"),
        (["--root", "{w}", "--checkpoint", "{w}/none.pth"], "checkpoint not found"),
    ],
)
def test_bad_arguments_are_one_line_and_exit_2(tmp_path: Path, capsys, argv, words) -> None:
    code = main(["serve", *(a.format(w=tmp_path) for a in argv)])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.startswith("lesionsam serve: error: ") and words in err and "\n" not in err


def test_host_warning_and_allowed_hosts() -> None:
    assert host_warning("127.0.0.1") is None and host_warning("localhost") is None and host_warning("::1") is None
    assert "reachable from other machines" in host_warning("0.0.0.0")
    assert "no authentication" in host_warning("192.168.1.20")
    assert allowed_hosts_for("0.0.0.0") is None  # any Host header once the user chose to listen everywhere
    assert allowed_hosts_for("192.168.1.20") == ["127.0.0.1", "localhost", "::1", "[::1]", "192.168.1.20"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_the_command_serves_the_page_and_the_api(served_case, tmp_path: Path) -> None:
    port = _free_port()
    env = {**os.environ, "PYTHONPATH": str(SRC), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "lesionsam.cli.main", "serve", "--root", str(served_case.root), "--preset", "tiny"]
    cmd += ["--dtype", "bfloat16"]
    log = (tmp_path / "serve.log").open("w")
    proc = subprocess.Popen([*cmd, "--port", str(port)], env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/info", timeout=2) as r:
                    info = json.loads(r.read())
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    pytest.fail("the server did not start: " + (tmp_path / "serve.log").read_text()[-2000:])
                time.sleep(0.3)
        assert info["model"] == "random weights (tiny)" and info["prompts"] == ["click", "box"]
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/") as r:
            assert b"lesionsam" in r.read()
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/api/sessions",
            data=json.dumps({"path": "case.nii.gz"}).encode(),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request) as r:
            opened = json.loads(r.read())
        assert opened["size"] == list(served_case.volume.size_ijk)
        click = urllib.request.Request(
            f"http://127.0.0.1:{port}/api/sessions/{opened['session']}/click",
            data=json.dumps({"point": [42, 20, 10]}).encode(),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(click) as r:  # the tiny model under bfloat16 autocast answers
            assert json.loads(r.read())["lesion"] == 1
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()
    assert "serving" in (tmp_path / "serve.log").read_text()


def test_another_host_prints_a_warning_line(tmp_path: Path, capsys) -> None:
    code = main(["serve", "--root", str(tmp_path), "--host", "0.0.0.0", "--checkpoint", str(tmp_path / "none.pth")])
    lines = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(lines) == 2
    assert lines[0].startswith("lesionsam serve: --host 0.0.0.0: the server is reachable from other machines")
    assert lines[1].startswith("lesionsam serve: error: checkpoint not found")
