"""Receiving a multipart upload: streamed straight into the job's folder under a size limit.

FastAPI's ``UploadFile`` spools the whole body to a temporary folder before the route runs,
so a size limit could only be checked after the disk was filled. Here the body is parsed as it
arrives (python-multipart, the parser Starlette uses): file parts are written to files named
by their field (never by the client's file name), text parts are kept small, and the request
is refused with 413 the moment it passes the limit.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO
from urllib.parse import parse_qsl

from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.requests import ClientDisconnect, Request

from service.errors import (
    InvalidParameters,
    MalformedRequest,
    PayloadTooLarge,
    UnsupportedMediaType,
)

MAX_TEXT_BYTES = 1024  # a form field holds a model name or a number


@dataclass
class Form:
    files: dict[str, Path] = field(default_factory=dict)  # field name -> received file
    fields: dict[str, str] = field(default_factory=dict)


def _mib(n: int) -> str:
    return f"{n / 2**20:.1f} MiB"


class _Receiver:
    """python-multipart callbacks that write file parts to ``folder/{field}.upload``."""

    def __init__(self, folder: Path, file_fields: Collection[str], text_fields: Collection[str]):
        self.folder, self.file_fields, self.text_fields = folder, file_fields, text_fields
        self.form = Form()
        self.header_name = b""
        self.header_value = b""
        self.disposition = b""
        self.name = ""
        self.client_filename: bytes | None = None
        self.file: IO[bytes] | None = None
        self.size = 0
        self.text = bytearray()
        self.ended = False

    def on_part_begin(self) -> None:
        self.disposition, self.client_filename, self.size = b"", None, 0
        self.text = bytearray()

    def on_header_field(self, data: bytes, start: int, end: int) -> None:
        self.header_name += data[start:end]

    def on_header_value(self, data: bytes, start: int, end: int) -> None:
        self.header_value += data[start:end]

    def on_header_end(self) -> None:
        if self.header_name.strip().lower() == b"content-disposition":
            self.disposition = self.header_value
        self.header_name, self.header_value = b"", b""

    def on_headers_finished(self) -> None:
        _, options = parse_options_header(self.disposition)
        raw = options.get(b"name")
        if raw is None:
            raise MalformedRequest("a multipart part has no Content-Disposition name")
        self.name = raw.decode("utf-8", "replace")
        self.client_filename = options.get(b"filename")
        if self.name in self.form.files or self.name in self.form.fields:
            raise InvalidParameters(f"form field '{self.name[:40]}' was sent twice")
        if self.name in self.file_fields:
            # Our name for the file: the field name is from our allow-list, so it is safe.
            self.file = open(self.folder / f"{self.name}.upload", "wb")  # noqa: SIM115
        elif self.name not in self.text_fields:
            expected = ", ".join([*self.file_fields, *self.text_fields])
            raise InvalidParameters(
                f"unexpected form field '{self.name[:40]}'; this endpoint takes: {expected}"
            )

    def on_part_data(self, data: bytes, start: int, end: int) -> None:
        if self.file is not None:
            self.file.write(data[start:end])  # local disk, small chunks: fine on the loop
            self.size += end - start
        else:
            self.text += data[start:end]
            if len(self.text) > MAX_TEXT_BYTES:
                raise InvalidParameters(
                    f"form field '{self.name}' is longer than {MAX_TEXT_BYTES} bytes"
                )

    def on_part_end(self) -> None:
        if self.file is not None:
            self.file.close()
            self.file = None
            path = self.folder / f"{self.name}.upload"
            if self.size == 0 and self.client_filename == b"":
                path.unlink()  # a browser's "no file chosen": the optional file is absent
            else:
                self.form.files[self.name] = path
            return
        try:
            self.form.fields[self.name] = self.text.decode("utf-8")
        except UnicodeDecodeError:
            raise InvalidParameters(f"form field '{self.name}' is not UTF-8 text") from None

    def on_end(self) -> None:
        self.ended = True

    def close(self) -> None:
        if self.file is not None:
            self.file.close()
            self.file = None

    def callbacks(self) -> dict[str, object]:
        return {
            name: getattr(self, name)
            for name in (
                "on_part_begin",
                "on_header_field",
                "on_header_value",
                "on_header_end",
                "on_headers_finished",
                "on_part_data",
                "on_part_end",
                "on_end",
            )
        }


async def _receive_fields(request: Request, text_fields: Collection[str]) -> Form:
    limit = MAX_TEXT_BYTES * max(len(text_fields), 1)
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise PayloadTooLarge(f"a form without files is at most {limit} bytes")
    form = Form()
    try:
        pairs = parse_qsl(body.decode("utf-8"), keep_blank_values=True, strict_parsing=False)
    except UnicodeDecodeError:
        raise InvalidParameters("the form is not UTF-8 text") from None
    for name, value in pairs:
        if name not in text_fields:
            raise InvalidParameters(
                f"unexpected form field '{name[:40]}' (files need multipart/form-data)"
            )
        if name in form.fields:
            raise InvalidParameters(f"form field '{name[:40]}' was sent twice")
        form.fields[name] = value
    return form


async def receive(
    request: Request,
    folder: Path,
    *,
    file_fields: Collection[str],
    text_fields: Collection[str],
    max_bytes: int,
) -> Form:
    """Stream a ``multipart/form-data`` body into ``folder``; files keep our names. A form
    without files (series named by UID in the PACS) may also come URL-encoded."""
    media_type, options = parse_options_header(request.headers.get("content-type", ""))
    if media_type == b"application/x-www-form-urlencoded":
        return await _receive_fields(request, text_fields)
    if media_type != b"multipart/form-data":
        raise UnsupportedMediaType(
            "send the images as multipart/form-data (e.g. curl -F "
            "fixed=@fixed.nii.gz -F moving=@moving.nii.gz)"
        )
    boundary = options.get(b"boundary")
    if not boundary:
        raise MalformedRequest("the multipart Content-Type has no boundary")
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > max_bytes:
        raise PayloadTooLarge(
            f"the upload is {_mib(int(declared))}; the limit is {_mib(max_bytes)} per request"
        )
    receiver = _Receiver(folder, file_fields, text_fields)
    parser = MultipartParser(boundary, receiver.callbacks())  # type: ignore[arg-type]
    received = 0
    try:
        async for chunk in request.stream():
            received += len(chunk)
            if received > max_bytes:  # chunked uploads declare no length: count as we go
                raise PayloadTooLarge(
                    f"the upload passed the limit of {_mib(max_bytes)} per request"
                )
            parser.write(chunk)
        parser.finalize()
    except MultipartParseError as exc:
        raise MalformedRequest(f"the multipart body is malformed ({exc})") from None
    except ClientDisconnect:
        raise MalformedRequest("the client disconnected during the upload") from None
    finally:
        receiver.close()
    if not receiver.ended:
        raise MalformedRequest(
            "the multipart body ended before its closing boundary (an interrupted upload?)"
        )
    return receiver.form
