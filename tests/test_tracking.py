"""Tracking: local records always, one W&B run per job, the mode rule, and what lands offline."""
import json
import struct
from pathlib import Path

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
