"""Core and the CLI's light commands must import no heavy framework (startup speed)."""
import json
import subprocess
import sys

from tests.conftest import ROOT

from deploykit.registry import heavy_modules

HEAVY = heavy_modules()

PROBE = """
import json, sys
from deploykit.cli.commands import app
import deploykit, deploykit.api, deploykit.introspect, deploykit.parity, deploykit.registry, sample_models
for args in (["--help"], ["doctor", "--json"], ["samples", "list", "--json"]):
    try:
        app(args, standalone_mode=False)
    except SystemExit:
        pass
heavy = %r
print(json.dumps(sorted(m for m in sys.modules if m.split(".")[0] in heavy)))
"""


def test_cli_help_doctor_and_core_import_no_heavy_framework():
    proc = subprocess.run([sys.executable, "-c", PROBE % (HEAVY,)], capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    loaded = json.loads(proc.stdout.strip().splitlines()[-1])
    assert loaded == [], f"heavy modules imported: {loaded}"
