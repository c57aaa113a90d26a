"""Runs ``segrt`` with every way Python reaches the network recorded and refused.

Usage: python netguard.py LOG segrt-arguments... Each attempt (name resolution, connect) is
appended to LOG with the process id, from this process and from any child it forks."""
import os
import socket
import sys

LOG = sys.argv[1]


def _record(what):
    with open(LOG, "a") as f:
        f.write(f"{os.getpid()} {what}\n")


def _getaddrinfo(host, *args, **kwargs):
    _record(f"getaddrinfo {host}")
    raise OSError("network blocked by the test")


def _connect(self, address):
    if self.family in (socket.AF_INET, socket.AF_INET6):
        _record(f"connect {address}")
        raise OSError("network blocked by the test")
    return _plain_connect(self, address)


_plain_connect = socket.socket.connect
socket.getaddrinfo = _getaddrinfo
socket.gethostbyname = lambda host: _getaddrinfo(host)
socket.socket.connect = _connect
socket.socket.connect_ex = lambda self, address: _connect(self, address)

if __name__ == "__main__":
    from segrt.cli import main

    sys.exit(main(sys.argv[2:]))
