"""Packages are found, not listed: setuptools' own ``packages.find`` names a package after its
folder, and this repository keeps ``engine/`` and ``themes/`` at the top although they install
as ``mptui.engine`` and ``mptui.themes``. So every root of ``[tool.setuptools.package-dir]`` in
pyproject.toml is searched here and its subpackages are named under the root's installed name.
Everything else (metadata, the mapping itself, package data) lives in pyproject.toml."""

from pathlib import Path

from setuptools import find_packages, setup
from setuptools.config.pyprojecttoml import read_configuration

HERE = Path(__file__).parent
PACKAGE_DIR = read_configuration(HERE / "pyproject.toml", expand=False)["tool"]["setuptools"][
    "package-dir"
]


def found_packages(package_dir: dict[str, str]) -> list[str]:
    packages = []
    for name, folder in package_dir.items():
        packages += [name, *(f"{name}.{sub}" for sub in find_packages(HERE / folder))]
    return packages


setup(packages=found_packages(PACKAGE_DIR))
