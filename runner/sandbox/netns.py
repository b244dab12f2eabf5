"""A network namespace made ahead of need, for the next build alone.

A new network namespace is the dearest namespace a build unshares: ~0.35 ms
of the kernel's per-namespace set-up, plus ~0.1 ms to bring `lo` up
(docs/sandbox.md, "Cost"), on the critical path of every build. As root the
fork server makes the next build's namespace while it has nothing else to
do (right after answering a request, while that build starts), holding it by
a descriptor only: no process is ever in it. The next build that wants a
private network enters it with `setns`, and the server closes its
descriptor and makes another. Each namespace serves exactly one build, so
no two builds (and no build and the host) ever share a network.

With the C spawn (`native.py`) each spawning runner thread does the same
for its own next build, right after a build has exec'd (while it runs): a
network namespace belongs to a thread, so the thread's `unshare` and `setns`
back touch no other thread of runner.

Only as root: without root the server has no right to make one, and a
rootless builder (in a user namespace of its own) could not enter one the
server's user namespace owns. Then, or when making one fails, the builder
unshares its own, as before.
"""

from __future__ import annotations

import os

from runner.sandbox import libc
from runner.sandbox.child import loopback_up

NS_FILE = "/proc/self/ns/net"
THREAD_NS_FILE = "/proc/thread-self/ns/net"  # a thread's own (the C spawn's threads)


def home(ns_file: str = NS_FILE) -> int | None:
    """The caller's own network namespace, to come back to; None: no making ahead here."""
    if os.geteuid() != 0:
        return None
    try:
        return os.open(ns_file, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None


def make(home_fd: int, ns_file: str = NS_FILE) -> int | None:
    """A fresh network namespace with `lo` up, held by the returned descriptor.

    The caller is in it only between the `unshare` and the `setns` back: the
    fork server (single-threaded), or with `THREAD_NS_FILE` one runner thread
    (a network namespace is per thread); if it cannot go back the process
    exits, since every later clone would start in the wrong namespace.
    """
    try:
        libc.unshare(libc.CLONE_NEWNET)
    except OSError:
        return None
    try:
        loopback_up()
        return os.open(ns_file, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    finally:
        try:
            libc.setns(home_fd, libc.CLONE_NEWNET)
        except OSError as e:
            os.write(2, f"runner: cannot return to the host network namespace: {e}\n".encode())
            os._exit(1)
