"""The PACS the service reads series from and stores results in, over DICOMweb
(``dicomweb-client``): QIDO-RS to check that a series exists, WADO-RS to retrieve it, STOW-RS
to store the DICOM results.

Used by the gateway (the QIDO check before a job is queued) and by the worker (retrieve, then
store). pydicom and requests only, no SimpleITK. The password never reaches a log or a message:
it is a ``SecretStr`` in the settings and only the session holds it; errors name the PACS by
its URL without credentials.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import requests
from dicomweb_client.api import DICOMwebClient
from dicomweb_client.session_utils import create_session, create_session_from_user_pass
from pydicom.dataset import Dataset

from conventions.errors import InputError, RiirError
from jobs.settings import Settings

log = logging.getLogger(__name__)


class PacsNotConfigured(InputError):
    """A request names series by UID, but this server has no PACS to fetch them from."""


class PacsError(RiirError):
    """The PACS refused or failed a request: the job fails with a message saying which."""


@dataclass(frozen=True)
class Pacs:
    url: str
    client: DICOMwebClient

    @classmethod
    def from_settings(cls, settings: Settings, attempts: int = 3) -> Pacs:
        """``attempts``: tries per request (exponential back-off from 0.5 s); the gateway
        asks once, so a client waits seconds, not the client library's default half minute."""
        if settings.pacs_url is None:
            raise PacsNotConfigured(
                "series named by UID need a PACS, and this server has none configured "
                "(RIIR_PACS_URL); upload the series as a zip instead"
            )
        if settings.pacs_username is not None and settings.pacs_password is not None:
            session = create_session_from_user_pass(
                settings.pacs_username, settings.pacs_password.get_secret_value()
            )
        else:
            session = create_session()
        client = DICOMwebClient(settings.pacs_url, session=session, timeout=settings.pacs_timeout_s)
        client.set_http_retry_params(
            retry=attempts > 1, max_attempts=attempts, wait_exponential_multiplier=250
        )
        return cls(settings.pacs_url, client)

    def _failed(self, what: str, exc: Exception) -> PacsError:
        status = getattr(getattr(exc, "response", None), "status_code", None)
        reason = f"HTTP {status}" if status is not None else type(exc).__name__
        log.warning("PACS %s: %s failed (%s)", self.url, what, reason)
        return PacsError(f"the PACS at {self.url} failed to {what} ({reason})")

    def count_instances(self, study_uid: str, series_uid: str) -> int:
        """Instances of the series the PACS holds (0: no such series)."""
        try:
            found = self.client.search_for_series(
                study_uid, search_filters={"SeriesInstanceUID": series_uid}
            )
        except requests.HTTPError as exc:
            if getattr(exc.response, "status_code", None) == 404:
                return 0
            raise self._failed(f"search series {series_uid}", exc) from None
        except requests.RequestException as exc:
            raise self._failed(f"search series {series_uid}", exc) from None
        # (0020,1209) Number of Series Related Instances; some PACS leave it out
        return sum(int(s.get("00201209", {}).get("Value", [1])[0]) for s in found)

    def retrieve(self, study_uid: str, series_uid: str, dest: Path) -> list[Path]:
        """The series' instances as files in ``dest`` (named by us: ``00000.dcm`` …)."""
        dest.mkdir(parents=True, exist_ok=True)
        paths = []
        try:
            for k, ds in enumerate(self.client.iter_series(study_uid, series_uid)):
                path = dest / f"{k:05d}.dcm"
                ds.save_as(path, enforce_file_format=True)
                paths.append(path)
        except requests.RequestException as exc:
            raise self._failed(f"retrieve series {series_uid}", exc) from None
        if not paths:
            raise PacsError(f"the PACS at {self.url} returned no instances of {series_uid}")
        return paths

    def store(self, datasets: list[Dataset]) -> None:
        """STOW-RS; a response that lists failed instances is a failure."""
        try:
            answer = self.client.store_instances(datasets)
        except requests.RequestException as exc:
            raise self._failed("store the results", exc) from None
        failed = answer.get("FailedSOPSequence") if answer is not None else None
        if failed:
            raise PacsError(f"the PACS at {self.url} refused {len(failed)} of the results")
