"""Profile qworker's consumer draining the in-memory fake (cProfile): where a message's time goes.

`python bench/profile_consumer.py [--messages N] [--top K]` prints the functions with the most
own time, then qworker's own functions by cumulative time. cProfile inflates the cost of calls,
so read the ranking, not the absolute numbers.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import pstats

from bench_overhead import filled, qworker_run


async def profile(messages: int) -> cProfile.Profile:
    """Warm up, then drain `messages` messages under the profiler."""
    run = qworker_run()
    await run(await filled(500))
    queue = await filled(messages)
    profiler = cProfile.Profile()
    profiler.enable()
    await run(queue)
    profiler.disable()
    return profiler


def main() -> int:
    """Profile and print."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=20_000)
    parser.add_argument("--top", type=int, default=30)
    args = parser.parse_args()
    profiler = asyncio.run(profile(args.messages))
    stats = pstats.Stats(profiler)
    print(f"# {args.messages} messages; own time")
    stats.sort_stats("tottime").print_stats(args.top)
    print("# qworker's functions, cumulative")
    stats.sort_stats("cumulative").print_stats(r"qworker[/\\]", args.top)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
