"""Faults between a client and a server, by concern; import each name from its module.

:mod:`.model` (what a connection suffers: ``Faults``, ``FaultPlan``), :mod:`.scenario`
(plans in TOML files), :mod:`.shaper` (the stream as the peer gets it, no I/O),
:mod:`.delivery` (writing it on time) and :mod:`.proxy` (``packetcore-proxy``).
"""
