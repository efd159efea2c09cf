"""Pooling machines with llama.cpp's RPC backend: compute servers (``scout-chat --compute-server``,
llama.cpp's ``rpc-server``) lend their memory and processors to the engine, which places layers
on them as on GPUs.

The installed llama-cpp-python is built without RPC, and its Python API dropped ``rpc_servers``.
The RPC client is the ``libggml-rpc`` library of the tools the set-up builds from the same llama.cpp
source (:mod:`app.core.engine.llama_tools`): loaded into the engine process after llama.cpp, it
uses the engine's own ggml (the dynamic linker matches it by soname), and each endpoint's devices
are registered with ggml's backend registry through ctypes, as llama.cpp's ``--rpc`` option does
(``ggml_backend_rpc_add_server`` + ``ggml_backend_register``). A model load then names its devices
explicitly (``llama_model_params.devices``): the chosen servers' devices, and never those of an
earlier load's servers.

llama.cpp stops the whole process when a compute server goes away in the middle of a request
("Remote RPC server crashed"): the engine process (:mod:`app.core.engine.process`) turns that into
a message that names the compute servers. Only this module and the engine process use it.
"""

from __future__ import annotations

import ctypes
import logging
import socket
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from app.core.engine.errors import ComputeServerError

if TYPE_CHECKING:
    from collections.abc import Sequence

    from app.core.hardware import Device

log = logging.getLogger(__name__)

__all__ = [
    "ComputeDevice",
    "ComputeServerError",
    "compute_devices",
    "lost_compute_server",
    "parse_endpoint",
    "register_compute_servers",
]

DEFAULT_PORT = 50052  # rpc-server's default
CONNECT_TIMEOUT_S = 3.0
#: What llama.cpp writes before it stops the process when a compute server goes away.
LOST_MARKERS = ("Remote RPC server crashed", "Failed to connect to", "RPC handshake failed")

#: llama.cpp's load-log lines that say where a model went.
PLACEMENT_LINES = ("using device", "assigned to device", "model buffer size", "offloaded")

GGML_BACKEND_DEVICE_TYPE_GPU = 1
GGML_BACKEND_DEVICE_TYPE_IGPU = 2


def parse_endpoint(text: str) -> str:
    """``host:port`` (the port defaults to rpc-server's 50052); ValueError with a sentence if bad."""
    value = text.strip()
    if not value or "/" in value or " " in value:
        raise ValueError(
            f"{text!r} is not a compute server address (expected host:port, e.g. 192.168.1.20:50052)"
        )
    host, sep, port_text = value.rpartition(":")
    if not sep:
        host, port_text = value, str(DEFAULT_PORT)
    host = host.strip("[]")
    if not host:
        raise ValueError(f"{text!r} has no host name")
    try:
        port = int(port_text)
    except ValueError:
        raise ValueError(f"{text!r} has an invalid port number") from None
    if not 0 < port < 65536:
        raise ValueError(f"{text!r} has an invalid port number")
    return f"{host}:{port}"


def check_reachable(endpoint: str, timeout_s: float = CONNECT_TIMEOUT_S) -> float:
    """A TCP connection to ``endpoint`` (llama.cpp would stop the process if it cannot connect);
    the seconds it took to open (one network round trip, the forecast's figure for the network)."""
    host, _, port = endpoint.rpartition(":")
    try:
        started = time.perf_counter()
        with socket.create_connection((host, int(port)), timeout=timeout_s):
            return time.perf_counter() - started
    except ConnectionRefusedError as exc:
        raise ComputeServerError(
            f"Nothing answers at {endpoint} (connection refused). Start `scout-chat --compute-server` "
            "(or llama.cpp's rpc-server) on that machine, on that port.",
            str(exc),
        ) from None
    except socket.gaierror as exc:
        raise ComputeServerError(f"The compute server name {host} could not be found.", str(exc)) from None
    except OSError as exc:
        raise ComputeServerError(
            f"The compute server {endpoint} could not be reached: {exc}.", str(exc)
        ) from None


