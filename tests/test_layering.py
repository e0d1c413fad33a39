"""The data flow is one-directional: dmn_data → dmn_model → dmn_train (docs: README "Layout")."""

import subprocess
import sys

import pytest

# Importing every module of a package must not pull in the packages downstream of it.
CASES = [
    ("dmn_data", ("dmn_model", "dmn_train")),
    ("dmn_model", ("dmn_train", "dmn_serve")),
    ("dmn_serve", ("dmn_train",)),
]


@pytest.mark.parametrize("package,forbidden", CASES)
def test_package_never_imports_downstream(package, forbidden):
    code = (
        "import importlib, pkgutil, sys\n"
        f"pkg = importlib.import_module({package!r})\n"
        "for m in pkgutil.iter_modules(pkg.__path__):\n"
        f"    importlib.import_module({package!r} + '.' + m.name)\n"
        f"bad = sorted(n for n in sys.modules if n.split('.')[0] in {forbidden!r})\n"
        "print(','.join(bad))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "", f"{package} imports {out.stdout.strip()}"
