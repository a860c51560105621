"""Settings the whole test process needs before any client opens a channel."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from localcloud.tls import certificate, trusted_roots

# The Vertex AI SDK opens TLS channels only, so tests reach localcloud's Vertex gRPC front
# over TLS with localcloud's own certificate. gRPC reads the roots it trusts from this
# variable once per process (when grpc is first imported): it is set here, at collection,
# to that certificate plus the roots trusted before; every test's TLS front serves it
# (VertexServer(tls_dir=TLS_DIR)).
TLS_DIR = Path(tempfile.gettempdir()) / f"retrain-tests-tls-{os.getuid()}"
os.environ["GRPC_DEFAULT_SSL_ROOTS_FILE_PATH"] = str(
    trusted_roots(certificate(TLS_DIR), os.environ.get("GRPC_DEFAULT_SSL_ROOTS_FILE_PATH"))
)
