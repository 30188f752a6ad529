"""The GPU's SM clock and power draw while a measurement runs, sampled by nvidia-smi.

Under sustained load a GPU may lower its clock to stay under its power cap: on the H200, calls of
our kernels at 32k run back to back took the SM clock from 1980 to 1740-1800 MHz and each call
2.6 % longer (docs/benchmarks.md section 1p). A time means more beside the clock it ran at, so the
benchmark records both:

    with ClockSampler() as sampler:      # nvidia-smi runs in the background meanwhile
        ...
        with sampler.window() as window:
            ...                          # the timed calls
        window.sm_mhz, window.power_w    # means over the samples that arrived in the window

A sampler process needs time to start (how long nvidia-smi takes was not measured), and a 4k
call's whole timing lasts about 0.15 s, so one sampler serves many windows. Without nvidia-smi (a
CPU machine) or where it fails, windows hold no samples and their values are None; nothing else
changes.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import threading
import time


def power_field(executable: str, device_id: str) -> str:
    """The power reading to sample: power.draw.instant where the driver has it, else power.draw.

    On recent drivers power.draw is a one-second average. Beside a timing of a few hundred
    milliseconds it shows the load before the timing: on the H200 it read 157 W for adasplash's
    8k timing, run first after a pause, while power.draw.instant read 680-720 W once such calls ran
    (docs/benchmarks.md section 1q)."""
    query = [executable, f"--id={device_id}", "--query-gpu=power.draw.instant", "--format=csv,noheader,nounits"]
    try:
        answer = subprocess.run(query, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return "power.draw"
    return "power.draw.instant" if answer.returncode == 0 and parse_sample(f"0, {answer.stdout}") else "power.draw"


def nvidia_smi_command(device_id: str, interval_ms: int) -> list[str] | None:
    """nvidia-smi printing "<SM MHz>, <watts>" every interval_ms for one GPU, or None without it."""
    executable = shutil.which("nvidia-smi")
    if executable is None:
        return None
    return [executable, f"--id={device_id}", f"--query-gpu=clocks.sm,{power_field(executable, device_id)}",
            "--format=csv,noheader,nounits", f"--loop-ms={interval_ms}"]


def cuda_device_id(index: int | None = None) -> str:
    """What nvidia-smi's --id takes for torch's CUDA device `index` (default: the current one): its
    entry in CUDA_VISIBLE_DEVICES where that renumbers the devices (an index or a UUID, both of
    which --id accepts), else the index itself."""
    if index is None:
        import torch

        index = torch.cuda.current_device()
    visible = [entry.strip() for entry in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if entry.strip()]
    return visible[index] if index < len(visible) else str(index)


def parse_sample(line: str) -> tuple[float, float] | None:
    """(SM MHz, watts) from a line "<clock>, <power>"; None for anything else (a header, "[N/A]",
    a line cut by the sampler's end)."""
    fields = [field.strip() for field in line.split(",")]
    if len(fields) != 2:
        return None
    try:
        return float(fields[0]), float(fields[1])
    except ValueError:
        return None


class ClockWindow:
    """The samples that arrived between a window's start and end (ClockSampler.window)."""

    def __init__(self):
        self.samples: list[tuple[float, float]] = []

    @property
    def sm_mhz(self) -> float | None:
        return sum(s[0] for s in self.samples) / len(self.samples) if self.samples else None

    @property
    def power_w(self) -> float | None:
        return sum(s[1] for s in self.samples) / len(self.samples) if self.samples else None


class ClockSampler:
    """Context manager: a sampler process for its block, read by a thread that timestamps each line.

    `command` replaces the nvidia-smi command (tests); by default the current CUDA device is
    sampled every 50 ms, or nothing where nvidia-smi or CUDA is missing."""

    def __init__(self, command: list[str] | None = None, interval_ms: int = 50):
        self.command = command
        self.interval_ms = interval_ms
        self._samples: list[tuple[float, float, float]] = []  # (arrival time, MHz, watts)
        self._lock = threading.Lock()
        self._process = None
        self._reader = None

    def __enter__(self) -> "ClockSampler":
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
        if self._process is not None:
            self._reader = threading.Thread(target=self._read, daemon=True)
            self._reader.start()
        return self

    def _read(self) -> None:
        for line in self._process.stdout:
            sample = parse_sample(line)
            if sample is not None:
                with self._lock:
                    self._samples.append((time.monotonic(), *sample))

    def __exit__(self, *exc) -> None:
        if self._process is None:
            return
        self._process.terminate()
        try:
            self._process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()
        self._reader.join(timeout=5)

    @contextlib.contextmanager
    def window(self):
        """A ClockWindow that, once the block ends, holds the samples that arrived during it."""
        window = ClockWindow()
        start = time.monotonic()
        try:
            yield window
        finally:
            end = time.monotonic()
            with self._lock:
                window.samples = [(mhz, watts) for arrival, mhz, watts in self._samples if start <= arrival <= end]
