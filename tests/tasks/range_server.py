"""A static file server with HTTP range requests (as object stores serve COGs), on 127.0.0.1
and a free port it prints first: ``python range_server.py ROOT``. For tests/tasks/test_remote_scenes.py."""

from __future__ import annotations

import http.server
import os
import re
import sys
from functools import partial


class _RangeHandler(http.server.SimpleHTTPRequestHandler):
    """Static files with HTTP range requests, as object stores serve them."""

    def send_head(self):
        path = self.translate_path(self.path)
        m = re.match(r"bytes=(\d+)-(\d*)", self.headers.get("Range") or "")
        if m is None or not os.path.isfile(path):
            self._left = None
            return super().send_head()
        size = os.path.getsize(path)
        start, end = int(m[1]), min(int(m[2]) if m[2] else size - 1, size - 1)
        f = open(path, "rb")  # noqa: SIM115 - closed by the server after copyfile
        f.seek(start)
        self.send_response(206)
        self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
        self.send_header("Content-Length", str(end - start + 1))
        self.send_header("Accept-Ranges", "bytes")
        self.end_headers()
        self._left = end - start + 1
        return f

    def copyfile(self, source, outputfile) -> None:
        if self._left is None:
            super().copyfile(source, outputfile)
        else:
            outputfile.write(source.read(self._left))

    def log_message(self, *args) -> None:
        pass


if __name__ == "__main__":
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), partial(_RangeHandler, directory=sys.argv[1]))
    print(server.server_address[1], flush=True)
    server.serve_forever()
