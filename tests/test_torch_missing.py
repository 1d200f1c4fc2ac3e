"""Without torch: a `framework: torch` config and `cnngrad.check_layer` say how to install it
(one line, exit 2), and `import cnngrad` never imports torch.  Runs whether torch is
installed or not (hidden from a subprocess with ``sys.modules['torch'] = None``)."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

HIDE_TORCH = "import sys; sys.modules['torch'] = None\n"


def python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)


def torch_config(folder: Path) -> Path:
    (folder / "nets.py").write_text("import torch\n\nclass Block(torch.nn.Module):\n    pass\n")
    cfg = folder / "block.yaml"
    cfg.write_text("input: {batch: 2, channels: 2, height: 5, width: 5}\n"
                   "layers:\n  - conv: {filters: 2, kernel: 1}\n"
                   "  - custom: {class: \"nets:Block\", framework: torch, channels: 2}\n"
                   "  - flatten: {}\n  - dense: {units: 3}\nloss: softmax_cross_entropy\n")
    return cfg


def test_a_torch_config_without_torch_says_how_to_install_it(tmp_path):
    cfg = torch_config(tmp_path)
    proc = python(HIDE_TORCH + f"sys.argv = ['cnngrad', 'check', {str(cfg)!r}, '--plugins']\n"
                               "from cnngrad.cli import main\nmain()")
    assert proc.returncode == 2, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and "Traceback" not in proc.stderr
    assert "layers[1].custom.framework" in proc.stderr and "pip install 'cnngrad[torch]'" in proc.stderr
    # a numpy config in the same process still runs: nothing else needs torch
    proc = python(HIDE_TORCH + "sys.argv = ['cnngrad', 'check', 'smooth', '--samples', '3']\n"
                               "from cnngrad.cli import main\nmain()")
    assert proc.returncode == 0, proc.stderr


def test_check_layer_without_torch_says_how_to_install_it():
    proc = python(HIDE_TORCH + "import cnngrad\ntry:\n    cnngrad.check_layer(object, (1, 2, 2))\n"
                               "except ImportError as e:\n    print(e)\n")
    assert "pip install 'cnngrad[torch]'" in proc.stdout, proc.stderr


def test_import_cnngrad_does_not_import_torch():
    proc = python("import json, sys, cnngrad; cnngrad.check_layer; print(json.dumps('torch' in sys.modules))")
    assert json.loads(proc.stdout) is False, proc.stderr
