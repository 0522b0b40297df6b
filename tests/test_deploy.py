"""The path to production in a generated project: KubeRay manifests, `ray up`, Docker, Make, CI.

Nothing here needs Kubernetes, Docker or a cloud account: manifests are checked against the
schema in tests/data/kuberay_manifests.json (and the KubeRay CRDs themselves, where they are
beside this repository), the launcher config against Ray's own schema, and the Dockerfile, Makefile
and workflows by what they name and what `make -n` prints.
"""

import copy
import json
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import tomllib
import zipfile
from fnmatch import fnmatch
from importlib.metadata import version
from pathlib import Path

import jsonschema
import pytest
import yaml
from packaging.requirements import Requirement
from packaging.version import Version

from .conftest import bake, python, run

# The KubeRay CRDs, where a checkout has shared/ beside it: only read, never copied in. Without
# them every manifest is still checked, against tests/data/kuberay_manifests.json.
CRD_DIR = Path(__file__).resolve().parents[2] / "shared" / "kuberay-crds"
CRD_FILES = {
    "RayCluster": "ray.io_rayclusters.yaml",
    "RayJob": "ray.io_rayjobs.yaml",
    "RayService": "ray.io_rayservices.yaml",
}
MANIFESTS = {
    "RayCluster": "deploy/kuberay/raycluster.yaml",
    "RayJob": "deploy/kuberay/rayjob.yaml",
    "RayService": "deploy/kuberay/rayservice.yaml",
}
MAKE_TARGETS = [
    "help",
    "install",
    "hooks",
    "train",
    "sweep",
    "test",
    "test-quick",
    "lint",
    "format",
    "tensorboard",
    "submit",
    "docker-build",
    "docker-push",
]
PACKAGE = "deploy_check"
# What the manifests may hold, written from the CRDs: checked always, the CRDs only where present.
KUBERAY = json.loads((Path(__file__).parent / "data" / "kuberay_manifests.json").read_text())


@pytest.fixture(scope="module", params=["cpu", "gpu"])
def project(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory):
    accelerator = request.param
    path = bake(
        tmp_path_factory.mktemp(f"deploy-{accelerator}"),
        project_name="Deploy Check",
        accelerator=accelerator,
    )
    return accelerator, path


def load(project: Path, relative: str) -> dict:
    return yaml.safe_load((project / relative).read_text())


# --- KubeRay -------------------------------------------------------------------------------------


