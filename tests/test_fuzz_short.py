"""A short atheris run of tests/fuzz/fuzz_parser.py (see tests/fuzz/README.md).

It runs as a subprocess in a temporary directory, for under a minute, and
fails on any finding: a failed invariant, a mismatch with the reference
model, or a crash in the C code.  The input that failed is printed, ready to
replay with `python tests/fuzz/fuzz_parser.py CRASH_FILE`.
"""
import os
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
TARGET = ROOT / "tests" / "fuzz" / "fuzz_parser.py"
FUZZ_SECONDS = 45  # plus start-up; the whole test stays under 60 s

pytestmark = pytest.mark.fuzz


def test_fuzz_parser_short(tmp_path):
    pytest.importorskip("atheris")
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    env.pop("EDGE_FUZZ_SANITIZE", None)  # a sanitizer run is a long-run choice
    proc = subprocess.run(
        [
            sys.executable,
            str(TARGET),
            str(corpus),
            str(ROOT / "tests" / "corpus"),
            f"-max_total_time={FUZZ_SECONDS}",
            f"-artifact_prefix={tmp_path}/",
            "-print_final_stats=1",
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=FUZZ_SECONDS + 14,
    )
    crashes = sorted(p for p in tmp_path.iterdir() if p.name.startswith(("crash-", "timeout-", "oom-")))
    detail = "\n".join(f"{p.name}: {p.read_bytes()!r}" for p in crashes)
    assert proc.returncode == 0 and not crashes, (
        f"fuzzer failed (exit {proc.returncode})\n{detail}\n{proc.stderr[-6000:]}"
    )
    # it really fuzzed: libFuzzer reports its executions at the end
    runs = [line for line in proc.stderr.splitlines() if line.startswith("stat::number_of_executed_units:")]
    assert runs and int(runs[0].split(":")[-1]) > 1000, proc.stderr[-3000:]
