"""The deployment's privacy policy: a TOML file, loaded strictly (docs/privacy.md has the format).

Every field of a record is named once under [fields] with its operator; a field with no rule is
dropped (deny by default) and listed in ``Policy.unruled``. Fields are the schema's columns plus
``device`` (the batch's device id, Table.meta["device"]); lat/lon take one rule, written under the
key "lat,lon", and so do x_m/y_m under "x_m,y_m". Operators by field:

    device, operator, task_id   drop | pseudonymize            (identifiers are never kept raw)
    "lat,lon"                   drop | generalize geohash = 1..12
    "x_m,y_m"                   drop | generalize grid_m = > 0
    text                        drop | redact                  ([redact] configures it)
    t_ms                        drop | keep | coarsen seconds = > 0
    other float columns         drop | keep | generalize step = > 0
    other integer columns       drop | keep

Loading is strict, as for board files: an unknown section or key, a missing key, a value of the
wrong type or range is a PolicyError naming the file and the key. ``digest`` is the SHA-256 of the
file's bytes; ``ref`` ("id@sha256:digest") is recorded in every batch released under it.
"""

from __future__ import annotations

import hashlib
import math
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..records.schema import COLUMNS
from . import geo
from .dp import MECHANISMS, AggregateSpec
from .errors import PolicyError
from .redact import ENTITIES, Operator, Redactor

FIELDS = tuple(COLUMNS) + ("device",)
IDENTIFIERS = ("device", "operator", "task_id")
#: Rule keys that name two columns.
PAIRS = {"lat,lon": ("lat", "lon"), "x_m,y_m": ("x_m", "y_m")}
#: Entities of identifiers found in free text (their values come from the batch itself).
TERM_ENTITIES = {"OPERATOR_ID": "operator", "DEVICE_ID": "device"}
UNKNOWN_POSITION = ("suppress", "keep")


@dataclass(frozen=True)
class Rule:
    op: str                 # drop | keep | pseudonymize | generalize | coarsen | redact
    geohash: int = 0        # generalize "lat,lon": geohash precision
    grid_m: float = 0.0     # generalize "x_m,y_m": grid cell, m
    step: float = 0.0       # generalize a float column: round to a multiple of step
    seconds: float = 0.0    # coarsen t_ms: floor to a multiple of this many seconds


DROP = Rule("drop")


@dataclass(frozen=True)
class ZonePolicy:
    zones: tuple[geo.Zone, ...] = ()
    unknown_position: str = "suppress"   # rows before the first fix (or after a gap): suppress or keep
    max_fix_age_s: float = 0.0           # a fix older than this is no position (0: no limit)


@dataclass(frozen=True)
class RedactionConfig:
    names: tuple[str, ...] = ()
    name_parts: bool = False
    operators: dict[str, Operator] = field(default_factory=dict)


@dataclass(frozen=True)
class BudgetConfig:
    ledger: str
    epsilon_total: float
    delta_total: float

    def ledger_path(self, home: Path) -> Path:
        """The ledger file: ``ledger`` if absolute, else relative to the agent's home."""
        p = Path(self.ledger)
        return p if p.is_absolute() else Path(home) / p


@dataclass(frozen=True)
class Policy:
    id: str
    version: int
    digest: str                      # sha256 hex of the file's bytes
    source: str                      # where it was loaded from (for messages)
    rules: dict[str, Rule]           # per field (lat and lon share one Rule, as do x_m and y_m)
    unruled: tuple[str, ...]         # fields with no rule: dropped
    zones: ZonePolicy
    redaction: RedactionConfig
    budget: BudgetConfig
    release: AggregateSpec

    @property
    def ref(self) -> str:
        """What every released batch records: "id@sha256:digest"."""
        return f"{self.id}@sha256:{self.digest}"

    def rule(self, name: str) -> Rule:
        return self.rules.get(name, DROP)


# -- value checks ----------------------------------------------------------------------------------

