"""The record store: JSON round trip (exact, non-finite floats and packed arrays included), error and skip semantics,
merging workers' shares."""
import json
import math

import numpy as np
import pytest

from qcheck.errors import QCheckError
from qcheck.records import (
    MeasurementError,
    MeasurementSkipped,
    Record,
    RecordStatus,
    RecordStore,
    pack_array,
    unpack_array,
)


def _round_trip(store: RecordStore) -> RecordStore:
    return RecordStore.from_dict(json.loads(json.dumps(store.to_dict(), allow_nan=False)))


def test_round_trip_keeps_non_finite_floats_and_text_apart():
    store = RecordStore(meta={"device": "cpu"})
    store.put(Record("int8", "weights", RecordStatus.OK,
                     data={"sqnr_db": -math.inf, "max": math.inf, "kl": [math.nan, 0.5], "output": "NaN"},
                     settings={"probe_tokens": 64}, seconds=1.5))
    back = _round_trip(store).find("int8", "weights")
    assert back.data["sqnr_db"] == -math.inf and back.data["max"] == math.inf
    assert math.isnan(back.data["kl"][0]) and back.data["kl"][1] == 0.5
    assert back.data["output"] == "NaN"  # a model's text stays text
    assert back.settings == {"probe_tokens": 64} and back.seconds == 1.5


@pytest.mark.parametrize("dtype", ["float64", "float32", "int32", "bool"])
def test_packed_arrays_read_back_exactly(dtype):
    values = np.array([0, 1, 1e-9, 3.5, -2] if dtype != "bool" else [True, False, True]).astype(dtype)
    back = unpack_array(json.loads(json.dumps(pack_array(values, dtype))))
    assert back.dtype == np.dtype(dtype) and np.array_equal(back, values)


def test_damaged_packed_array_is_an_error():
    packed = pack_array(np.arange(4.0), "float64")
    packed["n"] = 5
    with pytest.raises(QCheckError, match="damaged"):
        unpack_array(packed)


def test_failed_and_skipped_measurements_say_why():
    store = RecordStore()
    store.put(Record("w4g64", "perplexity", RecordStatus.ERROR, reason="RuntimeError: out of memory"))
    store.put(Record("fp16", "choice", RecordStatus.SKIPPED, reason="ARC-Easy scoring on CPU runs only w4g64"))
    with pytest.raises(MeasurementError, match="out of memory"):
        store.data("w4g64", "perplexity")
    with pytest.raises(MeasurementSkipped, match="runs only w4g64"):
        store.data("fp16", "choice")
    with pytest.raises(MeasurementSkipped, match="not measured in this run"):
        store.data("int8", "latency")
    assert not store.has("w4g64", "perplexity") and store.variants == ["w4g64", "fp16"]


def test_merge_of_workers_shares_refuses_a_measurement_taken_twice():
    a, b = RecordStore(), RecordStore()
    a.put(Record("int8", "perplexity", RecordStatus.OK, data={"perplexity": 23.0}))
    b.put(Record("w4g64", "perplexity", RecordStatus.OK, data={"perplexity": 35.0}))
    a.merge(b)
    assert a.variants == ["int8", "w4g64"] and a.data("w4g64", "perplexity") == {"perplexity": 35.0}
    with pytest.raises(QCheckError, match="two workers measured perplexity of w4g64"):
        a.merge(b)


def test_a_report_without_records_is_refused_with_the_reason():
    with pytest.raises(QCheckError, match="holds no qcheck records"):
        RecordStore.from_dict(None, source="old-report.json")
    with pytest.raises(QCheckError, match="records version"):
        RecordStore.from_dict({"version": "9", "records": []}, source="new.json")
