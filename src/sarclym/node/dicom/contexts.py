"""The presentation contexts the listener accepts, and their transfer syntaxes in the peer's order.

Every storage SOP class pynetdicom knows (PET, Enhanced PET, CT, SC, SR, ...) plus a few private
ones scanners route with whole studies, in uncompressed and the common compressed transfer
syntaxes, and Verification. The peer's first proposed transfer syntax wins (:func:`in_peer_order`),
so the encoded data set is stored as received, never transcoded. The private ones are registered
with pynetdicom's Storage Service (:func:`storage_contexts`): pynetdicom aborts the association
on a C-STORE of a SOP class it has no service for.
"""

from __future__ import annotations

import functools

from pydicom.uid import UID
from pynetdicom import AllStoragePresentationContexts, build_context, register_uid
from pynetdicom.presentation import PresentationContext
from pynetdicom.service_class import StorageServiceClass
from pynetdicom.sop_class import uid_to_service_class

__all__ = [
    "PRIVATE_STORAGE_CLASSES",
    "TRANSFER_SYNTAXES",
    "VERIFICATION",
    "in_peer_order",
    "is_image_storage",
    "storage_contexts",
]

#: Transfer syntaxes accepted for storage. When a peer offers several in one presentation context
#: the node takes the peer's first choice (see :func:`in_peer_order`).
TRANSFER_SYNTAXES: tuple[str, ...] = (
    "1.2.840.10008.1.2.5",  # RLE Lossless
    "1.2.840.10008.1.2.4.70",  # JPEG Lossless, SV1
    "1.2.840.10008.1.2.4.57",  # JPEG Lossless
    "1.2.840.10008.1.2.4.80",  # JPEG-LS Lossless
    "1.2.840.10008.1.2.4.90",  # JPEG 2000 Lossless
    "1.2.840.10008.1.2.4.201",  # HTJ2K Lossless
    "1.2.840.10008.1.2.4.202",  # HTJ2K Lossless RPCL
    "1.2.840.10008.1.2.1",  # Explicit VR Little Endian
    "1.2.840.10008.1.2",  # Implicit VR Little Endian
    "1.2.840.10008.1.2.1.99",  # Deflated Explicit VR Little Endian
    "1.2.840.10008.1.2.2",  # Explicit VR Big Endian (retired, still sent by old modalities)
    "1.2.840.10008.1.2.4.50",  # JPEG Baseline
    "1.2.840.10008.1.2.4.51",  # JPEG Extended
    "1.2.840.10008.1.2.4.81",  # JPEG-LS Near-Lossless
    "1.2.840.10008.1.2.4.91",  # JPEG 2000
    "1.2.840.10008.1.2.4.203",  # HTJ2K
)

#: Private storage SOP classes that PET/CT scanners send along with a study.
PRIVATE_STORAGE_CLASSES: dict[str, str] = {
    "1.3.12.2.1107.5.9.1": "Siemens CSA Non-Image Storage",
}

#: Verification SOP Class (C-ECHO), PS3.4 A.
VERIFICATION = "1.2.840.10008.1.1"


def storage_contexts(extra_sop_classes: tuple[str, ...] = ()) -> list[PresentationContext]:
    """Presentation contexts for Verification and every storage SOP class.

    Registers the private classes and ``extra_sop_classes`` with pynetdicom's Storage Service
    (:func:`pynetdicom.register_uid`, once per UID and process) so that a C-STORE of them reaches
    the listener's handler.

    Parameters
    ----------
    extra_sop_classes
        Further (private) storage SOP class UIDs (``listener.extra_sop_classes``).

    Returns
    -------
    list of PresentationContext
        Verification with the uncompressed syntaxes; each storage class with
        :data:`TRANSFER_SYNTAXES`.
    """
    uids = [str(cx.abstract_syntax) for cx in AllStoragePresentationContexts]
    uids += [u for u in (*PRIVATE_STORAGE_CLASSES, *extra_sop_classes) if u not in uids]
    for uid in uids:
        if uid_to_service_class(uid) is not StorageServiceClass:
            register_uid(uid, "SarclymStorage_" + uid.replace(".", "_"), StorageServiceClass)
    contexts = [build_context(VERIFICATION)]
    contexts += [build_context(uid, list(TRANSFER_SYNTAXES)) for uid in dict.fromkeys(uids)]
    return contexts


def in_peer_order(
    requested: list[PresentationContext], supported: dict[str, list[str]]
) -> list[PresentationContext]:
    """The contexts to negotiate one association with, transfer syntaxes in the peer's order.

    pynetdicom accepts, for each proposed context, the first of the *acceptor's* transfer
    syntaxes that the peer proposed. Ordering them as the peer did makes the node accept the
    peer's first choice, normally the encoding the instance is stored in, so nothing is
    transcoded (PS3.8 9.3.2.2 leaves the choice to the acceptor).

    Parameters
    ----------
    requested
        The presentation contexts of the A-ASSOCIATE-RQ.
    supported
        Transfer syntaxes the node accepts, by abstract syntax (SOP class) UID.

    Returns
    -------
    list of PresentationContext
        One context per proposed SOP class the node supports.
    """
    order: dict[str, list[str]] = {}
    for cx in requested:
        uid = str(cx.abstract_syntax)
        if uid in supported:
            proposed = order.setdefault(uid, [])
            proposed += [str(ts) for ts in cx.transfer_syntax if str(ts) not in proposed]
    contexts = []
    for uid, proposed in order.items():
        allowed = supported[uid]
        syntaxes = [ts for ts in proposed if ts in allowed]
        contexts.append(build_context(uid, syntaxes + [ts for ts in allowed if ts not in syntaxes]))
    return contexts


@functools.cache
def _image_storage_classes() -> frozenset[str]:
    return frozenset(
        str(cx.abstract_syntax)
        for cx in AllStoragePresentationContexts
        if "Image Storage" in UID(str(cx.abstract_syntax)).name
    )


def is_image_storage(sop_class_uid: str) -> bool:
    """Whether a storage SOP class is an image: its IOD has the Image Pixel Module, whose
    (7FE0,0010) *Pixel Data* is Type 1 (PS3.3 C.7.6.3).

    The classes pydicom names "... Image Storage" (PET, Enhanced PET, CT, MR, SC, ...); not
    Segmentation, Parametric Map or RT Dose, whose pixel data is checked only when present.
    """
    return sop_class_uid in _image_storage_classes()
