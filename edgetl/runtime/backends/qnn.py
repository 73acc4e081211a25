"""Qualcomm QNN (Hexagon HTP) through ONNX Runtime's plugin execution provider.

onnxruntime-qnn 2.x is a plugin EP: naming it in ``providers=[...]`` silently leaves the session on the
CPU EP. It must be registered and attached per device (``add_provider_for_devices``). On x86 the HTP
backend is Qualcomm's simulator, whose EP device reports itself as a CPU device.
"""

from __future__ import annotations

from pathlib import Path

from ...errors import CheckFailed, DeviceUnavailable
from .base import Placement, first_line
from .onnx import OnnxBackend, ort_session_options

QNN_EP = "QNNExecutionProvider"
QNN_EXTRA = "edgetl[qnn]"
_QNN_REGISTERED: list[bool] = []


def qnn_installed() -> bool:
    import importlib.util

    return importlib.util.find_spec("onnxruntime_qnn") is not None


def qnn_ep_devices() -> list:
    """Register the QNN plugin once per process; its EP devices (``DeviceUnavailable`` when missing)."""
    ort = OnnxBackend.require("onnxruntime")
    try:
        import onnxruntime_qnn
    except ImportError:
        raise DeviceUnavailable(f"npu:qnn-htp needs onnxruntime-qnn; pip install '{QNN_EXTRA}'") from None
    if not _QNN_REGISTERED:
        try:
            ort.register_execution_provider_library(QNN_EP, onnxruntime_qnn.get_library_path())
        except Exception as exc:  # registered already by someone else in this process is fine
            if "already" not in str(exc).lower():
                raise DeviceUnavailable(f"onnxruntime-qnn failed to register ({first_line(exc)})") from None
        _QNN_REGISTERED.append(True)
    return [d for d in ort.get_ep_devices() if d.ep_name == QNN_EP]


def qnn_is_simulator(devices: list) -> bool:
    import onnxruntime as ort

    return not any(d.device.type == ort.OrtHardwareDeviceType.NPU for d in devices)


def qnn_session_options(soc: str | None = None, allow_cpu_fallback: bool = False,
                        context_file: str | Path | None = None, threads: int | None = None):
    """Session options that put the graph on the QNN HTP backend. ``allow_cpu_fallback=False`` makes
    session creation fail when any node would stay on the CPU EP; ``context_file`` makes session creation
    write the EPContext model (the compiled QNN context binary embedded in one ONNX node)."""
    import onnxruntime_qnn

    devices = qnn_ep_devices()
    if not devices:
        raise DeviceUnavailable("onnxruntime-qnn registered no QNN device")
    options = ort_session_options(threads, exact_int8=False)
    options.log_severity_level = 3  # the plugin warns about Windows-only features on every session
    if not allow_cpu_fallback:
        options.add_session_config_entry("session.disable_cpu_ep_fallback", "1")
    if context_file is not None:
        options.add_session_config_entry("ep.context_enable", "1")
        options.add_session_config_entry("ep.context_embed_mode", "1")
        options.add_session_config_entry("ep.context_file_path", str(context_file))
    provider = {"backend_path": onnxruntime_qnn.get_qnn_htp_path()}
    if soc:
        provider["soc_model"] = str(soc)
    options.add_provider_for_devices(devices, provider)
    return options


class QnnBackend(OnnxBackend):
    """An ONNX artifact on the QNN HTP backend (a Snapdragon's NPU, or on x86 the HTP simulator: then
    ``simulated`` is True and wall time here is the simulator's, never the device's latency)."""

    options = frozenset({"exact_int8", "soc", "allow_cpu_fallback"})

    def __init__(self, path: Path, device: str = "npu", threads: int | None = None, soc: str | None = None,
                 allow_cpu_fallback: bool = False, exact_int8: bool = True):
        super(OnnxBackend, self).__init__(path, device, threads)  # Backend's: the session is made here
        ort = self.require("onnxruntime")
        devices = qnn_ep_devices()
        self.simulated = qnn_is_simulator(devices)
        self.exact_int8 = False  # the HTP runs its own integer kernels; ORT's CPU switch does not apply
        self.soc, self.allow_cpu_fallback = soc, allow_cpu_fallback
        options = self._session_options()
        try:
            self.session = ort.InferenceSession(str(path), sess_options=options)
        except Exception as exc:
            raise CheckFailed(f"{path}: the QNN HTP backend cannot take it ({first_line(exc)})") from None
        self._read_io()
        where = "QNN HTP simulator (x86)" if self.simulated else "QNN HTP"
        self.placement = Placement(device, [where] + (["CPU"] if allow_cpu_fallback else []))
        if soc:
            self.settings = {"soc_model": str(soc)}
        self._ort = ort

    def _session_options(self):
        return qnn_session_options(self.soc, self.allow_cpu_fallback, threads=self.threads)

    def _providers(self) -> dict:
        return {}  # the plugin EP is attached by the session options, not named

    @classmethod
    def checked(cls, simulate: bool) -> type[QnnBackend]:
        """This class, unless the only HTP here is the simulator and ``simulate`` was not asked for."""
        # The HTP simulator is never taken for the device unless asked for (bench --simulate).
        if qnn_is_simulator(qnn_ep_devices()) and not simulate:
            raise DeviceUnavailable("no Hexagon NPU on this machine (onnxruntime-qnn has only Qualcomm's x86 "
                                    "HTP simulator here; `edgetl bench --simulate` runs it)")
        return cls
