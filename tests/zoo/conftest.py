"""Zoo fixtures: the embedded SmolLM2 (loaded once per process) and a short WikiText-2 slice."""
import pytest

from qcheck.errors import DataError, ModelLoadError


@pytest.fixture(scope="session")
def smollm2():
    from qcheck.inputs.models import load_model

    try:
        return load_model(cache=True)
    except ModelLoadError as exc:
        pytest.skip(f"embedded model unavailable: {exc}")


@pytest.fixture(scope="session")
def wikitext_slice():
    from qcheck.inputs.data import wikitext_test

    try:
        text, _ = wikitext_test(max_chars=12000)
    except DataError as exc:
        pytest.skip(f"WikiText-2 not available: {exc}")
    return text
