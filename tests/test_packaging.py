"""
The distribution carries every package of the source tree, and the plugin
file stays light.
"""

from __future__ import annotations

import configparser
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_every_package_of_the_tree_is_listed_in_setup_cfg() -> None:
    parser = configparser.ConfigParser()
    parser.read(ROOT / "setup.cfg")
    listed = set(parser["options"]["packages"].split())
    found = {
        ".".join(init.parent.relative_to(ROOT).parts)
        for top in ("xsoar_lr", "integrations")
        for init in (ROOT / top).rglob("__init__.py")
    }
    assert found - listed == set()
    assert "twisted.plugins" in listed
    assert not (ROOT / "twisted" / "plugins" / "__init__.py").exists()


def test_scanning_the_plugins_imports_no_reactor_and_no_integration() -> None:
    """
    twistd scans plugins before it installs the reactor the user chose, so
    the plugin file must not import one (nor an integration's code).
    """
    probe = (
        "import sys\n"
        "from twisted.plugin import getPlugins\n"
        "from twisted.application.service import IServiceMaker\n"
        "from xsoar_lr.api import IIntegration\n"
        "list(getPlugins(IServiceMaker)); list(getPlugins(IIntegration))\n"
        "bad = [m for m in ('twisted.internet.reactor', 'integrations.edl',"
        " 'twisted.web.proxy') if m in sys.modules]\n"
        "print(bad)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=60
    )
    assert out.stdout.strip() == "[]", out.stderr
