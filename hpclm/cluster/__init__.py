"""An emulated cluster on one Linux machine: hosts are network namespaces joined by shaped veth links.

netns.py plans names, addresses and the `ip`/`tc` commands (pure, tested without root);
hosts.py executes a plan (bring-up with roll-back, tear-down, status); launch.py builds the
mpiexec command that runs k ranks per emulated host; cli.py is `hpclm cluster up|run|down|status`.
p2p.py is an MPI program measuring a link; the rest imports no MPI (a launched job is an ordinary MPI program).
"""
