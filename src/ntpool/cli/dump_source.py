"""A crash dump as a source for poolmon, poolsnap, pictures and reports."""


class DumpSource:
    kind = "dump"

    def __init__(self, path: str):
        try:
            import ntpool.dump  # noqa: F401
        except ImportError:
            raise ValueError(f"{path}: reading crash dumps needs ntpool.dump, which this build "
                             f"does not have") from None
        raise ValueError(f"{path}: reading crash dumps is not wired up yet")
