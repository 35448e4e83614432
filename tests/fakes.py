"""Test doubles for bookkeeping tests (never the only test of a path)."""


class OneEnginePool:
    """Hands every stage the given engine, as EnginePool hands out a loaded one."""

    def __init__(self, engine):
        self.engine = engine
        self.loads = 0

    def get(self, spec):
        return self.engine

    def close(self):
        pass
