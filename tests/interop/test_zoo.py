"""The published-model zoo: the table, ``zoo:`` references, the download (against a local HTTP server, with
an interrupted download resumed), the one-time conversion, and the offline message."""

from __future__ import annotations

import http.server
import shutil
import threading
from pathlib import Path

import pytest

from simclrv2.checkpoint import load_checkpoint
from simclrv2.cli import main
from simclrv2.interop import zoo


class _Server(http.server.ThreadingHTTPServer):
    """Serves ``root`` with HTTP Range support; ``drop_after`` cuts the first response of a file name
    ending in ``.data-00000-of-00001`` after that many bytes (a dropped connection)."""

    def __init__(self, root: Path) -> None:
        self.root, self.requests, self.drop_after = root, [], None
        super().__init__(("127.0.0.1", 0), _Handler)


class _Handler(http.server.BaseHTTPRequestHandler):
    server: _Server

    def log_message(self, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        path = self.server.root / self.path.lstrip("/")
        self.server.requests.append((self.path, self.headers.get("Range")))
        if not path.is_file():
            self.send_error(404)
            return
        data = path.read_bytes()
        start = 0
        if self.headers.get("Range"):
            start = int(self.headers["Range"].split("=")[1].split("-")[0])
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            self.send_response(200)
        self.send_header("Content-Length", str(len(data) - start))
        self.end_headers()
        body = data[start:]
        if self.server.drop_after is not None and self.path.endswith(".data-00000-of-00001"):
            body, self.server.drop_after = body[: self.server.drop_after], None
            self.wfile.write(body)
            self.wfile.flush()
            self.close_connection = True
            return
        self.wfile.write(body)


@pytest.fixture
def server(written, tmp_path, monkeypatch):
    """The r50_1x_sk0 reference network's TF1 files laid out as the bucket is, behind a local server."""
    root = tmp_path / "bucket"
    shutil.copytree(written["r50_1x_sk0"].tf1, root / "finetuned_10pct" / "r50_1x_sk0")
    srv = _Server(root)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    monkeypatch.setenv("SIMCLRV2_ZOO_URL", f"http://127.0.0.1:{srv.server_address[1]}")
    monkeypatch.setenv("SIMCLRV2_CACHE", str(tmp_path / "cache"))
    yield srv
    srv.shutdown()


def test_the_table_has_the_13_x_7_published_models(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("SIMCLRV2_CACHE", str(tmp_path))
    assert main(["zoo"]) == 0
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if line.startswith("r")]
    assert len(rows) == 13 and all(len(r.split()) == 2 + 7 for r in rows)
    r152 = next(r for r in rows if r.startswith("r152_3x_sk1")).split()
    # params, then pretrained (linear eval), finetuned 1/10/100%, supervised (the official README's table)
    assert r152[1:7] == ["795M", "79.8", "74.9", "80.1", "83.1", "80.5"] and r152[7:] == ["-", "-"]
    assert zoo.parse_reference("zoo:r50_2x_sk1") == ("pretrained", "r50_2x_sk1")
    assert zoo.parse_reference("zoo:finetuned_10pct/r152_3x_sk1") == ("finetuned_10pct", "r152_3x_sk1")
    for bad in ("zoo:r50_4x_sk1", "zoo:finetuned_50pct/r50_1x_sk0"):
        with pytest.raises(zoo.ZooError, match="not a published model"):
            zoo.parse_reference(bad)


def test_download_resumes_after_a_dropped_connection_then_converts_once(server, capsys):
    ref = "zoo:finetuned_10pct/r50_1x_sk0"
    server.drop_after = 1_000_000
    with pytest.raises(zoo.ZooError, match="connection dropped"):
        zoo.resolve(ref, show_progress=False)
    part = zoo.model_dir("finetuned_10pct", "r50_1x_sk0") / "tf" / "model.ckpt-1000.data-00000-of-00001.part"
    assert part.stat().st_size == 1_000_000
    path = zoo.resolve(ref, show_progress=False)
    assert (
        "/finetuned_10pct/r50_1x_sk0/model.ckpt-1000.data-00000-of-00001",
        "bytes=1000000-",
    ) in server.requests
    assert not part.exists() and path == zoo.converted_path("finetuned_10pct", "r50_1x_sk0")
    ckpt = load_checkpoint(ref, stage="finetune")  # a zoo: reference wherever a checkpoint is loaded
    assert ckpt["arch"]["from_layer"] == 1 and ckpt["converted_from"]["category"] == "finetuned_10pct"
    served = len(server.requests)
    assert zoo.resolve(ref, show_progress=False) == path and len(server.requests) == served  # reused
    assert main(["zoo"]) == 0
    assert "68.4*" in next(r for r in capsys.readouterr().out.splitlines() if r.startswith("r50_1x_sk0 "))


def test_offline_says_which_files_to_fetch_and_where(server, capsys, monkeypatch):
    server.shutdown()
    server.server_close()
    monkeypatch.setenv("SIMCLRV2_ZOO_URL", "http://127.0.0.1:9")  # nothing listens on the discard port
    assert main(["zoo", "zoo:finetuned_1pct/r152_3x_sk1"]) == 2
    err = capsys.readouterr().err
    where = zoo.model_dir("finetuned_1pct", "r152_3x_sk1") / "tf"
    assert "cannot download zoo:finetuned_1pct/r152_3x_sk1" in err and f"put them into {where}/" in err
    assert "checkpoint, model.ckpt-N.index, model.ckpt-N.data-00000-of-00001" in err
    assert "gs://simclr-checkpoints/simclrv2/finetuned_1pct/r152_3x_sk1/checkpoint" in err
    assert main(["finetune", "--pretrained", "zoo:r50_1x_sk0", "--set", "data.name=synthetic"]) == 2
    assert "cannot download zoo:pretrained/r50_1x_sk0" in capsys.readouterr().err
