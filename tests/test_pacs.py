"""The PACS client's failures: a clear error that names the PACS, never its password."""

from __future__ import annotations

import socket
import time

import pytest

from jobs.pacs import Pacs, PacsError, PacsNotConfigured
from jobs.settings import Settings

SECRET = "do-not-show-me"


def _closed_port() -> int:
    with socket.socket() as s:  # bound then closed: nothing listens there
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_unreachable_pacs_names_itself_not_its_password(caplog: pytest.LogCaptureFixture) -> None:
    url = f"http://127.0.0.1:{_closed_port()}/dicom-web"
    settings = Settings(pacs_url=url, pacs_username="riir", pacs_password=SECRET, pacs_timeout_s=2)
    pacs = Pacs.from_settings(settings, attempts=1)  # as the gateway asks: once, at once
    start = time.monotonic()
    with pytest.raises(PacsError) as caught:
        pacs.count_instances("1.2.3", "1.2.3.4")
    assert time.monotonic() - start < 5
    assert url in str(caught.value) and "search series 1.2.3.4" in str(caught.value)
    for text in (str(caught.value), caplog.text, repr(settings), str(settings.model_dump())):
        assert SECRET not in text


def test_no_pacs_configured_is_the_users_to_fix() -> None:
    with pytest.raises(PacsNotConfigured, match="RIIR_PACS_URL"):
        Pacs.from_settings(Settings(pacs_url=""))
