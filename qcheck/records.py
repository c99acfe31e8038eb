"""The run's one measurement store: per variant and measurement, a Record holding the measured data (or the error
or the reason it was not taken) with the settings and data hashes that produced it. JSON round-trips, so a stored
run can be judged again without a model (`qcheck judge`).

Records are plain data: each measurement module writes its result's `to_dict()` and the invariants read it back
with the result type's `from_dict()`. Nothing here imports torch.
"""
from __future__ import annotations

import enum
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from qcheck.errors import QCheckError
from qcheck.results import to_jsonable

RECORDS_VERSION = "1"


class RecordStatus(str, enum.Enum):
    """OK: measured. ERROR: the measurement raised (the checks that need it are ERROR). SKIPPED: not taken here,
    with the reason (the checks that need it skip, saying why)."""

    OK = "ok"
    ERROR = "error"
    SKIPPED = "skipped"


@dataclass
class Record:
    """One measurement of one variant."""

    variant: str
    measurement: str
    status: RecordStatus
    data: dict[str, Any] = field(default_factory=dict)
    settings: dict[str, Any] = field(default_factory=dict)
    reason: str = ""
    seconds: float | None = None

    def __post_init__(self) -> None:
        self.status = RecordStatus(self.status)

    @property
    def ok(self) -> bool:
        return self.status == RecordStatus.OK

    def to_dict(self) -> dict[str, Any]:
        return to_jsonable({"variant": self.variant, "measurement": self.measurement, "status": self.status.value,
                            "data": encode(self.data), "settings": self.settings, "reason": self.reason,
                            "seconds": self.seconds})

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Record:
        try:
            return cls(variant=str(data["variant"]), measurement=str(data["measurement"]), status=data["status"],
                       data=decode(dict(data.get("data") or {})), settings=dict(data.get("settings") or {}),
                       reason=str(data.get("reason") or ""), seconds=data.get("seconds"))
        except (KeyError, TypeError, ValueError) as exc:
            raise QCheckError(f"not a qcheck record ({type(exc).__name__}: {exc}): {str(data)[:200]}") from None


_FLOAT = "$float"


