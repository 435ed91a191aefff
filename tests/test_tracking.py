"""Tracking: local records always, one W&B run per job, the mode rule, and what lands offline."""
import json
import logging
import socket
import struct
from pathlib import Path

import pytest
import wandb
from omegaconf import OmegaConf

from lmlab.tracking import Tracker, wandb_mode

# Offline W&B (0.31) writes only its transaction log, run-<id>.wandb: a LevelDB-style log of
# protobuf Records in 32 KiB blocks, each chunk behind a 7-byte header (crc32, length, type).
_BLOCK, _CHUNK_HEADER = 32768, 7
_FULL, _LAST = 1, 4


def _records(path: Path):
    from wandb.proto import wandb_internal_pb2

    data = path.read_bytes()
    assert data[:4] == b":W&B", path
    pos, pending = 7, b""
    while pos + _CHUNK_HEADER <= len(data):
        left = _BLOCK - pos % _BLOCK
        if left < _CHUNK_HEADER:  # a block's tail too short for a header is padding
            pos += left
            continue
        _, length, kind = struct.unpack("<IHB", data[pos:pos + _CHUNK_HEADER])
        if length == 0 and kind == 0:
            break
        pending += data[pos + _CHUNK_HEADER:pos + _CHUNK_HEADER + length]
        pos += _CHUNK_HEADER + length
        if kind in (_FULL, _LAST):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            pending = b""
            yield record


def read_offline_run(run_dir: Path) -> dict:
    """The W&B run that a job wrote offline under run_dir: id, group, name, tags, config,
    final summary and exit code, read from its transaction log."""
    logs = list(Path(run_dir).glob("wandb/offline-run-*/run-*.wandb"))
    assert len(logs) == 1, f"expected one offline W&B run in {run_dir}, found {logs}"
    run: dict = {"config": {}, "summary": {}, "exit_code": None}
    for record in _records(logs[0]):
        kind = record.WhichOneof("record_type")
        if kind == "run":
            r = record.run
            run.update(id=r.run_id, group=r.run_group, name=r.display_name, tags=list(r.tags))
            run["config"].update({u.key: json.loads(u.value_json) for u in r.config.update})
        elif kind == "config":
            run["config"].update({u.key: json.loads(u.value_json) for u in record.config.update})
        elif kind == "summary":
            for u in record.summary.update:
                run["summary"][u.key or ".".join(u.nested_key)] = json.loads(u.value_json)
        elif kind == "exit":
            run["exit_code"] = record.exit.exit_code
    return run


def _logger(**overrides):
    return OmegaConf.create({"kind": "wandb", "project": "lmlab", "entity": None, "mode": None, "tags": [],
                             **overrides})


def test_wandb_mode_rule(monkeypatch, tmp_path):
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    assert wandb_mode(_logger()) == "offline"  # no key anywhere
    netrc = tmp_path / ".netrc"
    netrc.write_text("machine api.wandb.ai\n  login user\n  password " + "k" * 40 + "\n")
    netrc.chmod(0o600)
    assert wandb_mode(_logger()) == "online"  # `wandb login` stores the key in ~/.netrc
    netrc.unlink()
    monkeypatch.setenv("WANDB_API_KEY", "k" * 40)
    assert wandb_mode(_logger()) == "online"
    monkeypatch.setenv("WANDB_MODE", "offline")
    assert wandb_mode(_logger()) == "offline"  # the environment beats the key
    assert wandb_mode(_logger(mode="disabled")) == "disabled"  # and logger.mode beats both