class _Ctx:
    def __init__(self, source: str) -> None:
        self.source = source

    def fail(self, where: str, msg: str) -> PolicyError:
        return PolicyError(f"{self.source}: {where}: {msg}")

    def table(self, raw: dict, where: str, required: tuple[str, ...], optional: tuple[str, ...] = ()) -> dict:
        if not isinstance(raw, dict):
            raise self.fail(where, f"expected a table, got {type(raw).__name__}")
        for k in raw:
            if k not in required and k not in optional:
                raise PolicyError(f"{self.source}: unknown key {where}.{k}")
        for k in required:
            if k not in raw:
                raise PolicyError(f"{self.source}: missing key {where}.{k}")
        return raw

    def num(self, v: Any, where: str, lo: float | None = None, hi: float | None = None,
            lo_open: bool = False) -> float:
        if not isinstance(v, (int, float)) or isinstance(v, bool) or not math.isfinite(v):
            raise self.fail(where, f"expected a number, got {type(v).__name__} {v!r}")
        if lo is not None and (v <= lo if lo_open else v < lo):
            raise self.fail(where, f"{v} must be {'>' if lo_open else '>='} {lo}")
        if hi is not None and v > hi:
            raise self.fail(where, f"{v} must be <= {hi}")
        return float(v)

    def int_(self, v: Any, where: str, lo: int, hi: int) -> int:
        if not isinstance(v, int) or isinstance(v, bool):
            raise self.fail(where, f"expected int, got {type(v).__name__} {v!r}")
        if not lo <= v <= hi:
            raise self.fail(where, f"{v} is outside {lo}..{hi}")
        return v

    def typed(self, v: Any, typ: type, where: str) -> Any:
        if not isinstance(v, typ) or (typ is not bool and isinstance(v, bool)):
            raise self.fail(where, f"expected {typ.__name__}, got {type(v).__name__} {v!r}")
        return v


# -- sections --------------------------------------------------------------------------------------

def _allowed(name: str) -> dict[str, tuple[str, ...]]:
    """op -> its parameters, for one rule key."""
    if name in IDENTIFIERS:
        return {"drop": (), "pseudonymize": ()}
    if name == "lat,lon":
        return {"drop": (), "generalize": ("geohash",)}
    if name == "x_m,y_m":
        return {"drop": (), "generalize": ("grid_m",)}
    if name == "text":
        return {"drop": (), "redact": ()}
    if name == "t_ms":
        return {"drop": (), "keep": (), "coarsen": ("seconds",)}
    if COLUMNS[name].dtype == "float64":
        return {"drop": (), "keep": (), "generalize": ("step",)}
    return {"drop": (), "keep": ()}


def _fields(c: _Ctx, raw: Any) -> tuple[dict[str, Rule], tuple[str, ...]]:
    raw = c.table(raw, "[fields]", (), tuple(raw) if isinstance(raw, dict) else ())
    rules: dict[str, Rule] = {}
    for key, spec in raw.items():
        where = f'[fields]."{key}"' if "," in key else f"[fields].{key}"
        if key in ("lat", "lon", "x_m", "y_m"):
            pair = next(p for p, cols in PAIRS.items() if key in cols)
            raise c.fail(where, f'{key} shares one rule with its pair: write it as "{pair}"')
        if key not in PAIRS and key not in FIELDS:
            raise PolicyError(f"{c.source}: unknown field [fields].{key} (fields: {', '.join(FIELDS)}, "
                              f'"lat,lon", "x_m,y_m")')
        allowed = _allowed(key)
        op = c.table(spec, where, ("op",), ("geohash", "grid_m", "step", "seconds")).get("op")
        if op not in allowed:
            raise c.fail(f"{where}.op", f"{op!r} is not allowed here (allowed: {', '.join(allowed)})")
        c.table(spec, where, ("op",) + allowed[op])
        kw: dict[str, Any] = {}
        for p in allowed[op]:
            kw[p] = (c.int_(spec[p], f"{where}.{p}", 1, geo.MAX_GEOHASH) if p == "geohash"
                     else c.num(spec[p], f"{where}.{p}", 0, lo_open=True))
        rule = Rule(op, **kw)
        for col in PAIRS.get(key, (key,)):
            rules[col] = rule
    return rules, tuple(f for f in FIELDS if f not in rules)


_ZONE_KEYS = {"circle": ("lat", "lon", "radius_m"), "polygon": ("points",), "site_circle": ("x_m", "y_m", "radius_m"),
              "site_rect": ("x_min", "y_min", "x_max", "y_max")}


