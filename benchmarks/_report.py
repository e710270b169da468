"""What every benchmark script records beside its figures: the machine, and an atomic JSON write."""
from __future__ import annotations

import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any, Dict, Optional

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # the scripts run as `python benchmarks/<name>.py` from the repository
    sys.path.insert(0, str(REPO))


def cpu_name() -> str:
    """The CPU model (from /proc/cpuinfo on Linux, else platform.processor())."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine_info(device: Optional[Any] = None, **extra: Any) -> Dict[str, Any]:
    """CPU, cores, Python, platform, library versions, and the GPU when ``device`` is CUDA."""
    import numpy as np
    import torch

    info: Dict[str, Any] = {"cpu": cpu_name(), "cores": os.cpu_count(), "python": platform.python_version(),
                            "platform": platform.platform(), "torch": torch.__version__, "numpy": np.__version__}
    try:
        import cv2
        info["opencv"] = cv2.__version__
    except ImportError:  # pragma: no cover
        pass
    if device is not None and getattr(device, "type", str(device)).startswith("cuda"):
        info["gpu"] = torch.cuda.get_device_name(device)
        info["cuda"] = torch.version.cuda
    info.update(extra)
    return info


def write_result(result: Dict[str, Any], path: os.PathLike) -> Path:
    """``result`` (with the date added) as indented JSON at ``path``, written atomically."""
    from clip4clip.core.atomic import atomic_write_text

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps({**result, "date": result.get("date") or time.strftime("%Y-%m-%d")},
                                       indent=2, default=float) + "\n")
    print(f"written {path}")
    return path


def box_speed(seconds: float = 3.0) -> Dict[str, float]:
    """How fast this box is right now, for comparing wall times taken on different days.

    A fixed CPU workload in the shapes of a demo training step (matmuls and the QuickGELU of a
    64-wide ViT on 256 frames, on PyTorch's default threads) is repeated for about ``seconds``;
    returns ms per round (lower = faster) and the threads used. Buffers are reused, so page
    faults do not enter. The same computation every time: the figure moves only with the box.
    """
    import torch

    g = torch.Generator().manual_seed(0)
    x = torch.randn(4352, 64, generator=g)
    w1, w2 = torch.randn(64, 256, generator=g) * 0.1, torch.randn(256, 64, generator=g) * 0.1
    h, s, y = torch.empty(4352, 256), torch.empty(4352, 256), torch.empty(4352, 64)

    def one_round() -> None:
        for _ in range(8):
            torch.mm(x, w1, out=h)
            torch.sigmoid(h, out=s)
            s.mul_(h)
            torch.mm(s, w2, out=y)

    one_round()
    rounds, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        one_round()
        rounds += 1
    return {"ms_per_round": round((time.perf_counter() - t0) / rounds * 1e3, 2), "threads": torch.get_num_threads()}
