"""Safety properties of the package source: no pickle runs code, YAML is parsed safely, and RPC only
ever connects to the configured tracker."""

from __future__ import annotations

import ast
import functools
import socket
from pathlib import Path

import pytest
import torch

from mpsearch.errors import ConfigError, HardwareError
from mpsearch.hardware.profile import profile_from_dict
from mpsearch.hardware.rpc import free_port
from mpsearch.hardware.session import make_device
from mpsearch.models.registry import load_state_dict

PACKAGE = Path(__file__).resolve().parents[2] / "mpsearch"
SOURCES = sorted(PACKAGE.rglob("*.py"))


@functools.lru_cache(maxsize=None)
def _tree(path: Path) -> ast.AST:
    return ast.parse(path.read_text(), str(path))


def _calls(name: str) -> list[tuple[Path, ast.Call]]:
    """Every call in the package whose function is ``name`` or ``<something>.name``."""
    out = []
    for path in SOURCES:
        for node in ast.walk(_tree(path)):
            if isinstance(node, ast.Call):
                f = node.func
                if (isinstance(f, ast.Attribute) and f.attr == name) or (isinstance(f, ast.Name) and f.id == name):
                    out.append((path, node))
    return out


def _where(path: Path, node: ast.AST) -> str:
    return f"{path.relative_to(PACKAGE.parent)}:{node.lineno}"


def test_sources_are_found() -> None:
    assert len(SOURCES) > 20 and _calls("load"), "the scan below would pass vacuously"


def test_torch_load_always_has_weights_only_true() -> None:
    loads = [(p, c) for p, c in _calls("load") if isinstance(c.func, ast.Attribute)
             and isinstance(c.func.value, ast.Name) and c.func.value.id == "torch"]
    assert loads, "mpsearch loads checkpoints somewhere"
    for path, call in loads:
        kw = {k.arg: k.value for k in call.keywords}
        assert isinstance(kw.get("weights_only"), ast.Constant) and kw["weights_only"].value is True, \
            _where(path, call)


def test_no_unsafe_deserialisation() -> None:
    for path, call in _calls("load") + _calls("loads"):
        f = call.func
        if isinstance(f, ast.Attribute) and isinstance(f.value, ast.Name):
            assert f.value.id not in ("pickle", "cPickle", "dill", "cloudpickle", "marshal", "yaml"), \
                _where(path, call)
    for name in ("unsafe_load", "full_load", "load_all", "Unpickler"):
        assert not _calls(name), [_where(p, c) for p, c in _calls(name)]
    assert any(p.name == "profile.py" for p, _ in _calls("safe_load"))
    for path in SOURCES:
        text = path.read_text()
        assert "yaml.Loader" not in text and "yaml.UnsafeLoader" not in text, path
    for name in ("eval", "exec"):  # the builtins, not Module.eval()
        assert not [c for _, c in _calls(name) if isinstance(c.func, ast.Name)], name


def test_a_checkpoint_with_code_is_refused_without_running_it(tmp_path: Path) -> None:
    marker = tmp_path / "ran"

    class Payload:
        def __reduce__(self):
            import os
            return os.system, (f"touch {marker}",)

    path = tmp_path / "evil.pt"
    torch.save({"weight": Payload()}, path)
    with pytest.raises(ConfigError, match="is not a plain state dict") as info:
        load_state_dict(torch.nn.Linear(2, 2), path)
    assert "\n" not in str(info.value) and not marker.exists()


def test_rpc_connects_only_to_the_configured_tracker_in_source() -> None:
    """Every network connection in the package goes to a profile's tracker (or the loopback test helper)."""
    allowed = {"self.rpc.tracker_host", "HOST", "(self.rpc.tracker_host, self.rpc.tracker_port)",
               "(HOST, self.port)", "(HOST, tracker.port)"}
    found = []
    for name in ("connect_tracker", "create_connection", "connect", "RPCConfig", "Server"):
        for path, call in _calls(name):
            if name == "connect" and not ast.unparse(call.func).startswith(("rpc.", "tvm.rpc")):
                continue  # sqlite / other connect() calls are not network clients
            args = [ast.unparse(a) for a in call.args] + \
                [ast.unparse(k.value) for k in call.keywords if k.arg in ("tracker_host", "host", "tracker_addr")]
            found.append((_where(path, call), args))
            assert args and (args[0] in allowed or any(a in allowed for a in args)), (_where(path, call), args)
            if path.name == "rpc.py":
                assert "HOST" in " ".join(args)  # the loopback helper stays on 127.0.0.1
    assert any("session.py" in w for w, _ in found), "the scan must see the RPC device's connections"


def test_rpc_device_dials_only_the_configured_address(monkeypatch: pytest.MonkeyPatch) -> None:
    port = free_port()
    dialed = []
    real = socket.create_connection

    def spy(address, *args, **kwargs):
        dialed.append(tuple(address))
        return real(address, *args, **kwargs)

    monkeypatch.setattr(socket, "create_connection", spy)
    profile = profile_from_dict({"name": "board", "device": "rpc", "target": {"kind": "llvm", "mcpu": "x86-64"},
                                 "rpc": {"tracker_host": "127.0.0.1", "tracker_port": port, "key": "pi",
                                         "connect_timeout_s": 1}})
    with pytest.raises(HardwareError, match=f"cannot reach the TVM RPC tracker at 127.0.0.1:{port}"):
        make_device(profile).check()
    assert dialed == [("127.0.0.1", port)]