def test_consecutive_jobs_get_their_own_runs_and_the_failed_one_is_marked(tmp_path):
    config = {"model": {"d_ff_ratio": 4.0}, "derived": {"d_ff": 128, "n_params": 1234}}
    ok_dir, bad_dir = tmp_path / "ok", tmp_path / "bad"
    for d in (ok_dir, bad_dir):
        d.mkdir()
    ok = Tracker(ok_dir, _logger(tags=["mine"]), config, group="rootcause/t0", name="ratio=4", tags=["model=small"])
    try:
        ok.log({"step": 0, "tokens": 0, "train_loss": None, "val_loss": 6.0, "val_ppl": 403.4})
        ok.log({"step": 2, "tokens": 512, "train_loss": float("nan"), "val_loss": 5.0, "val_ppl": 148.4})
        ok.write_summary({"status": "done", "best_val_ppl": 148.4, "test_ppl": 150.0, "val_ppl": float("nan")})
    finally:
        ok.close()
    bad = Tracker(bad_dir, _logger(), config, group="rootcause/t0", name="ratio=8")
    try:
        bad.write_summary({"status": "failed", "reason": "TrainingDiverged: loss is nan at step 3"})
    finally:
        bad.close()

    wandb.teardown()  # waits for W&B's writer process, which may still be flushing the last run
    first, second = read_offline_run(ok_dir), read_offline_run(bad_dir)
    assert first["id"] != second["id"]
    assert (ok_dir / "wandb_run_id").read_text() == first["id"]
    assert (first["group"], first["name"], first["tags"]) == ("rootcause/t0", "ratio=4", ["mine", "model=small"])
    assert first["config"]["model"] == {"d_ff_ratio": 4.0} and first["config"]["derived"]["d_ff"] == 128
    assert first["summary"]["best_val_ppl"] == 148.4 and first["summary"]["test_ppl"] == 150.0
    assert first["summary"]["tokens"] == 512  # the last logged point
    assert (first["exit_code"], second["exit_code"]) == (0, 1)
    assert second["summary"]["status"] == "failed" and "best_val_ppl" not in second["summary"]

    # Local records do not depend on W&B; JSON has no NaN, so it is written as null.
    lines = [json.loads(line) for line in (ok_dir / "metrics.jsonl").read_text().splitlines()]
    assert [m["tokens"] for m in lines] == [0, 512] and lines[1]["train_loss"] is None
    assert json.loads((ok_dir / "summary.json").read_text())["val_ppl"] is None


def test_logger_none_writes_local_records_only(tmp_path):
    tracker = Tracker(tmp_path, _logger(kind="none"), {}, group="g", name="n")
    tracker.log({"step": 0, "tokens": 0, "val_loss": 6.0})
    tracker.write_summary({"status": "done"})
    tracker.close()
    assert tracker.run_id is None
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.jsonl", "summary.json"]


def test_disabled_mode_writes_no_wandb_files(tmp_path):
    tracker = Tracker(tmp_path, _logger(mode="disabled"), {}, group="g", name="n")
    tracker.log({"step": 0, "tokens": 0, "val_loss": 6.0})
    tracker.close()
    assert not (tmp_path / "wandb").exists()
    assert (tmp_path / "metrics.jsonl").exists()


def closed_port() -> int:
    """A local port nothing listens on: a W&B server that cannot be reached, never a real one."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def unreachable_server(monkeypatch):
    """An API key, and W&B's server on a closed local port: a compute node without network."""
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.setenv("WANDB_API_KEY", "k" * 40)
    url = f"http://127.0.0.1:{closed_port()}"
    monkeypatch.setenv("WANDB_BASE_URL", url)
    return url


def test_a_key_without_a_reachable_server_records_offline_and_says_so_in_one_line(unreachable_server, tmp_path,
                                                                                     caplog):
    with caplog.at_level(logging.WARNING, logger="lmlab"):
        tracker = Tracker(tmp_path, _logger(), {"model": {"d_model": 32}}, group="g", name="n")
    try:
        tracker.log({"step": 0, "tokens": 0, "val_loss": 6.0})
        tracker.write_summary({"status": "done"})
    finally:
        tracker.close()
    wandb.teardown()
    assert read_offline_run(tmp_path)["id"] == (tmp_path / "wandb_run_id").read_text()
    lines = [r.getMessage() for r in caplog.records if r.name == "lmlab"]
    assert len(lines) == 1 and unreachable_server in lines[0] and "offline" in lines[0], lines
    assert f"wandb sync {tmp_path}/wandb/offline-run-" in lines[0]


def test_online_only_without_a_reachable_server_stops_at_once_in_one_line(unreachable_server, tmp_path):
    from lmlab.errors import ConfigError

    with pytest.raises(ConfigError, match=f"logger.mode: online, but the W&B server {unreachable_server} "
                                          "cannot be reached"):
        Tracker(tmp_path, _logger(mode="online"), {}, group="g", name="n")
    assert not (tmp_path / "wandb").exists()
