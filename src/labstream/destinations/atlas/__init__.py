"""ATLAS protocol internals: the writer session state machine and the packet encoder.

The sink (:mod:`.sink`, the only module here doing I/O) drives :mod:`.session` (which packets and
RPCs, in which order, to which streams), and :mod:`.encoding` writes the protobuf bytes. Neither of
those two does any I/O, so both are tested exhaustively without a server.
"""
