"""The runtime and `sdc --help` work where Paddle cannot be imported (a blocker stands in for its absence)."""

from __future__ import annotations

import subprocess
import sys

# Every attempt is recorded, not only refused: a runtime that caught the ImportError and went on would
# still pass a test that only checked sys.modules, so the tests assert that nothing even tried.
BLOCK = """
import atexit, sys
ATTEMPTS = []
class _Block:
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] in ('paddle', 'paddle2onnx', 'torch', 'tensorrt'):
            ATTEMPTS.append(name)
            raise ImportError('blocked for this test: ' + name)
sys.meta_path.insert(0, _Block())
atexit.register(lambda: print('import attempts:', sorted(set(ATTEMPTS))))
"""


def run(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", BLOCK + code], capture_output=True, text=True)


def test_cli_help_without_paddle():
    p = run("import sys; sys.argv=['sdc','--help']\nfrom sdc.cli import main\nmain()")
    assert p.returncode == 0, p.stderr
    for cmd in ("build", "generate", "inspect", "verify"):
        assert cmd in p.stdout
    assert "import attempts: []" in p.stdout, p.stdout[-500:]


def test_runtime_generates_without_paddle(bundles):
    code = f"""
import sdc.runtime
pipe = sdc.runtime.load({str(bundles['sd1-tiny'])!r}, provider='cpu')
img = pipe('a red car', num_inference_steps=2, seed=0, output_type='np')
assert img.shape == (1, 64, 64, 3), img.shape
assert 'paddle' not in sys.modules
print('ok')
"""
    p = run(code)
    assert p.returncode == 0, p.stderr[-3000:]
    assert "ok\nimport attempts: []" in p.stdout, p.stdout[-500:]