def strict(schema):
    """The CRD schema as jsonschema reads it: x-kubernetes-* keys dropped, unknown fields refused.

    The API server prunes (or, with strict field validation, rejects) fields a schema does not
    name; closing every object that lists its properties makes a misspelt key fail here too.
    """
    if isinstance(schema, list):
        return [strict(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    open_ = schema.get("x-kubernetes-preserve-unknown-fields", False)
    out = {k: strict(v) for k, v in schema.items() if not k.startswith("x-kubernetes-")}
    if "properties" in out and "additionalProperties" not in out and not open_:
        out["additionalProperties"] = False
    return out


def crd_schemas() -> dict:
    """kind -> (apiVersion, the CRD's openAPIV3Schema); empty where the CRDs are not at hand."""
    if not CRD_DIR.is_dir():
        return {}
    schemas = {}
    for kind, filename in CRD_FILES.items():
        # 60,000 lines of YAML: the C loader, where PyYAML has it, reads them twice as fast.
        loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
        crd = yaml.load((CRD_DIR / filename).read_text(), Loader=loader)
        assert crd["spec"]["names"]["kind"] == kind
        version = next(v for v in crd["spec"]["versions"] if v.get("storage"))
        schemas[kind] = (f"{crd['spec']['group']}/{version['name']}", version["schema"])
    return {kind: (api, schema["openAPIV3Schema"]) for kind, (api, schema) in schemas.items()}


@pytest.fixture(scope="module")
def crds() -> dict:
    return crd_schemas()


def own_schema(kind: str) -> dict:
    """The schema of `kind` in kuberay_manifests.json, with the definitions it refers to."""
    return {**KUBERAY["kinds"][kind], "definitions": KUBERAY["definitions"]}


def errors_of(manifest: dict, schema: dict, api_version: str) -> list[str]:
    validator = jsonschema.Draft7Validator(schema)
    errors = [
        f"{'.'.join(map(str, e.absolute_path))}: {e.message}"
        for e in validator.iter_errors(manifest)
    ]
    if manifest.get("apiVersion") != api_version:
        errors.append(f"apiVersion {manifest.get('apiVersion')} is not {api_version}")
    return errors


def check_manifest(manifest: dict, crds: dict) -> list[str]:
    """What is wrong with `manifest` by the project's schema and, where at hand, by the CRD."""
    kind = manifest.get("kind")
    if kind not in KUBERAY["kinds"]:
        return [f"kind {kind!r} is none of {sorted(KUBERAY['kinds'])}"]
    errors = errors_of(manifest, own_schema(kind), KUBERAY["apiVersion"])
    if kind in crds:
        api_version, crd = crds[kind]
        errors += [f"CRD: {e}" for e in errors_of(manifest, strict(crd), api_version)]
    return errors


def allowed_fields(schema: dict, path: tuple = ()):
    """Every field `schema` (of kuberay_manifests.json) allows, as (path, its schema); a path
    names properties, `[]` an array's items and `*` a map's values."""
    if "$ref" in schema:
        schema = KUBERAY["definitions"][schema["$ref"].rsplit("/", 1)[1]]
    yield path, schema
    for name, field in schema.get("properties", {}).items():
        yield from allowed_fields(field, (*path, name))
    if isinstance(schema.get("items"), dict):
        yield from allowed_fields(schema["items"], (*path, "[]"))
    if isinstance(schema.get("additionalProperties"), dict):
        yield from allowed_fields(schema["additionalProperties"], (*path, "*"))


def crd_field(crd: dict, path: tuple) -> dict | None:
    node = crd
    for step in path:
        if step == "[]":
            node = node.get("items")
        elif step == "*":
            node = node.get("additionalProperties")
        else:
            node = node.get("properties", {}).get(step)
        if not isinstance(node, dict):
            return None
    return node


def json_types(schema: dict) -> set[str]:
    if "type" in schema:
        return {schema["type"]}
    return {option["type"] for option in schema.get("anyOf", [])}


def drift(kind: str, crd: dict) -> list[str]:
    """Where kuberay_manifests.json allows what the CRD of `kind` does not: a field it lacks, a
    different type, a value outside its enum, or a key it requires that is not required here.
    Below `metadata` the CRDs say nothing (Kubernetes' ObjectMeta): not compared."""
    problems = []
    for path, field in allowed_fields(KUBERAY["kinds"][kind]):
        if "metadata" in path[:-1]:
            continue
        where = ".".join(path) or "(manifest)"
        theirs = crd_field(crd, path)
        if theirs is None:
            problems.append(f"{where}: not in the CRD")
            continue
        if json_types(field) != json_types(theirs):
            problems.append(f"{where}: {json_types(field)} here, {json_types(theirs)} in the CRD")
        if "enum" in theirs and not set(field.get("enum", [None])) <= set(theirs["enum"]):
            problems.append(f"{where}: enum {field.get('enum')} not within {theirs['enum']}")
        if "properties" in field and not set(theirs.get("required", [])) <= set(
            field.get("required", [])
        ):
            problems.append(f"{where}: the CRD requires {theirs['required']}")
    return problems


def cluster_spec(manifest: dict) -> dict:
    spec = manifest["spec"]
    return {
        "RayCluster": spec,
        "RayJob": spec.get("rayClusterSpec"),
        "RayService": spec.get("rayClusterConfig"),
    }[manifest["kind"]]


def quantity(value) -> float:
    """A Kubernetes quantity ("500m", "16", 4, "64Gi") as a number of units."""
    text = str(value)
    suffixes = {"m": 1e-3, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40}
    for suffix, factor in suffixes.items():
        if text.endswith(suffix):
            return float(text[: -len(suffix)]) * factor
    return float(text)


@pytest.mark.parametrize("kind", MANIFESTS)
def test_manifest_validates_against_kuberay_schema(kind: str, project, crds) -> None:
    """Always against kuberay_manifests.json; where the CRDs are beside this repository, also
    against them, and the hand-written schema must allow nothing they do not."""
    _, path = project
    manifest = load(path, MANIFESTS[kind])
    assert manifest["kind"] == kind
    assert check_manifest(manifest, crds) == []
    if kind in crds:
        api_version, crd = crds[kind]
        assert api_version == KUBERAY["apiVersion"]
        assert drift(kind, crd) == []


MISTAKES = {
    "misspelt key": lambda m: m["spec"]["workerGroupSpecs"][0].update(
        maxReplica=m["spec"]["workerGroupSpecs"][0].pop("maxReplicas")
    ),
    "misspelt top-level key": lambda m: m["spec"].update(rayVerison=m["spec"].pop("rayVersion")),
    "string for an integer": lambda m: m["spec"]["workerGroupSpecs"][0].update(minReplicas="1"),
    "integer for a string": lambda m: m["spec"]["headGroupSpec"]["rayStartParams"].update(
        {"num-cpus": 0}
    ),
    "missing field": lambda m: m["spec"]["workerGroupSpecs"][0].pop("groupName"),
    "value outside an enum": lambda m: m["spec"]["authOptions"].update(mode="Token"),
    "wrong apiVersion": lambda m: m.update(apiVersion="ray.io/v1alpha1"),
    "quantity that is none": lambda m: m["spec"]["headGroupSpec"]["template"]["spec"]["containers"][
        0
    ]["resources"]["limits"].update(cpu="two"),
}


@pytest.mark.parametrize("mistake", MISTAKES)
def test_schema_check_catches_mistakes(mistake: str, project, crds) -> None:
    _, path = project
    manifest = load(path, MANIFESTS["RayCluster"])
    assert check_manifest(manifest, {}) == []
    MISTAKES[mistake](manifest)
    assert check_manifest(manifest, {}) != []  # without the CRDs, as on a fresh clone
    if crds and mistake != "value outside an enum":  # the CRD leaves authOptions.mode open
        assert [e for e in check_manifest(manifest, crds) if e.startswith("CRD: ")] != []


def test_drift_check_finds_what_the_crd_lacks(crds) -> None:
    """The drift check itself: a field, type or enum value the CRD lacks is reported."""
    if not crds:
        crds = {"RayCluster": (KUBERAY["apiVersion"], crd_from_own_schema("RayCluster"))}
    _, crd = crds["RayCluster"]
    assert drift("RayCluster", crd) == []
    container = KUBERAY["definitions"]["container"]["properties"]
    worker = KUBERAY["definitions"]["clusterSpec"]["properties"]["workerGroupSpecs"]["items"]
    cases = [
        (container, "imagePullPolicyy", {"type": "string"}, "not in the CRD"),
        (worker["properties"], "replicas", {"type": "string"}, "in the CRD"),
        (container, "name", {"type": "string", "enum": ["x"]}, None),
    ]
    for properties, name, field, expected in cases:
        saved = properties.get(name)
        properties[name] = field
        try:
            problems = drift("RayCluster", crd)
        finally:
            if saved is None:
                del properties[name]
            else:
                properties[name] = saved
        if expected:
            assert any(expected in problem for problem in problems), (name, problems)
        else:
            assert problems == [], problems  # the CRD's name has no enum: narrowing is fine


def crd_from_own_schema(kind: str) -> dict:
    """Without the CRD files: a stand-in CRD that is the hand-written schema itself, so that
    the drift check is exercised on a fresh clone too."""

    def inline(schema):
        if isinstance(schema, list):
            return [inline(item) for item in schema]
        if not isinstance(schema, dict):
            return schema
        if "$ref" in schema:
            return inline(KUBERAY["definitions"][schema["$ref"].rsplit("/", 1)[1]])
        return {key: inline(value) for key, value in schema.items()}

    return inline(KUBERAY["kinds"][kind])


def test_manifests_share_image_and_ray_version(project) -> None:
    accelerator, path = project
    versions = set()
    for relative in MANIFESTS.values():
        spec = cluster_spec(load(path, relative))
        versions.add(spec["rayVersion"])
        groups = [spec["headGroupSpec"], *spec["workerGroupSpecs"]]
        images = {c["image"] for g in groups for c in g["template"]["spec"]["containers"]}
        assert images == {f"ghcr.io/example/deploy-check:{accelerator}"}, relative
    assert len(versions) == 1


@pytest.mark.parametrize("kind", MANIFESTS)
def test_cluster_requires_the_token_in_a_secret(kind: str, project) -> None:
    """The dashboard and Jobs API of every KubeRay cluster take jobs only with the token."""
    _, path = project
    manifest = load(path, MANIFESTS[kind])
    auth = manifest
    for key in KUBERAY["authPath"][kind]:
        auth = auth.get(key) or {}
    jsonschema.validate(auth, KUBERAY["definitions"]["authOptions"])
    assert auth.get("mode") == "token", f"{kind}: no token authentication"
    assert auth.get("secretName") == "deploy-check-ray-token"
    spec = cluster_spec(manifest)
    for group in [spec["headGroupSpec"], *spec["workerGroupSpecs"]]:
        for container in group["template"]["spec"]["containers"]:
            env = {item["name"] for item in container.get("env", [])}
            assert not env & {"RAY_AUTH_MODE", "RAY_AUTH_TOKEN"}  # KubeRay sets both from it
    # How to make the Secret that KubeRay reads (its key is auth_token) is at the top.
    create = "kubectl create secret generic deploy-check-ray-token --from-literal=auth_token="
    assert create in (path / MANIFESTS[kind]).read_text()


def test_readme_says_how_submit_gets_the_clusters_token(project) -> None:
    _, path = project
    readme = (path / "README.md").read_text()
    assert "kubectl get secret deploy-check-ray-token" in readme
    assert "RAY_AUTH_TOKEN" in readme and "ray get-auth-token --generate" in readme


def preset_needs(scaling: dict) -> tuple[dict, int]:
    """One worker's bundle and the worker count of a configs/scaling preset, in k8s names."""
    bundle = {"cpu": float(scaling["resources_per_worker"].get("CPU", 1))}
    if scaling["use_gpu"]:
        bundle["nvidia.com/gpu"] = float(scaling["resources_per_worker"].get("GPU", 1))
    return bundle, scaling["num_workers"]


@pytest.mark.parametrize("kind", ["RayCluster", "RayJob"])
def test_training_worker_group_fits_the_scaling_presets(kind: str, project) -> None:
    accelerator, path = project
    spec = cluster_spec(load(path, MANIFESTS[kind]))
    assert spec["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0"  # workers only on workers
    (group,) = spec["workerGroupSpecs"]
    pod = group["template"]["spec"]["containers"][0]["resources"]
    assert pod["requests"] == pod["limits"]
    capacity = {key: quantity(value) for key, value in pod["limits"].items()}
    presets = [
        load(path, f"configs/scaling/{p.name}")
        for p in sorted((path / "configs" / "scaling").glob("*.yaml"))
    ]
    fitting = [p for p in presets if p["use_gpu"] == (accelerator == "gpu")]
    assert fitting, "no scaling preset uses this accelerator"
    for preset in fitting:
        bundle, workers = preset_needs(preset)
        per_pod = min(int(capacity.get(key, 0) // need) for key, need in bundle.items())
        assert per_pod >= 1, f"one {preset['name']} worker {bundle} does not fit a pod {capacity}"
        assert per_pod * group["maxReplicas"] >= workers, f"scaling={preset['name']} never fits"
    assert ("nvidia.com/gpu" in capacity) == (accelerator == "gpu")


def test_rayjob_runs_train_py_with_overrides_that_compose(project) -> None:
    _, path = project
    entrypoint = load(path, MANIFESTS["RayJob"])["spec"]["entrypoint"]
    words = shlex.split(entrypoint)
    assert words[:5] == ["cd", "/app", "&&", "python", "train.py"]
    overrides = words[5:]
    assert "ray.autoscaling=true" in overrides  # pods start after the driver
    storage = next(o for o in overrides if o.startswith("paths.storage_path="))
    assert storage.split("=", 1)[1].startswith("s3://")
    proc = python("train.py", "--cfg", "job", *overrides, cwd=path)
    assert proc.returncode == 0, proc.stderr
    # A worker group on the workers, not the default one-process run in the driver on the head.
    assert yaml.safe_load(proc.stdout)["scaling"]["num_workers"] >= 1


def test_rayservice_serves_the_package_app_from_shared_storage(project) -> None:
    _, path = project
    text = (path / MANIFESTS["RayService"]).read_text()
    assert "shared storage" in text
    serve_config = yaml.safe_load(load(path, MANIFESTS["RayService"])["spec"]["serveConfigV2"])
    (app,) = serve_config["applications"]
    assert app["import_path"] == f"{PACKAGE}.serving.app:build_app"
    assert re.match(r"(s3|gs)://", app["args"]["checkpoint_path"])


def test_rayservice_args_build_the_serve_app(project) -> None:
    """The builder's argument schema accepts serveConfigV2's args, and each replica fits a serve
    worker pod. (The builder itself reads the checkpoint, in the bucket the cluster reaches.)"""
    accelerator, path = project
    spec = load(path, MANIFESTS["RayService"])["spec"]
    (app,) = yaml.safe_load(spec["serveConfigV2"])["applications"]
    module = app["import_path"].split(":")[0]
    code = f"import sys; from {module} import AppArgs; AppArgs.model_validate_json(sys.argv[1])"
    proc = python("-c", code, json.dumps(app["args"]), cwd=path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (group,) = spec["rayClusterConfig"]["workerGroupSpecs"]
    pod = group["template"]["spec"]["containers"][0]["resources"]["limits"]
    replica = app["args"]["resources_per_replica"]
    assert replica.get("CPU", 1) <= quantity(pod["cpu"])
    assert replica.get("GPU", 0) == quantity(pod.get("nvidia.com/gpu", 0))
    assert (replica.get("GPU", 0) > 0) == (accelerator == "gpu")


# --- ray up --------------------------------------------------------------------------------------


def test_ray_up_config_passes_rays_own_checks(project) -> None:
    from ray.autoscaler._private.util import prepare_config, validate_config

    accelerator, path = project
    config = load(path, "deploy/aws-cluster.yaml")
    for key in (
        "cluster_name",
        "provider",
        "available_node_types",
        "head_node_type",
        "file_mounts",
        "setup_commands",
    ):
        assert key in config, key
    assert config["head_node_type"] in config["available_node_types"]
    prepared = prepare_config(copy.deepcopy(config))  # what `ray up` does before validating
    validate_config(prepared)
    assert prepared["docker"]["image"] == f"ghcr.io/example/deploy-check:{accelerator}"
    assert ("--gpus all" in prepared["docker"].get("run_options", [])) == (accelerator == "gpu")
    # Defaults must not sneak a Ray wheel install in: the image already has the project.
    assert not any("pip install" in c and "ray" in c for c in prepared["setup_commands"])


def test_ray_up_cluster_requires_the_token_and_keeps_its_dashboard_local(project) -> None:
    _, path = project
    config = load(path, "deploy/aws-cluster.yaml")
    assert "--env RAY_AUTH_MODE=token" in config["docker"]["run_options"]  # every node's Ray
    assert config["file_mounts"]["~/.ray/auth_token"] == "~/.ray/auth_token"  # the token
    (start,) = [c for c in config["head_start_ray_commands"] if "ray start" in c]
    host = re.search(r"--dashboard-host[= ](\S+)", start)
    # `ray dashboard` reaches it over SSH; no other machine needs to.
    assert host is None or host.group(1) in ("127.0.0.1", "localhost"), start


# --- Versions ------------------------------------------------------------------------------------


def requirement(path: Path, name: str) -> Requirement:
    dependencies = tomllib.loads((path / "pyproject.toml").read_text())["project"]["dependencies"]
    (found,) = [r for r in map(Requirement, dependencies) if r.name == name]
    return found


def test_ray_and_torch_are_pinned_to_the_tested_range_everywhere(project) -> None:
    """pyproject.toml bounds ray and torch on both sides; the versions these tests run are in
    range; the image installs the manifests' Ray and the same torch range as `make install`."""
    _, path = project
    ray, torch = requirement(path, "ray"), requirement(path, "torch")
    for pinned in (ray, torch):
        assert any(s.operator in ("<", "<=", "==", "~=") for s in pinned.specifier), pinned
    assert Version(version("ray")) in ray.specifier
    assert Version(version("torch")) in torch.specifier
    steps = dockerfile(path)
    args = dict(a.split("=", 1) for i, a in steps if i == "ARG" and "=" in a)
    assert Version(args["RAY_VERSION"]) in ray.specifier
    runs = " ".join(a for i, a in steps if i == "RUN")
    assert '"ray[train,tune,serve,data]==${RAY_VERSION}"' in runs
    assert '"${TORCH_SPEC}" --index-url' in runs
    assert Requirement(args["TORCH_SPEC"].strip('"')).specifier == torch.specifier
    makefile = (path / "Makefile").read_text()
    (make_torch,) = re.findall(r"^TORCH_SPEC := (.+)$", makefile, re.MULTILINE)
    assert Requirement(make_torch).specifier == torch.specifier
    assert '"$(TORCH_SPEC)" --index-url' in makefile
    for relative in MANIFESTS.values():
        assert cluster_spec(load(path, relative))["rayVersion"] == args["RAY_VERSION"], relative


def test_every_allowed_torch_and_lightning_load_checkpoints_weights_only(project) -> None:
    """Resuming hands Ray Train's checkpoint to Lightning's fit(ckpt_path=...), which loads it
    with torch.load's default: weights_only=True from torch 2.6 (before, a tampered checkpoint
    could run code when unpickled), and left to torch from Lightning 2.6 (before, Lightning
    passed weights_only=False itself). So neither may be older."""
    _, path = project
    for name in ("torch", "lightning"):
        lower = [
            Version(s.version) for s in requirement(path, name).specifier if s.operator == ">="
        ]
        assert lower and min(lower) >= Version("2.6"), (name, requirement(path, name))


# --- Docker --------------------------------------------------------------------------------------


def dockerfile(path: Path) -> list[tuple[str, str]]:
    """(instruction, arguments) pairs, continuation lines joined and comments dropped."""
    text = re.sub(r"\\\n\s*", " ", (path / "Dockerfile").read_text())
    lines = [line.strip() for line in text.splitlines()]
    return [tuple(line.split(None, 1)) for line in lines if line and not line.startswith("#")]


def dockerignored(name: str, path: Path) -> bool:
    patterns = [
        p.strip().rstrip("/")
        for p in (path / ".dockerignore").read_text().splitlines()
        if p.strip() and not p.startswith("#")
    ]
    return any(fnmatch(name, pattern) for pattern in patterns)


def test_dockerfile_builds_from_the_answers(project) -> None:
    accelerator, path = project
    steps = dockerfile(path)
    args = dict(a.split("=", 1) for i, a in steps if i == "ARG" and "=" in a)
    assert args["BASE_IMAGE"] == "python:3.11-slim"  # the python_version answer
    assert ("FROM", "${BASE_IMAGE}") in steps
    makefile = (path / "Makefile").read_text()
    assert f"TORCH_INDEX_{accelerator} := {args['TORCH_INDEX']}" in makefile
    runs = " ".join(a for i, a in steps if i == "RUN")
    assert "--index-url ${TORCH_INDEX}" in runs
    assert re.search(r"pip install (-e )?\.( |$)", runs)
    copied = {w for i, a in steps if i == "COPY" for w in a.split()[:-1] if not w.startswith("--")}
    assert {"pyproject.toml", "README.md", "src", "configs", "train.py"} <= copied
    for name in copied:
        assert (path / name).exists() and not dockerignored(name, path), name
    user = [a for i, a in steps if i == "USER"]
    assert user and user[-1] not in ("root", "0")


def test_dockerignore_keeps_runs_and_environments_out(project) -> None:
    _, path = project
    for name in ("outputs", ".venv", ".git", "multirun"):
        assert dockerignored(name, path), name


def test_what_the_image_copies_installs_and_runs(project, tmp_path: Path) -> None:
    """The image's layout without Docker: install from what COPY takes, run from /app."""
    _, path = project
    app = tmp_path / "app"
    for instruction, arguments in dockerfile(path):
        if instruction == "COPY":
            *sources, target = arguments.split()
            for source in sources:
                destination = app / (source if target.endswith("/") else target)
                if (path / source).is_dir():
                    subprocess.run(["cp", "-r", str(path / source), str(destination)], check=True)
                else:
                    destination.parent.mkdir(parents=True, exist_ok=True)
                    destination.write_bytes((path / source).read_bytes())
    site = tmp_path / "site"
    pip = [
        sys.executable,
        "-m",
        "pip",
        "install",
        "--quiet",
        "--no-deps",
        "--no-build-isolation",
        "--target",
        str(site),
        ".",
    ]
    installed = run(pip, cwd=app, timeout=300)
    assert installed.returncode == 0, installed.stderr
    assert (site / PACKAGE / "training" / "run.py").is_file()
    proc = run(
        [sys.executable, "train.py", "--cfg", "job"], cwd=app, timeout=300, PYTHONPATH=str(site)
    )
    assert proc.returncode == 0, proc.stderr


# --- Make ----------------------------------------------------------------------------------------


def make_dry_run(path: Path, *args: str) -> subprocess.CompletedProcess:
    return run(["make", "--no-print-directory", "-n", *args], cwd=path, timeout=60)


def test_make_targets_parse(project) -> None:
    _, path = project
    for target in MAKE_TARGETS:
        proc = make_dry_run(path, target)
        assert proc.returncode == 0, f"make {target}: {proc.stderr}"


def submit_commands(path: Path, *args: str) -> list[str]:
    """The shell commands `make submit` runs, continuation lines joined."""
    proc = make_dry_run(path, "submit", *args)
    assert proc.returncode == 0, proc.stderr
    return [line for line in proc.stdout.replace("\\\n", " ").splitlines() if line.strip()]


def submit_command(path: Path, *args: str) -> list[str]:
    """The words of `make submit`'s `ray job submit`, the environment set before it included."""
    (command,) = [c for c in submit_commands(path, *args) if " job submit " in c]
    return shlex.split(command)


@pytest.mark.parametrize(
    "auth,before",
    [
        (["RAY_AUTH_MODE=", "RAY_AUTH_TOKEN=secret"], ["RAY_AUTH_MODE=token"]),
        (["RAY_AUTH_MODE=", "RAY_AUTH_TOKEN=", "RAY_AUTH_TOKEN_PATH=/no/such/token"], []),
        (["RAY_AUTH_MODE=disabled", "RAY_AUTH_TOKEN=secret"], []),  # the user's choice stands
    ],
    ids=["token", "no-token", "disabled"],
)
def test_make_submit_sends_a_token_when_there_is_one(
    project, auth: list[str], before: list[str]
) -> None:
    _, path = project
    words = submit_command(path, *auth)
    assert words[: words.index("ray")] == before


def test_make_submit_uploads_only_what_the_job_needs(
    project, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from ray._private.runtime_env.packaging import create_package
    from ray.runtime_env import RuntimeEnv

    _, baked = project
    path = tmp_path / "project"
    shutil.copytree(baked, path)
    args = ("ARGS=model=cnn scaling=4gpu", "RAY_ADDRESS=http://head:8265", "RAY_AUTH_MODE=disabled")
    words = submit_command(path, *args)
    assert words[:3] == ["ray", "job", "submit"]
    assert words[words.index("--address") + 1] == "http://head:8265"
    assert words[words.index("--") + 1 :] == ["python", "train.py", "model=cnn", "scaling=4gpu"]
    runtime_env = json.loads(words[words.index("--runtime-env-json") + 1])
    monkeypatch.chdir(path)  # `ray job submit` reads the paths from the project folder
    RuntimeEnv(**runtime_env)  # Ray accepts it

    # A working copy as it is on a laptop: secrets, data, runs and environments lying around
    # (.gitignore is not read: Ray's excludes and the staging must do without it).
    secrets = [".env", ".env.local", "credentials.json", "id_rsa", "deploy/key.pem", "configs/.env"]
    secrets.append(f"src/{PACKAGE}/.env")
    junk = ["outputs/runs/old/big.ckpt", ".venv/bin/python", "multirun/x/y.txt", "data/rows.csv"]
    for name in secrets + junk + ["configs/model/extra.yaml"]:
        (path / name).parent.mkdir(parents=True, exist_ok=True)
        (path / name).write_text("secret")

    def uploaded(*args: str) -> tuple[set[str], set[str]]:
        """What Ray would upload: the working directory, and the package (a py_module)."""
        (staging,) = [c for c in submit_commands(path, *args) if " job submit " not in c]
        proc = run(["sh", "-c", staging], cwd=path)
        assert proc.returncode == 0, proc.stderr
        words = submit_command(path, *args)
        working_dir = path / words[words.index("--working-dir") + 1]
        assert working_dir != path
        runtime_env = json.loads(words[words.index("--runtime-env-json") + 1])
        (module,) = runtime_env["py_modules"]
        uploads = []
        for source, parent in ((working_dir, False), (path / module, True)):
            package = Path(tempfile.mkdtemp(dir=tmp_path)) / "package.zip"
            create_package(
                str(source),
                package,
                include_gitignore=False,
                include_parent_dir=parent,
                excludes=runtime_env["excludes"],
            )
            names = zipfile.ZipFile(package).namelist()
            uploads.append({name for name in names if not name.endswith("/")})
        return uploads[0], uploads[1]

    files, code = uploaded(*args)
    configs = {str(p.relative_to(path)) for p in (path / "configs").rglob("*.yaml")}
    assert files == {"train.py", *configs}  # nothing else from the project folder
    assert f"{PACKAGE}/serving/app.py" in code and f"{PACKAGE}/.env" not in code
    assert not [n for n in code if "__pycache__" in n]
    # More files travel when named, in their folders.
    files, _ = uploaded(*args, "SUBMIT_FILES=train.py configs data/rows.csv")
    assert files == {"train.py", "data/rows.csv", *configs}


def test_make_submit_overrides_compose(project) -> None:
    _, path = project
    words = submit_command(path, "ARGS=model=cnn scaling=multinode ray.autoscaling=true")
    overrides = words[words.index("train.py") + 1 :]
    proc = python("train.py", "--cfg", "job", *overrides, cwd=path)
    assert proc.returncode == 0, proc.stderr


# --- CI, pre-commit, README ----------------------------------------------------------------------


def make_targets(path: Path) -> set[str]:
    return set(re.findall(r"^([a-z][a-z-]*):", (path / "Makefile").read_text(), re.MULTILINE))


def dev_tools(path: Path) -> set[str]:
    dev = tomllib.loads((path / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    return {re.split(r"[<>=\[ ]", requirement)[0] for requirement in dev["dev"]}


def test_ci_workflow_runs_commands_that_exist(project) -> None:
    _, path = project
    workflow = load(path, ".github/workflows/ci.yaml")
    assert set(workflow[True]) == {"push", "pull_request"}  # YAML reads the key `on` as True
    commands = [
        step["run"] for job in workflow["jobs"].values() for step in job["steps"] if "run" in step
    ]
    targets = make_targets(path)
    for command in commands:
        for match in re.finditer(r"\bmake ([a-z-]+)((?: [A-Z_]+=\S+)*)", command):
            assert match.group(1) in targets, command
            proc = make_dry_run(path, match.group(1), *match.group(2).split())
            assert proc.returncode == 0, proc.stderr
    assert any("make lint" in c for c in commands) and any("make test-quick" in c for c in commands)
    assert {"pytest", "ruff"} <= dev_tools(path)
    lint = make_dry_run(path, "lint").stdout
    assert "ruff check ." in lint and "ruff format --check ." in lint


def test_pre_commit_runs_ruff_check_and_format(project) -> None:
    _, path = project
    config = load(path, ".pre-commit-config.yaml")
    (repo,) = config["repos"]
    assert repo["repo"] == "https://github.com/astral-sh/ruff-pre-commit"
    assert re.fullmatch(r"v\d+\.\d+\.\d+", repo["rev"])
    assert [hook["id"] for hook in repo["hooks"]] == ["ruff-check", "ruff-format"]
    assert "pre_commit install" in make_dry_run(path, "hooks").stdout


def test_readme_names_make_targets_that_exist(project) -> None:
    _, path = project
    readme = (path / "README.md").read_text()
    named = set(re.findall(r"\bmake ([a-z][a-z-]*)", readme))
    assert {"submit", "docker-build"} <= named
    assert named <= make_targets(path), named - make_targets(path)
    assert "paths.storage_path=s3://" in readme


def test_no_actions_answer_still_gets_pre_commit_and_makefile(tmp_path: Path) -> None:
    path = bake(tmp_path, project_name="Deploy Check", github_actions=False)
    assert not (path / ".github").exists()
    assert (path / ".pre-commit-config.yaml").is_file() and (path / "Makefile").is_file()
