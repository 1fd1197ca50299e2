"""dicom/listener: the names callers import from it stay there after the split into modules."""

from __future__ import annotations

from sarclym.node.dicom import contexts, listener, part10, peers, status


def test_public_names_are_the_moved_objects() -> None:
    assert listener.StoreStatus is status.StoreStatus
    assert listener.RejectReason is peers.RejectReason
    assert listener.check_peer is peers.check_peer
    assert listener.TRANSFER_SYNTAXES is contexts.TRANSFER_SYNTAXES
    assert listener.PRIVATE_STORAGE_CLASSES is contexts.PRIVATE_STORAGE_CLASSES
    assert listener.storage_contexts is contexts.storage_contexts
    assert listener.in_peer_order is contexts.in_peer_order
    assert listener.expected_count is part10.expected_count
    assert listener.part10_prefix is part10.part10_prefix


def test_all_is_importable() -> None:
    for module in (listener, contexts, peers, status, part10):
        for name in module.__all__:
            assert hasattr(module, name), f"{module.__name__}.{name}"


def test_verification_and_storage_contexts() -> None:
    made = contexts.storage_contexts(("1.2.3.4",))
    uids = [str(cx.abstract_syntax) for cx in made]
    assert uids[0] == contexts.VERIFICATION
    assert len(uids) == len(set(uids))
    assert {"1.2.3.4", *contexts.PRIVATE_STORAGE_CLASSES} <= set(uids)
    pet = next(cx for cx in made if str(cx.abstract_syntax) == "1.2.840.10008.5.1.4.1.1.128")
    assert [str(ts) for ts in pet.transfer_syntax] == list(contexts.TRANSFER_SYNTAXES)
