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