def _zones(c: _Ctx, raw: Any) -> ZonePolicy:
    raw = c.table(raw, "[zones]", ("unknown_position", "max_fix_age_s"), tuple(_ZONE_KEYS))
    unknown = c.typed(raw["unknown_position"], str, "[zones].unknown_position")
    if unknown not in UNKNOWN_POSITION:
        raise c.fail("[zones].unknown_position", f"{unknown!r} is not one of {', '.join(UNKNOWN_POSITION)}")
    age = c.num(raw["max_fix_age_s"], "[zones].max_fix_age_s", 0)
    zones: list[geo.Zone] = []
    names: set[str] = set()
    for kind, keys in _ZONE_KEYS.items():
        entries = raw.get(kind, [])
        if not isinstance(entries, list):
            raise c.fail(f"[zones].{kind}", "expected an array of tables ([[zones." + kind + "]])")
        for i, e in enumerate(entries):
            where = f"[[zones.{kind}]][{i}]"
            c.table(e, where, ("name",) + keys)
            name = c.typed(e["name"], str, f"{where}.name")
            if not name or name in names:
                raise c.fail(f"{where}.name", f"zone names must be non-empty and unique, got {name!r}")
            names.add(name)
            if kind == "circle":
                zones.append(geo.Circle(name, c.num(e["lat"], f"{where}.lat", -90, 90),
                                        c.num(e["lon"], f"{where}.lon", -180, 180),
                                        c.num(e["radius_m"], f"{where}.radius_m", 0, 1e7, lo_open=True)))
            elif kind == "polygon":
                pts = c.typed(e["points"], list, f"{where}.points")
                ok = all(isinstance(p, list) and len(p) == 2 for p in pts)
                if not ok or len(pts) < 3:
                    raise c.fail(f"{where}.points", "expected at least 3 [lat, lon] pairs")
                pp = tuple((c.num(p[0], f"{where}.points[{j}]", -90, 90),
                            c.num(p[1], f"{where}.points[{j}]", -180, 180)) for j, p in enumerate(pts))
                try:
                    zones.append(geo.Polygon(name, pp))
                except ValueError as err:
                    raise c.fail(f"{where}.points", str(err)) from None
            elif kind == "site_circle":
                zones.append(geo.SiteCircle(name, c.num(e["x_m"], f"{where}.x_m"), c.num(e["y_m"], f"{where}.y_m"),
                                            c.num(e["radius_m"], f"{where}.radius_m", 0, lo_open=True)))
            else:
                v = {k: c.num(e[k], f"{where}.{k}") for k in keys}
                if not (v["x_min"] < v["x_max"] and v["y_min"] < v["y_max"]):
                    raise c.fail(where, "x_min/y_min must be below x_max/y_max")
                zones.append(geo.SiteRect(name, **v))
    return ZonePolicy(tuple(zones), unknown, age)


_OP_PARAMS = {"replace": ("new_value",), "mask": ("masking_char", "chars_to_mask", "from_end"),
              "redact": (), "hash": (), "keep": ()}


def _redaction(c: _Ctx, raw: Any) -> RedactionConfig:
    raw = c.table(raw, "[redact]", ("names", "name_parts"), ("operators",))
    names = c.typed(raw["names"], list, "[redact].names")
    for i, n in enumerate(names):
        c.typed(n, str, f"[redact].names[{i}]")
    parts = c.typed(raw["name_parts"], bool, "[redact].name_parts")
    ops_raw = raw.get("operators", {})
    c.table(ops_raw, "[redact.operators]", (), ENTITIES + tuple(TERM_ENTITIES))
    ops: dict[str, Operator] = {}
    for entity, spec in ops_raw.items():
        where = f"[redact.operators].{entity}"
        typ = c.table(spec, where, ("type",), sum(_OP_PARAMS.values(), ())).get("type")
        if typ not in _OP_PARAMS:
            raise c.fail(f"{where}.type", f"{typ!r} is not one of {', '.join(_OP_PARAMS)}")
        c.table(spec, where, ("type",), _OP_PARAMS[typ])
        kw = {"new_value": (str, "new_value"), "masking_char": (str, "masking_char"),
              "chars_to_mask": (int, "chars_to_mask"), "from_end": (bool, "from_end")}
        try:
            ops[entity] = Operator(typ, **{k: c.typed(spec[k], kw[k][0], f"{where}.{k}") for k in spec if k != "type"})
        except ValueError as err:
            raise c.fail(where, str(err)) from None
    try:  # the same checks the batch's Redactor will make, now rather than at the first note
        Redactor(names, name_parts=parts, operators=ops, hasher=lambda e, k: "")
    except ValueError as err:
        raise c.fail("[redact]", str(err)) from None
    return RedactionConfig(tuple(names), parts, ops)


