"""The consent register as files: grant and withdraw write them in one step, the register reads
them back (and a restart reads the same), and `connector policy check` refuses bad consent
input and a subject field the records lack, with file and line."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from connector.core.consent import Consent, Requester, Withheld
from connector.core.errors import ConflictError, InvalidParameter, NotFound
from connector.participant.consents import grant, listing, load_register, withdraw
from connector.participant.init import init_folder
from connector.participant.lint import check_folder

NOW = datetime(2026, 12, 6, 12, 0, tzinfo=UTC)
CARE = "did:web:care.example"
WHO = Requester(CARE, {}, "care")


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    root = tmp_path / "hospital"
    init_folder(root, name="hospital", url="https://127.0.0.1:8443")
    return root


def problems(root: Path) -> list[str]:
    return [str(p).removeprefix(str(root) + "/") for p in check_folder(root)]


def test_grant_then_withdraw_round_trips_through_the_files(folder: Path) -> None:
    grant(folder, "patient-1", Consent(CARE, "care", NOW + timedelta(days=1), granted=NOW))
    register, broken = load_register(folder)  # what a restarted daemon reads
    assert broken == 0 and register.decide("patient-1", WHO, NOW) is None
    assert problems(folder) == []
    assert withdraw(folder, "patient-1", NOW, consumer=CARE) == 1
    register, _ = load_register(folder)
    assert register.decide("patient-1", WHO, NOW) is Withheld.WITHDRAWN
    assert [row["state"] for row in listing(register, NOW)] == ["withdrawn"]
    with pytest.raises(NotFound):
        withdraw(folder, "patient-1", NOW)  # nothing left in force


def test_grant_refuses_bad_input(folder: Path) -> None:
    until = NOW + timedelta(days=1)
    with pytest.raises(InvalidParameter, match="subject"):
        grant(folder, "../etc/passwd", Consent(CARE, "care", until))
    with pytest.raises(InvalidParameter, match="purpose"):
        grant(folder, "p1", Consent(CARE, "care and research", until))
    with pytest.raises(InvalidParameter, match="consumer"):
        grant(folder, "p1", Consent("anyone", "care", until))
    assert not (folder / "consents").exists()


BAD = """\
# consents of one patient

[[consent]]
consumer = "did:web:care.example"
purpose = "care"
until = 2027-06-30T00:00:00Z

[[consent]]
consumer = "did:web:app.example"
purpose = "care and more"
until = "next summer"
"""


def test_policy_check_names_file_and_line_of_bad_consent_input(folder: Path) -> None:
    (folder / "consents").mkdir()
    (folder / "consents" / "patient-2.toml").write_text(BAD)
    found = problems(folder)
    assert found[0].startswith("consents/patient-2.toml:10: purpose must be one word")
    assert found[1].startswith("consents/patient-2.toml:11: until must be a date-time")
    assert len(found) == 2
    # Deny by default: the subject of a file with a problem has no consent in force at all.
    register, broken = load_register(folder)
    assert broken == 1 and register.decide("patient-2", WHO, NOW) is Withheld.NO_CONSENT
    with pytest.raises(ConflictError):
        grant(folder, "patient-2", Consent(CARE, "care", NOW + timedelta(days=1)))


def test_policy_check_refuses_a_local_time_and_malformed_toml(folder: Path) -> None:
    (folder / "consents").mkdir()
    (folder / "consents" / "p3.toml").write_text(
        '[[consent]]\nconsumer = "membership=care-team"\npurpose = "care"\n'
        "until = 2027-06-30T00:00:00\n")
    (folder / "consents" / "p4.toml").write_text('[[consent]]\nuntil = 2027-13-45T00:00:00Z\n')
    found = problems(folder)
    assert found[0].startswith("consents/p3.toml:4: until must be a date-time with its offset")
    assert found[1].startswith("consents/p4.toml:2: invalid TOML")


def test_policy_check_refuses_a_subject_field_the_records_lack(folder: Path) -> None:
    dataset = folder / "datasets" / "example.toml"
    text = dataset.read_text()
    dataset.write_text(text.replace('policies = ', 'subject_field = "patient"\npolicies = '))
    line = next(i for i, t in enumerate(dataset.read_text().splitlines(), 1)
                if t.startswith("subject_field"))
    (found,) = problems(folder)
    assert found.startswith(f"datasets/example.toml:{line}: subject_field 'patient' is not a "
                            "field of the source's records")
    record_field = next(iter(__import__("json").loads(
        (folder / "data" / "example.jsonl").read_text().splitlines()[0])))
    dataset.write_text(text.replace('policies = ', f'subject_field = "{record_field}"\n'
                                    'policies = '))
    assert problems(folder) == []


def test_policy_check_refuses_a_consent_constraint_of_another_form(folder: Path) -> None:
    (folder / "policies" / "consented.yaml").write_text(
        "description: care team, under consent\npermission:\n  - action: use\n"
        "    constraints:\n      - consent isAnyOf [care, research]\n")
    (found,) = problems(folder)
    assert found.startswith("policies/consented.yaml:5:") and "consent takes eq" in found


def test_policy_check_refuses_a_consent_policy_on_a_dataset_without_subject_field(
        folder: Path) -> None:
    (folder / "policies" / "consented.yaml").write_text(
        "description: under consent\npermission:\n  - action: use\n"
        "    constraints:\n      - consent eq care\n")
    dataset = folder / "datasets" / "example.toml"
    text = dataset.read_text()
    dataset.write_text(text.replace('policies = ["', 'policies = ["consented", "'))
    line = next(i for i, t in enumerate(dataset.read_text().splitlines(), 1)
                if t.startswith("policies"))
    (found,) = problems(folder)
    assert found.startswith(f"datasets/example.toml:{line}: policy 'consented' requires "
                            "consent, but the dataset names no subject_field")
