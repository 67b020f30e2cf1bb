"""Policy files: the shipped one is valid; every kind of bad file is a PolicyError naming file and key."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from agent.errors import ConfigError
from agent.privacy import geo, policy
from agent.privacy.errors import PolicyError

DEFAULT = Path(__file__).resolve().parents[3] / "policies" / "default.toml"
GOOD = DEFAULT.read_text()


def _write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "policy.toml"
    p.write_text(text)
    return p


def test_the_shipped_policy():
    pol = policy.load(DEFAULT)
    assert pol.id == "aitn-default" and pol.version == 1
    assert pol.digest == hashlib.sha256(DEFAULT.read_bytes()).hexdigest()
    assert pol.ref == f"aitn-default@sha256:{pol.digest}"
    assert pol.unruled == ()  # the shipped policy names every field
    home = [z for z in pol.zones.zones if z.name == "home"]
    from agent.ingest.sim import HOME_ZONE

    lat, lon, radius = HOME_ZONE   # the simulator's home garden, with a margin for GPS error
    assert home == [geo.Circle("home", lat, lon, radius + 5.0)]
    assert pol.zones.unknown_position == "suppress"
    from agent.ingest.sim import NAMES

    assert set(NAMES) <= set(pol.redaction.names)   # the staff whose names the simulator's notes carry
    assert pol.rule("lat") == pol.rule("lon") == policy.Rule("generalize", geohash=7)
    assert pol.rule("device").op == pol.rule("operator").op == pol.rule("task_id").op == "pseudonymize"
    assert pol.budget.ledger_path(Path("/h")) == Path("/h/privacy/budget.json")
    assert pol.release.epsilon <= pol.budget.epsilon_total


def test_any_byte_changes_the_digest(tmp_path):
    a = policy.load(_write(tmp_path, GOOD))
    b = policy.loads((GOOD + "\n# a comment\n").encode(), "x")
    assert a.digest != b.digest and a.id == b.id


def test_deny_by_default_lists_every_unruled_field(tmp_path):
    text = GOOD.replace('battery_v = { op = "keep" }\n', "")
    text = text.replace('"lat,lon" = { op = "generalize", geohash = 7 }', "")
    pol = policy.load(_write(tmp_path, text))
    assert set(pol.unruled) == {"battery_v", "lat", "lon"}
    assert pol.rule("battery_v") == policy.DROP


def _sub(old: str, new: str):
    def f(t: str) -> str:
        assert old in t, old
        return t.replace(old, new, 1)
    return f


@pytest.mark.parametrize("mutate,message", [
    (_sub("[policy]\n", "[policy]\nowner = 1\n"), "unknown key [policy].owner"),
    (_sub('id = "aitn-default"\n', ""), "missing key [policy].id"),
    (_sub("version = 1", 'version = "1"'), "[policy].version: expected int"),
    (_sub('id = "aitn-default"', 'id = "bad id!"'), "[policy].id"),
    (lambda t: t + "\n[extra]\nx = 1\n", "unknown section [extra]"),
    (_sub("[release]", "[releases]"), "unknown section [releases]"),
    (_sub("[fields]", "[fields"), "not valid TOML"),
    (_sub('seq = { op = "keep" }', 'sequence = { op = "keep" }'), "unknown field [fields].sequence"),
    (_sub('"lat,lon" = { op = "generalize", geohash = 7 }', 'lat = { op = "generalize", geohash = 7 }'),
     'lat shares one rule with its pair: write it as "lat,lon"'),
    (_sub('geohash = 7', 'geohash = 13'), '[fields]."lat,lon".geohash: 13 is outside 1..12'),
    (_sub('geohash = 7', 'geohash = 7.5'), '[fields]."lat,lon".geohash: expected int'),
    (_sub('geohash = 7', 'grid_m = 7'), '[fields]."lat,lon".grid_m'),
    (_sub('{ op = "generalize", geohash = 7 }', '{ op = "keep" }'), '[fields]."lat,lon".op: \'keep\' is not allowed'),
    (_sub('grid_m = 1.0', 'grid_m = 0'), '[fields]."x_m,y_m".grid_m: 0 must be > 0'),
    (_sub('operator = { op = "pseudonymize" }', 'operator = { op = "keep" }'), "[fields].operator.op: 'keep'"),
    (_sub('device = { op = "pseudonymize" }', 'device = { op = "redact" }'), "[fields].device.op"),
    (_sub('task_id = { op = "pseudonymize" }', 'task_id = { op = "keep" }'), "[fields].task_id.op"),
    (_sub('text = { op = "redact" }', 'text = { op = "keep" }'), "[fields].text.op"),
    (_sub('seq = { op = "keep" }', 'seq = { op = "generalize", step = 2 }'), "[fields].seq.op: 'generalize'"),
    (_sub('seq = { op = "keep" }', 'seq = { op = "keep", step = 2 }'), "unknown key [fields].seq.step"),
    (_sub('seq = { op = "keep" }', 'seq = "keep"'), "[fields].seq: expected a table"),
    (_sub('seconds = 1 }', 'seconds = -1 }'), "[fields].t_ms.seconds: -1 must be > 0"),
    (_sub('{ op = "coarsen", seconds = 1 }', '{ op = "coarsen" }'), "missing key [fields].t_ms.seconds"),
    (_sub('step = 5.0', 'step = true'), "[fields].heading_deg.step: expected a number"),
    (_sub('unknown_position = "suppress"', 'unknown_position = "ignore"'), "[zones].unknown_position"),
    (_sub('max_fix_age_s = 60.0', ''), "missing key [zones].max_fix_age_s"),
    (_sub("lat = 47.3771563", "lat = 97.0"), "[[zones.circle]][0].lat: 97.0 must be <= 90"),
    (_sub("radius_m = 20.0", "radius_m = 0"), "[[zones.circle]][0].radius_m: 0 must be > 0"),
    (_sub("radius_m = 20.0", "radius_m = 20.0\nheight = 2"), "unknown key [[zones.circle]][0].height"),
    (_sub('name = "home"', 'name = ""'), "[[zones.circle]][0].name"),
    (_sub("# [[zones.polygon]]", "[[zones.polygon]]\nname = \"p\"\npoints = [[1.0, 2.0], [3.0, 4.0]]\n"),
     "[[zones.polygon]][0].points: expected at least 3"),
    (_sub("# [[zones.site_rect]]",
          '[[zones.site_rect]]\nname = "r"\nx_min = 1.0\ny_min = 0.0\nx_max = 0.0\ny_max = 1.0\n'),
     "[[zones.site_rect]][0]: x_min/y_min must be below"),
    (_sub("name_parts = true", 'name_parts = "yes"'), "[redact].name_parts: expected bool"),
    (_sub('names = ["Anna Müller"', 'names = [7, "Anna Müller"'), "[redact].names[0]: expected str"),
    (_sub('EMAIL_ADDRESS = { type = "hash" }', 'EMAIL_ADDRESS = { type = "scramble" }'),
     "[redact.operators].EMAIL_ADDRESS.type: 'scramble'"),
    (_sub('EMAIL_ADDRESS = { type = "hash" }', 'EMAIL = { type = "hash" }'), "unknown key [redact.operators].EMAIL"),
    (_sub('EMAIL_ADDRESS = { type = "hash" }', 'EMAIL_ADDRESS = { type = "hash", masking_char = "#" }'),
     "unknown key [redact.operators].EMAIL_ADDRESS.masking_char"),
    (_sub('EMAIL_ADDRESS = { type = "hash" }', 'EMAIL_ADDRESS = { type = "mask", masking_char = "x" }'),
     "[redact.operators].EMAIL_ADDRESS: masking_char"),
    (_sub('PHONE_NUMBER = { type = "replace" }', 'PHONE_NUMBER = { type = "replace", new_value = "a@b.com" }'),
     "[redact]: replacement 'a@b.com' for PHONE_NUMBER is itself detected"),
    (_sub("epsilon_total = 10.0", "epsilon_total = 0.0"), "[budget].epsilon_total: 0.0 must be > 0"),
    (_sub('ledger = "privacy/budget.json"', 'ledger = ""'), "[budget].ledger: must not be empty"),
    (_sub("epsilon = 0.5", "epsilon = 11.0"), "[release].epsilon: 11.0 must be <= 10.0"),
    (_sub('mechanism = "laplace"', 'mechanism = "gaussian"'), "[release]: the Gaussian mechanism needs 0 < delta"),
    (_sub("battery_v = [6.0, 8.5]", "battery_v = [8.5, 6.0]"), "[release]: battery_v bounds"),
    (_sub("battery_v = [6.0, 8.5]", "battery_v = 60.0"), "[release].battery_v: expected [min, max]"),
    (_sub("delta = 0.0\n", "delta = 0.1\n"), "[release].delta: 0.1 must be <= 0.0"),
])
def test_bad_files_are_refused_with_file_and_key(tmp_path, mutate, message):
    path = _write(tmp_path, mutate(GOOD))
    with pytest.raises(PolicyError) as e:
        policy.load(path)
    assert message in str(e.value) and str(path) in str(e.value), str(e.value)
    assert isinstance(e.value, ConfigError) and e.value.exit_code == 41


@pytest.mark.parametrize("section", ["policy", "fields", "zones", "redact", "budget", "release"])
def test_every_section_is_required(tmp_path, section):
    lines, out, skip = GOOD.splitlines(), [], False
    for line in lines:
        if line.startswith("["):
            skip = line.strip("[]").split(".")[0] == section
        if not skip:
            out.append(line)
    with pytest.raises(PolicyError, match=rf"missing section \[{section}\]"):
        policy.load(_write(tmp_path, "\n".join(out)))


def test_a_missing_file(tmp_path):
    with pytest.raises(PolicyError, match="no such policy file"):
        policy.load(tmp_path / "nope.toml")


def test_all_zone_kinds_and_gaussian_release(tmp_path):
    text = (GOOD.replace("# [[zones.polygon]]", "[[zones.polygon]]").replace('# name = "yard"', 'name = "yard"')
            .replace("# points", "points")
            .replace('delta_total = 0.0', 'delta_total = 1e-5')
            .replace('mechanism = "laplace"', 'mechanism = "gaussian"').replace("delta = 0.0\n", "delta = 1e-6\n"))
    text += '\n[[zones.site_circle]]\nname = "charger"\nx_m = 0\ny_m = 0\nradius_m = 3\n'
    pol = policy.load(_write(tmp_path, text))
    kinds = {type(z).__name__ for z in pol.zones.zones}
    assert kinds == {"Circle", "Polygon", "SiteCircle"}
    assert pol.release.mechanism == "gaussian" and pol.release.delta == 1e-6
