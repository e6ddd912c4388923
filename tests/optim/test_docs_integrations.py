"""docs/integrations.md's snippets, run as written. The distributed ones (DDP, FSDP2, ZeRO) run
in test_sharded.py's two gloo processes. Lightning and the Hugging Face Trainer come with the
``dev`` extra (so CI runs their recipes); a user's install without them skips those two."""

from __future__ import annotations

import os
import re
import warnings

import pytest

from apollo_optim import WarmupLRWarning
from tests.optim.docs_snippets import DOC, run_snippet, snippet

pytestmark = pytest.mark.filterwarnings("ignore:Using backward\\(\\) with create_graph=True")


def test_every_snippet_in_the_doc_is_run_by_a_test():
    names = re.findall(r"<!-- snippet: (\w+) -->", DOC.read_text(encoding="utf-8"))
    run_here = {"plain", "dcp", "compile", "amp", "lightning", "transformers"}
    run_distributed = {"ddp", "fsdp2", "zero"}  # test_sharded.py
    assert sorted(names) == sorted(run_here | run_distributed)


@pytest.mark.parametrize("name", ["plain", "dcp", "amp"])
def test_snippet_runs(name):
    with warnings.catch_warnings():
        # the library's own warning (a warmup the scheduler overrides) means a wrong recipe;
        # torch's warnings vary with its version
        warnings.simplefilter("error", WarmupLRWarning)
        run_snippet(name)


def test_compile_snippet_compiles_at_most_twice():
    import torch
    from torch._dynamo.testing import CompileCounter

    counter = CompileCounter()
    # the snippet as written, with Dynamo's eager backend: the same guards and recompiles,
    # without Inductor's code generation (tens of seconds on a small CPU)
    code = snippet("compile").replace("@torch.compile\n", "@torch.compile(backend=counter)\n")
    assert code != snippet("compile")
    torch._dynamo.reset()
    exec(compile(code, f"{DOC}:compile", "exec"), {"counter": counter})
    assert 1 <= counter.frame_count <= 2  # the first call creates the state


def test_snippets_import_only_torch_the_library_and_their_framework():
    allowed = {"torch", "apollo_optim", "math", "tempfile"}
    for name in re.findall(r"<!-- snippet: (\w+) -->", DOC.read_text(encoding="utf-8")):
        imported = re.findall(r"^(?:import|from) (\w+)", snippet(name), re.M)
        framework = {"lightning": {"lightning"}, "transformers": {"transformers"}}.get(name, set())
        assert set(imported) <= allowed | framework, (name, imported)


@pytest.mark.parametrize("name", ["lightning", "transformers"])
def test_framework_snippet_runs_where_installed(name, tmp_path, monkeypatch):
    pytest.importorskip(name)
    if name == "transformers":
        pytest.importorskip("accelerate")  # the Trainer's dependency
    monkeypatch.chdir(tmp_path)  # the Trainer writes its output_dir
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    namespace = run_snippet(name)
    if name == "transformers":  # recipe 3 took every step with AdaHessian
        opt = namespace["opt"]
        assert type(opt).__name__ == "AdaHessian"
        steps = [s["step"].item() for s in opt.state.values()]
        assert steps and all(s == 20 for s in steps), steps


def test_sdpa_double_backward_limitation_and_its_documented_workaround():
    """The fused CPU attention kernel has no second derivative; the math backend has."""
    import torch
    import torch.nn.functional as F
    from torch.nn.attention import SDPBackend, sdpa_kernel

    from apollo_optim import AdaHessian

    proj = torch.nn.Linear(8, 24)
    x = torch.randn(2, 5, 8)
    opt = AdaHessian(proj.parameters(), lr=0.1)

    def loss():
        q, k, v = (t.unsqueeze(1) for t in proj(x).chunk(3, -1))
        return F.scaled_dot_product_attention(q, k, v).pow(2).mean()

    loss().backward(create_graph=True)
    with pytest.raises(RuntimeError, match=r"derivative for .*scaled_dot_product"):
        opt.step()
    assert "scaled_dot_product_flash_attention_for_cpu_backward" in DOC.read_text("utf-8")
    opt.zero_grad(set_to_none=True)
    with sdpa_kernel(SDPBackend.MATH):
        loss().backward(create_graph=True)
    opt.step()
