"""moto_server (the real one, moto 5.2) with one reply corrected, for the S3 lake tests.

moto 5.2 answers CompleteMultipartUpload with the root element `CompleteMultipartUploadResponse`
where S3 sends `CompleteMultipartUploadResult` (getmoto/moto#10055, a regression). boto3 does not
mind; Arrow's S3 client does, and retries until it fails, so every file above Arrow's part size
(a model's safetensors) could not be uploaded. This wraps moto's own WSGI application and renames
that one element; everything else is moto as shipped.

    python tests/integration/moto_s3.py HOST PORT
"""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

WRONG, RIGHT = b"CompleteMultipartUploadResponse", b"CompleteMultipartUploadResult"


def fix_complete_multipart(app):
    def wrapped(environ, start_response):
        if environ.get("REQUEST_METHOD") != "POST" or "uploadId=" not in environ.get("QUERY_STRING", ""):
            return app(environ, start_response)
        seen = {}

        def capture(status, headers, exc_info=None):
            seen["reply"] = (status, headers, exc_info)
            return lambda data: None

        body = b"".join(app(environ, capture)).replace(WRONG, RIGHT)
        status, headers, exc_info = seen["reply"]
        headers = [(k, str(len(body)) if k.lower() == "content-length" else v) for k, v in headers]
        start_response(status, headers, exc_info)
        return [body]

    return wrapped


def start(port: int, log: Path | None = None):
    """A MotoS3 (streaming.broker) running this server on 127.0.0.1:`port`."""
    from streaming.broker import HOST, MotoS3, wait_port

    out = open(log, "ab") if log else subprocess.DEVNULL
    proc = subprocess.Popen([sys.executable, __file__, HOST, str(port)], stdout=out, stderr=out)
    server = MotoS3(port=port, proc=proc)
    wait_port(port, timeout_s=60, proc=proc)
    return server


if __name__ == "__main__":
    from moto.server import DomainDispatcherApplication, create_backend_app
    from werkzeug.serving import run_simple

    run_simple(sys.argv[1], int(sys.argv[2]), fix_complete_multipart(
        DomainDispatcherApplication(create_backend_app)), threaded=True, use_reloader=False)
