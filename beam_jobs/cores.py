"""How a worker process spends its cores: how many decoder children work ahead of the embedder, how many threads
each gives FFmpeg, and how many threads OpenVINO runs DenseNet121 on, planned once per worker process.

The plan starts from the cores this process may use (its CPU affinity) and how many worker processes share
the machine, so that several processes on one machine never ask for more threads than it has: the launcher
reads the number from Beam's options (`--direct_num_workers`, `--sdk_worker_parallelism`) unless
`--worker-processes` says it (a runner that starts one process per core, as Dataflow does, needs it said).
`--decoders` and `--embed-threads` override the plan's choices; the manifest records the launcher's plan.

The rule: a process's share of the machine is `cores // processes` (at least one core). The embedder gets
every core of the share: it is the job's main cost and OpenVINO's threads wait when there is nothing to do.
Decoder children: one per core of the share, each with `share // decoders` FFmpeg threads (at least one),
so that decoding uses every core when it is the slower stage (large frames) and, for small clips, keeps up
with the embedder on the cores the embedder leaves between its batches. Videos in flight: two a decoder,
one decoding and one decoded waiting for the embedder.
"""

from __future__ import annotations

import dataclasses
import os

from common.errors import UserError


def usable_cores() -> int:
    """The cores this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


@dataclasses.dataclass(frozen=True)
class CorePlan:
    """What one worker process uses: `decoders` children with `decoder_threads` FFmpeg threads each,
    `embed_threads` OpenVINO threads, at most `max_in_flight` videos decoded ahead."""

    cores: int
    worker_processes: int
    decoders: int
    decoder_threads: int
    embed_threads: int
    max_in_flight: int

    def manifest(self) -> dict:
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True)
class CoreRequest:
    """The picklable input of a plan, from the launcher: worker processes sharing a machine, and the
    `--decoders` / `--embed-threads` overrides (0: planned)."""

    worker_processes: int = 1
    decoders: int = 0
    embed_threads: int = 0

    def plan(self, cores: int | None = None) -> CorePlan:
        """The plan for a process that may use `cores` (default: this one's)."""
        cores = cores or usable_cores()
        processes = max(1, self.worker_processes)
        share = max(1, cores // processes)
        decoders = self.decoders or share
        return CorePlan(cores=cores, worker_processes=processes, decoders=decoders,
                        decoder_threads=max(1, share // decoders), embed_threads=self.embed_threads or share,
                        max_in_flight=2 * decoders)


def worker_processes(options, override: int = 0) -> int:
    """How many worker processes of this job share one machine: `override` when given, else what Beam's
    `options` (PipelineOptions, or their flags) say (`--direct_num_workers` on the in-process runner,
    `--sdk_worker_parallelism`), else 1."""
    if override:
        return override
    from apache_beam.options.pipeline_options import DirectOptions, PipelineOptions, PortableOptions

    if not isinstance(options, PipelineOptions):
        options = PipelineOptions(options)
    direct, portable = options.view_as(DirectOptions), options.view_as(PortableOptions)
    # In-process workers run as threads or processes; either way each has its own decoders and embedder calls.
    workers = direct.direct_num_workers if direct.direct_num_workers and direct.direct_num_workers > 0 else 1
    if direct.direct_num_workers == 0:  # Beam's "one a core"
        workers = usable_cores()
    parallelism = int(portable.sdk_worker_parallelism or 0)
    return max(workers, parallelism, 1)


def add_core_flags(parser) -> None:
    """--decoders and --worker-processes (--embed-threads is an engine flag, beam_jobs.flags)."""
    parser.add_argument("--decoders", type=int, default=0, metavar="N",
                        help="decoder processes each worker process runs ahead of the embedder; 0: one per core "
                             "of its share of the machine (default: %(default)s)")
    parser.add_argument("--worker-processes", type=int, default=0, metavar="N",
                        help="worker processes of this job sharing one machine, to share its cores among; 0: from "
                             "--direct_num_workers or --sdk_worker_parallelism, else 1 (default: %(default)s)")


def core_request(args, beam_options) -> CoreRequest:
    """The CoreRequest the flags and Beam's options (see `worker_processes`) make; a UserError for a negative
    count."""
    for flag in ("decoders", "worker_processes"):
        if getattr(args, flag) < 0:
            raise UserError(f"--{flag.replace('_', '-')} must be 0 (planned) or more, got {getattr(args, flag)}")
    return CoreRequest(worker_processes(beam_options, args.worker_processes), args.decoders, args.embed_threads)
