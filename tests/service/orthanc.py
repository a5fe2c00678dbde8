"""A real PACS for the tests: Orthanc (Debian's ``orthanc`` and ``orthanc-dicomweb``) on
loopback, with its own temporary storage and configuration, stopped at the end of the session.

Missing Orthanc is a failure, not a skip: CI installs it (``.ci/run``), and a PACS test that
quietly skipped would hide exactly the integration it is there to prove.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from pathlib import Path

import httpx

PLUGIN_DIRS = (Path("/usr/share/orthanc/plugins"), Path("/usr/lib/orthanc"))
USER, PASSWORD = "riir", "pacs-test-secret"
START_TIMEOUT_S = 30


def dicomweb_plugin() -> Path:
    for folder in PLUGIN_DIRS:
        for path in sorted(folder.glob("libOrthancDicomWeb.so*")):
            return path
    raise RuntimeError(
        "Orthanc's DICOMweb plugin is not installed (apt-get install orthanc-dicomweb)"
    )


class Orthanc:
    def __init__(self, folder: Path, port: int):
        self.folder, self.port = folder, port
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def dicomweb(self) -> str:
        return f"{self.url}/dicom-web"

    def start(self) -> Orthanc:
        binary = shutil.which("Orthanc") or (
            "/usr/sbin/Orthanc" if Path("/usr/sbin/Orthanc").is_file() else None
        )
        if binary is None:
            raise RuntimeError("Orthanc is not installed (apt-get install orthanc)")
        storage = self.folder / "storage"
        storage.mkdir(parents=True, exist_ok=True)
        config = {
            "Name": "RIIR tests",
            "HttpPort": self.port,
            "DicomServerEnabled": False,  # DICOMweb only: no DIMSE port to collide with
            "StorageDirectory": str(storage),
            "IndexDirectory": str(storage),
            "RemoteAccessAllowed": False,  # loopback only
            "AuthenticationEnabled": True,
            "RegisteredUsers": {USER: PASSWORD},
            "Plugins": [str(dicomweb_plugin())],
            "DicomWeb": {"Enable": True, "Root": "/dicom-web/"},
        }
        path = self.folder / "orthanc.json"
        path.write_text(json.dumps(config, indent=1))
        log = open(self.folder / "orthanc.log", "wb")  # noqa: SIM115 (lives with the process)
        self.process = subprocess.Popen([binary, str(path)], stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + START_TIMEOUT_S
        while not self._answers():
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(
                    "Orthanc did not start; its log:\n"
                    + (self.folder / "orthanc.log").read_text()[-3000:]
                )
            time.sleep(0.2)
        return self

    def _answers(self) -> bool:
        try:
            return httpx.get(f"{self.url}/system", auth=(USER, PASSWORD), timeout=1).is_success
        except httpx.HTTPError:
            return False

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None
