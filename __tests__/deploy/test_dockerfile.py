"""The Dockerfile and its build context, checked as text since no Docker engine runs here.

SPEC section 9 and issue 5: multi-stage, slim, non-root, dependencies from requirements.lock with
`--require-hashes`. And what would break a build or leak a secret: a COPY of a file the
.dockerignore leaves out, or `.env` sent to the builder.
"""

import json
import re
import shlex

from __tests__.deploy.files import (
    API_COMMAND,
    DOCKERFILE,
    DOCKERIGNORE,
    REPO,
    Instruction,
    dockerfile_instructions,
    dockerignored,
    stages,
)

PYTHON_IMAGE = re.compile(r"python:3\.11-slim(-bookworm)?")


def _stages() -> list[list[Instruction]]:
    return stages(dockerfile_instructions(DOCKERFILE.read_text()))


def _runs(stage: list[Instruction]) -> list[list[str]]:
    return [shlex.split(i.value) for i in stage if i.keyword == "RUN"]


def test_multi_stage_on_python_3_11_slim() -> None:
    built = _stages()
    assert len(built) >= 2
    for stage in built:
        image = stage[0].value.split()[0]
        assert PYTHON_IMAGE.fullmatch(image), image
    final = built[-1]
    assert any(i.keyword == "COPY" and i.value.startswith("--from=") for i in final), (
        "the final stage copies the build stage's result"
    )
    # No compilers or package caches in the final stage: it installs nothing itself.
    assert not any("pip" in " ".join(run) or "apt-get" in " ".join(run) for run in _runs(final))


def test_the_final_stage_runs_as_a_non_root_user() -> None:
    users = [i.value for i in _stages()[-1] if i.keyword == "USER"]
    assert users, "no USER in the final stage: the container would run as root"
    user = users[-1].split(":")[0]
    assert user not in ("root", "0"), user


def test_dependencies_come_from_the_lock_file_with_hashes() -> None:
    runs = [run for stage in _stages() for run in _runs(stage)]
    installs = [run for run in runs if "pip" in run and "install" in run]
    locked = [run for run in installs if "requirements.lock" in run]
    assert locked, "requirements.lock is never installed"
    for run in locked:
        assert "--require-hashes" in run and "--no-deps" in run, run
        assert run[run.index("-r") + 1] == "requirements.lock", run
    # The project itself adds no unpinned dependency.
    for run in installs:
        assert "--no-deps" in run, run


def test_what_the_dockerfile_copies_is_in_the_build_context() -> None:
    """A COPY of an ignored path fails the build; every source exists and is sent."""
    ignore = DOCKERIGNORE.read_text()
    copied = [
        source
        for stage in _stages()
        for i in stage
        if i.keyword == "COPY" and not i.value.startswith("--from=")
        for source in i.value.split()[:-1]
        if not source.startswith("--")
    ]
    assert {"requirements.lock", "cryptomarket"} <= set(copied)
    for source in copied:
        assert (REPO / source).exists(), source
        assert not dockerignored(source, ignore), f"{source} is left out by .dockerignore"
    for path in ("cryptomarket/cli.py", "cryptomarket/migrations/versions/0001_initial.py"):
        assert not dockerignored(path, ignore), path


def test_secrets_and_local_state_stay_out_of_the_build_context() -> None:
    ignore = DOCKERIGNORE.read_text()
    for path in (
        ".env",
        ".git/config",
        ".venv/bin/python",
        "cryptomarket.sqlite3",
        "nginx/certs/privkey.pem",
        "__tests__/conftest.py",
        "cryptomarket/__pycache__/cli.cpython-311.pyc",
    ):
        assert dockerignored(path, ignore), f"{path} would be sent to the builder"


def test_the_image_serves_the_api_by_default() -> None:
    final = _stages()[-1]
    command = [i.value for i in final if i.keyword == "CMD"][-1]
    assert json.loads(command) == API_COMMAND
