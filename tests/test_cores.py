"""How a worker process's cores are planned (beam_jobs.cores): the share of the machine, the overrides, and the
number of worker processes read from Beam's options."""

from __future__ import annotations

import argparse

import pytest

from beam_jobs.cores import CoreRequest, add_core_flags, core_request, worker_processes
from common.errors import UserError


@pytest.mark.parametrize("cores, processes, decoders, decoder_threads, embed_threads", [
    (2, 1, 2, 1, 2),
    (16, 1, 16, 1, 16),
    (16, 4, 4, 1, 4),
    (2, 2, 1, 1, 1),
    (2, 8, 1, 1, 1),  # more processes than cores: one each, never zero
])
def test_each_process_plans_its_share_of_the_machine(cores, processes, decoders, decoder_threads, embed_threads):
    plan = CoreRequest(worker_processes=processes).plan(cores)
    assert (plan.decoders, plan.decoder_threads, plan.embed_threads) == (decoders, decoder_threads, embed_threads)
    assert plan.max_in_flight == 2 * decoders
    assert plan.decoders * plan.decoder_threads * min(processes, cores) <= cores  # never more threads than cores


def test_flags_override_the_plan():
    plan = CoreRequest(worker_processes=1, decoders=2, embed_threads=3).plan(16)
    assert (plan.decoders, plan.decoder_threads, plan.embed_threads) == (2, 8, 3)
    assert plan.manifest() == {"cores": 16, "worker_processes": 1, "decoders": 2, "decoder_threads": 8,
                               "embed_threads": 3, "max_in_flight": 4}


@pytest.mark.parametrize("beam_args, expected", [
    ([], 1),
    (["--direct_num_workers", "3", "--direct_running_mode", "multi_processing"], 3),
    (["--direct_num_workers", "2", "--direct_running_mode", "multi_threading"], 2),
    (["--sdk_worker_parallelism", "4"], 4),
])
def test_worker_processes_come_from_beams_options(beam_args, expected):
    assert worker_processes(beam_args) == expected
    assert worker_processes(beam_args, override=5) == 5


def test_core_flags():
    parser = argparse.ArgumentParser()
    add_core_flags(parser)
    parser.add_argument("--embed-threads", type=int, default=0)
    args = parser.parse_args(["--decoders", "3", "--embed-threads", "2"])
    assert core_request(args, ["--direct_num_workers", "2"]) == CoreRequest(2, 3, 2)
    with pytest.raises(UserError, match="--decoders must be 0 \\(planned\\) or more, got -1"):
        core_request(parser.parse_args(["--decoders", "-1"]), [])
