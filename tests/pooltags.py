"""What the tests ask of a machine's pool tracking (imported by the test files beside it)."""


def tags_in_use(k) -> dict:
    """Tag -> allocations outstanding, as poolmon's Diff column (tags with none left out)."""
    rows = {}
    for row in k.pool_tags():
        diff = row.PagedAllocs - row.PagedFrees + row.NonPagedAllocs - row.NonPagedFrees
        if diff:
            rows[row.Tag] = diff
    return rows
