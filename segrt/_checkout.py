"""Importing ``segrt`` from a source checkout (e.g. Python started in the repository root).

The installed package maps the root folders (``kernels/``, ``engine/``, ``export/``, ``bench/``,
``models/``: ``segrt._subpackages``) inside ``segrt``. A checkout keeps them beside ``segrt/``, so when the checkout's
``segrt/`` is found first on ``sys.path`` its subpackages would be missing. Then, if segrt is
also installed elsewhere, that installed copy is used; otherwise the subpackages are served
from the checkout's folders (the compiled kernels then come from an in-place build,
``pip install -e .``).
"""
from __future__ import annotations

import importlib.machinery
import importlib.util
import os
import sys

from segrt._subpackages import SUBPACKAGES


class _CheckoutFinder:
    def __init__(self, root: str):
        self.root = root

    def find_spec(self, fullname, path=None, target=None):
        head, _, sub = fullname.partition(".")
        if head != "segrt" or sub not in SUBPACKAGES:
            return None
        folder = os.path.join(self.root, sub)
        init = os.path.join(folder, "__init__.py")
        if not os.path.isfile(init):
            return None
        return importlib.util.spec_from_file_location(fullname, init, submodule_search_locations=[folder])


def resolve(package_file: str) -> bool:
    """Called by segrt/__init__.py; True when another (installed) segrt replaced this one."""
    here = os.path.dirname(os.path.abspath(package_file))
    root = os.path.dirname(here)
    if os.path.isdir(os.path.join(here, "kernels")) or not os.path.isfile(os.path.join(root, "kernels", "__init__.py")):
        return False  # an installed package: nothing to do
    others = [p for p in sys.path if os.path.abspath(p or os.curdir) != root]
    spec = importlib.machinery.PathFinder.find_spec("segrt", others)
    other = os.path.dirname(os.path.abspath(spec.origin)) if spec is not None and spec.origin else None
    # only an installed package (its subpackages inside it) replaces this one; another checkout
    # further down sys.path would hand back to this one without end
    if other and other != here and os.path.isfile(os.path.join(other, "kernels", "__init__.py")):
        module = importlib.util.module_from_spec(spec)
        sys.modules["segrt"] = module
        spec.loader.exec_module(module)
        return True
    if not any(isinstance(f, _CheckoutFinder) for f in sys.meta_path):
        sys.meta_path.append(_CheckoutFinder(root))
    return False
