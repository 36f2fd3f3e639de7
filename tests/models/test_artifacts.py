"""The one model-folder loader (`vaflow.models.artifacts.load`): built on the meta device, values from the file."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from vaflow.models import artifacts

FOLDER = artifacts.Folder("net.safetensors", "net.json", "run the test's export first")


class Net(nn.Module):
    def __init__(self, plain_table: bool = False):
        super().__init__()
        self.linear = nn.Linear(3, 2)
        self.register_buffer("scale", torch.ones(2))
        if plain_table:
            self.table = torch.arange(
                4.0
            )  # neither a parameter nor a buffer: the file cannot give it a value


def test_a_loaded_model_holds_the_files_values_and_trains(tmp_path, monkeypatch):
    torch.manual_seed(0)
    saved = Net()
    artifacts.save(tmp_path, FOLDER, saved, {"kind": "net"}, hash_key="hash")
    devices = []
    monkeypatch.setattr(nn.Linear, "reset_parameters", lambda self: devices.append(self.weight.device.type))
    loaded, card = artifacts.load(tmp_path, FOLDER, lambda card: Net(), hash_key="hash")
    assert devices == ["meta"]  # the random initialisation costs nothing: it draws no numbers
    assert card["kind"] == "net" and not loaded.training
    for (name, a), (_, b) in zip(saved.state_dict().items(), loaded.state_dict().items(), strict=True):
        assert torch.equal(a, b) and not b.is_meta, name
    assert all(p.requires_grad for p in loaded.parameters())  # joint_tune trains a loaded model on


def test_a_model_with_a_tensor_outside_its_state_dict_is_named(tmp_path):
    artifacts.save(tmp_path, FOLDER, Net(), {"kind": "net"})
    with pytest.raises(RuntimeError, match=r"Net: \['table'\] are not in its state dict"):
        artifacts.load(tmp_path, FOLDER, lambda card: Net(plain_table=True))
