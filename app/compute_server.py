"""``scout-chat --compute-server``: this machine lends its memory and processors to another Scout
Chat through llama.cpp's RPC backend, by running llama.cpp's ``rpc-server`` built by the set-up
from the same llama.cpp as the engine (the RPC protocol versions must match).

It binds 127.0.0.1 unless an address is given. llama.cpp's RPC has no authentication and no
encryption: an address on the private networks is allowed with llama.cpp's warning; a public one
(or all interfaces, 0.0.0.0 / ::) only with ``--i-understand-this-is-unauthenticated``. The local
tensor cache (``rpc-server -c``) lives in Scout Chat's cache folder, so the second start does not
receive the model's large tensors again.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from typing import TYPE_CHECKING

from app.config import AppPaths
from app.core.listen import address_kind

if TYPE_CHECKING:
    import argparse

UNAUTHENTICATED_FLAG = "--i-understand-this-is-unauthenticated"
EXIT_REFUSED = 2
DEFAULT_PORT = 50052

WARNING = """\
!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!
WARNING: Host ('{host}') is != '127.0.0.1'
         Never expose the RPC server to an open network!
         This is an experimental feature and is not secure!
!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!
(llama.cpp's warning: anyone who can reach this port can use this machine's memory and processors
and read what it computes. Use it only on a network you trust.)"""


def say(text: str) -> None:
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


def run_compute_server(args: argparse.Namespace) -> int:
    from app.core.engine.llama_tools import find_llama_tools, why_missing

    host = args.host or "127.0.0.1"
    port = int(args.port) if args.port is not None else DEFAULT_PORT
    kind = address_kind(host)
    if kind == "public" and not args.i_understand_this_is_unauthenticated:
        say(
            f"Refusing to listen on {host}: that address is reachable from outside your private network "
            "(or is every interface), and llama.cpp's RPC has no authentication and no encryption. "
            f"Use an address on your home or office network, or add {UNAUTHENTICATED_FLAG} if you "
            "really mean it."
        )
        return EXIT_REFUSED
    tools = find_llama_tools()
    if tools is None:
        say(f"The compute server needs llama.cpp's rpc-server: {why_missing()}.")
        return 1
    paths = AppPaths.default(args.data_dir).ensure()
    cache = paths.cache_dir / "llama.cpp"  # rpc-server keeps its tensor cache in $LLAMA_CACHE/rpc
    command = [str(tools.rpc_server), "--host", host, "--port", str(port), "--cache"]
    if args.threads:
        command += ["--threads", str(args.threads)]
    if args.device:
        command += ["--device", args.device]
    if kind != "loopback":
        say(WARNING.format(host=host))
    say(
        f"Scout Chat compute server on {host}:{port} (llama.cpp rpc-server, llama-cpp-python {tools.version})"
    )
    say(f"tensor cache: {cache / 'rpc'}")
    say(f"In the other Scout Chat: Settings → Machines → {host}:{port}. Stop with Ctrl+C.")
    env = {**os.environ, "LLAMA_CACHE": str(cache)}
    process = subprocess.Popen(command, env=env)
    try:
        return process.wait()
    except KeyboardInterrupt:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
        return 0
