import importlib.util
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# Data kept beside the checkout, never copied into it.
FIXTURES = REPO.parent / 'shared' / 'fixtures'

# Non-default widths, heads and depths for transformers' CvT (it indexes its
# drop-path rates by stage, so each stage needs more blocks than its index).
HF_ARCH = dict(embed_dims=[24, 48, 96], num_heads=[2, 3, 4], depths=[1, 2, 3])


def relative_error(out, ref):
    """||out - ref|| / ||ref||"""
    return ((out - ref).norm() / ref.norm()).item()


def load_tool(path):
    """Imports a script under tools/ (not a package) as a module."""
    spec = importlib.util.spec_from_file_location(
        path.replace('/', '_').removesuffix('.py'), REPO / 'tools' / path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
