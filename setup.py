"""The one thing pyproject.toml cannot say: the top-level data/ folder ships as package `iwan.data`."""

from setuptools import find_packages, setup

setup(
    packages=[*find_packages(include=["iwan*", "hashing*", "migrations*"]), "iwan.data"],
    package_dir={"iwan.data": "data"},
)
