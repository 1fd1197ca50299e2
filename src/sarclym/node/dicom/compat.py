"""Every private pynetdicom and pydicom attribute the node touches, one function each.

pynetdicom and pydicom promise nothing about their private attributes: a patch release may
rename one, or keep the name and change what it does. So the node touches them here only, one
named function per attribute, each saying what it does, why the node needs it and the versions
it was checked on (:data:`PYNETDICOM_CHECKED`, :data:`PYDICOM_CHECKED`). ``pyproject.toml`` pins
both libraries to the range these were checked on, and ``tests/unit/test_dicom_compat.py`` has a
test per function that fails when the attribute is gone or no longer means what the node assumes:
an upgrade is caught by the tests, not in a hospital.

=============================  ==============================================================
function                       private attribute
=============================  ==============================================================
:func:`set_dul_loop_delay`     ``DULServiceProvider._run_loop_delay`` (pynetdicom)
:func:`association_socket`     ``Association.dul.socket.socket`` (pynetdicom, internal)
:func:`guard_responses`        ``Association._serve_request``, ``DIMSEServiceProvider.msg_queue``
:func:`read_file_meta`         ``pydicom.filereader._read_file_meta_info``
=============================  ==============================================================
"""

from __future__ import annotations

import socket
from typing import Any, BinaryIO

from pydicom.dataset import FileMetaDataset
from pydicom.filereader import _read_file_meta_info
from pynetdicom.association import Association

__all__ = [
    "PYDICOM_CHECKED",
    "PYNETDICOM_CHECKED",
    "association_socket",
    "guard_responses",
    "read_file_meta",
    "set_dul_loop_delay",
]

#: The pynetdicom version the shims were checked on (pyproject pins ``>=3.0.4,<3.1``).
PYNETDICOM_CHECKED = "3.0.4"
#: The pydicom version the shims were checked on (pyproject pins ``>=3.0.2,<3.1``).
PYDICOM_CHECKED = "3.0.2"


def set_dul_loop_delay(assoc: Association, seconds: float) -> None:
    """Set how long an association's DUL reactor sleeps after a pass that found nothing to do.

    pynetdicom's DUL thread polls its socket and queues and sleeps ``_run_loop_delay`` (1 ms)
    whenever a pass was idle: up to 1 ms before it sees the next C-STORE and again before it
    sends the response, per instance. The listener shortens the nap for the life of an
    association (what a scanner's send lasts), at a few percent of a core while it is idle.

    Checked on pynetdicom 3.0.4: ``DULServiceProvider.__init__`` sets ``_run_loop_delay =
    0.001`` and ``run_reactor`` sleeps ``time.sleep(self._run_loop_delay)`` between idle passes.

    Parameters
    ----------
    assoc
        The association, once established (its DUL exists from construction on).
    seconds
        The nap, in seconds.
    """
    assoc.dul._run_loop_delay = seconds


def association_socket(assoc: Association) -> socket.socket | None:
    """The TCP (or TLS) socket under an association; None when it has none (yet, or any more).

    The node sets TCP_NODELAY on it (docs/design.md: Nagle's algorithm costs 40-50 ms per
    C-STORE response) and closes it after a failed association request: pynetdicom 3.0.4 leaves
    the socket of a refused TCP connection open (a ResourceWarning later).

    Checked on pynetdicom 3.0.4: ``Association.dul`` is the ``DULServiceProvider``, its
    ``socket`` the ``transport.AssociationSocket`` (None until the connection is made), and
    that one's ``socket`` the :class:`socket.socket` it sends and receives on (None once closed).
    """
    wrapped = assoc.dul.socket
    if wrapped is None:
        return None
    return wrapped.socket


def guard_responses(assoc: Association) -> None:
    """Hand DIMSE responses that the association's reactor thread took back to ``send_*``.

    pynetdicom 3.0.4 pauses its reactor before ``send_c_store`` waits for the response, but the
    reactor's ``_is_paused`` flag is briefly True while it is still running its loop; with a
    fast peer (DCMTK, Orthanc on loopback) the reactor sometimes takes the C-STORE-RSP first,
    logs "Received unexpected C-STORE service message" and drops it, and the sender waits a
    whole DIMSE timeout for nothing (pynetdicom issues 435, 875). Putting the response back on
    the DIMSE queue lets the waiting ``send_*`` call receive it.

    Checked on pynetdicom 3.0.4: the reactor loop (``Association._run_reactor``) hands every
    message it takes off the DIMSE queue to ``self._serve_request(msg, context_id)``, which
    drops anything that is not a valid request; ``send_*`` waits on
    ``DIMSEServiceProvider.get_msg``, which reads the queue ``msg_queue`` of ``(context_id,
    msg)`` pairs.

    Parameters
    ----------
    assoc
        An established association this side sends requests on (call it once).
    """
    serve = assoc._serve_request

    def serve_or_requeue(msg: Any, context_id: int) -> None:
        if not msg.is_valid_request and msg.is_valid_response:
            assoc.dimse.msg_queue.put((context_id, msg))
            return
        serve(msg, context_id)

    assoc._serve_request = serve_or_requeue  # type: ignore[method-assign]


def read_file_meta(fp: BinaryIO) -> FileMetaDataset:
    """Read the File Meta Information (group 0002, PS3.10 7.1) at the position of ``fp``.

    The node reads Part 10 files it holds in memory (STOW-RS uploads, spool files it re-indexes)
    and needs where the data set starts; pydicom's public ``read_file_meta_info`` takes only a
    path. Errors are pydicom's own (the caller turns any of them into a refusal).

    Checked on pydicom 3.0.2: ``pydicom.filereader._read_file_meta_info(fp)`` reads the group
    0002 elements (Explicit VR Little Endian) from ``fp``, positioned after the preamble and
    ``DICM``, and leaves ``fp`` at the first byte after them.

    Parameters
    ----------
    fp
        Positioned after the 128-byte preamble and ``DICM`` (``pydicom.filereader.read_preamble``).

    Returns
    -------
    FileMetaDataset
        The group 0002 elements; empty when there are none.
    """
    return _read_file_meta_info(fp)
