"""``import roll_models`` registers InternLM2 with transformers' Auto classes without importing
its code (as transformers does for its own models), and every way transformers then loads it
imports the right classes: checked in a fresh process, whose ``sys.modules`` says what an import
really pulled in."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

CHECK = r"""
import json, sys, tempfile

def loaded():
    names = ("roll_models.internlm2.configuration_internlm2", "roll_models.internlm2.modeling_internlm2",
             "transformers.modeling_utils", "transformers.models.auto.modeling_auto")
    return [name for name in names if name in sys.modules]

import roll_models

report = {"after_import": loaded()}
import torch
from transformers import AutoConfig, AutoModelForCausalLM

small = dict(vocab_size=64, hidden_size=64, intermediate_size=64, num_hidden_layers=1,
             num_attention_heads=2, num_key_value_heads=1, bias=False)
config = AutoConfig.for_model("internlm2", **small)
report["for_model"] = type(config).__module__ + "." + type(config).__qualname__
report["after_config"] = loaded()
model = AutoModelForCausalLM.from_config(config)
report["from_config"] = type(model).__module__ + "." + type(model).__qualname__

# a hub checkpoint: its config names the remote code in auto_map
path = tempfile.mkdtemp()
model.save_pretrained(path)
with open(path + "/config.json") as f:
    hub = json.load(f)
hub["auto_map"] = {"AutoConfig": "configuration_internlm2.InternLM2Config",
                   "AutoModelForCausalLM": "modeling_internlm2.InternLM2ForCausalLM"}
with open(path + "/config.json", "w") as f:
    json.dump(hub, f)
loaded_model = AutoModelForCausalLM.from_pretrained(path, trust_remote_code=False)
report["from_pretrained"] = type(loaded_model).__qualname__
with torch.no_grad():
    tokens = torch.arange(8)[None]
    report["same_logits"] = bool(torch.equal(model(tokens).logits, loaded_model(tokens).logits))
print(json.dumps(report))
"""

DIRECT = r"""
import json
from roll_models.internlm2 import InternLM2Config  # the config class, imported by hand first
from transformers import AutoModelForCausalLM

config = InternLM2Config(vocab_size=64, hidden_size=64, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=1, bias=False)
print(json.dumps(type(AutoModelForCausalLM.from_config(config)).__qualname__))
"""


def _run(code: str):
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_import_registers_without_importing_the_family_and_loads_on_use():
    report = _run(CHECK)
    assert report["after_import"] == []  # neither our modules nor transformers' modeling code
    assert report["for_model"] == "roll_models.internlm2.configuration_internlm2.InternLM2Config"
    assert "roll_models.internlm2.modeling_internlm2" not in report["after_config"]  # a config alone
    assert report["from_config"] == "roll_models.internlm2.modeling_internlm2.InternLM2ForCausalLM"
    assert report["from_pretrained"] == "InternLM2ForCausalLM"  # ours, not the hub's remote code
    assert report["same_logits"]


def test_a_config_class_imported_directly_builds_its_model_through_the_auto_class():
    assert _run(DIRECT) == "InternLM2ForCausalLM"


@pytest.mark.parametrize("name", ["InternLM2ForCausalLM", "InternLM2Model", "InternLM2PreTrainedModel"])
def test_the_family_package_still_exports_its_model_classes(name):
    import roll_models.internlm2 as family
    from roll_models.internlm2 import modeling_internlm2

    assert getattr(family, name) is getattr(modeling_internlm2, name)
