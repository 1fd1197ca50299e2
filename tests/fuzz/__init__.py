"""Issue 13's fuzz suite: broken senders and attackers against a running ``sarclym-node serve``.

Run by plain pytest (``./dev.sh test``); marked ``integration`` (it needs DCMTK). The categories
and what the node must answer to each are in :mod:`tests.fuzz.test_fuzz_node`.
"""
