"""A loopback HTTP server that answers the Hugging Face Hub's download API for one repository, served
from a local checkpoint folder, so the real `huggingface_hub` download path runs without the internet."""

from __future__ import annotations

import hashlib
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

COMMIT = "0123456789abcdef0123456789abcdef01234567"


def _git_blob_id(file: Path) -> str:
    data = file.read_bytes()
    return hashlib.sha1(b"blob %d\0" % len(data) + data, usedforsecurity=False).hexdigest()


class HubServer:
    def __init__(self, repo_id: str, folder: Path) -> None:
        self.repo_id = repo_id
        self.folder = folder
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def __enter__(self) -> HubServer:
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()

    def _files(self) -> list[Path]:
        return sorted(path for path in self.folder.iterdir() if path.is_file())

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        hub = self
        api = f"/api/models/{hub.repo_id}"
        resolve = f"/{hub.repo_id}/resolve/"

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: object) -> None:
                pass

            def do_GET(self) -> None:
                if self.path.startswith(f"{api}/tree/"):
                    tree = [
                        {"type": "file", "path": f.name, "size": f.stat().st_size, "oid": _git_blob_id(f)}
                        for f in hub._files()
                    ]
                    self._send(json.dumps(tree).encode(), "application/json")
                elif self.path.startswith(f"{api}/revision/"):
                    info = {"id": hub.repo_id, "sha": COMMIT, "siblings": [{"rfilename": f.name} for f in hub._files()]}
                    self._send(json.dumps(info).encode(), "application/json")
                else:
                    self._send_file(with_body=True)

            def do_HEAD(self) -> None:
                self._send_file(with_body=False)

            def _send_file(self, *, with_body: bool) -> None:
                name = self.path.removeprefix(resolve).partition("/")[2] if self.path.startswith(resolve) else ""
                file = hub.folder / name
                if not name or not file.is_file():
                    self.send_response(404)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                data = file.read_bytes()
                headers = {"X-Repo-Commit": COMMIT, "ETag": f'"{hashlib.sha256(data).hexdigest()}"'}
                self._send(data, "application/octet-stream", headers, with_body=with_body)

            def _send(
                self, data: bytes, content_type: str, headers: dict[str, str] | None = None, *, with_body: bool = True
            ) -> None:
                self.send_response(200)
                for key, value in {
                    "Content-Type": content_type,
                    "Content-Length": str(len(data)),
                    **(headers or {}),
                }.items():
                    self.send_header(key, value)
                self.end_headers()
                if with_body:
                    self.wfile.write(data)

        return Handler
