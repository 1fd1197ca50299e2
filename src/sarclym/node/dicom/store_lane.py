"""C-STORE requests served where their PDUs are read, below pynetdicom's DIMSE layer (issue 16).

pynetdicom serves a C-STORE across two threads and three queues: its DUL thread decodes each
P-DATA-TF into PDV objects and its DIMSE provider joins the fragments into a message and decodes
the command set with pydicom; the association thread (after its nap) calls the handler and
encodes the response with pydicom; the DUL thread (after its nap) sends it. Per instance that
costs more than the node's own work on it (``tests/bench/test_bench_ingest.py``).

:class:`StoreLane` (``listener.store_lane``, default on) takes each P-DATA-TF of an established
association from the listener's PDU reader (:class:`~sarclym.node.dicom.pdu_reader.PduReader`)
before pynetdicom decodes it:

- a message whose command set is a valid C-STORE-RQ with a data set, on an accepted presentation
  context, is the lane's: its command and data-set fragments are joined here (at most
  ``max_dataset_bytes`` kept, the rest only counted, as
  :class:`~sarclym.node.dicom.store_guard.BoundedDataSet` does), ``serve`` is called with a
  :class:`StoreRequest` on this thread, and the C-STORE-RSP it returns is encoded
  (:func:`encode_c_store_rsp`, byte for byte what pynetdicom sends) and written to the socket
  at once;
- any other message (C-ECHO, a command the lane cannot parse, a context not accepted) is handed
  to pynetdicom whole, PDV by PDV in the order received, and served as before.

Invariants: the lane decides only at a message boundary (pynetdicom never holds half a message
the lane owns, nor the reverse); every C-STORE-RQ the lane takes gets exactly one response, on
its context, before the next PDU is read; a P-DATA-TF whose PDV items do not fit its length, or a
message that changes context or sends a command fragment in the middle of its data set, or a
command set longer than :data:`MAX_COMMAND_BYTES`, is refused as pynetdicom's decoder failing
would be (A-ABORT). The association's state machine, ARTIM, network timeout, A-RELEASE and
A-ABORT stay pynetdicom's.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import cast

from pynetdicom.association import Association

__all__ = [
    "C_STORE_RQ",
    "MAX_COMMAND_BYTES",
    "LaneError",
    "StoreLane",
    "StoreRequest",
    "encode_c_store_rsp",
]

#: (0000,0100) Command Field of a C-STORE-RQ (PS3.7 9.3.1.1).
C_STORE_RQ = 0x0001
#: The longest command set the lane gathers (a C-STORE-RQ's is about 200 bytes): one that goes
#: on past this is refused (A-ABORT), not held.
MAX_COMMAND_BYTES = 1 << 16
_C_STORE_RSP = 0x8001
_NO_DATA_SET = 0x0101  # (0000,0800) Command Data Set Type: no data set (PS3.7 E.2)
_ESTABLISHED = "Sta6"
_LANE, _PEER, _OFF = "lane", "peer", "off"  # PS3.8 9.2: data transfer
_PDU_HEADER = struct.Struct(">BBL")
_ITEM = struct.Struct(">LBB")  # PDV item length, presentation context ID, message control header
_ELEMENT = struct.Struct("<HHL")  # Implicit VR Little Endian: group, element, length
_US = struct.Struct("<H")
_UL = struct.Struct("<L")
_COMMAND, _LAST = 0x01, 0x02  # message control header bits (PS3.8 E.2)
_P_DATA_TF = 0x04
# Command set elements (group 0000) the lane reads.
_AFFECTED_SOP_CLASS, _COMMAND_FIELD, _MESSAGE_ID = 0x0002, 0x0100, 0x0110
_PRIORITY, _DATA_SET_TYPE, _AFFECTED_SOP_INSTANCE = 0x0700, 0x0800, 0x1000
_REQUIRED = (_AFFECTED_SOP_CLASS, _COMMAND_FIELD, _MESSAGE_ID, _PRIORITY, _AFFECTED_SOP_INSTANCE)


class LaneError(Exception):
    """A P-DATA-TF the lane cannot take without breaking the protocol: the caller refuses it."""


@dataclass(frozen=True)
class StoreRequest:
    """One C-STORE-RQ, joined whole, for the listener's ``serve``.

    Attributes
    ----------
    sop_class, sop_instance
        (0000,0002) Affected SOP Class UID and (0000,1000) Affected SOP Instance UID.
    abstract_syntax, transfer_syntax
        The presentation context it came on.
    data
        The data set as sent; empty when :attr:`exceeded`.
    received
        Bytes of data set received.
    exceeded
        More than the lane's ``max_dataset_bytes`` arrived (nothing of it was kept).
    """

    sop_class: str
    sop_instance: str
    abstract_syntax: str
    transfer_syntax: str
    data: bytes
    received: int
    exceeded: bool


#: What the listener's C-STORE service answers: the status and an Error Comment (or None).
Serve = Callable[[StoreRequest], tuple[int, "str | None"]]


def _uid(value: bytes) -> str:
    return value.rstrip(b"\x00 ").decode("ascii")


def parse_command(command: bytes | bytearray) -> dict[int, bytes]:
    """The elements of an Implicit VR Little Endian command set (group 0000), by element number.

    Raises
    ------
    ValueError
        An element outside group 0000, or one running past the end.
    """
    elements: dict[int, bytes] = {}
    offset, end = 0, len(command)
    while offset < end:
        if offset + _ELEMENT.size > end:
            raise ValueError(f"command set ends inside an element header at byte {offset}")
        group, element, length = _ELEMENT.unpack_from(command, offset)
        offset += _ELEMENT.size
        if group != 0x0000 or offset + length > end:
            raise ValueError(f"element ({group:04X},{element:04X}) is not a command element")
        elements[element] = bytes(command[offset : offset + length])
        offset += length
    return elements


def _element(element: int, value: bytes) -> bytes:
    return _ELEMENT.pack(0x0000, element, len(value)) + value


def _ui(value: str) -> bytes:
    raw = value.encode("ascii")
    return raw + b"\x00" if len(raw) % 2 else raw


def encode_c_store_rsp(
    context_id: int,
    message_id: int,
    sop_class: str,
    sop_instance: str,
    status: int,
    error_comment: str | None,
    max_pdu: int,
) -> bytes:
    """A C-STORE-RSP as P-DATA-TF PDUs, byte for byte as pynetdicom 3 encodes it.

    The command set (Implicit VR Little Endian, PS3.7 9.3.1.2): Command Group Length, Affected
    SOP Class UID, Command Field 0x8001, Message ID Being Responded To, Command Data Set Type
    0x0101 (none), Status, Error Comment (when given), Affected SOP Instance UID; split into
    fragments of at most ``max_pdu - 6`` bytes (the peer's Maximum Length; 0: no limit), one
    PDV per PDU (PS3.8 9.3.5).
    """
    body = b"".join(
        (
            _element(_AFFECTED_SOP_CLASS, _ui(sop_class)),
            _element(_COMMAND_FIELD, _US.pack(_C_STORE_RSP)),
            _element(0x0120, _US.pack(message_id)),
            _element(_DATA_SET_TYPE, _US.pack(_NO_DATA_SET)),
            _element(0x0900, _US.pack(status)),
            b"" if error_comment is None else _element(0x0902, _lo(error_comment)),
            _element(_AFFECTED_SOP_INSTANCE, _ui(sop_instance)),
        )
    )
    command = _element(0x0000, _UL.pack(len(body))) + body
    step = len(command) if max_pdu == 0 else max(1, max_pdu - 6)
    pdus = []
    for start in range(0, len(command), step):
        fragment = command[start : start + step]
        last = start + step >= len(command)
        control = _COMMAND | (_LAST if last else 0)
        item = _ITEM.pack(len(fragment) + 2, context_id, control) + fragment
        pdus.append(_PDU_HEADER.pack(_P_DATA_TF, 0, len(item)) + item)
    return b"".join(pdus)


def _lo(value: str) -> bytes:
    raw = value.encode("ascii", "replace")
    return raw + b" " if len(raw) % 2 else raw


def pdv_items(pdu: bytes | bytearray) -> Iterator[tuple[int, int, int, int]]:
    """Each PDV item of a P-DATA-TF (header included): (start, end, context ID, control), the
    fragment being ``pdu[start:end]``.

    Raises
    ------
    LaneError
        An item shorter than its two header bytes or running past the PDU's end.
    """
    offset, end = _PDU_HEADER.size, len(pdu)
    while offset < end:
        if offset + _ITEM.size > end:
            raise LaneError("malformed P-DATA-TF: a PDV item header runs past the PDU")
        length, context_id, control = _ITEM.unpack_from(pdu, offset)
        if length < 2 or offset + 4 + length > end:
            raise LaneError(f"malformed P-DATA-TF: a PDV item of length {length} does not fit")
        yield offset + _ITEM.size, offset + 4 + length, context_id, control
        offset += 4 + length


class StoreLane:
    """Serves an association's C-STORE requests from its PDU reader (see the module docstring).

    Parameters
    ----------
    assoc
        The association (acceptor) whose P-DATA-TFs the lane sees.
    serve
        Stores one :class:`StoreRequest` and returns its status and Error Comment; called on the
        DUL thread. An exception in it is answered 0xC211 (as pynetdicom answers a handler that
        raises) and passed to ``on_error``.
    max_dataset_bytes
        The most bytes of one data set kept in memory.
    on_error
        Called with an exception ``serve`` raised (to log it).
    """

    def __init__(
        self,
        assoc: Association,
        serve: Serve,
        *,
        max_dataset_bytes: int,
        on_error: Callable[[BaseException], None],
    ) -> None:
        self._assoc = assoc
        self._serve = serve
        self._max_bytes = max_dataset_bytes
        self._on_error = on_error
        self._contexts: dict[int, tuple[str, str]] | None = None
        # The message in progress: _LANE's, _PEER's (pynetdicom serves it), None (between
        # messages); _OFF: everything goes to pynetdicom from here on.
        self._owner: str | None = None
        self._held: list[bytes] = []  # PDV items of a message whose command is not whole yet
        self._command = bytearray()
        self._context_id = 0
        self._request: dict[int, bytes] = {}
        self._fragments: list[bytes] = []
        self._received = 0

    @property
    def in_message(self) -> bool:
        """True while a C-STORE the lane serves is not whole yet (more of it is to come)."""
        return self._owner == _LANE or (self._owner is None and bool(self._held))

    def active(self) -> bool:
        """True when the association is established (the lane takes P-DATA-TFs only then)."""
        return bool(self._assoc.dul.state_machine.current_state == _ESTABLISHED)

    def take(self, pdu: bytearray) -> bytearray | None:
        """Take one P-DATA-TF (header included): None when the lane consumed all of it, else a
        P-DATA-TF of the PDV items that are pynetdicom's, in order, to decode as before.

        Raises
        ------
        LaneError
            The PDU breaks the protocol (see the module docstring); the caller refuses it.
        """
        if self._owner == _OFF:
            return pdu
        forward: list[bytes] = []
        for start, end, context_id, control in pdv_items(pdu):
            if self._owner == _LANE:  # most PDVs: the lane's data set (no copy of the item)
                self._lane_fragment(pdu, start, end, context_id, control)
                continue
            item = bytes(pdu[start - _ITEM.size : end])
            if self._owner == _OFF:
                forward.append(item)
            elif self._owner == _PEER:
                forward.append(item)
                if control & _COMMAND:  # a command inside pynetdicom's data set: for it to judge
                    self._owner = _OFF
                elif control & _LAST:
                    self._owner = None
            else:
                self._command_fragment(pdu, start, end, context_id, control, item, forward)
        if not forward:
            return None
        body = b"".join(forward)
        return bytearray(_PDU_HEADER.pack(_P_DATA_TF, 0, len(body)) + body)

    # -- a message's command: decided when it is whole -------------------------------------

    def _command_fragment(
        self,
        pdu: bytearray,
        start: int,
        end: int,
        context_id: int,
        control: int,
        item: bytes,
        forward: list[bytes],
    ) -> None:
        if not control & _COMMAND or (self._held and context_id != self._context_id):
            # A data set fragment with no command before it, or a command that changes context
            # half way: pynetdicom's to judge, with what came before, and the rest of the
            # association with it (the lane no longer knows where messages end).
            forward.extend(self._held)
            forward.append(item)
            self._reset()
            self._owner = _OFF
            return
        self._context_id = context_id
        self._held.append(item)
        self._command += pdu[start:end]
        if len(self._command) > MAX_COMMAND_BYTES:
            self._reset()
            raise LaneError(
                f"malformed P-DATA-TF: a command set longer than {MAX_COMMAND_BYTES} bytes"
            )
        if not control & _LAST:
            return
        try:
            elements: dict[int, bytes] | None = parse_command(self._command)
        except ValueError:
            elements = None
        if elements is not None and self._takes(elements):
            self._held.clear()
            self._request = elements
            self._owner = _LANE
            return
        # Not a C-STORE-RQ the lane takes (a C-ECHO, ...): pynetdicom serves it, to the end of
        # its data set if it has one.
        forward.extend(self._held)
        data_type = None if elements is None else _us(elements, _DATA_SET_TYPE)
        self._reset()
        if data_type is None:
            self._owner = _OFF
        elif data_type != _NO_DATA_SET:
            self._owner = _PEER

    def _takes(self, elements: dict[int, bytes]) -> bool:
        """Whether a whole command set is a C-STORE-RQ with a data set on an accepted context."""
        if any(tag not in elements for tag in _REQUIRED) or _us(elements, _MESSAGE_ID) is None:
            return False
        if _us(elements, _COMMAND_FIELD) != C_STORE_RQ:
            return False
        if _us(elements, _DATA_SET_TYPE) in (None, _NO_DATA_SET):
            return False
        if self._context_id not in self._accepted():
            return False
        try:
            _uid(elements[_AFFECTED_SOP_CLASS]), _uid(elements[_AFFECTED_SOP_INSTANCE])
        except UnicodeDecodeError:
            return False
        return True

    # -- the lane's own message: data set fragments, then the response ---------------------

    def _lane_fragment(
        self, pdu: bytearray, start: int, end: int, context_id: int, control: int
    ) -> None:
        if control & _COMMAND or context_id != self._context_id:
            what = "a command fragment" if control & _COMMAND else f"context {context_id}"
            self._reset()
            raise LaneError(f"malformed P-DATA-TF: {what} inside a C-STORE data set")
        size = end - start
        self._received += size
        if self._received <= self._max_bytes:
            self._fragments.append(bytes(pdu[start:end]))
        elif self._fragments:
            self._fragments.clear()  # the limit is passed: keep nothing, count the rest
        if control & _LAST:
            self._respond()

    def _respond(self) -> None:
        elements, context_id = self._request, self._context_id
        abstract, transfer = self._accepted()[context_id]
        exceeded = self._received > self._max_bytes
        store = StoreRequest(
            sop_class=_uid(elements[_AFFECTED_SOP_CLASS]),
            sop_instance=_uid(elements[_AFFECTED_SOP_INSTANCE]),
            abstract_syntax=abstract,
            transfer_syntax=transfer,
            data=b"" if exceeded else b"".join(self._fragments),
            received=self._received,
            exceeded=exceeded,
        )
        self._reset()
        try:
            status, comment = self._serve(store)
        except Exception as exc:  # as pynetdicom answers a handler that raises
            self._on_error(exc)
            status, comment = 0xC211, None
        rsp = encode_c_store_rsp(
            context_id,
            cast(int, _us(elements, _MESSAGE_ID)),  # checked by _takes
            store.sop_class,
            store.sop_instance,
            status,
            comment,
            self._assoc.dimse.maximum_pdu_size,  # the peer's Maximum Length, as pynetdicom
        )
        socket = self._assoc.dul.socket
        if socket is not None:
            socket.send(rsp)  # pynetdicom's AssociationSocket: Evt17 when the peer is gone

    # -- bookkeeping ------------------------------------------------------------------------

    def _accepted(self) -> dict[int, tuple[str, str]]:
        if self._contexts is None:
            self._contexts = {
                int(cx.context_id): (str(cx.abstract_syntax), str(cx.transfer_syntax[0]))
                for cx in self._assoc.accepted_contexts
                if cx.context_id is not None
            }
        return self._contexts

    def _reset(self) -> None:
        self._owner = None if self._owner != _OFF else _OFF
        self._held = []
        self._command = bytearray()
        self._request = {}
        self._fragments = []
        self._received = 0


def _us(elements: dict[int, bytes], element: int) -> int | None:
    """The US value of a command element; None when it is absent or not 2 bytes long."""
    value = elements.get(element)
    return None if value is None or len(value) != 2 else int(_US.unpack(value)[0])
