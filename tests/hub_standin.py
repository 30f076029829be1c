"""A local stand-in for the Hugging Face Hub's upload API (no hub is reachable here): an HTTP server on 127.0.0.1 that
answers the three calls huggingface_hub's `create_repo` and `create_commit` make, and records what they send.

    POST /api/repos/create                      -> {"url": ...}            (name, organization, visibility)
    POST /api/models/<repo>/preupload/<rev>     -> every file "regular"    (so contents travel in the commit)
    POST /api/models/<repo>/commit/<rev>        -> {"commitUrl", "commitOid"}  (NDJSON: header + base64 files)
    POST /api/validate-yaml                     -> the model card's front matter parsed as YAML (400 if it is not)

The client code under test is huggingface_hub's own; only the server is ours. `commits` holds, per commit, the
message and {path: bytes}; `repos` the create_repo payloads; `tokens` the Authorization headers seen.
"""

from __future__ import annotations

import base64
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import yaml


class HubStandIn:
    def __init__(self):
        self.repos: list[dict] = []
        self.commits: list[dict] = []
        self.tokens: list[str] = []
        self.cards: list[str] = []
        standin = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # quiet
                pass

            def _reply(self, payload: dict, status: int = 200):
                body = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                standin.tokens.append(self.headers.get("Authorization", ""))
                path = self.path.split("?")[0]
                if path == "/api/repos/create":
                    payload = json.loads(body)
                    standin.repos.append(payload)
                    repo = f"{payload['organization']}/{payload['name']}" if payload.get("organization") \
                        else payload["name"]
                    return self._reply({"url": f"{standin.url}/{repo}"})
                if path == "/api/validate-yaml":
                    content = json.loads(body)["content"]
                    standin.cards.append(content)
                    try:
                        yaml.safe_load(content.split("---")[1] if content.startswith("---") else "")
                    except yaml.YAMLError as e:
                        return self._reply({"errors": [{"message": str(e)}]}, status=400)
                    return self._reply({"errors": [], "warnings": []})
                if "/preupload/" in path:
                    files = json.loads(body)["files"]
                    return self._reply({"files": [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False}
                                                  for f in files], "commitOid": "0" * 40})
                if "/commit/" in path:
                    lines = [json.loads(line) for line in body.decode().splitlines() if line.strip()]
                    header = next(item["value"] for item in lines if item["key"] == "header")
                    files = {item["value"]["path"]: base64.b64decode(item["value"]["content"])
                             for item in lines if item["key"] == "file"}
                    repo = path.split("/api/models/")[1].rsplit("/commit/", 1)[0]
                    standin.commits.append({"repo": repo, "message": header["summary"], "files": files})
                    return self._reply({"commitUrl": f"{standin.url}/{repo}/commit/{'1' * 40}",
                                        "commitOid": "1" * 40})
                return self._reply({"error": f"the stand-in does not answer {path}"}, status=404)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> "HubStandIn":
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()
