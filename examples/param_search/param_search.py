"""The original pystematic's ``param_search`` example, ported.

``main_experiment`` sleeps a random while; ``param_search`` runs it 50 times, 10 at a
time, each run in its own process with its own run folder and seed (one sweep):

    python param_search.py                         # param_search.cli(): the script is its command
    pystematic run param_search --num-runs 5 --processes 2 --max-sleep 1
    pystematic sweep main_experiment --repeat 50 --jobs 10   # the same from the command line
"""

import random
import time

import pystematic as ps


@ps.parameter("max_sleep", type=float, default=10.0, help="Longest sleep, in seconds.")
@ps.experiment
def main_experiment(params):
    """Sleep a random while."""
    print("NEW")
    time.sleep(random.uniform(0, params.max_sleep))
    print("END")


@ps.parameter("num_runs", type=int, default=50, help="Runs of main_experiment.")
@ps.parameter("processes", type=int, default=10, help="Runs at a time.")
@ps.parameter("max_sleep", type=float, default=10.0, help="Longest sleep of a run.")
@ps.experiment
def param_search(params):
    """Run main_experiment many times in parallel."""
    results = ps.run_parameter_sweep(
        main_experiment,
        [{"max_sleep": params.max_sleep}] * params.num_runs,
        max_num_processes=params.processes,
    )
    for result in results:
        print(result.status, result.run_dir)


if __name__ == "__main__":
    param_search.cli()
