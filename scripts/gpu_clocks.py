"""The GPU's SM clock and power draw while a measurement runs, sampled by nvidia-smi.

Under sustained load a GPU may lower its clock to stay under its power cap: on the H200, calls of
our kernels at 32k run back to back took the SM clock from 1980 to 1740-1800 MHz and each call
2.6 % longer (docs/benchmarks.md section 1p). A time means more beside the clock it ran at, so the
benchmark records both:

    with ClockLog() as clocks:
        ...  # the timed calls
    clocks.sm_mhz, clocks.power_w  # means over the samples taken meanwhile (None without any)

Without nvidia-smi (a CPU machine) or where it fails, the values stay None and nothing else
changes.
"""

from __future__ import annotations

import os
import shutil
import subprocess


def nvidia_smi_command(device_id: str, interval_ms: int) -> list[str] | None:
    """nvidia-smi printing "<SM MHz>, <watts>" every interval_ms for one GPU, or None without it."""
    executable = shutil.which("nvidia-smi")
    if executable is None:
        return None
    return [executable, f"--id={device_id}", "--query-gpu=clocks.sm,power.draw", "--format=csv,noheader,nounits",
            f"--loop-ms={interval_ms}"]


def cuda_device_id(index: int | None = None) -> str:
    """What nvidia-smi's --id takes for torch's CUDA device `index` (default: the current one): its
    entry in CUDA_VISIBLE_DEVICES where that renumbers the devices (an index or a UUID, both of
    which --id accepts), else the index itself."""
    if index is None:
        import torch

        index = torch.cuda.current_device()
    visible = [entry.strip() for entry in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if entry.strip()]
    return visible[index] if index < len(visible) else str(index)


def parse_samples(text: str) -> list[tuple[float, float]]:
    """(SM MHz, watts) per line of "<clock>, <power>" output; lines without two numbers (a header,
    "[N/A]", a line cut by the sampler's end) are skipped."""
    samples = []
    for line in text.splitlines():
        fields = [field.strip() for field in line.split(",")]
        if len(fields) != 2:
            continue
        try:
            samples.append((float(fields[0]), float(fields[1])))
        except ValueError:
            continue
    return samples


class ClockLog:
    """Context manager: samples the SM clock and power in a background process while its block runs.

    `command` replaces the nvidia-smi command (tests); by default the current CUDA device is
    sampled every 50 ms, or nothing where nvidia-smi or CUDA is missing."""

    def __init__(self, command: list[str] | None = None, interval_ms: int = 50):
        self.command = command
        self.interval_ms = interval_ms
        self.samples: list[tuple[float, float]] = []
        self._process = None

    def __enter__(self) -> "ClockLog":
        command = self.command
        if command is None:
            import torch

            if torch.cuda.is_available():
                command = nvidia_smi_command(cuda_device_id(), self.interval_ms)
        if command is not None:
            try:
                self._process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
            except OSError:
                self._process = None
        return self

    def __exit__(self, *exc) -> None:
        if self._process is None:
            return
        self._process.terminate()
        try:
            output, _ = self._process.communicate(timeout=5)
        except subprocess.TimeoutExpired:
            self._process.kill()
            output, _ = self._process.communicate()
        self.samples = parse_samples(output or "")

    @property
    def sm_mhz(self) -> float | None:
        return sum(s[0] for s in self.samples) / len(self.samples) if self.samples else None

    @property
    def power_w(self) -> float | None:
        return sum(s[1] for s in self.samples) / len(self.samples) if self.samples else None
