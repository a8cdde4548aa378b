"""The compatibility matrix: the model tests (every architecture) under several transformers
releases, each in its own virtual environment.

    python scripts/compatibility.py --write            # docs/compatibility.json and docs/compatibility.md
    python scripts/compatibility.py --versions 4.57.6  # check only (exit 1 on a failure); used by CI

``current`` means the environment running this script. Others get a virtual environment under
``.compat/<version>`` (torch 2.13.0 CPU first, then the project, then that transformers).
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
import xml.etree.ElementTree as ET
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_VERSIONS = ("4.57.6", "5.0.0", "current")
MODEL_TESTS = ("tests/models", "tests/execution/test_static.py")


def python_for(version: str) -> str:
    if version == "current":
        return sys.executable
    env = ROOT / ".compat" / version
    py = env / "bin" / "python"
    if not py.exists():
        subprocess.run([sys.executable, "-m", "venv", str(env)], check=True)
        pip = [str(py), "-m", "pip", "install", "-q", "--disable-pip-version-check"]
        subprocess.run(pip + ["torch==2.13.0"], check=True)
        subprocess.run(pip + ["-e", f"{ROOT}[test]", f"transformers=={version}"], check=True)
    return str(py)


def run_model_tests(version: str) -> tuple[str, dict[str, str], list[str]]:
    """(installed version, architecture -> pass/fail/skip, the other model tests that failed)."""
    py = python_for(version)
    installed = subprocess.run([py, "-c", "import transformers, torch; print(transformers.__version__, torch.__version__)"],
                               capture_output=True, text=True, check=True).stdout.split()[0]
    # the columns: the tiny architectures the model tests are parametrized over (a test parametrized
    # otherwise, e.g. by residency, is one of the other model tests, which must pass as well)
    architectures = set(subprocess.run(
        [py, "-c", "from crosspatch.testing.tiny import ARCHITECTURES as a; "
                   "from crosspatch.testing.vision import VLM_ARCHITECTURES as v; print(*a, *v)"],
        capture_output=True, text=True, check=True, cwd=ROOT).stdout.split())
    with tempfile.TemporaryDirectory() as tmp:
        xml = Path(tmp) / "junit.xml"
        subprocess.run([py, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:warnings", *MODEL_TESTS,
                        f"--junitxml={xml}"], cwd=ROOT, capture_output=True, text=True)
        results: dict[str, str] = {}
        others: list[str] = []
        for case in ET.parse(xml).getroot().iter("testcase"):
            m = re.search(r"\[([a-z0-9_]+)\]$", case.get("name", ""))
            if not m or m.group(1) not in architectures:  # not one architecture's test: it must pass too
                if case.find("failure") is not None or case.find("error") is not None:
                    others.append(case.get("name", "?"))
                continue
            arch = m.group(1)
            status = "fail" if case.find("failure") is not None or case.find("error") is not None else \
                "skip" if case.find("skipped") is not None else "pass"
            if results.get(arch) != "fail" and not (results.get(arch) == "pass" and status == "skip"):
                results[arch] = status
    return installed, dict(sorted(results.items())), others


def render(matrix: dict) -> str:
    versions = list(matrix["results"])
    archs = sorted({a for r in matrix["results"].values() for a in r})
    lines = ["# Compatibility", "", "Model tests of every architecture (anatomy, diagonal == unpatched forward, "
             "late-only interaction exactly 0, MoE routing) per transformers release, CPU, torch "
             f"{matrix['torch']}. Regenerate with `{matrix['command']}`.", "",
             "| architecture | " + " | ".join(versions) + " |", "|---|" + "---|" * len(versions)]
    for a in archs:
        lines.append(f"| {a} | " + " | ".join(matrix["results"][v].get(a, "n/a") for v in versions) + " |")
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--versions", nargs="+", default=list(DEFAULT_VERSIONS))
    parser.add_argument("--write", action="store_true", help="write docs/compatibility.json and .md")
    args = parser.parse_args()
    matrix = {"torch": "2.13.0+cpu", "command": "python scripts/compatibility.py --write", "results": {}}
    failed = False
    for version in args.versions:
        installed, results, others = run_model_tests(version)
        matrix["results"][installed] = results
        bad = [a for a, s in results.items() if s == "fail"]
        failed |= bool(bad) or bool(others) or not results
        print(f"transformers {installed}: {sum(s == 'pass' for s in results.values())} architectures pass"
              + (f"; FAIL: {', '.join(bad)}" if bad else "") + (f"; other model tests FAIL: {', '.join(others)}" if others else ""))
    if args.write:
        (ROOT / "docs" / "compatibility.json").write_text(json.dumps(matrix, indent=2) + "\n")
        (ROOT / "docs" / "compatibility.md").write_text(render(matrix))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
