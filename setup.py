"""The one thing pyproject.toml cannot say: the top-level data/ and migrations/ folders ship inside
the iwan package (as `iwan.data` and `iwan.migrations`), so the wheel adds no generic top-level name."""

from setuptools import find_packages, setup

setup(
    packages=[*find_packages(include=["iwan*", "hashing*"]), "iwan.data", "iwan.migrations", "iwan.migrations.versions"],
    package_dir={"iwan.data": "data", "iwan.migrations": "migrations"},
)
