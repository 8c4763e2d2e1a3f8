"""Request checks of the HTTP API: paths under the data root, upload limits, image types.

Every check raises a ``RequestError`` subclass whose ``status_code`` is the
HTTP status the API returns with the message.
"""

from __future__ import annotations

import io
import re
from collections.abc import AsyncIterator
from pathlib import Path, PurePosixPath

import numpy as np
import tifffile
from PIL import Image, UnidentifiedImageError

from cancerseg_ray.errors import CancerSegError

TILE_CONTENT_TYPES = ("image/png", "image/jpeg", "image/tiff")
SLIDE_CONTENT_TYPES = ("application/octet-stream", "image/tiff")
SLIDE_UPLOAD_SUFFIXES = (".svs", ".tif", ".tiff", ".ndpi", ".scn", ".bif", ".svslide")
"""Single-file, TIFF-based slide formats accepted as uploads; MIRAX and DICOM span several files."""

_MAGIC = {
    "image/png": (b"\x89PNG\r\n\x1a\n",),
    "image/jpeg": (b"\xff\xd8\xff",),
    "image/tiff": (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"),
}
_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,199}$")


class RequestError(CancerSegError):
    """A request the API rejects; ``status_code`` is the HTTP status returned."""

    status_code = 400


class PathOutsideRootError(RequestError):
    """A slide path resolves outside the configured data root."""

    status_code = 403


class NotFoundError(RequestError):
    """A slide file or slide job does not exist."""

    status_code = 404


class PayloadTooLargeError(RequestError):
    """An upload is larger than the configured limit."""

    status_code = 413


class UnsupportedMediaTypeError(RequestError):
    """An upload's Content-Type is not accepted, or its bytes are of another type."""

    status_code = 415


class UnprocessableError(RequestError):
    """A well-formed request that cannot be processed: image too large, slide unreadable."""

    status_code = 422


def resolve_under_root(root: Path, requested: str) -> Path:
    """Resolve a slide path given in a request and check that it stays inside ``root``.

    The path may be relative to ``root`` or absolute. Symbolic links are
    resolved before the check, so a link inside the root that points outside
    it is rejected like a ``..`` component.

    Raises:
        PathOutsideRootError: If the resolved path is outside ``root``.
        NotFoundError: If the path does not name an existing file.
    """
    if not requested or "\x00" in requested:
        raise RequestError(f"invalid slide path {requested!r}; give a file path relative to the data root")
    resolved_root = Path(root).resolve()
    candidate = Path(requested)
    if not candidate.is_absolute():
        candidate = resolved_root / candidate
    resolved = candidate.resolve()
    if not resolved.is_relative_to(resolved_root):
        raise PathOutsideRootError(
            f"slide path {requested!r} resolves outside the data root; give a path inside the data root"
        )
    if not resolved.is_file():
        if not resolved_root.is_dir():
            raise NotFoundError(
                f"slide {requested!r} not found because the server's data root is missing; "
                "ask the operator to mount it or to fix the data_root setting"
            )
        raise NotFoundError(f"slide {requested!r} not found under the data root")
    return resolved


def media_type(content_type: str | None, allowed: tuple[str, ...]) -> str:
    """Return the bare media type of a Content-Type header, checked against ``allowed``.

    Raises:
        UnsupportedMediaTypeError: If the header is missing or not allowed.
    """
    bare = (content_type or "").split(";", 1)[0].strip().lower()
    if bare not in allowed:
        raise UnsupportedMediaTypeError(
            f"Content-Type {content_type or '(missing)'!r} is not accepted here; send one of {', '.join(allowed)}"
        )
    return bare


def check_magic(data: bytes, declared: str) -> None:
    """Check that the first bytes of ``data`` match the declared image type.

    Raises:
        UnsupportedMediaTypeError: If they belong to another format.
    """
    if not any(data.startswith(magic) for magic in _MAGIC[declared]):
        raise UnsupportedMediaTypeError(
            f"the request body is not {declared} data although the Content-Type header declares it; "
            "send the file's real type"
        )


def is_tiff(data: bytes) -> bool:
    """Tell whether ``data`` starts with a TIFF or BigTIFF header."""
    return any(data.startswith(magic) for magic in _MAGIC["image/tiff"])


def check_content_length(header: str | None, limit: int) -> None:
    """Reject a request whose declared body size exceeds ``limit`` before reading it."""
    if header is None:
        return
    try:
        declared = int(header)
    except ValueError as error:
        raise RequestError(f"Content-Length {header!r} is not an integer") from error
    if declared > limit:
        raise PayloadTooLargeError(f"the upload has {declared} bytes; the limit is {limit} bytes")


