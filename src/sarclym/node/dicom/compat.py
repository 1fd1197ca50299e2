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
:func:`intercept_served`       ``Association._serve_request``
:func:`guard_responses`        ``DIMSEServiceProvider.msg_queue`` (through :func:`intercept_served`)
:func:`read_file_meta`         ``pydicom.filereader._read_file_meta_info``
:func:`replace_pdu_reader`     ``DULServiceProvider._read_pdu_data``
:func:`after_each_pdu`         ``DULServiceProvider._read_pdu_data`` (wrapped, not replaced)
:func:`decode_pdu`             ``DULServiceProvider._decode_pdu``
:func:`queue_pdu`              ``DULServiceProvider._recv_pdu``
:func:`end_request_wait`       ``Association.run_reactor``'s wait for the A-ASSOCIATE-RQ
:func:`guard_dimse_decoding`   ``DIMSEServiceProvider.receive_primitive`` as the DUL calls it
:func:`buffer_data_sets`       ``DIMSEServiceProvider.message`` and its ``data_set``
:func:`make_acceptor`          ``RequestHandler._create_association`` (copied, own class)
:func:`wake_on_put`            ``DULServiceProvider.event_queue``, ``to_provider_queue``,
                               ``to_user_queue``, ``DIMSEServiceProvider.msg_queue``
