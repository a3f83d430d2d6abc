"""OMERO pixel reading: block reader against the former one-plane-per-call reader, on the fake.

Target (issue 14): read pixels in blocks and measure the gain in server calls. omero-py's
``PixelsWrapper.getPlane`` opens a RawPixelsStore, initialises it (``setPixelsId``), reads
one plane and closes it again: four round trips per plane. :func:`reproseg.sources.omero.
read_volume` passes a list of planes to ``getPlanes`` (one store per block of planes), so a
``Z``-plane image costs ``Z + 3`` round trips per block instead of ``4 Z``.

Measured on the in-memory fake server of ``tests/fakes/omero_fake.py``, which counts every
round trip the way omero-py makes them. Two timings per reader:

- ``latency 0``: the fake answers at once, so the time is Python and copying only (an
  upper bound on the client-side overhead, not a server measurement);
- ``latency L`` (``--latency-ms``, default 0.5 ms, a LAN round trip): each call also waits
  ``L`` (busy wait), which is what the saved round trips cost against a real server.
  Transfer time of the pixel bytes, the same for both readers, is not modelled, nor the
  server's own work per ``setPixelsId`` (which the block reader also saves).

``modelled_time_ratio`` adds ``calls x L`` to the latency-0 times instead of waiting, so
it does not suffer from a busy machine preempting the waits.

The target is the call ratio (deterministic): at least 3x fewer round trips. Timings are
wall-clock on a shared, noisy machine: read the ratios, not the seconds.

    .venv/bin/python benchmarks/bench_omero_read.py                       # 512 x 512 x 100
    .venv/bin/python benchmarks/bench_omero_read.py --size-z 40 --json out.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))
from _result import target, write_result

# The fake lives with the tests; this script runs from any working directory.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from reproseg.sources import omero as om
from tests.fakes import omero_fake as fake

TARGET_CALL_RATIO = 3.0


def per_plane(image: Any) -> np.ndarray:
    """The reader before issue 14: one ``getPlane`` call (one RawPixelsStore) per z-plane."""
    pixels = image.getPrimaryPixels()
    size_x, size_y, size_z = image.getSizeX(), image.getSizeY(), image.getSizeZ()
    volume: np.ndarray | None = None
    for z in range(size_z):
        plane = np.asarray(pixels.getPlane(z, 0, 0))
        if volume is None:
            volume = np.empty((size_x, size_y, size_z), dtype=plane.dtype.newbyteorder("="))
        volume[:, :, z] = plane.T
    assert volume is not None
    return volume


def measure(server: fake.FakeServer, image: Any, reader: Any, repeat: int) -> tuple[int, float]:
    """(round trips of one read, best wall-clock seconds of ``repeat`` reads)."""
    best = float("inf")
    calls = 0
    for _ in range(repeat):
        before = server.round_trips
        start = time.perf_counter()
        reader(image)
        best = min(best, time.perf_counter() - start)
        calls = server.round_trips - before
    return calls, best


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-xy", type=int, default=512)
    parser.add_argument("--size-z", type=int, default=100)
    parser.add_argument("--latency-ms", type=float, default=0.5)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args(argv)

    rng = np.random.default_rng(0)
    shape = (args.size_xy, args.size_xy, args.size_z)
    volume = rng.integers(-1000, 2000, size=shape, dtype=np.int16)
    results: dict[str, Any] = {
        "benchmark": "omero_read",
        "image": {"shape_xyz": list(shape), "dtype": "int16"},
        "latency_ms": args.latency_ms,
    }
    with pytest.MonkeyPatch.context() as mp:
        fake.install(mp)
        server = fake.FakeServer("bench.omero", users={"bench": "bench-password"})
        iid = server.add_image("ct", volume, spacing=(0.8, 0.8, 1.5))
        conn = fake.BlitzGateway("bench", "bench-password", host="bench.omero")
        assert conn.connect()
        image = conn.getObject("Image", iid)
        np.testing.assert_array_equal(om.read_volume(image), volume)
        np.testing.assert_array_equal(per_plane(image), volume)
        for latency in (0.0, args.latency_ms / 1000):
            server.latency_s = latency
            old_calls, old_s = measure(server, image, per_plane, args.repeat)
            new_calls, new_s = measure(server, image, om.read_volume, args.repeat)
            key = f"latency_{latency * 1000:g}ms"
            results[key] = {
                "per_plane_calls": old_calls,
                "block_calls": new_calls,
                "per_plane_s": round(old_s, 4),
                "block_s": round(new_s, 4),
                "time_ratio": round(old_s / new_s, 2),
            }
    first = results["latency_0ms"]
    call_ratio = first["per_plane_calls"] / first["block_calls"]
    # Robust to a busy machine: the latency-free time plus calls x latency.
    lat = args.latency_ms / 1000
    modelled_old = first["per_plane_s"] + first["per_plane_calls"] * lat
    modelled_new = first["block_s"] + first["block_calls"] * lat
    results["modelled_time_ratio"] = round(modelled_old / modelled_new, 2)
    results["call_ratio"] = round(call_ratio, 3)
    results["target"] = {"call_ratio_min": TARGET_CALL_RATIO}
    results["passed"] = call_ratio >= TARGET_CALL_RATIO
    print(json.dumps(results, indent=2))
    if args.json:
        cond = (
            f"{shape[0]}x{shape[1]}x{shape[2]} int16 image on the in-memory fake server "
            "(tests/fakes/omero_fake.py), round trips counted as omero-py makes them"
        )
        targets = [
            target(
                "call_ratio",
                call_ratio,
                TARGET_CALL_RATIO,
                ">=",
                "x",
                "per-plane / block calls; " + cond,
            )
        ]
        write_result(args.json, "omero_read", targets, results)
    return 0 if results["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
