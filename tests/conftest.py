import ipaddress
import os
import sys
import tempfile
import threading

# Before anything imports gradio (3.41 phones home from Blocks: analytics, version check) or
# huggingface_hub: the suite runs offline. setdefault would let a shell's "True" through: force them.
os.environ.update(GRADIO_ANALYTICS_ENABLED="False", HF_HUB_OFFLINE="1", HF_HUB_DISABLE_TELEMETRY="1",
                  DISABLE_TELEMETRY="1", DO_NOT_TRACK="1")
_USER = getattr(os, "getuid", lambda: 0)()
os.environ.setdefault("HYPOTHESIS_STORAGE_DIRECTORY",  # read when Hypothesis first writes its caches
                      os.path.join(tempfile.gettempdir(), f"style-components-hypothesis-{_USER}"))

import pytest  # noqa: E402
import torch  # noqa: E402
from hypothesis import settings  # noqa: E402

sys.path.insert(0, os.path.dirname(__file__))  # tests/ helpers (unets.py, ...)
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))

# No example database, and Hypothesis' other caches (unicode tables, constants) outside the
# repository: the suite leaves no .hypothesis/ folder in it.
settings.register_profile("style-components", database=None)
settings.load_profile("style-components")


# --- no network: a connection or name lookup to anything but this machine raises -----------------

_LOCAL_NAMES = {"localhost", "localhost.localdomain", "ip6-localhost", "ip6-loopback"}
network_attempts: list[str] = []  # every refused attempt, also those made (and swallowed) in threads
_attempts_lock = threading.Lock()


def _is_local(host) -> bool:
    if host is None:
        return True  # getaddrinfo(None, port): the local wildcard
    if isinstance(host, bytes):
        host = host.decode("ascii", "replace")
    host = str(host).strip().rstrip(".").lower()
    if host == "" or host in _LOCAL_NAMES or host.endswith(".localhost"):
        return True
    try:
        address = ipaddress.ip_address(host.split("%", 1)[0])  # "fe80::1%eth0": scope id
    except ValueError:
        return False  # any other name needs a DNS lookup
    return address.is_loopback or address.is_unspecified


def _network_guard(event: str, args: tuple) -> None:
    if not event.startswith("socket."):
        return
    if event in ("socket.getaddrinfo", "socket.gethostbyname", "socket.gethostbyname_ex", "socket.gethostbyaddr"):
        host = args[0]
    elif event in ("socket.connect", "socket.sendto"):
        address = args[1]
        if not isinstance(address, tuple):  # AF_UNIX path (str/bytes): local by definition
            return
        host = address[0]
    else:
        return
    if not _is_local(host):
        message = f"network access in a test: {event} to {host!r} (the suite must run offline)"
        with _attempts_lock:
            network_attempts.append(message)
        raise ConnectionRefusedError(message)


sys.addaudithook(_network_guard)  # permanent for the process: also covers imports and threads


@pytest.fixture(autouse=True)
def no_network_access():
    """Fails the test during which any code, even a background thread that swallowed the
    ConnectionRefusedError, tried to reach another machine (or during collection, before it)."""
    yield
    with _attempts_lock:
        attempts = list(network_attempts)
        network_attempts.clear()
    if attempts:
        pytest.fail("\n".join(sorted(set(attempts))), pytrace=False)


def pytest_sessionfinish(session, exitstatus):
    """Attempts no test was there to catch (a thread's, after the last test) still fail the run."""
    if network_attempts:
        session.config.get_terminal_writer().line("\n".join(sorted(set(network_attempts))), red=True)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


@pytest.fixture(scope="session")
def sd15_ldm():
    """The real SD1.5 UNet architecture A1111 runs (ldm UNetModel), random weights."""
    from unets import ldm_unet
    return ldm_unet()


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory):
    """An icon dataset (32 px) built by the real builder from the drawn fixture themes."""
    from icon_fixture import make_icon_tree
    from style_components.train import dataset
    root = tmp_path_factory.mktemp("icons")
    themes = make_icon_tree(root)
    out = tmp_path_factory.mktemp("data")
    dataset.build(out, themes, size=32, min_themes=2, workers=1, log=lambda *a: None)
    return out