def _budget(c: _Ctx, raw: Any) -> BudgetConfig:
    raw = c.table(raw, "[budget]", ("ledger", "epsilon_total", "delta_total"))
    ledger = c.typed(raw["ledger"], str, "[budget].ledger")
    if not ledger:
        raise c.fail("[budget].ledger", "must not be empty")
    return BudgetConfig(ledger, c.num(raw["epsilon_total"], "[budget].epsilon_total", 0, lo_open=True),
                        c.num(raw["delta_total"], "[budget].delta_total", 0, 0.999999))


def _release(c: _Ctx, raw: Any, budget: BudgetConfig) -> AggregateSpec:
    raw = c.table(raw, "[release]", ("mechanism", "epsilon", "delta", "battery_v", "motor_a", "max_step_m"))
    mech = c.typed(raw["mechanism"], str, "[release].mechanism")
    if mech not in MECHANISMS:
        raise c.fail("[release].mechanism", f"{mech!r} is not one of {', '.join(MECHANISMS)}")
    bounds = {}
    for k in ("battery_v", "motor_a"):
        v = raw[k]
        if not isinstance(v, list) or len(v) != 2:
            raise c.fail(f"[release].{k}", f"expected [min, max], got {v!r}")
        bounds[k] = (c.num(v[0], f"[release].{k}"), c.num(v[1], f"[release].{k}"))
    eps = c.num(raw["epsilon"], "[release].epsilon", 0, budget.epsilon_total, lo_open=True)
    try:
        return AggregateSpec(eps, c.num(raw["delta"], "[release].delta", 0, budget.delta_total), mech,
                             bounds["battery_v"], bounds["motor_a"],
                             c.num(raw["max_step_m"], "[release].max_step_m", 0, lo_open=True))
    except ValueError as err:
        raise c.fail("[release]", str(err)) from None


_SECTIONS = ("policy", "fields", "zones", "redact", "budget", "release")


def loads(data: bytes, source: str = "<policy>") -> Policy:
    """Parse and validate policy bytes; raises PolicyError naming ``source`` and the key."""
    c = _Ctx(source)
    try:
        raw = tomllib.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as e:
        raise PolicyError(f"{source}: not valid TOML: {e}") from None
    for section in raw:
        if section not in _SECTIONS:
            raise PolicyError(f"{source}: unknown section [{section}]")
    for section in _SECTIONS:
        if section not in raw:
            raise PolicyError(f"{source}: missing section [{section}]")
    head = c.table(raw["policy"], "[policy]", ("id", "version"), ("description",))
    pid = c.typed(head["id"], str, "[policy].id")
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}", pid):
        raise c.fail("[policy].id", f"{pid!r}: use 1-64 letters, digits, '.', '_' or '-'")
    version = c.int_(head["version"], "[policy].version", 1, 2 ** 31 - 1)
    if "description" in head:
        c.typed(head["description"], str, "[policy].description")
    rules, unruled = _fields(c, raw["fields"])
    budget = _budget(c, raw["budget"])
    return Policy(pid, version, hashlib.sha256(data).hexdigest(), source, rules, unruled, _zones(c, raw["zones"]),
                  _redaction(c, raw["redact"]), budget, _release(c, raw["release"], budget))


def load(path: Path) -> Policy:
    """Load one policy file (see ``loads``)."""
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        raise PolicyError(f"{path}: no such policy file") from None
    except OSError as e:
        raise PolicyError(f"{path}: cannot read the policy: {e.strerror}") from None
    return loads(data, str(path))
