"""The README's contract table names, for every row, tests that exist."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_every_contract_row_names_existing_tests():
    readme = (ROOT / "README.md").read_text()
    table = readme[readme.index("### Contract table"):].split("\n## ")[0]
    rows = [line for line in table.splitlines() if line.startswith("| ") and "---" not in line][1:]
    assert len(rows) >= 20
    for row in rows:
        cells = [cell.strip() for cell in row.strip("|").split("|")]
        assert len(cells) == 4 and all(cells), row
        cited = re.findall(r"(test_\w+\.py): ([^|]+)", cells[3])
        assert cited, f"row without a test: {row}"
        for file, names in cited:
            body = (ROOT / "tests" / file).read_text()
            for name in re.findall(r"test_\w+", names):
                assert f"def {name}(" in body, f"{file} has no {name} (README row: {cells[0]})"


def test_every_bug_class_row_names_existing_tests():
    readme = (ROOT / "README.md").read_text()
    table = readme[readme.index("### Bug classes and what catches them"):].split("\n## ")[0]
    rows = [line for line in table.splitlines() if line.startswith("| ") and "---" not in line][1:]
    assert len(rows) >= 10
    bodies = {path.name: path.read_text() for path in (ROOT / "tests").glob("test_*.py")}
    for row in rows:
        cells = [cell.strip() for cell in row.strip("|").split("|")]
        assert len(cells) == 4 and all(cells), row
        named_file = re.search(r"\(`(test_\w+\.py)`\)", cells[3])
        body = bodies[named_file.group(1)] if named_file else bodies["test_verifier.py"]
        names = re.findall(r"`(test_\w+)`", cells[3])
        assert names, f"row without a test: {row}"
        for name in names:
            assert f"def {name}(" in body, f"no test {name} (README row: {cells[0]})"


def _github_anchor(heading: str) -> str:
    """The anchor GitHub gives a heading: lower case, punctuation but - and _ dropped,
    each space a -."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def test_every_link_within_the_readme_leads_to_a_heading():
    readme = (ROOT / "README.md").read_text()
    outside_code = re.sub(r"```.*?```", "", readme, flags=re.S)
    anchors = {_github_anchor(h) for h in re.findall(r"^#+ (.+)$", outside_code, re.M)}
    links = re.findall(r"\]\(#([^)]+)\)", outside_code)
    assert len(links) >= 15  # the guide at the top, by what a reader came for
    assert [link for link in links if link not in anchors] == []


def _names_a_module_or_attribute(dotted: str) -> bool:
    """``ntpool.a.b.c``: a module, or an attribute of the longest module prefix."""
    import importlib
    import importlib.util

    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        module_name = ".".join(parts[:cut])
        try:
            if importlib.util.find_spec(module_name) is None:
                continue
        except ModuleNotFoundError:
            continue
        target = importlib.import_module(module_name)
        for attribute in parts[cut:]:
            if not hasattr(target, attribute):
                return False
            target = getattr(target, attribute)
        return True
    return False


def test_the_modules_and_files_the_docs_name_exist():
    # Files move (the dump fuzzer went from tools/ to cli/ this way); a guide that names the
    # old place sends its reader to nothing.
    plugins = ROOT / "src" / "ntpool" / "data" / "volatility3" / "plugins"
    for doc in ("README.md", "ARCHITECTURE.md"):
        text = (ROOT / doc).read_text()
        for dotted in sorted(set(re.findall(r"\bntpool(?:\.\w+)+", text))):
            plugin = plugins.joinpath(*dotted.split(".")).with_suffix(".py")
            assert plugin.is_file() or _names_a_module_or_attribute(dotted), f"{doc}: {dotted}"
        for module in sorted(set(re.findall(r"python3? -m (ntpool[\w.]*)", text))):
            assert _names_a_module_or_attribute(module), f"{doc}: python -m {module}"
        for path in sorted(set(re.findall(r"`((?:src|tests|docs)/[\w./-]+\.\w+)`", text))):
            assert (ROOT / path).is_file(), f"{doc}: {path}"
        for path in sorted(set(re.findall(r"`((?:ntpool/)?(?:cli|tools|campaign|debugger|dump|"
                                          r"forensics|native|pool|routines|machine|verifier|"
                                          r"samples)/[\w./]+\.py)`", text))):
            assert (ROOT / "src" / "ntpool" / path.removeprefix("ntpool/")).is_file(), \
                f"{doc}: {path}"
