"""``s3://bucket/key`` inputs and outputs: listing and uploading with boto3, reading through GDAL.

The object store is the one the environment names, as for MLflow and DVC: ``AWS_ENDPOINT_URL_S3``
(or ``AWS_ENDPOINT_URL``, or ``MLFLOW_S3_ENDPOINT_URL``; none: AWS itself) with
``AWS_ACCESS_KEY_ID`` and ``AWS_SECRET_ACCESS_KEY``. Orthophotos are read in place through GDAL's
``/vsis3/``; :func:`gdal_env` derives GDAL's ``AWS_S3_ENDPOINT``, ``AWS_HTTPS`` and
``AWS_VIRTUAL_HOSTING`` from the endpoint when they are not set.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from ilots.core.errors import IlotsError

RASTER_SUFFIXES = (".tif", ".tiff", ".vrt", ".jp2")
ENDPOINT_ENVS = ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL", "MLFLOW_S3_ENDPOINT_URL")


def is_s3(text: str | os.PathLike[str]) -> bool:
    return str(text).startswith("s3://")


def split(uri: str) -> tuple[str, str]:
    """``s3://bucket/a/b`` -> ``("bucket", "a/b")``."""
    parsed = urlparse(uri)
    if parsed.scheme != "s3" or not parsed.netloc:
        raise IlotsError(f"{uri} is not an s3://BUCKET/KEY address.")
    return parsed.netloc, parsed.path.lstrip("/")


def endpoint() -> str | None:
    """The S3 endpoint URL the environment names (None: AWS)."""
    return next((os.environ[k] for k in ENDPOINT_ENVS if os.environ.get(k)), None)


def where() -> str:
    """The object store, as an error sentence names it (no credentials)."""
    return f"the object store at {endpoint() or 'AWS S3'}"


def gdal_env() -> None:
    """Set GDAL's /vsis3/ options from the S3 endpoint, where the user has not set them."""
    url = endpoint()
    if not url:
        return
    parsed = urlparse(url)
    os.environ.setdefault("AWS_S3_ENDPOINT", parsed.netloc)
    os.environ.setdefault("AWS_HTTPS", "NO" if parsed.scheme == "http" else "YES")
    os.environ.setdefault("AWS_VIRTUAL_HOSTING", "FALSE")


def vsis3(uri: str) -> Path:
    """The GDAL path of an object: ``s3://b/k.tif`` -> ``/vsis3/b/k.tif``."""
    bucket, key = split(uri)
    return Path(f"/vsis3/{bucket}/{key}")


def client(timeout_s: float = 10.0) -> Any:
    import boto3
    from botocore.config import Config

    return boto3.client(
        "s3",
        endpoint_url=endpoint(),
        config=Config(connect_timeout=timeout_s, read_timeout=60, retries={"max_attempts": 2}),
    )


def _unreachable(uri: str, exc: Exception, what: str) -> IlotsError:
    from botocore.exceptions import ClientError

    if isinstance(exc, ClientError):
        code = exc.response.get("Error", {}).get("Code", "error")
        return IlotsError(
            f"{where()} refused to {what} {uri} ({code}): check the bucket name and AWS_ACCESS_KEY_ID / "
            "AWS_SECRET_ACCESS_KEY."
        )
    return IlotsError(
        f"{where()} did not answer while trying to {what} {uri} ({type(exc).__name__}): start it "
        "(`ilots team up`) or check AWS_ENDPOINT_URL_S3."
    )


def list_rasters(uri: str) -> list[str]:
    """The raster objects an ``s3://`` input names: itself, or every raster under that prefix.

    Raises:
        IlotsError: the store does not answer or refuses, or nothing is there.
    """
    from botocore.exceptions import BotoCoreError, ClientError

    bucket, key = split(uri)
    s3 = client()
    try:
        if key and key.lower().endswith(RASTER_SUFFIXES):
            s3.head_object(Bucket=bucket, Key=key)
            return [uri]
        prefix = key.rstrip("/") + "/" if key else ""
        found = []
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
            for obj in page.get("Contents", []):
                name = obj["Key"]
                rest = name[len(prefix) :]
                if "/" not in rest and rest.lower().endswith(RASTER_SUFFIXES) and not rest.startswith("."):
                    found.append(f"s3://{bucket}/{name}")
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey"):
            raise IlotsError(f"input {uri} does not exist in {where()}.") from None
        raise _unreachable(uri, exc, "list") from None
    except BotoCoreError as exc:
        raise _unreachable(uri, exc, "list") from None
    if not found:
        raise IlotsError(f"input {uri} holds no orthophoto ({', '.join(RASTER_SUFFIXES)}) in {where()}.")
    return sorted(found)


def check_reachable(uri: str) -> None:
    """The bucket of an ``s3://`` output answers (before any work is done)."""
    from botocore.exceptions import BotoCoreError, ClientError

    bucket, _ = split(uri)
    try:
        client().head_bucket(Bucket=bucket)
    except (BotoCoreError, ClientError) as exc:
        raise _unreachable(uri, exc, "write to") from None


def upload(files: Iterable[Path], folder: Path, uri: str) -> list[str]:
    """Upload ``files`` (under local ``folder``) to the prefix ``uri``, keeping relative paths;
    each object appears whole or not at all (S3 writes are atomic per object)."""
    from boto3.exceptions import S3UploadFailedError
    from botocore.exceptions import BotoCoreError, ClientError

    bucket, key = split(uri)
    prefix = key.rstrip("/") + "/" if key else ""
    s3, done = client(), []
    for path in files:
        name = prefix + path.relative_to(folder).as_posix()
        try:
            s3.upload_file(str(path), bucket, name)
        except (BotoCoreError, ClientError, S3UploadFailedError) as exc:
            raise _unreachable(f"s3://{bucket}/{name}", exc, "write") from None
        done.append(f"s3://{bucket}/{name}")
    return done
