"""What the tests ask of a machine's pool tracking (imported by the test files beside it)."""


def tags_in_use(k) -> dict:
    """Tag -> allocations outstanding, as poolmon's Diff column (tags with none left out)."""
    rows = {}
    for row in k.pool_tags():
        diff = row.PagedAllocs - row.PagedFrees + row.NonPagedAllocs - row.NonPagedFrees
        if diff:
            rows[row.Tag] = diff
    return rows


def tags_left(k) -> dict:
    """``tags_in_use`` less what the I/O manager's IRP and MDL lookaside lists keep (their
    entries stay allocated in pool, as on Windows: its cache, nobody's leak)."""
    rows = tags_in_use(k)
    for tag, (count, _) in k.io_lookaside_holdings().items():
        if rows.get(tag, 0) - count:
            rows[tag] -= count
        else:
            rows.pop(tag, None)
    return rows
