"""The test environment holds for module-scoped fixtures too, which pytest sets up before any
function-scoped one: their subprocesses run offline and on the session's token cache, never the
user's ~/.cache/lmlab."""
import os

import pytest

from tests.conftest import TEST_ENV


@pytest.fixture(scope="module")
def module_env():
    return {key: os.environ.get(key) for key in [*TEST_ENV, "LMLAB_CACHE_DIR"]}


def test_a_module_scoped_fixture_sees_the_test_environment_and_the_session_cache(module_env, cache_dir):
    assert module_env == {**TEST_ENV, "LMLAB_CACHE_DIR": str(cache_dir)}
