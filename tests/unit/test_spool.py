"""The spool: UID checks, layout, the durable-write protocol, the watermark, no half files."""

from __future__ import annotations

import errno
import os
import stat
import threading
from pathlib import Path

import pytest

from sarclym.node.store import durable as durable_module
from sarclym.node.store.durable import TEMP_SUFFIX, write_durable
from sarclym.node.store.spool import (
    Spool,
    SpoolError,
    SpoolFull,
    check_uid,
    is_valid_uid,
)

STUDY, SERIES, SOP = "1.2.826.0.1.3680043.8.498.1", "1.2.826.0.1.3680043.8.498.2", "2.25.3"


def all_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file())


@pytest.mark.parametrize(
    "uid", ["1.2", "0.0", "1.2.840.10008.5.1.4.1.1.128", "2.25." + "9" * 59, "1.0.3"]
)
def test_valid_uids(uid: str) -> None:
    assert is_valid_uid(uid)


@pytest.mark.parametrize(
    "uid",
    [
        "",
        "1",  # one component
        "1.02",  # leading zero
        "1..2",
        ".1.2",
        "1.2.",
        "1.2 ",
        "../1.2",
        "1.2/3",
        "1.2\x00",
        "2.25." + "9" * 60,  # 65 characters
        "1.2.a",
    ],
)
def test_invalid_uids(uid: str) -> None:
    assert not is_valid_uid(uid)


def test_check_uid_names_the_attribute() -> None:
    assert check_uid(SOP, "SOPInstanceUID") == SOP
    with pytest.raises(ValueError, match=r"SeriesInstanceUID is not a valid UID.*'\.\./x'"):
        check_uid("../x", "SeriesInstanceUID")


def test_layout(tmp_path: Path) -> None:
    spool = Spool(tmp_path, min_free_mb=0)
    assert spool.root == tmp_path / "spool"
    assert spool.relative_path(STUDY, SERIES, SOP) == Path("spool", STUDY, SERIES, SOP + ".dcm")
    assert spool.path_for(STUDY, SERIES, SOP) == tmp_path / "spool" / STUDY / SERIES / (
        SOP + ".dcm"
    )
    with pytest.raises(ValueError, match="StudyInstanceUID"):
        spool.path_for("1.2/../../etc", SERIES, SOP)


def test_write_stores_the_bytes_and_leaves_no_temp_file(tmp_path: Path) -> None:
    spool = Spool(tmp_path, min_free_mb=0)
    path = spool.write(STUDY, SERIES, SOP, [b"head", memoryview(b"-body")])
    assert path.read_bytes() == b"head-body"
    assert all_files(tmp_path) == [path]
    # The same instance again replaces it whole (a resend race): still one file.
    assert spool.write(STUDY, SERIES, SOP, [b"again"]) == path
    assert path.read_bytes() == b"again"
    assert all_files(tmp_path) == [path]


