"""Build hook: the wheel carries ``wit/``, ``web/`` and ``modules/`` as ``vessel/_data``.

Those folders stay at the top of the repository, where the docs, the tests and the
scripts use them; ``vessel._paths`` looks for them in the installed package first, then
in the checkout. Everything else about the package is declared in pyproject.toml.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

ROOT = Path(__file__).resolve().parent

#: The folders copied into the package, as vessel._paths names them.
SHIPPED = ("wit", "web", "modules")

#: Never shipped: build output (a module's component is built from its sources on the
#: machine that runs it), caches, hidden files.
IGNORED = shutil.ignore_patterns("build", "__pycache__", "*.pyc", "*.wasm", "*.cwasm", ".*")


class BuildPyWithData(build_py):
    """``build_py``, then the shipped folders copied into ``vessel/_data``."""

    def run(self) -> None:
        super().run()
        if self.editable_mode:
            return  # an editable install uses the checkout's folders where they are
        target = Path(self.build_lib) / "vessel" / "_data"
        shutil.rmtree(target, ignore_errors=True)
        for name in SHIPPED:
            shutil.copytree(ROOT / name, target / name, ignore=IGNORED)


setup(cmdclass={"build_py": BuildPyWithData})
