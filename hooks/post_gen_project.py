"""Trim the generated project to the options chosen.

Safe to run again on the same tree (cruft update re-renders the template): it only removes files
that may already be gone, and never runs `git init`.
"""

import shutil
from pathlib import Path

LICENSE = {{ cookiecutter.license | tojson }}
GITHUB_ACTIONS = {{ 'True' if cookiecutter.github_actions | string | lower in ['true', 'yes', 'y', '1'] else 'False' }}


def remove(path: str) -> None:
    target = Path(path)
    if target.is_dir():
        shutil.rmtree(target)
    else:
        target.unlink(missing_ok=True)


if __name__ == "__main__":
    licenses = Path("licenses")
    if LICENSE != "none":
        shutil.copyfile(licenses / f"{LICENSE}.txt", "LICENSE")
    remove("licenses")
    if not GITHUB_ACTIONS:
        remove(".github")
