"""Point-to-point check of a link: `hpclm cluster run -- python -m hpclm.cluster.p2p [--sizes 1M,16M]`.

An MPI program for 2+ ranks: rank 0 streams `reps` messages of each size to the last rank, which
answers with one byte once all have arrived (goodput, Mbit/s of payload; the best of --rounds
streams, as a busy CPU can only slow a stream down), then an 8-byte
ping-pong gives the round trip. Rank 0 prints one JSON object: hosts, goodput per size, RTT.
On the emulated cluster the two ranks sit on different hosts, so this measures the shaped link.
"""
import argparse
import json
import socket
import time

import numpy as np
from mpi4py import MPI

UNITS = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}


def parse_size(text):
    text = text.strip().upper()
    return int(text[:-1]) * UNITS[text[-1]] if text[-1] in UNITS else int(text)


def stream(comm, peer, nbytes, reps):
    """Seconds to deliver `reps` messages of `nbytes` from rank 0 to `peer` (acknowledged)."""
    buf = np.zeros(nbytes, np.uint8)
    ack = np.zeros(1, np.uint8)
    comm.Barrier()
    t0 = time.perf_counter()
    if comm.rank == 0:
        for _ in range(reps):
            comm.Send(buf, peer, 0)
        comm.Recv(ack, peer, 1)
    elif comm.rank == peer:
        for _ in range(reps):
            comm.Recv(buf, 0, 0)
        comm.Send(ack, 0, 1)
    return time.perf_counter() - t0


def round_trip(comm, peer, reps):
    """Median seconds of an 8-byte ping-pong between rank 0 and `peer`."""
    msg = np.zeros(8, np.uint8)
    times = []
    for _ in range(reps):
        comm.Barrier()
        t0 = time.perf_counter()
        if comm.rank == 0:
            comm.Send(msg, peer, 2)
            comm.Recv(msg, peer, 3)
        elif comm.rank == peer:
            comm.Recv(msg, 0, 2)
            comm.Send(msg, 0, 3)
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1M,16M", help="message sizes (K/M/G suffixes)")
    parser.add_argument("--bytes", default="64M", help="bytes to stream per size and round (at least one message)")
    parser.add_argument("--rounds", type=int, default=3, help="streams per size; the fastest is the link's goodput")
    args = parser.parse_args(argv)
    comm = MPI.COMM_WORLD
    if comm.size < 2:
        raise SystemExit("hpclm.cluster.p2p: needs at least 2 ranks")
    peer = comm.size - 1
    hosts = comm.gather(socket.gethostname())
    total = parse_size(args.bytes)
    rows = []
    for nbytes in map(parse_size, args.sizes.split(",")):
        reps = max(1, total // nbytes)
        stream(comm, peer, nbytes, 1)                        # warm-up: connection set-up
        rounds = [reps * nbytes * 8 / stream(comm, peer, nbytes, reps) / 1e6 for _ in range(args.rounds)]
        rows.append({"bytes": nbytes, "reps": reps, "mbit_per_s": max(rounds), "rounds_mbit_per_s": rounds})
    rtt = round_trip(comm, peer, 50)
    if comm.rank == 0:
        print(json.dumps({"hosts": [hosts[0], hosts[peer]], "ranks": [0, peer], "streams": rows,
                          "rtt_us": rtt * 1e6, "library": MPI.Get_library_version().splitlines()[0]}))


if __name__ == "__main__":
    main()