@dataclass(frozen=True)
class ComputeDevice:
    """A device a compute server lends (as ggml lists it: ``RPC0`` … with its endpoint), its memory
    as the server reports it, and the round trip measured when it was registered."""

    name: str
    endpoint: str
    free_bytes: int
    total_bytes: int
    rtt_s: float = 0.0

    def as_device(self) -> Device:
        """The planner's view: a device like a GPU, on another machine."""
        from app.core.hardware import Device

        return Device(
            name=self.name,
            backend="RPC",
            free_bytes=self.free_bytes,
            total_bytes=self.total_bytes,
            description=f"compute server {self.endpoint}",
            endpoint=self.endpoint,
            rtt_s=self.rtt_s,
        )


class _Registry:
    """The RPC servers registered in this (engine) process, and the ctypes functions to do it."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._regs: dict[str, int] = {}  # endpoint -> ggml_backend_reg_t
        self._rtt: dict[str, float] = {}  # endpoint -> seconds to connect, at registration
        self._ggml: Any = None
        self._base: Any = None
        self._add_server: Any = None  # ggml_backend_rpc_add_server

    @property
    def used(self) -> bool:
        return bool(self._regs)

    def _load(self) -> None:
        if self._add_server is not None:
            return
        from app.core.engine.llama_tools import find_llama_tools, why_missing
        from app.core.engine.native import import_llama_cpp

        import_llama_cpp()  # llama.cpp's ggml first, so that libggml-rpc binds to it
        # By soname: the very copies libllama uses (the wheel holds libggml.so and libggml.so.0
        # as separate files; a path would load a second registry).
        ggml = ctypes.CDLL("libggml.so.0")
        base = ctypes.CDLL("libggml-base.so.0")
        ggml.ggml_backend_reg_by_name.restype = ctypes.c_void_p
        ggml.ggml_backend_reg_by_name.argtypes = [ctypes.c_char_p]
        own = ggml.ggml_backend_reg_by_name(b"RPC")
        add_server: Any
        if own:  # a llama-cpp-python built with GGML_RPC=on
            base.ggml_backend_reg_get_proc_address.restype = ctypes.c_void_p
            base.ggml_backend_reg_get_proc_address.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
            address = base.ggml_backend_reg_get_proc_address(own, b"ggml_backend_rpc_add_server")
            add_server = ctypes.CFUNCTYPE(ctypes.c_void_p, ctypes.c_char_p)(address)
        else:
            tools = find_llama_tools()
            library = tools.rpc_library if tools is not None else None
            if library is None:
                raise ComputeServerError(
                    "This llama.cpp build cannot use compute servers: it has no RPC support, and "
                    f"{why_missing()}."
                )
            rpc = ctypes.CDLL(str(library))
            add_server = rpc.ggml_backend_rpc_add_server
            add_server.restype = ctypes.c_void_p
            add_server.argtypes = [ctypes.c_char_p]
        ggml.ggml_backend_register.argtypes = [ctypes.c_void_p]
        ggml.ggml_backend_dev_count.restype = ctypes.c_size_t
        ggml.ggml_backend_dev_get.restype = ctypes.c_void_p
        ggml.ggml_backend_dev_get.argtypes = [ctypes.c_size_t]
        base.ggml_backend_reg_dev_count.restype = ctypes.c_size_t
        base.ggml_backend_reg_dev_count.argtypes = [ctypes.c_void_p]
        base.ggml_backend_reg_dev_get.restype = ctypes.c_void_p
        base.ggml_backend_reg_dev_get.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
        base.ggml_backend_dev_backend_reg.restype = ctypes.c_void_p
        base.ggml_backend_dev_backend_reg.argtypes = [ctypes.c_void_p]
        base.ggml_backend_reg_name.restype = ctypes.c_char_p
        base.ggml_backend_reg_name.argtypes = [ctypes.c_void_p]
        base.ggml_backend_dev_type.restype = ctypes.c_int
        base.ggml_backend_dev_type.argtypes = [ctypes.c_void_p]
        for name in ("ggml_backend_dev_name", "ggml_backend_dev_description"):
            getattr(base, name).restype = ctypes.c_char_p
            getattr(base, name).argtypes = [ctypes.c_void_p]
        base.ggml_backend_dev_memory.argtypes = [
            ctypes.c_void_p,
            ctypes.POINTER(ctypes.c_size_t),
            ctypes.POINTER(ctypes.c_size_t),
        ]
        self._ggml, self._base, self._add_server = ggml, base, add_server

    def register(self, endpoints: Sequence[str]) -> list[ComputeDevice]:
        """Register each endpoint's devices (once per process); their devices, in order."""
        with self._lock:
            self._load()
            devices: list[ComputeDevice] = []
            for endpoint in endpoints:
                reg = self._regs.get(endpoint)
                if reg is None:
                    # the quickest of three connections: the first pays for name lookup and start-up
                    self._rtt[endpoint] = min(check_reachable(endpoint) for _ in range(3))
                    reg = self._add_server(endpoint.encode())
                    if not reg:
                        raise ComputeServerError(f"The compute server {endpoint} lends no device.")
                    self._ggml.ggml_backend_register(reg)
                    self._regs[endpoint] = reg
                    log.info("compute server %s registered", endpoint)
                devices += self._devices_of(endpoint, reg)
            return devices

    def _devices_of(self, endpoint: str, reg: int) -> list[ComputeDevice]:
        base = self._base
        found = []
        for index in range(base.ggml_backend_reg_dev_count(reg)):
            dev = base.ggml_backend_reg_dev_get(reg, index)
            free, total = ctypes.c_size_t(0), ctypes.c_size_t(0)
            base.ggml_backend_dev_memory(dev, ctypes.byref(free), ctypes.byref(total))
            name = base.ggml_backend_dev_name(dev).decode("utf-8", "replace")
            found.append(
                ComputeDevice(name, endpoint, int(free.value), int(total.value), self._rtt.get(endpoint, 0.0))
            )
        return found

    def device_array(self, endpoints: Sequence[str]) -> Any:
        """The NULL-terminated ``ggml_backend_dev_t`` array for a model load: this machine's GPUs
        (as llama.cpp's default choice would take them) after the named servers' devices, which
        llama.cpp puts first to keep transfers low. None while no server was ever registered:
        llama.cpp's default choice is then unchanged."""
        if not self._regs:
            return None
        with self._lock:
            ggml, base = self._ggml, self._base
            remote = []  # the servers' devices, in the order asked (their registry entries are
            for endpoint in endpoints:  # owned by each server's reg, not by the RPC backend's)
                reg = self._regs.get(endpoint)
                if reg is not None:
                    remote += [
                        base.ggml_backend_reg_dev_get(reg, i)
                        for i in range(base.ggml_backend_reg_dev_count(reg))
                    ]
            local, integrated = [], []
            for index in range(ggml.ggml_backend_dev_count()):
                dev = ggml.ggml_backend_dev_get(index)
                if base.ggml_backend_reg_name(base.ggml_backend_dev_backend_reg(dev)) == b"RPC":
                    continue
                kind = base.ggml_backend_dev_type(dev)
                if kind == GGML_BACKEND_DEVICE_TYPE_GPU:
                    local.append(dev)
                elif kind == GGML_BACKEND_DEVICE_TYPE_IGPU:
                    integrated.append(dev)
            chosen = [*remote, *(local or integrated)]
            return (ctypes.c_void_p * (len(chosen) + 1))(*chosen, None)


REGISTRY = _Registry()


def register_compute_servers(endpoints: Sequence[str]) -> list[ComputeDevice]:
    """In the engine process: make the compute servers' devices available to llama.cpp."""
    return REGISTRY.register([parse_endpoint(e) for e in endpoints])


def compute_devices(endpoints: Sequence[str]) -> list[ComputeDevice]:
    """In the engine process: the compute servers' devices with their free memory now (each
    server is registered the first time; its memory is asked again each call)."""
    return register_compute_servers(endpoints)


def lost_compute_server(log_tail: str, endpoints: Sequence[str]) -> str:
    """The sentence for an engine process that llama.cpp stopped because a compute server went
    away, or "" when its last lines do not say so."""
    if not any(marker in log_tail for marker in LOST_MARKERS):
        return ""
    named = ", ".join(endpoints) if endpoints else "a compute server"
    return (
        f"A compute server stopped answering ({named}), so llama.cpp stopped the model engine. "
        "Check that `scout-chat --compute-server` still runs on that machine and the network is up, "
        "then load the model again."
    )
