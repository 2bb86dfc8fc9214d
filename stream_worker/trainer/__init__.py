"""The periodic trainer: read a window of the event log, split, fit, compare with the serving model (the gate),
announce.
"""
