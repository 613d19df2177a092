"""Package discovery only (metadata lives in pyproject.toml).

``strategies/`` and ``streams/`` install as ``streamkd.strategies`` and ``streamkd.streams``
(``shared/DESIGN.md``). setuptools' ``packages.find`` cannot map several folders under one
prefix from pyproject.toml, so every package below each mapped folder is found here: a new
subpackage (``streamkd/serve``, ``strategies/<x>/``) ships without editing a list.
"""

from setuptools import find_packages, setup

ROOTS = {"streamkd": "streamkd", "streamkd.strategies": "strategies", "streamkd.streams": "streams"}

packages = [
    f"{prefix}.{sub}" if sub else prefix
    for prefix, folder in ROOTS.items()
    for sub in ["", *find_packages(folder)]
]

setup(packages=packages, package_dir=ROOTS)
