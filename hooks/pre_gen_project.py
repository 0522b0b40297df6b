"""Reject bad cookiecutter answers before anything is generated.

Cookiecutter runs this file alone (copied to a temporary file), so it cannot import helpers from
beside it. Each failure prints one line naming the answer and exits non-zero; cookiecutter then
removes nothing because nothing was written yet. The hook only reads, so running it twice (as
`cruft update` does) is safe.
"""

import keyword
import re
import sys

PROJECT_SLUG = {{ cookiecutter.project_slug | tojson }}
PACKAGE_NAME = {{ cookiecutter.package_name | tojson }}
AUTHOR_EMAIL = {{ cookiecutter.author_email | tojson }}
RESULTS_DIR = {{ cookiecutter.results_dir | tojson }}
DOCKER_IMAGE = {{ cookiecutter.docker_image | tojson }}
RAY_ADDRESS = {{ cookiecutter.ray_address | tojson }}

# Answers written unquoted into the Makefile, shell commands (README, CI, manifests) and YAML may
# hold only characters that none of them reads specially: no spaces, quotes, `$`, `#`, `;`, `*`,
# backslashes or colons (a colon also separates Make targets and YAML keys). A folder name may not
# start with `-` (a command would take it for an option) or `.`.
FOLDER = r"[A-Za-z0-9_][A-Za-z0-9._-]*"
RESULTS_DIR_PATTERN = rf"{FOLDER}(/{FOLDER})*"
# Ray addresses: auto, host:port, ray://host:port, http://host:port, [IPv6]:port.
RAY_ADDRESS_PATTERN = r"[A-Za-z0-9._:/\[\]-]*"

# Importing any of these from the project would pick up the project package instead of the
# library (or the other way round), so a package may not take their names.
SHADOWED = {
    "fastapi", "hydra", "hydra_plugins", "lightning", "matplotlib", "numpy", "omegaconf",
    "optuna", "pandas", "pydantic", "pytest", "pytorch_lightning", "ray", "setuptools",
    "sklearn", "src", "tensorboard", "test", "tests", "torch", "torchmetrics", "uvicorn", "yaml",
}


def problem() -> str | None:
    if not re.fullmatch(r"[a-z][a-z0-9]*(-[a-z0-9]+)*", PROJECT_SLUG):
        return (
            f"project_slug {PROJECT_SLUG!r} must be lowercase letters and digits, words joined by "
            "single hyphens, starting with a letter (e.g. 'protein-folding')"
        )
    if not PACKAGE_NAME.isidentifier() or not re.fullmatch(r"[a-z_][a-z0-9_]*", PACKAGE_NAME):
        return (
            f"package_name {PACKAGE_NAME!r} is not a valid Python package name: use lowercase "
            "letters, digits and underscores, starting with a letter (e.g. 'protein_folding')"
        )
    if keyword.iskeyword(PACKAGE_NAME) or keyword.issoftkeyword(PACKAGE_NAME):
        return f"package_name {PACKAGE_NAME!r} is a Python keyword; pick another name"
    if PACKAGE_NAME in SHADOWED or PACKAGE_NAME in sys.stdlib_module_names:
        return (
            f"package_name {PACKAGE_NAME!r} would shadow the module of the same name that the "
            "project depends on; pick another name (e.g. 'my_" + PACKAGE_NAME + "')"
        )
    if not re.fullmatch(r"[^@\s]+@[^@\s]+\.[^@\s]+", AUTHOR_EMAIL):
        return f"author_email {AUTHOR_EMAIL!r} is not an e-mail address"
    if not RESULTS_DIR or RESULTS_DIR.startswith("/") or ".." in RESULTS_DIR.split("/"):
        return (
            f"results_dir {RESULTS_DIR!r} must be a relative folder inside the project "
            "(e.g. 'outputs'); point runs elsewhere with paths.* overrides"
        )
    if not re.fullmatch(RESULTS_DIR_PATTERN, RESULTS_DIR):
        return (
            f"results_dir {RESULTS_DIR!r} may hold only letters, digits, '_', '-' and '.', in "
            "folder names joined by '/' that start with a letter, digit or '_' (e.g. "
            "'outputs' or 'results/runs'): it is written unquoted into the Makefile, shell "
            "commands and YAML, so spaces, quotes, '$', ':' and the like are refused"
        )
    if not re.fullmatch(r"[a-z0-9][a-z0-9._/:-]*", DOCKER_IMAGE):
        return f"docker_image {DOCKER_IMAGE!r} is not a valid image name (lowercase, no tag)"
    if not re.fullmatch(RAY_ADDRESS_PATTERN, RAY_ADDRESS):
        return (
            f"ray_address {RAY_ADDRESS!r} is not a Ray address: use letters, digits and . _ - : "
            "/ [ ] only (e.g. 'auto', 'ray://head:10001' or '10.0.0.5:6379'), or leave it empty"
        )
    return None


if __name__ == "__main__":
    message = problem()
    if message:
        print(f"ERROR: {message}", file=sys.stderr)
        sys.exit(1)
