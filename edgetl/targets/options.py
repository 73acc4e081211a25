"""The target-specific options of ``export`` checked against the target chosen, before TensorFlow loads:
``--soc`` (npu:qnn-htp), ``--qnn-scheme`` (npu:qnn-htp), ``--system-config`` / ``--memory-mode``
(npu:ethos-u*). A value the target uses but does not know is one UsageError line listing the known
ones; an option the target ignores is a warning line (silently dropping it would let a user believe
the artifact was built for it)."""

from __future__ import annotations

from ..console import say
from .registry import QNN_HTP


def _warn(message: str) -> None:
    say(f"edgetl: warning: {message}")


def check_export_options(config) -> None:
    """``config``: an ``ExportConfig``. Raises ``UsageError`` for an unknown --soc / Vela config."""
    target = config.target or "cpu (--format)"
    qnn = config.target == QNN_HTP
    ethos = bool(config.target) and config.target.startswith("npu:ethos-u")
    if config.soc is not None:
        if qnn:
            from ..exporting.qnn import validate_soc

            validate_soc(config.soc)
        else:
            _warn(f"--soc {config.soc} is ignored: only --target {QNN_HTP} compiles for a Snapdragon SoC "
                  f"(target here: {target})")
    if qnn:
        from ..errors import UsageError
        from ..exporting.qnn import QNN_SCHEMES

        if config.qnn_scheme not in QNN_SCHEMES:
            raise UsageError(f"unknown --qnn-scheme {config.qnn_scheme!r}; choose from {', '.join(QNN_SCHEMES)}")
    if config.qnn_scheme != "edgetl" and not qnn:
        _warn(f"--qnn-scheme {config.qnn_scheme} is ignored: it is for --target {QNN_HTP} (target here: {target})")
    vela_options = [f"{flag} {value}" for flag, value in (("--system-config", config.system_config),
                                                         ("--memory-mode", config.memory_mode)) if value]
    if vela_options:
        if ethos:
            from ..exporting.vela import resolve_options

            resolve_options(config.target.split(":", 1)[1], config.system_config, config.memory_mode)
        else:
            _warn(f"{' and '.join(vela_options)} ignored: Vela options are for --target npu:ethos-u* "
                  f"(target here: {target})")
    if config.allow_cpu_fallback and not (qnn or ethos):
        _warn(f"--allow-cpu-fallback is ignored: it is for NPU targets (target here: {target})")


__all__ = ["check_export_options"]