async def read_limited(stream: AsyncIterator[bytes], limit: int) -> bytes:
    """Read a request body, stopping as soon as it exceeds ``limit`` bytes."""
    parts = []
    size = 0
    async for chunk in stream:
        size += len(chunk)
        if size > limit:
            raise PayloadTooLargeError(f"the upload exceeds the limit of {limit} bytes")
        parts.append(chunk)
    if not size:
        raise RequestError("the request body is empty; send the image bytes as the body")
    return b"".join(parts)


async def save_limited(stream: AsyncIterator[bytes], path: Path, limit: int) -> int:
    """Stream a request body into ``path``; a body over ``limit`` bytes is deleted and rejected.

    Returns:
        The number of bytes written.
    """
    size = 0
    try:
        with path.open("wb") as file:
            async for chunk in stream:
                size += len(chunk)
                if size > limit:
                    raise PayloadTooLargeError(f"the upload exceeds the limit of {limit} bytes")
                file.write(chunk)
    except BaseException:
        path.unlink(missing_ok=True)
        raise
    if not size:
        path.unlink(missing_ok=True)
        raise RequestError("the request body is empty; send the slide bytes as the body")
    return size


def safe_upload_name(filename: str) -> str:
    """Check an uploaded slide's file name: one path component, safe characters, a slide suffix.

    Raises:
        RequestError: If the name has folders, unusual characters or an unsupported suffix.
    """
    if PurePosixPath(filename).name != filename or not _SAFE_NAME.match(filename):
        raise RequestError(
            f"invalid file name {filename!r}; use letters, digits, '.', '_' and '-' only, without folders"
        )
    if PurePosixPath(filename).suffix.lower() not in SLIDE_UPLOAD_SUFFIXES:
        raise RequestError(
            f"file name {filename!r} has no accepted slide suffix; uploads accept {', '.join(SLIDE_UPLOAD_SUFFIXES)}"
        )
    return filename


def decode_tile(data: bytes, declared: str, *, max_side: int) -> np.ndarray:
    """Decode a PNG, JPEG or TIFF tile into (H, W, 3) uint8 RGB, checking its size first.

    The header is read before any pixel, so an image over ``max_side`` is
    rejected without being decoded.

    Raises:
        UnsupportedMediaTypeError: If the bytes are not of the declared type.
        RequestError: If the image cannot be decoded.
        UnprocessableError: If a side exceeds ``max_side``, the image exceeds
            Pillow's decompression-bomb limit, or the pixels are not 8-bit.
    """
    check_magic(data, declared)
    if declared == "image/tiff":
        return _decode_tiff(data, max_side)
    try:
        with Image.open(io.BytesIO(data)) as image:
            _check_side(image.size, max_side)
            image.load()
            if image.mode in ("I;16", "I;16B", "I", "F"):
                raise UnprocessableError(f"expected 8-bit pixels, got Pillow mode {image.mode}; send 8-bit RGB")
            return np.asarray(image.convert("RGB"))
    except Image.DecompressionBombError as error:
        # Pillow raises this in Image.open, before the size is known to the caller,
        # for images of more than 2 x Image.MAX_IMAGE_PIXELS pixels.
        raise UnprocessableError(
            f"the image is larger than the limit of {max_side} pixels per side (max_tile_side setting); "
            f"Pillow rejected it unread ({error}). Send a smaller tile or score the image as a slide."
        ) from error
    except (UnidentifiedImageError, OSError, SyntaxError) as error:
        raise RequestError(f"the {declared} body cannot be decoded ({error}); send a complete image file") from error


def _decode_tiff(data: bytes, max_side: int) -> np.ndarray:
    try:
        with tifffile.TiffFile(io.BytesIO(data)) as tiff:
            page = tiff.pages.first
            _check_side((int(page.imagewidth), int(page.imagelength)), max_side)
            array = page.asarray()
            separate = page.planarconfig == tifffile.PLANARCONFIG.SEPARATE
    except (tifffile.TiffFileError, ValueError, OSError, IndexError) as error:
        raise RequestError(f"the image/tiff body cannot be decoded ({error}); send a complete TIFF file") from error
    if separate and array.ndim == 3:
        array = np.moveaxis(array, 0, -1)
    if array.dtype != np.uint8:
        raise UnprocessableError(f"expected 8-bit pixels, got {array.dtype}; send 8-bit RGB")
    if array.ndim == 2:
        return np.repeat(array[:, :, None], 3, axis=2)
    if array.ndim == 3 and array.shape[2] in (3, 4):
        return np.ascontiguousarray(array[:, :, :3])
    raise UnprocessableError(f"expected a greyscale or RGB image, got an array of shape {array.shape}")


def _check_side(size: tuple[int, int], max_side: int) -> None:
    width, height = size
    if width > max_side or height > max_side:
        raise UnprocessableError(
            f"the image is {width}x{height} pixels, larger than the limit of {max_side} pixels per side "
            "(max_tile_side setting). Send a smaller tile or score the image as a slide."
        )
