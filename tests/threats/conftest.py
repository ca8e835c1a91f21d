"""Session-wide private engines (clamd, Rspamd, spamd): started once, on first use, and
stopped at the end of the session whatever happened. A test that needs one is skipped
only when the engine is not installed."""

from __future__ import annotations

import pytest

from tests.support.engines import ClamdRunner, RspamdRunner, SpamdRunner, running


@pytest.fixture(scope="session")
def clamd_engine():
    yield from running(ClamdRunner())


@pytest.fixture(scope="session")
def rspamd_engine():
    yield from running(RspamdRunner(workers=1))


@pytest.fixture(scope="session")
def spamd_engine():
    yield from running(SpamdRunner(children=1))
