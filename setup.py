"""Map the fixed top-level folders onto one import name, ``fluxbee``.

``dataplane/`` becomes ``fluxbee.dataplane`` and ``operator/`` becomes
``fluxbee.operator`` (a top-level package named ``operator`` could never be
imported: the stdlib module of that name is loaded first).
"""

from pathlib import Path

from setuptools import Extension, setup

ROOTS = {"fluxbee": "fluxbee", "fluxbee.dataplane": "dataplane", "fluxbee.operator": "operator"}


def _packages() -> tuple[list[str], dict[str, str]]:
    here = Path(__file__).parent
    packages: list[str] = []
    package_dir: dict[str, str] = {}
    for name, folder in ROOTS.items():
        package_dir[name] = folder
        for init in sorted((here / folder).rglob("__init__.py")):
            rel = init.parent.relative_to(here / folder)
            if any(part.startswith(".") or part == "__pycache__" for part in rel.parts):
                continue
            dotted = ".".join((name, *rel.parts)) if rel.parts else name
            packages.append(dotted)
    return packages, package_dir


PACKAGES, PACKAGE_DIR = _packages()

# The router's C fast path (dataplane/fastpath.py).  optional=True: without a C compiler the
# install still succeeds and the router uses the pure-Python implementation.
SPEEDUPS = Extension("fluxbee.dataplane._speedups", ["dataplane/_speedups.c"], optional=True,
                     extra_compile_args=["-O2", "-Wall", "-Wextra", "-Werror=implicit-function-declaration"])

setup(packages=PACKAGES, package_dir=PACKAGE_DIR, package_data={"fluxbee": ["py.typed", "data/*"]},
      ext_modules=[SPEEDUPS])
