"""A project generated with cruft takes later template changes, as the template README says.

The template is copied into a fresh git repository (cruft works from git), a project is created
from it and committed, the template moves on, and `cruft check` / `cruft update` are run as a
team would run them.
"""

import json
import shutil
import sys
from pathlib import Path

import pytest

from .conftest import TEMPLATE, run

CRUFT = str(Path(sys.executable).parent / "cruft")
GIT_IDENTITY = {
    "GIT_AUTHOR_NAME": "Template Test",
    "GIT_AUTHOR_EMAIL": "test@example.com",
    "GIT_COMMITTER_NAME": "Template Test",
    "GIT_COMMITTER_EMAIL": "test@example.com",
}
# Answers that make the hooks remove files (.github, licenses/): an update must not bring them back.
ANSWERS = {"project_name": "Kept In Step", "license": "Apache-2.0", "github_actions": False}
README_LINE = (
    "Maintained by the {{ cookiecutter.author_name }} team, for {{ cookiecutter.project_name }}."
)


def git(*args: str, cwd: Path) -> str:
    proc = run(["git", *args], cwd=cwd, timeout=120, **GIT_IDENTITY)
    assert proc.returncode == 0, f"git {' '.join(args)}: {proc.stderr}"
    return proc.stdout.rstrip("\n")


def commit_all(repo: Path, message: str) -> str:
    git("add", "-A", cwd=repo)
    git("commit", "--quiet", "--no-verify", "-m", message, cwd=repo)
    return git("rev-parse", "HEAD", cwd=repo)


def cruft(*args: str, cwd: Path):
    return run([CRUFT, *args], cwd=cwd, timeout=300, **GIT_IDENTITY)


@pytest.fixture
def template_repo(tmp_path: Path) -> Path:
    """This template as a git repository of its own: what a team's fork is."""
    listed = git("ls-files", "--cached", "--others", "--exclude-standard", "-z", cwd=TEMPLATE)
    repo = tmp_path / "template"
    for name in filter(None, listed.split("\0")):
        source = TEMPLATE / name
        if source.is_file():  # listed but deleted in the working tree: skip
            (repo / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, repo / name)
    git("init", "--quiet", "--initial-branch=main", cwd=repo)
    commit_all(repo, "fork of the template")
    return repo


def test_cruft_update_brings_template_changes_into_a_project(
    template_repo: Path, tmp_path: Path
) -> None:
    first_commit = git("rev-parse", "HEAD", cwd=template_repo)
    created = cruft(
        "create",
        str(template_repo),
        "--no-input",
        "--output-dir",
        str(tmp_path),
        "--extra-context",
        json.dumps(ANSWERS),
        cwd=tmp_path,
    )
    assert created.returncode == 0, created.stdout + created.stderr
    project = tmp_path / "kept-in-step"
    record = json.loads((project / ".cruft.json").read_text())
    assert record["template"] == str(template_repo)
    assert record["commit"] == first_commit
    assert record["context"]["cookiecutter"]["project_name"] == "Kept In Step"
    assert not (project / ".git").exists()  # the hooks never run `git init`
    git("init", "--quiet", "--initial-branch=main", cwd=project)
    commit_all(project, "generated")
    assert cruft("check", cwd=project).returncode == 0

    # The team edits its project; the template gains a README line and a config option.
    mlp = project / "configs" / "model" / "mlp.yaml"
    mlp.write_text(mlp.read_text() + "# tuned for our data\n")
    commit_all(project, "local change")
    slug_dir = template_repo / "{{cookiecutter.project_slug}}"
    with (slug_dir / "README.md").open("a") as readme:
        readme.write(f"\n{README_LINE}\n")
    new_option = slug_dir / "configs" / "optimizer" / "rmsprop.yaml"
    new_option.write_text("_target_: torch.optim.RMSprop\n_partial_: true\nlr: 1.0e-3\n")
    second_commit = commit_all(template_repo, "README line and an RMSprop option")

    stale = cruft("check", cwd=project)
    assert stale.returncode == 1, stale.stdout + stale.stderr
    assert "out of date" in stale.stdout + stale.stderr

    updated = cruft("update", "-y", cwd=project)
    assert updated.returncode == 0, updated.stdout + updated.stderr
    assert (
        "Maintained by the Research Team team, for Kept In Step."
        in (project / "README.md").read_text()
    )
    assert (project / "configs" / "optimizer" / "rmsprop.yaml").is_file()
    assert mlp.read_text().endswith("# tuned for our data\n")
    assert not list(project.rglob("*.rej")) and not list(project.rglob("*.orig"))
    assert not (project / ".github").exists() and not (project / "licenses").exists()
    assert json.loads((project / ".cruft.json").read_text())["commit"] == second_commit
    changed = {line[3:] for line in git("status", "--porcelain", cwd=project).splitlines()}
    assert changed == {".cruft.json", "README.md", "configs/optimizer/rmsprop.yaml"}

    commit_all(project, "template update")
    assert cruft("check", cwd=project).returncode == 0
