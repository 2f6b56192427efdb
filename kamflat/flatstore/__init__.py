"""db_flatstore files: record encoding (pure, `record`), the writer connection
(`connection`, with `integrity`: torn tails, the write journal, files deleted under it;
`generation`: the rotation counter), reading files (`reader`) and following them
(`follow`).

`kamflat.flatstore.connect` and `FlatstoreError` are loaded on first use so that
importing the pure `kamflat.flatstore.record` does not load the writer's IO.
"""


def __getattr__(name):
    if name in ("connect", "FlatstoreError", "NotSupportedError"):
        from kamflat.flatstore import connection
        return getattr(connection, name)
    raise AttributeError("module 'kamflat.flatstore' has no attribute %r" % name)
