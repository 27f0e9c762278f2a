"""ATLAS protocol internals: the writer session state machine and the packet encoder.

Internal to labstream: the ATLAS sink drives :mod:`labstream.atlas.session` (which packets and RPCs,
in which order, to which streams) and :mod:`labstream.atlas.encoding` writes the protobuf bytes.
Neither does any I/O, so both are tested exhaustively without a server.
"""