def encode(value: Any) -> Any:
    """Record data as strict JSON that reads back exactly: non-finite floats become {"$float": "NaN"|"Infinity"|
    "-Infinity"} (a NaN logit or an infinite SQNR is evidence, and a string would be ambiguous with text)."""
    import math

    if isinstance(value, float) and not math.isfinite(value):
        return {_FLOAT: "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")}
    if isinstance(value, dict):
        return {str(k): encode(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [encode(v) for v in value]
    if hasattr(value, "item") and getattr(value, "ndim", 1) == 0:
        return encode(value.item())
    return value


def decode(value: Any) -> Any:
    """The data `encode` wrote."""
    if isinstance(value, dict):
        if len(value) == 1 and _FLOAT in value:
            return float(value[_FLOAT].replace("Infinity", "inf"))
        return {k: decode(v) for k, v in value.items()}
    if isinstance(value, list):
        return [decode(v) for v in value]
    return value


def pack_array(values: Any, dtype: str) -> dict[str, Any]:
    """A 1-D numeric array as compact JSON: little-endian `dtype` bytes in base64 (per-token series are long)."""
    import base64

    import numpy as np

    arr = np.ascontiguousarray(np.asarray(values).astype(np.dtype(dtype).newbyteorder("<")).ravel())
    return {"dtype": dtype, "n": int(arr.size), "base64": base64.b64encode(arr.tobytes()).decode("ascii")}


def unpack_array(data: dict[str, Any]) -> Any:
    """The numpy array `pack_array` wrote."""
    import base64

    import numpy as np

    arr = np.frombuffer(base64.b64decode(data["base64"]), dtype=np.dtype(data["dtype"]).newbyteorder("<"))
    if arr.size != int(data["n"]):
        raise QCheckError(f"a packed array holds {arr.size} values, its header says {data['n']}: the file is damaged")
    return arr.astype(np.dtype(data["dtype"]))


class MeasurementError(Exception):
    """A check needs a measurement that failed: carries the record, so the check is reported as ERROR naming it."""

    def __init__(self, record: Record) -> None:
        self.record = record
        super().__init__(f"measurement {record.measurement!r} of variant {record.variant!r} failed: {record.reason}")


class MeasurementSkipped(Exception):
    """A check needs a measurement that was not taken in this run, for the record's reason."""

    def __init__(self, variant: str, measurement: str, reason: str) -> None:
        self.variant, self.measurement, self.reason = variant, measurement, reason
        super().__init__(reason)


@dataclass
class RecordStore:
    """Every record of a run, keyed by (variant, measurement), with the run's options and data descriptions."""

    records: dict[tuple[str, str], Record] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)
    variants: list[str] = field(default_factory=list)

    def put(self, record: Record) -> Record:
        if record.variant not in self.variants:
            self.variants.append(record.variant)
        self.records[(record.variant, record.measurement)] = record
        return record

    def find(self, variant: str, measurement: str) -> Record | None:
        return self.records.get((variant, measurement))

    def __contains__(self, key: tuple[str, str]) -> bool:
        return key in self.records

    def __iter__(self) -> Iterator[Record]:
        return iter(self.records.values())

    def __len__(self) -> int:
        return len(self.records)

    def of_variant(self, variant: str) -> dict[str, Record]:
        return {m: r for (v, m), r in self.records.items() if v == variant}

    def data(self, variant: str, measurement: str) -> dict[str, Any]:
        """The data of an OK record; MeasurementError when it failed, MeasurementSkipped when not taken."""
        record = self.find(variant, measurement)
        if record is None:
            raise MeasurementSkipped(variant, measurement, f"{measurement} of {variant} was not measured in this run")
        if record.status == RecordStatus.ERROR:
            raise MeasurementError(record)
        if record.status == RecordStatus.SKIPPED:
            raise MeasurementSkipped(variant, measurement, record.reason)
        return record.data

    def has(self, variant: str, measurement: str) -> bool:
        record = self.find(variant, measurement)
        return record is not None and record.ok

    def merge(self, other: RecordStore, *, overlap: bool = False) -> None:
        """Add another store's records (a worker's share of the variants; its meta is the caller's to merge): the
        workers' shares are disjoint, so the same key twice is a scheduling bug, an error, not an overwrite. With
        `overlap` (pytest-xdist workers, each measuring what its own tests read) a key already here is kept."""
        for record in other:
            key = (record.variant, record.measurement)
            if key in self.records:
                if overlap:
                    continue
                raise QCheckError(f"two workers measured {record.measurement} of {record.variant}")
            self.put(record)
        for name in other.variants:
            if name not in self.variants:
                self.variants.append(name)

    def to_dict(self) -> dict[str, Any]:
        return to_jsonable({"version": RECORDS_VERSION, "meta": self.meta, "variants": list(self.variants),
                            "records": [r.to_dict() for r in self.records.values()]})

    @classmethod
    def from_dict(cls, data: Any, source: str = "records") -> RecordStore:
        if not isinstance(data, dict) or not isinstance(data.get("records"), list):
            raise QCheckError(f"{source}: holds no qcheck records (a report written by `qcheck run` has a 'records' "
                              "object with a 'records' list; reports of qcheck before 0.2 have none: re-run them)")
        version = str(data.get("version", ""))
        if version.split(".")[0] != RECORDS_VERSION:
            raise QCheckError(f"{source}: records version {version!r}; this qcheck reads version {RECORDS_VERSION}")
        store = cls(meta=dict(data.get("meta") or {}), variants=[str(v) for v in data.get("variants") or []])
        for item in data["records"]:
            store.put(Record.from_dict(item))
        return store

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), allow_nan=False)
