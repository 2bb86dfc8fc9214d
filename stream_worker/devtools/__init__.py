"""Tools for developers, not needed at run time: bench, demo, replay, synthetic data, tail."""
