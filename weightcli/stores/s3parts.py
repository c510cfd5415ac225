"""Uploading an output whose bytes are mostly those of a checkpoint already in the same
S3 store: a multipart upload where every part that is byte-for-byte the source's (at
the same offset) is copied server-side (``UploadPartCopy``), and only the others are
sent.

Surgery leaves most of a checkpoint's bytes where they were, so scaling one layer of a
large file in a bucket uploads about that layer, not the file. Which parts are
unchanged is decided by comparing the finished output with the local copy of the
source that the transform read (so it holds whatever bytes the format's writer changed,
history attributes included); the source object must still be the one that was
downloaded (its ETag, checked by the store with ``CopySourceIfMatch`` and again here
after the copies), otherwise the file is uploaded whole.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

MIN_PART = 5 << 20  # S3's smallest part (but the last)
PART = 10 << 20  # the most sent in one part: pieces of a longer run stay >= MIN_PART
MAX_PARTS = 10_000
MAX_COPY = 5 << 30  # S3's largest part
GRAIN = 256 << 10  # bytes compared at a time: the resolution of "unchanged"


@dataclass(frozen=True)
class Origin:
    """A local file downloaded from object storage, and what it was downloaded from."""

    local: Path
    bucket: str
    key: str
    etag: str


def _runs(local: Path, source: Path) -> list[list[Any]]:
    """``[kind, start, end]`` runs of ``local``: "copy" where ``source`` holds the same
    bytes at the same offsets (compared ``GRAIN`` bytes at a time), else "put"."""
    size = local.stat().st_size
    same_upto = min(size, source.stat().st_size)
    a, b = bytearray(GRAIN), bytearray(GRAIN)
    va, vb = memoryview(a), memoryview(b)
    runs: list[list[Any]] = []
    with open(local, "rb", buffering=0) as fa, open(source, "rb", buffering=0) as fb:
        for start in range(0, size, GRAIN):
            n = min(GRAIN, size - start)
            same = (
                start + n <= same_upto
                and os.preadv(fa.fileno(), [va[:n]], start) == n
                and os.preadv(fb.fileno(), [vb[:n]], start) == n
                and va[:n] == vb[:n]
            )
            kind = "copy" if same else "put"
            if runs and runs[-1][0] == kind:
                runs[-1][2] = start + n
            else:
                runs.append([kind, start, start + n])
    return runs


def _merge(runs: list[list[Any]]) -> list[list[Any]]:
    out: list[list[Any]] = []
    for r in runs:
        if out and out[-1][0] == r[0]:
            out[-1][2] = r[2]
        elif r[2] > r[1]:
            out.append(r)
    return out


def plan(local: Path, source: Path) -> list[tuple[str, int, int]]:
    """The parts of a multipart upload of ``local``: ``("copy", start, end)`` where
    ``source`` holds the same bytes at the same offsets, ``("put", start, end)``
    elsewhere. S3's rules hold: every part but the last has at least 5 MiB, a copied
    part at most 5 GiB; a sent part has at most ``PART`` bytes (what is held in memory)."""
    runs = _runs(local, source)
    # A copied run too short to be a part is sent instead.
    for r in runs[:-1]:
        if r[0] == "copy" and r[2] - r[1] < MIN_PART:
            r[0] = "put"
    runs = _merge(runs)
    # A sent run too short to be a part takes bytes from a copied neighbour (which
    # stays a part), or swallows it.
    i = 0
    while i < len(runs) - 1:
        kind, start, end = runs[i]
        if kind == "put" and end - start < MIN_PART:
            need = MIN_PART - (end - start)
            nxt = runs[i + 1]
            prev = runs[i - 1] if i else None
            if nxt[2] - nxt[1] - need >= MIN_PART or (
                i + 1 == len(runs) - 1 and nxt[2] - nxt[1] > need
            ):
                runs[i][2] += need
                nxt[1] += need
            elif prev is not None and prev[2] - prev[1] - need >= MIN_PART:
                runs[i][1] -= need
                prev[2] -= need
            else:
                runs[i][2] = nxt[2]
                del runs[i + 1]
                runs = _merge(runs)
                continue
        i += 1
    parts: list[tuple[str, int, int]] = []
    for kind, start, end in runs:
        most = PART if kind == "put" else MAX_COPY
        pieces = max(1, -(-(end - start) // most))
        step = -(-(end - start) // pieces)
        for at in range(start, end, step):
            parts.append((kind, at, min(at + step, end)))
    return parts


def upload_with_copies(fs: Any, local: Path, bucket: str, key: str, origin: Origin) -> bool:
    """Upload ``local`` to ``bucket/key`` copying the parts it shares with ``origin``
    server-side. False (nothing written) when no part is shared, the origin changed
    since it was downloaded, or the multipart upload failed: the caller then uploads
    the file whole (and reports that upload's error, if any)."""
    size = local.stat().st_size
    if size < 2 * MIN_PART:
        return False
    parts = plan(local, origin.local)
    if not any(kind == "copy" for kind, _, _ in parts) or len(parts) > MAX_PARTS:
        return False
    upload_id = fs.call_s3("create_multipart_upload", Bucket=bucket, Key=key)["UploadId"]
    try:
        done = []
        with open(local, "rb", buffering=0) as f:
            for number, (kind, start, end) in enumerate(parts, 1):
                common = {"Bucket": bucket, "Key": key, "UploadId": upload_id}
                if kind == "copy":
                    reply = fs.call_s3(
                        "upload_part_copy",
                        PartNumber=number,
                        CopySource={"Bucket": origin.bucket, "Key": origin.key},
                        CopySourceRange=f"bytes={start}-{end - 1}",
                        CopySourceIfMatch=origin.etag,
                        **common,
                    )
                    etag = reply["CopyPartResult"]["ETag"]
                else:
                    body = os.pread(f.fileno(), end - start, start)
                    etag = fs.call_s3("upload_part", PartNumber=number, Body=body, **common)["ETag"]
                done.append({"PartNumber": number, "ETag": etag})
        # A store that ignores CopySourceIfMatch: the origin must still be the same object.
        fs.invalidate_cache(f"{origin.bucket}/{origin.key}")
        if fs.info(f"{origin.bucket}/{origin.key}").get("ETag") != origin.etag:
            raise _OriginChanged
        fs.call_s3(
            "complete_multipart_upload",
            Bucket=bucket,
            Key=key,
            UploadId=upload_id,
            MultipartUpload={"Parts": done},
        )
    except BaseException as exc:
        with contextlib.suppress(Exception):
            fs.call_s3("abort_multipart_upload", Bucket=bucket, Key=key, UploadId=upload_id)
        if isinstance(exc, Exception):
            # The origin changed (412 on CopySourceIfMatch, or the check above), or the
            # store refused the copy (an encrypted source, a policy): send every byte.
            return False
        raise  # an interrupt
    return True


class _OriginChanged(Exception):
    pass
