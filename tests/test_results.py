"""Hardware provenance: the CPU is named by its model, not only by its architecture."""

import os
import platform
import re
from pathlib import Path

import pytest
import torch

from speedrun.results import cpu_model, hardware_info

CPUINFO = Path("/proc/cpuinfo")


@pytest.mark.skipif(not CPUINFO.exists(), reason="no /proc/cpuinfo on this platform")
def test_cpu_is_named_by_its_model_name():
    names = re.findall(r"^model name\s*:\s*(.+?)\s*$", CPUINFO.read_text(), flags=re.MULTILINE)
    if not names:
        pytest.skip("/proc/cpuinfo has no 'model name' line here")
    assert cpu_model() == f"{names[0]} ({platform.machine()})"


def test_cpu_hardware_record():
    hw = hardware_info(torch.device("cpu"), world_size=1)
    assert hw.device_type == "cpu" and hw.device_names == [hw.cpu] and hw.driver is None
    assert hw.cpu_count == len(os.sched_getaffinity(0))
    assert platform.machine() in hw.cpu
