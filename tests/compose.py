"""Compose files as Docker Compose reads them: the ``!override`` and ``!reset`` tags, the merge of
an override file onto a base file, and the services a profile selection starts.

No Docker engine runs here, so the tests read the files themselves. The rules are the Compose
Specification's (https://docs.docker.com/reference/compose-file/merge/, profiles:
https://docs.docker.com/reference/compose-file/services/#profiles), as far as our files use them:

- mappings merge key by key, the later file winning on scalars;
- sequences are appended, except ``command``, ``entrypoint`` and ``healthcheck.test``, which the
  later file replaces;
- ``!override`` replaces the earlier value whole; ``!reset`` removes it;
- a service with ``profiles`` starts only when one of them is enabled.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

__all__ = ["Override", "Reset", "load", "merge", "plain", "started_services"]

_REPLACED = {("command",), ("entrypoint",), ("healthcheck", "test")}  # by the later file


@dataclass(frozen=True)
class Override:
    """A value tagged ``!override``: it replaces what the earlier files say."""

    value: Any


@dataclass(frozen=True)
class Reset:
    """A value tagged ``!reset``: the key is removed from the merged model."""

    value: Any


class _Loader(yaml.SafeLoader):
    """SafeLoader that keeps Compose's merge tags as :class:`Override` and :class:`Reset`."""


def _tagged(kind: type[Override] | type[Reset]) -> Any:
    def construct(loader: yaml.SafeLoader, node: yaml.Node) -> Override | Reset:
        if isinstance(node, yaml.MappingNode):
            return kind(loader.construct_mapping(node, deep=True))
        if isinstance(node, yaml.SequenceNode):
            return kind(loader.construct_sequence(node, deep=True))
        return kind(loader.construct_scalar(node))  # type: ignore[arg-type]

    return construct


_Loader.add_constructor("!override", _tagged(Override))
_Loader.add_constructor("!reset", _tagged(Reset))


def load(path: Path) -> Any:
    """The file's YAML, merge tags kept as :class:`Override` / :class:`Reset`."""
    return yaml.load(path.read_text(), Loader=_Loader)  # a SafeLoader subclass


def plain(data: Any) -> Any:
    """The YAML as it stands in the file, tags dropped (``!override x`` is ``x``; ``!reset x`` is
    ``x``): what the Compose Specification's schema validates in a single file."""
    if isinstance(data, Override | Reset):
        return plain(data.value)
    if isinstance(data, dict):
        return {key: plain(value) for key, value in data.items()}
    if isinstance(data, list):
        return [plain(value) for value in data]
    return data


def merge(base: Any, override: Any, path: tuple[str, ...] = ()) -> Any:
    """``override`` merged onto ``base`` by the Compose rules above (neither is changed)."""
    if isinstance(override, Override):
        return plain(override.value)
    if isinstance(base, dict) and isinstance(override, dict):
        merged = dict(base)
        for key, value in override.items():
            if isinstance(value, Reset):
                merged.pop(key, None)
            elif key in merged:
                merged[key] = merge(merged[key], value, (*path, key))
            else:
                merged[key] = plain(value)
        return merged
    in_service = path[2:] if path[:1] == ("services",) else ()  # ("healthcheck", "test")
    if isinstance(base, list) and isinstance(override, list) and in_service not in _REPLACED:
        return [*base, *(item for item in plain(override) if item not in base)]
    return plain(override)


def started_services(model: dict[str, Any], profiles: tuple[str, ...] = ()) -> set[str]:
    """The services ``docker compose up`` starts with these profiles enabled."""
    return {
        name
        for name, service in model["services"].items()
        if not service.get("profiles") or set(service["profiles"]) & set(profiles)
    }
