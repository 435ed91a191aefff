"""The one place that knows about processes: which rank this is, the process group, and the few
collectives the trainer needs. Everything else asks `Ranks`; nothing else reads RANK or WORLD_SIZE.

A launch is distributed when torchrun set RANK/WORLD_SIZE (on one node or many), or when SLURM
started several tasks for one job (submitit's `tasks_per_node`), whose environment submitit turns
into torch.distributed's. Otherwise it is one process and every call here is a no-op. Reading the
environment imports no torch, so an error before any compute is still answered at once.
"""
from __future__ import annotations

import os
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING

from lmlab.errors import LostProcess

if TYPE_CHECKING:
    import torch


@dataclass(frozen=True)
class Ranks:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        """The process that writes: metrics, summary, samples, checkpoints, W&B."""
        return self.rank == 0

    @property
    def local_gpu(self) -> int | None:
        """The GPU this process trains on when it is one of several (one per local rank); None:
        the only process, on the default one."""
        return self.local_rank if self.world > 1 else None


def this_process() -> Ranks:
    """This process's place in its launch, from the environment alone (no process group needed)."""
    if "RANK" not in os.environ and int(os.environ.get("SLURM_NTASKS", "1")) > 1:
        import submitit

        # SLURM's task ids and node list -> RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR/PORT.
        submitit.helpers.TorchDistributedEnvironment().export(set_cuda_visible_devices=False)
    if int(os.environ.get("WORLD_SIZE", "1")) == 1:
        return Ranks()
    return Ranks(int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), int(os.environ.get("LOCAL_RANK", "0")))


def setup(device_name: str, timeout_s: float) -> Ranks:
    """Join the launch's process group, if it has one: NCCL on CUDA (this process on its local
    rank's GPU; `device_name` is train.device), gloo on the CPU. A collective that waits `timeout_s` (train.dist_timeout_s) for
    a process that died or hangs fails, instead of after gloo's 30 or NCCL's 10 minutes."""
    import torch
    import torch.distributed as dist

    from lmlab.runtime import resolve_device

    ranks = this_process()
    if ranks.world > 1 and not dist.is_initialized():
        device = resolve_device(device_name, ranks.local_gpu)
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", timeout=timedelta(seconds=timeout_s),
                                device_id=device if device.type == "cuda" else None)
    return ranks


def first_offered(key: str, value: str) -> str | None:
    """Under torchrun, the `value` that the first process of this launch offered for `key`: the
    same in every process of the launch, on every node, and in the processes torchrun restarts
    (--max-restarts), and another in the next launch. It is kept in the TCP store that torchrun's
    agent on the first node holds for as long as the launch runs and shares with its workers,
    so it can be asked before any process group exists. None when the agent shares no store
    (TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1)."""
    import torch.distributed as dist

    if os.environ.get("TORCHELASTIC_USE_AGENT_STORE") != "True":
        return None
    store = dist.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), is_master=False,
                          timeout=timedelta(seconds=60))
    return store.compare_set(key, "", value).decode()


def data_parallel(model: torch.nn.Module, ranks: Ranks, device: torch.device) -> torch.nn.Module:
    """The module a training step runs: DistributedDataParallel over the ranks, or the model itself."""
    if ranks.world == 1:
        return model
    from torch.nn.parallel import DistributedDataParallel

    return DistributedDataParallel(model, device_ids=[device] if device.type == "cuda" else None)


def no_sync(module: torch.nn.Module):
    """A micro-step that accumulates gradients without the all-reduce (all but the last of a step)."""
    return module.no_sync() if hasattr(module, "no_sync") else nullcontext()


def lost_process(e: BaseException) -> bool:
    """Whether `e` is the backend's report of another process that died or stopped answering:
    gloo raises a plain RuntimeError naming its transport ("Connection closed by peer", "Timed
    out waiting ...ms for recv"), NCCL and the store raise torch.distributed's DistError."""
    import torch.distributed as dist

    return dist.is_initialized() and (isinstance(e, dist.DistError) or
                                      (isinstance(e, RuntimeError) and "gloo/transport/" in str(e)))


@contextmanager
def lost_processes_reported(timeout_s: float, run_dir):
    """Turns a lost process (`lost_process`) into one LostProcess line that says how to go on."""
    try:
        yield
    except Exception as e:
        if not lost_process(e):
            raise
        # The backend's first sentence, without gloo's source position ("[.../pair.cc:553] ").
        cause = str(e).split("] ", 1)[-1].splitlines()[0].split(". ")[0]
        raise LostProcess(f"another process of this launch died, or did not answer within train.dist_timeout_s="
                          f"{timeout_s:g} s ({cause}); every process stops. Launch again with "
                          f"hydra.run.dir={run_dir} to resume from its last checkpoint") from None


def teardown() -> None:
    import torch.distributed as dist

    if dist.is_initialized():
        dist.destroy_process_group()


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """The sum over ranks, in place (a no-op in one process)."""
    import torch.distributed as dist

    if dist.is_initialized():
        dist.all_reduce(tensor)
    return tensor


def any_rank(flag: bool, device: torch.device) -> bool:
    """True on every rank when it is true on any: how all ranks agree to stop at the same step, so
    none is left waiting in a collective."""
    import torch
    import torch.distributed as dist

    if not dist.is_initialized():
        return flag
    t = torch.tensor([float(flag)], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def gather_to_main(obj, ranks: Ranks) -> list | None:
    """Every rank's `obj` (picklable), by rank, on the main process; None on the others."""
    import torch.distributed as dist

    if not dist.is_initialized():
        return [obj]
    gathered = [None] * ranks.world if ranks.main else None
    dist.gather_object(obj, gathered, dst=0)
    return gathered


def barrier() -> None:
    import torch.distributed as dist

    if dist.is_initialized():
        dist.barrier()


def place_job(threads: int | None, n_parallel: int, job_num: int) -> int:
    """Where a job runs when `n_parallel` jobs of a sweep share this machine (joblib's n_jobs): its
    share of the cores as torch threads (or `threads`, when set), and with several GPUs the one at
    job_num mod their count, so no two neighbours fight over a core or a GPU. Returns the threads."""
    import torch

    if threads is None and n_parallel > 1:
        threads = max(1, (os.cpu_count() or 1) // n_parallel)
    if threads is not None:
        torch.set_num_threads(threads)
    if n_parallel > 1 and torch.cuda.is_available() and torch.cuda.device_count() > 1:
        torch.cuda.set_device(job_num % torch.cuda.device_count())
    return torch.get_num_threads()
