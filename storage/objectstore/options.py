"""The object store's command-line options shared by ``tidelog run`` and ``tidelog broker``.

``--s3-region`` and ``--s3-endpoint`` are the two settings a cloud deployment changes most; as flags they
can come from a Kubernetes manifest or compose file without editing the ``s3://`` URL. They fold into the
URL (:func:`storage.objectstore.with_s3_options`), so the URL stays the one description of the store that
the broker logs and passes on.
"""

from __future__ import annotations

import argparse
from typing import Any

from storage.objectstore import with_s3_options

__all__ = ["add_s3_arguments", "object_store_url"]


def add_s3_arguments(parser: Any) -> None:
    """Add ``--s3-region`` and ``--s3-endpoint`` to a subcommand's parser."""
    parser.add_argument(
        "--s3-region", default=None, metavar="REGION",
        help="S3 region of an s3:// object store (default: the URL's region=, else AWS_REGION, else us-east-1)",
    )
    parser.add_argument(
        "--s3-endpoint", default=None, metavar="URL",
        help="S3 endpoint of an s3:// object store, e.g. http://minio:9000 (default: AWS's); plain HTTP is "
        "allowed only for an http:// endpoint",
    )


def object_store_url(args: argparse.Namespace) -> str:
    """``args.object_store`` with the S3 flags folded in; ValueError if they contradict it or it is not S3."""
    url: str = args.object_store
    return with_s3_options(url, region=getattr(args, "s3_region", None), endpoint=getattr(args, "s3_endpoint", None))
