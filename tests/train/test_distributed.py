"""Two gloo processes under torchrun (the launcher used on GPUs too) train a tiny model."""
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import torch

WORKER = textwrap.dedent("""
    import sys
    from pathlib import Path

    import torch
    import torch.distributed as dist

    sys.path.insert(0, {root!r})
    from tests.train.helpers import ENC, tiny_arrays, tiny_config
    from echo.train import distributed
    from echo.train.pretrain import JEPATrainer

    out = Path(sys.argv[1])
    trainer = JEPATrainer(tiny_config(steps=4, batch_size=4), ENC, tiny_arrays(), out / "run")
    assert trainer.ctx.world_size == 2 and dist.get_backend() == "gloo"
    trainer.train()
    torch.save({{"model": trainer.model.state_dict(), "target": trainer.target.state_dict(),
                "first_batch": trainer.loader.batch(0).mels}}, out / f"rank{{trainer.ctx.rank}}.pt")
    distributed.teardown(trainer.ctx)
""")


def test_two_process_replicas_stay_identical_and_match_one_process(tmp_path):
    script = tmp_path / "worker.py"
    script.write_text(WORKER.format(root=str(Path(__file__).resolve().parents[2])))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                           str(script), str(tmp_path)], env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    assert not torch.equal(r0["first_batch"], r1["first_batch"])  # each rank trains on its own shard
    for part in ("model", "target"):
        for k, v in r0[part].items():
            assert torch.equal(v, r1[part][k]), f"{part}.{k} differs between replicas"
    assert (tmp_path / "run" / "encoder.pt").exists()

    # 2 ranks x 4 crops = one process x 8 crops: same global batch, same masks, averaged gradients
    from tests.train.helpers import ENC, tiny_arrays, tiny_config

    from echo.train.pretrain import JEPATrainer

    # same thread count as the workers (OMP_NUM_THREADS=1): float sums then group the same way
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        single = JEPATrainer(tiny_config(steps=4, batch_size=8), ENC, tiny_arrays(), tmp_path / "single")
        single.train()
    finally:
        torch.set_num_threads(threads)
    for k, v in single.model.state_dict().items():
        torch.testing.assert_close(r0["model"][k], v, rtol=1e-4, atol=1e-5, msg=k)
