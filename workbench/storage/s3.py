"""The S3 artifact store: ``store: s3://bucket/prefix``.

Every object is written by a single PUT, or by a multipart upload that S3 makes visible only when
it completes, so no reader sees half an artifact under its final key. boto3 finds credentials,
region and endpoint the standard way (environment, profile, instance role, ``AWS_ENDPOINT_URL``)
and retries in its standard mode. The client is created on first use.
"""

from __future__ import annotations

import contextlib
import hashlib
import mimetypes
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from workbench.errors import StoreError
from workbench.storage.base import ArtifactInfo, ObjectStat, hash_file

BUCKET = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")

DENIED = ("AccessDenied", "403", "Forbidden", "InvalidAccessKeyId", "SignatureDoesNotMatch")


class S3Store:
    """Artifacts under ``s3://bucket/prefix``; keys are relative to the prefix."""

    multipart_threshold = 64 * 2**20

    def __init__(self, uri: str, role: str = "store") -> None:
        """``role`` names the parameter the URI came from in every message (``data.source`` for a table)."""
        self.role = role
        parsed = urlparse(uri)
        self.bucket, self.prefix = parsed.netloc, parsed.path.strip("/")
        if parsed.scheme != "s3" or not BUCKET.match(self.bucket) or ".." in self.bucket:
            raise StoreError(
                f"{role} {uri!r} is not a valid S3 URI; use s3://bucket/prefix, the bucket named by 3 to 63 "
                "lowercase letters, digits, dots and hyphens"
            )
        self.root = f"s3://{self.bucket}/{self.prefix}".rstrip("/")
        self._client: Any = None

    @property
    def client(self) -> Any:
        if self._client is None:
            import boto3
            from botocore.config import Config

            config = Config(retries={"mode": "standard", "max_attempts": 5}, connect_timeout=5, read_timeout=60)
            self._client = boto3.session.Session().client("s3", config=config)
        return self._client

    def _full(self, key: str) -> str:
        return f"{self.prefix}/{key}" if self.prefix else key

    def uri(self, key: str) -> str:
        return f"s3://{self.bucket}/{self._full(key)}"

    @contextlib.contextmanager
    def errors(self, key: str = "", missing: str = "run the step that writes it first") -> Iterator[None]:
        """Turn botocore's exceptions into one line that says what to fix (``missing``: for a key
        that is not there)."""
        from boto3.exceptions import S3UploadFailedError
        from botocore.exceptions import (
            ClientError,
            ConnectTimeoutError,
            EndpointConnectionError,
            NoCredentialsError,
            PartialCredentialsError,
        )

        where = self.uri(key) if key else self.root
        try:
            yield
        except S3UploadFailedError as exc:  # upload_file wraps S3's answer: say it as for any other call
            if isinstance(exc.__context__, ClientError):
                with self.errors(key, missing):
                    raise exc.__context__ from exc
            raise StoreError(f"{self.role} {self.root}: uploading {where} failed ({exc})") from exc
        except (NoCredentialsError, PartialCredentialsError) as exc:
            raise StoreError(
                f"{self.role} {self.root}: no AWS credentials found; set AWS_PROFILE or AWS_ACCESS_KEY_ID and "
                "AWS_SECRET_ACCESS_KEY, or run with an instance role"
            ) from exc
        except (EndpointConnectionError, ConnectTimeoutError) as exc:
            endpoint = self.client.meta.endpoint_url
            raise StoreError(
                f"{self.role} {self.root}: cannot reach the S3 endpoint {endpoint}; check AWS_ENDPOINT_URL, the region and the network"
            ) from exc
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code", "")
            if code == "NoSuchBucket":
                raise StoreError(
                    f"{self.role} {self.root}: bucket {self.bucket!r} does not exist; create it or fix the {self.role} URI"
                ) from exc
            if code in ("NoSuchKey", "404", "NotFound"):
                if code != "NoSuchKey":  # a HEAD's 404 does not say whether the key or the bucket is missing
                    self._check_bucket(where)
                raise StoreError(f"{where} not found; {missing}") from exc
            if code in DENIED:
                raise StoreError(
                    f"{self.role} {self.root}: access denied to {where} ({code}); check the credentials and the bucket policy"
                ) from exc
            raise StoreError(
                f"{self.role} {self.root}: S3 refused {where} ({code}: {exc.response.get('Error', {}).get('Message', '')})"
            ) from exc

    def check(self) -> None:
        """The bucket exists and these credentials reach it: asked before a run starts, not after
        its first step."""
        with self.errors():
            self.client.head_bucket(Bucket=self.bucket)

    def _check_bucket(self, where: str) -> None:
        """Raise when the bucket is missing, or when these credentials may not even ask (a 403 says
        nothing about existence: it is access denied, never "does not exist")."""
        from botocore.exceptions import ClientError

        try:
            self.client.head_bucket(Bucket=self.bucket)
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code", "")
            if code in ("404", "NoSuchBucket", "NotFound"):
                raise StoreError(
                    f"{self.role} {self.root}: bucket {self.bucket!r} does not exist; create it or fix the {self.role} URI"
                ) from exc
            if code in DENIED:
                raise StoreError(
                    f"{self.role} {self.root}: {where} not found, and access denied to bucket {self.bucket!r} ({code}) "
                    "so S3 cannot say more; check the credentials and the bucket policy (s3:ListBucket)"
                ) from exc
            # anything else says nothing about the bucket: the caller reports the missing key

    def _extra(self, key: str, digest: str) -> dict[str, Any]:
        content_type = mimetypes.guess_type(key)[0] or "application/octet-stream"
        if content_type.startswith("text/"):
            content_type += "; charset=utf-8"
        return {"ContentType": content_type, "Metadata": {"sha256": digest}}

    def write_bytes(self, key: str, data: bytes) -> ArtifactInfo:
        digest = hashlib.sha256(data).hexdigest()
        with self.errors(key):
            self.client.put_object(Bucket=self.bucket, Key=self._full(key), Body=data, **self._extra(key, digest))
        return ArtifactInfo(key, self.uri(key), digest, len(data))

    def put_file(self, key: str, path: Path) -> ArtifactInfo:
        from boto3.s3.transfer import TransferConfig

        digest = hash_file(Path(path))
        config = TransferConfig(
            multipart_threshold=self.multipart_threshold,
            multipart_chunksize=max(self.multipart_threshold // 4, 5 * 2**20),
        )
        with self.errors(key):
            self.client.upload_file(
                str(path), self.bucket, self._full(key), ExtraArgs=self._extra(key, digest), Config=config
            )
        return ArtifactInfo(key, self.uri(key), digest, os.path.getsize(path))

    def read_bytes(self, key: str) -> bytes:
        with self.errors(key):
            return self.client.get_object(Bucket=self.bucket, Key=self._full(key))["Body"].read()

    def stream(self, key: str, chunk_size: int = 1 << 20) -> Iterator[bytes]:
        """The object's bytes a chunk at a time, as S3 sends them; a missing key raises here, before
        the first chunk."""
        with self.errors(key):
            body = self.client.get_object(Bucket=self.bucket, Key=self._full(key))["Body"]

        def chunks() -> Iterator[bytes]:
            try:
                yield from body.iter_chunks(chunk_size)
            finally:
                body.close()

        return chunks()

    def exists(self, key: str) -> bool:
        from botocore.exceptions import ClientError

        with self.errors(key):
            try:
                self.client.head_object(Bucket=self.bucket, Key=self._full(key))
            except ClientError as exc:
                if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                    return False
                raise
        return True

    def remove(self, key: str) -> None:
        with self.errors(key):
            self.client.delete_object(Bucket=self.bucket, Key=self._full(key))

    def list(self, prefix: str) -> list[str]:
        start = self._full(prefix)
        keys = []
        with self.errors():
            for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=start):
                keys += [obj["Key"] for obj in page.get("Contents", [])]
        cut = len(self.prefix) + 1 if self.prefix else 0
        return sorted(k[cut:] for k in keys)

    def stat(self, key: str) -> ObjectStat | None:
        """Size and the sha256 written with the object, from one HEAD (nothing downloaded)."""
        from botocore.exceptions import ClientError

        with self.errors(key):
            try:
                head = self.client.head_object(Bucket=self.bucket, Key=self._full(key))
            except ClientError as exc:
                if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                    return None
                raise
        return ObjectStat(head["ContentLength"], head.get("Metadata", {}).get("sha256"))

    def copy(self, source: str, key: str, sha256: str) -> ArtifactInfo:
        """A server-side copy (multipart past 5 GB): the bytes never leave S3."""
        from boto3.s3.transfer import TransferConfig

        config = TransferConfig(
            multipart_threshold=self.multipart_threshold, multipart_chunksize=self.multipart_threshold
        )
        extra = {**self._extra(key, sha256), "MetadataDirective": "REPLACE"}
        with self.errors(key, missing=f"the artifact to reuse, {self.uri(source)}, is gone"):
            self.client.copy(
                {"Bucket": self.bucket, "Key": self._full(source)},
                self.bucket,
                self._full(key),
                ExtraArgs=extra,
                Config=config,
            )
        found = self.stat(key)
        return ArtifactInfo(key, self.uri(key), sha256, found.bytes if found else 0)
