"""Where a folder job's photos are: a local (or shared) folder, or a URL a cluster can read.

A URL (``s3://bucket/photos/``, ``gs://...``, ``hdfs://...``, ``file:///...``) is opened with
``pyarrow.fs`` where pyarrow knows the scheme and with fsspec otherwise (``memory://``,
``gcs://``, anything fsspec has a driver for). Both come with the ``ray`` extra
(``pip install openface-py[ray]``). A source is small and picklable: each worker (a local
process or a Ray actor on another machine) reads the photos it is given itself, so photo bytes
never pass through the driver.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Optional, Union

import numpy as np

from openface_py.errors import ImageLoadError, OpenFacePyError
from openface_py.io import IMAGE_EXTENSIONS, list_images, load_image

_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")

INSTALL_HINT = "pip install 'openface-py[ray]'"


def is_url(text: Union[str, os.PathLike]) -> bool:
    """Whether ``text`` is a URL (``scheme://...``) rather than a local path."""
    return bool(_URL.match(str(text)))


@dataclass(frozen=True)
class PhotoSource:
    """A folder of photos; ``rel`` names are POSIX paths below it, as ``list_images`` gives them."""

    location: str  # a local folder or a URL, as the user gave it (output files name photos with it)
    filesystem: object = None  # a pyarrow.fs.FileSystem for a URL; None for a local folder
    root: str = ""  # the folder's path inside ``filesystem``; a local folder's absolute path
    archive: bool = False  # an fsspec archive (``zip://inner::file:///photos.zip``): see ``where``

    @classmethod
    def open(cls, location: Union[str, os.PathLike]) -> PhotoSource:
        """A source for a local folder or a URL; raises ``OpenFacePyError`` when it is not a folder.

        A local folder is read by its absolute path: Ray's workers do not share the driver's
        working directory."""
        text = str(location)
        if not is_url(text):
            if not Path(text).is_dir():
                raise OpenFacePyError(f"{text}: input folder not found")
            return cls(text, None, str(Path(text).resolve()))
        fs, root, archive = _filesystem_for(text)
        from pyarrow import fs as pafs

        try:
            info = fs.get_file_info(root)
        except Exception as exc:  # pyarrow's (access denied, network) and fsspec drivers' own kinds
            raise OpenFacePyError(f"{text}: cannot open it ({type(exc).__name__}: {exc})") from None
        if info.type != pafs.FileType.Directory:
            raise OpenFacePyError(f"{text}: input folder not found (no directory at {root!r})")
        return cls(text, fs, root.rstrip("/"), archive)

    @property
    def local(self) -> bool:
        return self.filesystem is None

    def list(self) -> list[str]:
        """Every image below the folder (recursive, sorted; hidden entries skipped, as ``list_images``)."""
        return list(self.listing())

    def listing(self) -> dict[str, Optional[list]]:
        """``list``'s photos (sorted), each with its ``[size, mtime_ns]`` as listed (None where the
        file system does not tell): how jobs know a photo changed since they did it."""
        if self.local:
            found = {}
            for r in list_images(self.root):
                try:
                    st = os.stat(Path(self.root) / r)
                    found[r.as_posix()] = [st.st_size, st.st_mtime_ns]
                except OSError:  # gone since it was listed: the job reports it when it reads it
                    found[r.as_posix()] = None
            return found
        from pyarrow import fs as pafs

        try:
            infos = self.filesystem.get_file_info(pafs.FileSelector(self.root, recursive=True))
        except Exception as exc:  # as in ``open``
            raise OpenFacePyError(f"{self.location}: cannot list it ({type(exc).__name__}: {exc})") from None
        found = []
        for info in infos:
            if info.type != pafs.FileType.File:
                continue
            rel = PurePosixPath(info.path).relative_to(PurePosixPath(self.root))
            if any(part.startswith(".") for part in rel.parts):
                continue
            if rel.name.lower().endswith(IMAGE_EXTENSIONS):
                mtime = getattr(info, "mtime_ns", None)
                found.append((rel.as_posix(), [info.size, mtime] if info.size is not None and mtime else None))
        return dict(sorted(found))

    def read(self, rel: str) -> bytes:
        """The bytes of one photo (``OSError`` when it cannot be read)."""
        if self.local:
            return (Path(self.root) / rel).read_bytes()
        with self.filesystem.open_input_stream(f"{self.root}/{rel}") as f:
            return f.readall()

    def image(self, rel: str) -> np.ndarray:
        """One photo decoded (``io.load_image``; ``ImageLoadError`` with the reason when it cannot
        be): a local file by its path, so the reasons are those of every other command."""
        if self.local:
            return load_image(Path(self.root) / rel)
        try:
            data = self.read(rel)
        except OSError as exc:
            raise ImageLoadError(self.where(rel), f"cannot read: {exc.strerror or exc}") from None
        return load_image(data)

    def where(self, rel: str) -> str:
        """The photo's full name for output files: a path for a local folder, a URL otherwise.

        In an archive's chained URL (``zip://folder::file:///photos.zip``) the path inside the
        archive is the first link's, so the name stays a URL fsspec opens
        (``zip://folder/a.jpg::file:///photos.zip``)."""
        if self.local:
            return str(Path(self.location) / rel)
        if self.archive:
            first, chain, rest = self.location.partition("::")
            return _join(first, rel) + chain + rest
        return _join(self.location, rel)

    def below(self, rel: str) -> str:
        """The photo's name as the location, then its path below it: ``where`` except for an
        archive (``zip://::file:///photos.zip/people/a.jpg``, which fsspec does not open), where
        only this name has the photo's folder as its parent, the label, as OpenFace's classifier
        reads labels.csv."""
        if self.local:
            return self.where(rel)
        return _join(self.location, rel)


def _join(url: str, rel: str) -> str:
    """``rel`` below the folder ``url`` names: ``file:///`` and ``memory://`` keep their slashes."""
    scheme = url.find("://") + 3 if "://" in url else 0
    path = url[scheme:]
    return url + rel if not path.strip("/") else url[:scheme] + path.rstrip("/") + "/" + rel


def _filesystem_for(url: str):
    """(pyarrow filesystem, path inside it, whether an fsspec archive) for a URL: pyarrow's own
    where it knows the scheme, else fsspec's wrapped for pyarrow."""
    try:
        from pyarrow import fs as pafs
    except ImportError:
        raise OpenFacePyError(f"reading photos from a URL ({url}) needs pyarrow: {INSTALL_HINT}") from None
    try:
        return (*pafs.FileSystem.from_uri(url), False)
    except Exception as arrow_error:  # pyarrow raises ArrowInvalid for schemes it does not know
        try:
            import fsspec
        except ImportError:
            raise OpenFacePyError(
                f"{url}: pyarrow cannot open it ({arrow_error}) and fsspec is not installed"
            ) from None
        try:
            fs, path = fsspec.core.url_to_fs(url)
        except Exception as exc:  # fsspec's drivers raise their own kinds too (tarfile.ReadError, ...)
            raise OpenFacePyError(
                f"{url}: neither pyarrow nor fsspec can open it ({type(exc).__name__}: {exc})"
            ) from None
        from fsspec.archive import AbstractArchiveFileSystem

        return pafs.PyFileSystem(pafs.FSSpecHandler(fs)), path, isinstance(fs, AbstractArchiveFileSystem)
