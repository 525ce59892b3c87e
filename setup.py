"""The package list, found rather than written down; everything else about the build is in pyproject.toml.

Two trees are walked: gateway/, and the top-level migrations/, which ships inside the package as
gateway.migrations. pyproject.toml's `packages.find` cannot map a folder to another package name, and a list
kept by hand once lost gateway.http1 from the wheel. Folders without an __init__.py are found too (namespace
packages), so a module added anywhere under either tree lands in the wheel with no other change.
"""

from setuptools import find_namespace_packages, setup

MIGRATIONS = "migrations"
BYTECODE = ["*__pycache__"]

setup(
    packages=[
        *find_namespace_packages(include=["gateway", "gateway.*"], exclude=BYTECODE),
        "gateway.migrations",
        *(f"gateway.migrations.{name}" for name in find_namespace_packages(MIGRATIONS, exclude=BYTECODE)),
    ],
    package_dir={"gateway.migrations": MIGRATIONS},
)
