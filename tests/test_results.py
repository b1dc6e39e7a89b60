"""Hardware provenance: the CPU is named by its model, not only by its architecture. Results files: a number
out of its range is refused with one message naming the file and field."""

import json
import math
import os
import platform
import re
from pathlib import Path

import pytest
import torch

from speedrun.errors import SpeedrunError
from speedrun.provenance import cpu_model, hardware_info
from speedrun.results import load_result
from speedrun.tracks import REPO_ROOT

CPUINFO = Path("/proc/cpuinfo")


@pytest.mark.skipif(not CPUINFO.exists(), reason="no /proc/cpuinfo on this platform")
def test_cpu_is_named_by_its_model_name():
    names = re.findall(r"^model name\s*:\s*(.+?)\s*$", CPUINFO.read_text(), flags=re.MULTILINE)
    if not names:
        pytest.skip("/proc/cpuinfo has no 'model name' line here")
    assert cpu_model() == f"{names[0]} ({platform.machine()})"


def test_cpu_hardware_record():
    hw = hardware_info(torch.device("cpu"), world_size=1, per_node=1)
    assert hw.device_type == "cpu" and hw.device_names == [hw.cpu] and hw.driver is None
    assert hw.cpu_count == len(os.sched_getaffinity(0))
    assert platform.machine() in hw.cpu


def test_cuda_hardware_record_names_the_cards_the_run_used(monkeypatch):
    """Processes on machines with eight cards: the record names the cards of this node's processes
    (cuda:LOCAL_RANK), not every visible card, and counts the processes of all nodes."""
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 8)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda i: f"card {i}")
    monkeypatch.setenv("PATH", "")  # no nvidia-smi: the driver is unknown, the names still stand
    hw = hardware_info(torch.device("cuda"), world_size=2, per_node=2)
    assert hw.device_names == ["card 0", "card 1"] and hw.device_count == 2 and hw.driver is None
    two_nodes = hardware_info(torch.device("cuda"), world_size=8, per_node=4)
    assert two_nodes.device_names == [f"card {i}" for i in range(4)] and two_nodes.device_count == 8


def test_load_result_errors_describe_without_a_remedy(tmp_path: Path):
    # `speedrun run` and `speedrun verify` each append their own remedy; one here would be said twice.
    path = tmp_path / "seed0.json"
    path.write_text("{not json")
    with pytest.raises(SpeedrunError) as info:
        load_result(path)
    message = str(info.value)
    assert message.startswith(f"{path}: not valid JSON (") and message.endswith(")")
    folder = tmp_path / "seed1.json"
    folder.mkdir()
    with pytest.raises(SpeedrunError) as info:
        load_result(folder)
    assert str(info.value) == f"{folder}: not a regular file"


def set_field(section: str, key: str, value: float):
    return lambda data: data[section].update({key: value})


@pytest.mark.parametrize(
    "edit, problem",
    [
        (set_field("metrics", "fid", -1.0), "'metrics': 'fid' is -1.0, below the least value the metric takes (0.0)"),
        (set_field("metrics", "val_loss", math.nan), "'metrics.val_loss': Input should be a finite number (got nan)"),
        (set_field("timing", "wall_s", math.inf), "'timing.wall_s': Input should be a finite number (got inf)"),
        (
            set_field("speed", "batches_per_second", -4.0),
            "'speed.batches_per_second': Input should be greater than 0 (got -4.0)",
        ),
    ],
    ids=["negative-fid", "nan-loss", "infinite-time", "negative-rate"],
)
def test_a_number_out_of_its_range_is_one_message_naming_file_and_field(tmp_path: Path, edit, problem: str):
    data = json.loads((REPO_ROOT / "submissions" / "baseline" / "results" / "tiny" / "seed0.json").read_text())
    edit(data)
    path = tmp_path / "seed0.json"
    path.write_text(json.dumps(data))  # Python's json writes NaN and Infinity, and reads them back
    with pytest.raises(SpeedrunError) as info:
        load_result(path)
    assert str(info.value) == f"{path}: field {problem}"