:func:`dul_reactor_pass`       ``DULServiceProvider.run_reactor``'s loop body (copied)
:func:`dul_reactor_start`      ``DULServiceProvider._idle_timer``, ``Association._dul_ready``
:func:`dul_stopping`           ``DULServiceProvider._kill_thread``
:func:`association_pause`      ``Association._reactor_checkpoint``, ``_is_paused``
:func:`association_pass`       ``Association._run_reactor``'s loop body (copied), ``_kill``
:func:`idle_seconds_left`      ``DULServiceProvider._idle_timer``
:func:`restart_idle_timer`     ``DULServiceProvider._idle_timer`` (the store lane's long reads)
=============================  ==============================================================

``sarclym.node.dicom.reactor`` overrides ``DULServiceProvider.run_reactor``, ``kill_dul``,
``stop_dul`` and ``Association._run_reactor``, ``kill`` in subclasses, and reaches every private
attribute through the functions above.
"""

from __future__ import annotations

import io
import logging
import queue
import socket
from collections.abc import Callable
from typing import Any, BinaryIO, cast

from pydicom.dataset import FileMetaDataset
from pydicom.filereader import _read_file_meta_info
from pynetdicom import evt
from pynetdicom.association import Association
from pynetdicom.dimse_messages import DIMSEMessage
from pynetdicom.dul import DULServiceProvider
from pynetdicom.pdu import A_ABORT_RQ, PDU
from pynetdicom.transport import AssociationSocket, RequestHandler

__all__ = [
    "PYDICOM_CHECKED",
    "PYNETDICOM_CHECKED",
    "after_each_pdu",
    "association_pass",
    "association_pause",
    "association_socket",
    "buffer_data_sets",
    "decode_pdu",
    "dul_reactor_pass",
    "dul_reactor_start",
    "dul_stopping",
    "end_request_wait",
    "guard_dimse_decoding",
    "guard_responses",
    "idle_seconds_left",
    "intercept_served",
    "make_acceptor",
    "queue_pdu",
    "read_file_meta",
    "replace_pdu_reader",
    "restart_idle_timer",
    "set_dul_loop_delay",
    "wake_on_put",
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


def intercept_served(assoc: Association, take: Callable[[Any, int], bool]) -> None:
    """Offer every DIMSE message the association's reactor serves to ``take`` first.

    The node uses it to hand stray responses back to a waiting sender (:func:`guard_responses`)
    and to answer a C-STORE of a SOP class not accepted on the association itself, where
    pynetdicom would abort the association (``sarclym.node.dicom.store_guard``).

    Checked on pynetdicom 3.0.4: the reactor loop (``Association._run_reactor``) hands every
    message it takes off the DIMSE queue to ``self._serve_request(msg, context_id)``, which
    drops anything that is not a valid request and serves requests through the event handlers.

    Parameters
    ----------
    assoc
        The association (call before the peer can send: EVT_REQUESTED for an acceptor).
    take
        Called on the reactor thread with ``(msg, context_id)``; True when it dealt with the
        message (pynetdicom then never sees it), False to let pynetdicom serve it. Wrappers
        added later run first.
    """
    serve = assoc._serve_request

    def take_or_serve(msg: Any, context_id: int) -> None:
        if not take(msg, context_id):
            serve(msg, context_id)

    assoc._serve_request = take_or_serve  # type: ignore[method-assign]


def guard_responses(assoc: Association) -> None:
    """Hand DIMSE responses that the association's reactor thread took back to ``send_*``.

    pynetdicom 3.0.4 pauses its reactor before ``send_c_store`` waits for the response, but the
    reactor's ``_is_paused`` flag is briefly True while it is still running its loop; with a
    fast peer (DCMTK, Orthanc on loopback) the reactor sometimes takes the C-STORE-RSP first,
    logs "Received unexpected C-STORE service message" and drops it, and the sender waits a
    whole DIMSE timeout for nothing (pynetdicom issues 435, 875). Putting the response back on
    the DIMSE queue lets the waiting ``send_*`` call receive it.

    Checked on pynetdicom 3.0.4: the reactor serves each message it takes off the DIMSE queue
    (:func:`intercept_served`), dropping anything that is not a valid request; ``send_*`` waits
    on ``DIMSEServiceProvider.get_msg``, which reads the queue ``msg_queue`` of ``(context_id,
    msg)`` pairs.

    The response goes back to the FRONT of the queue: it arrived before anything still queued.
    Put at the end, a C-FIND pending response would fall behind the final one, be lost to the
    query and then break the next operation ("unexpected C-FIND message"); ``queue.Queue`` has
    no public way to put in front, so this appends left under the queue's own mutex and keeps
    its ``unfinished_tasks`` count and ``not_empty`` condition as ``put`` does (CPython 3.11
    ``queue.Queue``: ``mutex``, ``queue`` a deque, ``unfinished_tasks``, ``not_empty``).

    Parameters
    ----------
    assoc
        An established association this side sends requests on (call it once).
    """
    queue = assoc.dimse.msg_queue

    def requeue_first(msg: Any, context_id: int) -> bool:
        if not msg.is_valid_request and msg.is_valid_response:
            with queue.mutex:
                queue.queue.appendleft((context_id, msg))
                queue.unfinished_tasks += 1
                queue.not_empty.notify()
            return True
        return False

    intercept_served(assoc, requeue_first)


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


def replace_pdu_reader(assoc: Association, reader: Callable[[], None]) -> None:
    """Make an association's DUL read each incoming PDU with ``reader`` instead of its own.

    pynetdicom's reader takes a PDU's length from its 6-byte header and then reads that many
    bytes, however many (up to 4 GiB) and however slowly (no time limit: a request that stops
    half way holds the connection and its threads for good). The listener reads with its own
    (:class:`~sarclym.node.dicom.pdu_reader.PduReader`): within the negotiated maximum length,
    the association request within ARTIM.

    Checked on pynetdicom 3.0.4: the DUL reactor (``run_reactor``) calls
    ``_is_transport_event``, which calls ``self._read_pdu_data()`` (no arguments, result unused)
    whenever the socket has data to read, in any state. The reader reads one PDU and puts its
    state machine event on ``event_queue`` (and the decoded PDU where :func:`queue_pdu` puts
    it), or an event alone: ``"Evt17"`` (transport closed), ``"Evt19"`` (invalid PDU).

    Parameters
    ----------
    assoc
        An association whose DUL has not started reading (EVT_CONN_OPEN on the acceptor side).
    reader
        Called by the DUL thread for each PDU there is data for.
    """
    assoc.dul._read_pdu_data = reader  # type: ignore[method-assign]


def after_each_pdu(assoc: Association, hook: Callable[[], None]) -> None:
    """Call ``hook`` on the DUL thread after each PDU pynetdicom's own reader reads.

    For the node's associations that keep pynetdicom's reader (not the listener's, which reads
    with :func:`replace_pdu_reader`): ``sarclym.node.dicom.pdu_reader.quickack_after_reads``
    re-arms TCP_QUICKACK with it where the node receives C-STOREs outside the listener.

    Checked on pynetdicom 3.0.4: the DUL reactor (``run_reactor``, through
    ``_is_transport_event``) looks ``self._read_pdu_data`` up on every call, with no arguments
    and its result unused, whenever the socket has data; each call reads one whole PDU (or
    puts ``"Evt17"``/``"Evt19"`` on ``event_queue``).

    Parameters
    ----------
    assoc
        The association; from the next PDU on when the DUL is already reading.
    hook
        Called with no arguments after each read (also after one that failed).
    """
    dul = assoc.dul
    read = dul._read_pdu_data

    def read_then_hook() -> None:
        try:
            read()
        finally:
            hook()

    dul._read_pdu_data = read_then_hook  # type: ignore[method-assign]


def decode_pdu(assoc: Association, data: bytearray) -> tuple[PDU, str]:
    """Decode one whole PDU as pynetdicom's own reader does; the PDU and its event.

    Decoding through the DUL keeps pynetdicom's notifications: ``EVT_DATA_RECV`` before and
    ``EVT_PDU_RECV`` after decoding, as for every PDU it reads itself.

    Checked on pynetdicom 3.0.4: ``DULServiceProvider._decode_pdu(bytestream)`` fires
    ``EVT_DATA_RECV``, picks the PDU class by the first byte (``dul._PDU_TYPES``), decodes,
    fires ``EVT_PDU_RECV`` and returns ``(pdu, event)``, the event being ``"Evt6"``
    (A-ASSOCIATE-RQ), ``"Evt10"`` (P-DATA-TF), ``"Evt12"`` (A-RELEASE-RQ), and so on.

    Parameters
    ----------
    assoc
        The association the PDU came on.
    data
        The PDU, header included.

    Raises
    ------
    Exception
        Whatever pynetdicom's decoder raises for bytes it cannot decode (``KeyError`` for an
        unknown type, ``struct.error``, ``ValueError``, ...): the caller refuses the PDU.
    """
    pdu, event = assoc.dul._decode_pdu(data)
    return pdu, event


def queue_pdu(assoc: Association, pdu: PDU, event: str) -> None:
    """Hand a decoded PDU to the association's state machine, as pynetdicom's reader does.

    Checked on pynetdicom 3.0.4: ``_read_pdu_data`` ends with ``event_queue.put(event)`` and
    ``_recv_pdu.put(pdu)``; the state machine's action for the event (AE-6 for an
    A-ASSOCIATE-RQ, DT-2 for a P-DATA-TF, ...) takes the PDU with ``dul._recv_pdu.get(False)``.

    Parameters
    ----------
    assoc
        The association the PDU came on.
    pdu, event
        What :func:`decode_pdu` returned.
    """
    dul = assoc.dul
    dul.event_queue.put(event)
    dul._recv_pdu.put(cast(Any, pdu))  # one of the PDU classes that decode_pdu returns


def end_request_wait(assoc: Association) -> None:
    """End an acceptor's wait for an A-ASSOCIATE-RQ that can no longer come.

    pynetdicom's acceptor thread waits ``acse_timeout`` for the request, even once the
    connection is closed; with its DUL thread that is two threads per connection for that long
    (a flood of connections that close at once would pile them up). The node calls this when
    such a connection closes before a request was read, and when the listener stops.

    Checked on pynetdicom 3.0.4: ``Association.run_reactor`` (acceptor) waits with
    ``self.dul.receive_pdu(wait=True, timeout=self.acse_timeout)``, which returns what it takes
    from ``dul.to_user_queue``; ``None`` is what it returns on a timeout, and the thread then
    kills the association (stopping the DUL thread once it is idle, in Sta1), closes the socket
    if still open, and ends.

    Parameters
    ----------
    assoc
        An acceptor whose connection has closed (or is being closed) before any request.
    """
    assoc.dul.to_user_queue.put(cast(Any, None))


def guard_dimse_decoding(assoc: Association, on_error: Callable[[Exception], None]) -> None:
    """Catch what pynetdicom's DIMSE decoding raises on a malformed P-DATA-TF.

    pynetdicom decodes the PDVs of each P-DATA-TF into a DIMSE message on the DUL thread, in
    its state machine's action, where nothing catches an error: a PDV of one byte, a command
    set without (0000,0100) *Command Field* or with a truncated element ends the DUL thread
    with a traceback, and the peer gets no A-ABORT. The node hands the error to ``on_error``
    instead (which refuses the PDU: A-ABORT).

    Checked on pynetdicom 3.0.4: the action DT-2 (Sta6 + Evt10, on the DUL thread) calls
    ``dul.assoc.dimse.receive_primitive(pdu.to_primitive())``, which decodes with
    ``DIMSEMessage.decode_msg`` (``IndexError``, ``AttributeError``, ``struct.error``, ...).

    Parameters
    ----------
    assoc
        The association, before its first P-DATA-TF (EVT_CONN_OPEN). Other wrappers of
        ``receive_primitive`` may be added after this one (they then run first).
    on_error
        Called on the DUL thread with the exception; the message is dropped.
    """
    dimse = assoc.dimse
    receive = dimse.receive_primitive

    def receive_or_report(primitive: Any) -> None:
        try:
            receive(primitive)
        except Exception as exc:  # pynetdicom's decoder on hostile bytes: any error at all
            on_error(exc)

    dimse.receive_primitive = receive_or_report  # type: ignore[method-assign]


def buffer_data_sets(assoc: Association, make_buffer: Callable[[], io.BytesIO]) -> None:
    """Give each DIMSE message the association receives a data-set buffer from ``make_buffer``.

    pynetdicom collects a message's data-set fragments in an :class:`io.BytesIO` of its own,
    whole, however large; the listener gives it one that keeps at most
    ``listener.max_dataset_mb`` (``sarclym.node.dicom.store_guard.BoundedDataSet``).

    Checked on pynetdicom 3.0.4: ``DIMSEServiceProvider.receive_primitive`` creates
    ``self.message = DIMSEMessage()`` when it is None, and the message's fragments are written
    to ``message.data_set`` (an :class:`io.BytesIO`), which becomes the request's ``DataSet``.

    Parameters
    ----------
    assoc
        The association, before the peer can send a P-DATA (EVT_REQUESTED).
    make_buffer
        Returns a new, empty, writable buffer for one message's data set.
    """
    dimse = assoc.dimse
    receive = dimse.receive_primitive

    def receive_into_buffer(primitive: Any) -> None:
        if dimse.message is None:
            dimse.message = DIMSEMessage()
            dimse.message.data_set = make_buffer()
        receive(primitive)

    dimse.receive_primitive = receive_into_buffer  # type: ignore[method-assign]


# -- the blocking reactor (sarclym.node.dicom.reactor): pynetdicom's loops, one pass each ------


_DUL_LOG = logging.getLogger("pynetdicom.dul")  # pynetdicom's own loggers, as its loops log
_ASSOC_LOG = logging.getLogger("pynetdicom.association")


class _WakingQueue(queue.Queue[Any]):
    """A :class:`queue.Queue` that calls ``wake`` after every ``put``."""

    def __init__(self, wake: Callable[[], None]) -> None:
        super().__init__()
        self._wake = wake

    def put(self, item: Any, block: bool = True, timeout: float | None = None) -> None:
        super().put(item, block, timeout)
        self._wake()


def make_acceptor(handler: RequestHandler, association_class: type[Association]) -> Association:
    """Build an acceptor of ``association_class`` for ``handler``'s connection, as pynetdicom does.

    Checked on pynetdicom 3.0.4: a copy of ``RequestHandler._create_association`` (which always
    builds a plain ``Association``) with the class as a parameter; ``tests/unit/test_reactor.py``
    fails when pynetdicom's own changes (its source is compared with the one this was copied
    from).
    """
    from copy import deepcopy
    from datetime import datetime

    from pynetdicom._globals import MODE_ACCEPTOR

    server = cast(Any, handler.server)
    assoc = association_class(handler.ae, MODE_ACCEPTOR)
    assoc._server = server
    assoc.name = f"AcceptorThread@{datetime.now():%Y%m%d%H%M%S}"
    assoc.set_socket(AssociationSocket(assoc, client_socket=cast(socket.socket, handler.request)))
    acceptor, ae = assoc.acceptor, handler.ae
    acceptor.maximum_length = ae.maximum_pdu_size
    acceptor.ae_title = server.ae_title
    acceptor.address_info = handler.local
    acceptor.implementation_class_uid = ae.implementation_class_uid
    acceptor.implementation_version_name = ae.implementation_version_name
    acceptor.supported_contexts = deepcopy(server.contexts)
    assoc.requestor.address_info = handler.remote
    for event, handlers in server._handlers.items():
        if event.is_intervention and handlers:
            assoc.bind(event, *handlers)
        elif isinstance(event, evt.NotificationEvent):
            for handler_ in handlers:
                assoc.bind(event, handler_[0], handler_[1])
    return assoc


def wake_on_put(
    assoc: Association, wake_dul: Callable[[], None], wake_assoc: Callable[[], None]
) -> None:
    """Make the queues the two reactor threads poll call a wake-up after each ``put``.

    Checked on pynetdicom 3.0.4: the DUL thread takes work from ``dul.event_queue`` (state
    machine events, also put by ``AssociationSocket.close`` from any thread) and
    ``dul.to_provider_queue`` (primitives the association sends); the association thread from
    ``dimse.msg_queue`` (decoded DIMSE messages) and ``dul.to_user_queue`` (A-RELEASE, A-ABORT,
    A-P-ABORT, and the A-ASSOCIATE-RQ it waits for with a blocking ``get``). Every producer
    uses ``put``. Call on a new association, before its socket is set (which queues Evt5).
    """
    dul, dimse = assoc.dul, assoc.dimse
    dul.event_queue = _WakingQueue(wake_dul)
    dul.to_provider_queue = _WakingQueue(wake_dul)
    dul.to_user_queue = _WakingQueue(wake_assoc)
    dimse.msg_queue = _WakingQueue(wake_assoc)


def dul_reactor_start(dul: DULServiceProvider) -> None:
    """What ``DULServiceProvider.run_reactor`` does before its loop: idle timer, DUL ready.

    Checked on pynetdicom 3.0.4: it starts ``_idle_timer`` and sets ``assoc._dul_ready``
    (``Association.run_reactor`` and ``request`` wait on it).
    """
    dul._idle_timer.start()
    dul.assoc._dul_ready.set()


def dul_stopping(dul: DULServiceProvider) -> bool:
    """True once ``kill_dul``/``stop_dul`` asked the DUL thread to end (``_kill_thread``)."""
    return dul._kill_thread


def dul_reactor_pass(dul: DULServiceProvider) -> bool | None:
    """One pass of pynetdicom's DUL loop, without its nap: True when an event was handled,
    False when there was nothing to do, None when the thread must end.

    Checked on pynetdicom 3.0.4 (``DULServiceProvider.run_reactor``): ARTIM expiry queues Evt18;
    then either one primitive from the local user is turned into an event
    (``_process_recv_primitive``) or the socket is read when it has data
    (``_is_transport_event``, which restarts ``_idle_timer``); an exception there sends an
    A-ABORT past the state machine and ends both threads; then one event from ``event_queue``
    goes to the state machine.
    """
    if dul._kill_thread:
        return None
    if dul.artim_timer.expired:
        dul.event_queue.put("Evt18")
    try:
        if dul._process_recv_primitive():
            pass
        elif dul._is_transport_event():
            dul._idle_timer.restart()
    except Exception:
        _DUL_LOG.exception("Exception in DUL.run(), aborting association")
        abort = A_ABORT_RQ()
        abort.source, abort.reason_diagnostic = 0x02, 0x00
        sock = dul.socket
        if sock is not None:
            sock.send(abort.encode())
        assoc = dul.assoc
        assoc.is_aborted, assoc.is_established, assoc._kill = True, False, True
        dul._kill_thread = True
        return None
    try:
        event = dul.event_queue.get(block=False)
    except queue.Empty:
        return False
    dul.state_machine.do_action(event)
    return True


def association_pause(assoc: Association, paused: bool) -> None:
    """Mark the association thread paused (or not) and, before a pass, honour a pause request.

    Checked on pynetdicom 3.0.4: ``send_*`` and ``release`` clear ``_reactor_checkpoint`` and
    spin until ``_is_paused`` is True; ``_run_reactor`` sets ``_is_paused``, waits on the
    checkpoint, and clears ``_is_paused`` before each pass.
    """
    assoc._is_paused = True
    if not paused:
        assoc._reactor_checkpoint.wait()
        assoc._is_paused = False


def association_pass(assoc: Association) -> bool | None:
    """One pass of pynetdicom's association loop, without its nap: True when a DIMSE message
    was served, False when there was nothing to do, None when the association has ended.

    Checked on pynetdicom 3.0.4 (``Association._run_reactor``): a message from
    ``dimse.get_msg`` is served (``_serve_request``); an A-RELEASE-RQ is answered, an A-ABORT
    or A-P-ABORT ends it, as do the DUL thread ending and the network timeout (``_kill`` set by
    ``kill``: the loop stops).
    """
    if assoc._kill:
        return None
    context_id, msg = assoc.dimse.get_msg(block=False)
    if msg:
        assoc._serve_request(msg, cast(int, context_id))
    if assoc.is_established and assoc.acse.is_release_requested():
        assoc.acse.send_release(is_response=True)
        _ASSOC_LOG.info("Association Released")
        assoc.is_released, assoc.is_established = True, False
        evt.trigger(assoc, evt.EVT_RELEASED, {})
        assoc.kill()
        return None
    if assoc.acse.is_aborted():
        _ASSOC_LOG.info("Association Aborted")
        assoc.dul.receive_pdu(wait=False)  # EVT_ACSE_RECV for subscribers
        assoc.is_aborted, assoc.is_established = True, False
        evt.trigger(assoc, evt.EVT_ABORTED, {})
        assoc.kill()
        return None
    if not assoc.dul.is_alive():
        assoc.kill()
        return None
    if assoc.dul.idle_timer_expired():
        _ASSOC_LOG.error("Network timeout reached")
        if assoc.network_timeout_response == "A-RELEASE":
            assoc._is_paused = True
            assoc._reactor_checkpoint.wait()
            assoc.release()
            assoc._is_paused = False
        else:
            assoc.abort()
        assoc.kill()
        return None
    return bool(msg)


def restart_idle_timer(assoc: Association) -> None:
    """Restart the association's network timeout, as pynetdicom does after each PDU it reads.

    Checked on pynetdicom 3.0.4: the DUL reactor restarts ``dul._idle_timer`` (a
    ``pynetdicom.timer.Timer``) when ``_is_transport_event`` returns True, once per call of the
    PDU reader; the association thread aborts once it has expired (``idle_timer_expired``). The
    store lane reads all the PDUs of a message in one call: it restarts the timer after each.
    """
    assoc.dul._idle_timer.restart()


def idle_seconds_left(assoc: Association) -> float | None:
    """Seconds until the association's network timeout expires; None when it has none.

    Checked on pynetdicom 3.0.4: ``dul._idle_timer`` (a ``pynetdicom.timer.Timer``) is
    restarted on each read and expires after ``network_timeout``.
    """
    timer = assoc.dul._idle_timer
    return None if timer.timeout is None else timer.remaining
