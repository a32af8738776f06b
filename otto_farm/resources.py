"""Data files shipped beside the package: the repo's top-level folders, or their copies inside a wheel."""

from __future__ import annotations

from pathlib import Path

from otto_farm.errors import OttoFarmError

PACKAGE_DIR = Path(__file__).parent


def data_dir(name: str, marker: str) -> Path:
    """The top-level folder `name` of a source tree, or `otto_farm/_<name>` in a wheel (see pyproject).

    `marker` is a file the folder must hold: in a wheel, the package's parent is site-packages, where
    another distribution may have installed a folder of the same name.
    """
    for candidate in (PACKAGE_DIR.parent / name, PACKAGE_DIR / f"_{name}"):
        if (candidate / marker).is_file():
            return candidate
    raise OttoFarmError(f"{name}/{marker} not found beside the installed package")