def test_durable_write_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """fsync(file) before the rename, fsync(folder) after it; new folders synced in parents."""
    calls: list[tuple[str, str]] = []
    real_fsync, real_replace, real_open = os.fsync, os.replace, os.open
    fds: dict[int, str] = {}

    def fake_open(path: str | os.PathLike[str], flags: int, *args: int) -> int:
        fd = real_open(path, flags, *args)
        fds[fd] = str(path)
        return fd

    def fake_fsync(fd: int) -> None:
        is_dir = stat.S_ISDIR(os.fstat(fd).st_mode)
        calls.append(("fsync", fds[fd] if is_dir else "file"))
        real_fsync(fd)

    def fake_replace(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> None:
        calls.append(("replace", Path(dst).name))
        real_replace(src, dst)

    spool = Spool(tmp_path, min_free_mb=0)
    monkeypatch.setattr(durable_module.os, "open", fake_open)
    monkeypatch.setattr(durable_module.os, "fsync", fake_fsync)
    monkeypatch.setattr(durable_module.os, "replace", fake_replace)
    spool.write(STUDY, SERIES, SOP, [b"x"])
    series_dir = str(spool.root / STUDY / SERIES)
    assert calls == [
        ("fsync", str(tmp_path)),  # each level of the path into its parent, once
        ("fsync", str(spool.root)),
        ("fsync", str(spool.root / STUDY)),
        ("fsync", "file"),
        ("replace", SOP + ".dcm"),
        ("fsync", series_dir),
    ]
    calls.clear()
    spool.write(STUDY, SERIES, "2.25.4", [b"y"])  # folders exist and are known durable
    assert calls == [("fsync", "file"), ("replace", "2.25.4.dcm"), ("fsync", series_dir)]


def test_failed_write_leaves_nothing(tmp_path: Path) -> None:
    target = tmp_path / "a.dcm"
    target.write_bytes(b"old")

    with pytest.raises(TypeError):
        write_durable(target, [b"partial", 42])  # type: ignore[list-item]
    assert target.read_bytes() == b"old"
    assert all_files(tmp_path) == [target]


def test_below_watermark_nothing_is_created(tmp_path: Path) -> None:
    spool = Spool(tmp_path, min_free_mb=2**40)
    with pytest.raises(SpoolFull, match=r"watermark storage\.min_free_mb"):
        spool.write(STUDY, SERIES, SOP, [b"x"])
    assert all_files(tmp_path) == []
    assert list(spool.root.iterdir()) == []  # not even the study folder
    assert not spool.has_room(1)


def test_disk_full_while_writing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    spool = Spool(tmp_path, min_free_mb=0)

    def no_space(fd: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(durable_module.os, "fsync", no_space)
    with pytest.raises(SpoolFull, match="disk full"):
        spool.write(STUDY, SERIES, SOP, [b"x"])
    monkeypatch.undo()
    assert all_files(tmp_path) == []


def test_other_io_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    spool = Spool(tmp_path, min_free_mb=0)

    def denied(src: object, dst: object) -> None:
        raise PermissionError(errno.EACCES, "Permission denied")

    monkeypatch.setattr(durable_module.os, "replace", denied)
    with pytest.raises(SpoolError, match="cannot store") as info:
        spool.write(STUDY, SERIES, SOP, [b"x"])
    assert not isinstance(info.value, SpoolFull)
    monkeypatch.undo()
    assert all_files(tmp_path) == []


def test_folder_removed_between_writes(tmp_path: Path) -> None:
    spool = Spool(tmp_path, min_free_mb=0)
    first = spool.write(STUDY, SERIES, SOP, [b"1"])
    first.unlink()
    first.parent.rmdir()  # a clean-up took the series folder away
    assert spool.write(STUDY, SERIES, "2.25.5", [b"2"]).read_bytes() == b"2"


def test_concurrent_writers(tmp_path: Path) -> None:
    spool = Spool(tmp_path, min_free_mb=0)
    errors: list[BaseException] = []

    def work(index: int) -> None:
        try:
            for n in range(20):
                spool.write(STUDY, f"1.2.{index % 2}", f"2.25.{n}", [b"data" * 100])
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not errors
    files = all_files(tmp_path)
    assert len(files) == 40
    assert all(f.read_bytes() == b"data" * 100 for f in files)


def test_remove_stale_temp(tmp_path: Path) -> None:
    spool = Spool(tmp_path, min_free_mb=0)
    folder = spool.root / STUDY / SERIES
    folder.mkdir(parents=True)
    stale = folder / f".{SOP}.dcm.1{TEMP_SUFFIX}"
    fresh = folder / f".{SOP}.dcm.2{TEMP_SUFFIX}"
    keep = folder / f"{SOP}.dcm"
    for path in (stale, fresh, keep):
        path.write_bytes(b"x")
    os.utime(stale, (0, 0))
    assert spool.remove_stale_temp(older_than_s=3600) == 1
    assert sorted(all_files(tmp_path)) == sorted([fresh, keep])
