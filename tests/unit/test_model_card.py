"""The model card speaks to its users: the shipped card and the card generator (render_card).

Its "Reproduce" block must run on the reader's machine (no folder of the machine that trained
it, the cohort made first with ``synth`` when the data are synthetic), and its text must not
read like a development log.
"""

from __future__ import annotations

import hashlib
import json
import re
import shlex
from typing import Any

import pytest

from sarclym.model.inference.predictor import DEFAULT_REGISTRY
from sarclym.model.inference.registry import (
    CARD_FILE,
    CARD_MD_FILE,
    WEIGHTS_FILE,
    Registry,
    render_card,
)
from tests.shipped import SHIPPED as DEFAULT_VERSION
from tests.shipped import SHIPPED_VERSIONS

#: The first shipped default, trained on phantom version 1 from a written-out cohort.
SHIPPED = DEFAULT_REGISTRY / "1.0.0"
#: The weights the card describes: never changed by a card edit.
WEIGHTS_SHA256 = "454b215ee426f4904b1dcfb9a8fb9ff90005f80f16bbaf6bcac72ca293ef272f"


def _reproduce(markdown: str) -> list[str]:
    """The command lines of the card's Reproduce block (comments and blank lines left out)."""
    match = re.search(r"^## Reproduce\n(.*?)(?=^## |\Z)", markdown, re.S | re.M)
    assert match is not None, markdown
    block = re.search(r"```\n(.*?)```", match.group(1), re.S)
    assert block is not None, match.group(1)
    lines = [line.strip() for line in block.group(1).splitlines()]
    return [line for line in lines if line and not line.startswith("#")]


def _no_machine_paths(lines: list[str]) -> None:
    for line in lines:
        for token in shlex.split(line):
            assert not token.startswith(("/", "~")), line


def _card(reproduce: Any, *, synthetic: bool) -> dict[str, Any]:
    return {
        "name": "sarclym-mip-cnn",
        "version": "2026.12.01-1",
        "synthetic_data": synthetic,
        "training_data": {"description": "x", "n": 120, "excluded": 0},
        "suv_window": [0.0, 10.0],
        "reproduce": reproduce,
    }


def test_shipped_card_reproduces_from_synth_on_any_machine() -> None:
    markdown = (SHIPPED / CARD_MD_FILE).read_text(encoding="utf-8")
    steps = _reproduce(markdown)
    assert steps[0].startswith("sarclym-node synth --out cohort --cases 500 --seed 2026")
    # synth draws phantom version 2 unless told: 1.0.0's cohort names its version.
    assert shlex.split(steps[0])[shlex.split(steps[0]).index("--phantom") + 1] == "1"
    assert steps[1].startswith("sarclym-node retrain --data cohort --labels cohort/labels.csv")
    assert steps[-1].startswith("sarclym-node model activate")
    _no_machine_paths(steps)
    assert "/work/" not in markdown
    assert markdown.count("sarclym-node retrain --") == 1  # one Reproduce block, not two


def test_shipped_card_speaks_to_users() -> None:
    markdown = (SHIPPED / CARD_MD_FILE).read_text(encoding="utf-8")
    card = json.loads((SHIPPED / CARD_FILE).read_text(encoding="utf-8"))
    for text in (markdown, card["notes"]):
        assert "issue" not in text.lower()
        assert "is not met" not in text
    # The Markdown is the JSON rendered by the generator, and the weights are the same.
    assert markdown == render_card(card)
    assert card["weights_sha256"] == WEIGHTS_SHA256
    assert hashlib.sha256((SHIPPED / WEIGHTS_FILE).read_bytes()).hexdigest() == WEIGHTS_SHA256
    assert Registry(DEFAULT_REGISTRY).load("1.0.0").sha256 == WEIGHTS_SHA256


@pytest.mark.parametrize("version", SHIPPED_VERSIONS)
def test_every_shipped_card_is_its_rendering_names_its_weights_and_speaks_to_users(
    version: str,
) -> None:
    folder = DEFAULT_REGISTRY / version
    markdown = (folder / CARD_MD_FILE).read_text(encoding="utf-8")
    card = json.loads((folder / CARD_FILE).read_text(encoding="utf-8"))
    assert markdown == render_card(card)
    assert card["version"] == version
    digest = hashlib.sha256((folder / WEIGHTS_FILE).read_bytes()).hexdigest()
    assert card["weights_sha256"] == digest
    loaded = Registry(DEFAULT_REGISTRY).load(version)
    assert loaded.sha256 == digest
    assert loaded.ood is not None  # every shipped version says when a scan is unlike its data
    assert card["synthetic_data"] is True
    assert "Research use only" in markdown
    _no_machine_paths(_reproduce(markdown))
    assert "/work/" not in markdown
    assert "/tmp/" not in markdown
    for text in (markdown, str(card.get("notes", ""))):
        assert "issue" not in text.lower()
        assert "is not met" not in text


def test_the_default_card_reproduces_in_one_command_on_its_phantom() -> None:
    """The shipped default is ``retrain --synthetic-cohort``'s: one command, no folder, the
    cohort's phantom version named (synth's default may change; the card must not)."""
    card = Registry(DEFAULT_REGISTRY).card(DEFAULT_VERSION)
    steps = _reproduce(render_card(card))
    (command,) = steps
    words = shlex.split(command)
    assert words[:3] == ["sarclym-node", "retrain", "--synthetic-cohort"]
    assert int(words[3]) == card["training_data"]["n"] == card["cv_metrics"]["n"]
    assert words[words.index("--phantom") + 1] == str(card["training_data"]["phantom"])
    assert "--registry" not in words
    assert "--inputs-cache" not in words


def test_generator_hides_the_training_machine_folders_and_adds_synth() -> None:
    """A card as ``retrain`` writes it: the command with the paths as given on that machine."""
    command = (
        "sarclym-node retrain --data /work/cohort/c500 --labels /work/cohort/c500/labels.csv "
        "--folds 5 --epochs 40 --batch-size 16 --lr 0.003 --seed 0 --arch two_branch_grid "
        "--suv-max 10.0 --input-size 256x128"
    )
    steps = _reproduce(render_card(_card(command, synthetic=True)))
    _no_machine_paths(steps)
    assert steps[0] == "sarclym-node synth --out c500 --cases 120"
    assert steps[1].startswith("sarclym-node retrain --data c500 --labels c500/labels.csv --folds")
    # A site's own studies: no synth step; a labels file elsewhere keeps its name only.
    site = command.replace("/work/cohort/c500/labels.csv", "/srv/labels/site.csv")
    steps = _reproduce(render_card(_card(site, synthetic=False)))
    _no_machine_paths(steps)
    assert [s.split()[1] for s in steps] == ["retrain"]
    assert "--data c500 --labels site.csv" in steps[0]


def test_generator_renders_a_list_of_steps_as_given() -> None:
    steps = [
        "sarclym-node synth --out cohort --cases 500 --seed 2026",
        "sarclym-node retrain --data cohort --labels cohort/labels.csv",
    ]
    assert _reproduce(render_card(_card(steps, synthetic=True))) == steps
    # Paths with spaces are quoted; a line a shell cannot split is shown as recorded.
    spaced = ["sarclym-node retrain --data '/mnt/my cohort' --labels '/mnt/my cohort/l.csv'"]
    assert _reproduce(render_card(_card(spaced, synthetic=False))) == [
        "sarclym-node retrain --data 'my cohort' --labels 'my cohort/l.csv'"
    ]
    odd = ["sarclym-node retrain --data /mnt/O'Brien"]
    assert render_card(_card(odd, synthetic=False)).count(odd[0]) == 1
