"""``ntpool verify``: every allocation site failed once, and what the driver did about it."""

from pathlib import Path

from ntpool.tools.campaign import verify
from ntpool.cli.main import main

SCENARIO = str(Path(__file__).parent / "scenarios" / "verify_mixed.py")


def results_by_function():
    campaign = verify(SCENARIO)
    return campaign, {r.function: r for r in campaign.results}


def test_every_site_is_failed_once_and_judged():
    campaign, by_function = results_by_function()
    assert campaign.baseline == "survived"
    assert set(by_function) == {"Mixed.DriverEntry", "Mixed.careless", "Mixed.leaky"}
    lines = sorted((r.function, r.lineno) for r in campaign.results)
    assert len(lines) == 4  # leaky has two sites
    assert campaign.runs == 1 + 4


def test_outcomes_name_what_went_wrong():
    campaign, _ = results_by_function()
    outcome = {(r.function, r.lineno): r for r in campaign.results}
    entry = [r for (f, _), r in outcome.items() if f == "Mixed.DriverEntry"][0]
    careless = [r for (f, _), r in outcome.items() if f == "Mixed.careless"][0]
    header, body = sorted((r for (f, _), r in outcome.items() if f == "Mixed.leaky"),
                          key=lambda r: r.lineno)
    assert entry.survived and entry.driver == "mixed.sys"
    assert careless.outcome == "bug check" and careless.detail.startswith("0x1e KMODE_EXCEPTION_NOT_HANDLED")
    assert header.survived
    assert body.outcome == "leak" and "1 allocation" in body.detail
    assert not campaign.all_survived


def test_verify_command_prints_a_row_per_site_and_fails(capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "250")
    assert main(["verify", SCENARIO]) == 1
    out = capsys.readouterr().out
    assert out.count("mixed.sys") >= 4
    assert "survived" in out and "leak" in out and "KMODE_EXCEPTION_NOT_HANDLED" in out


def test_verify_command_on_a_missing_file_is_one_line(capsys):
    assert main(["verify", "no/such/scenario.py"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "does not exist" in err
