"""Cost of the task-accuracy evaluation (greedy decoding of validation prompts): one prompt at a time against
all prompts in one right-padded batch, on the stages preset's model and task, in one process, alternating
rounds so background load hits both alike. The model is briefly trained on the task by SFT first, so that its
answers stop at the end-of-answer token as a trained model's do (a batch stops once every row has).
Prints one JSON line:
  {"name": "task_eval_cost", "prompts", "new_tokens", "one_by_one_seconds", "batched_seconds", "speedup",
   "same_answers", ...}
same_answers: every prompt's greedy completion is identical both ways.

  OMP_WAIT_POLICY=PASSIVE python benchmarks/task_eval_cost.py [--prompts 32] [--sft-steps 30] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import os
import time

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402
from _device import describe  # noqa: E402

from sparsecl.config import arm_configs, load_experiment  # noqa: E402

ROW_KEYS = ("name", "prompts", "one_by_one_seconds", "batched_seconds", "speedup", "same_answers")
QUICK_ARGS = ["--prompts", "4", "--sft-steps", "1", "--repeats", "1"]  # the smoke run tests/test_benchmarks.py makes


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--prompts", type=int, default=32, help="validation prompts decoded")
    ap.add_argument("--sft-steps", type=int, default=30, help="SFT steps on the task before timing")
    ap.add_argument("--repeats", type=int, default=3, help="rounds of (one by one, batched)")
    args = ap.parse_args()
    torch.set_num_threads(1)

    from sparsecl.model.optim import build_optimizer
    from sparsecl.sparse.build import build_model
    from sparsecl.train.objectives.sampling import answer_text, complete, complete_batch, prompt_tokens
    from sparsecl.train.objectives.sft import draw_pairs, sft_batch
    from sparsecl.train.runner import load_all_domains

    data, arms = load_experiment(None, ["device=cpu", "probes=[]", "sparse.density=1.0"], "stages")
    cfg = arm_configs(data, arms)[0]
    task = cfg.schedule[-1].domains[0]
    dom = load_all_domains([cfg])[0][task]
    torch.manual_seed(0)
    model = build_model(cfg, torch.device("cpu"))[0]
    opt = build_optimizer(model, cfg.train)
    gen = torch.Generator().manual_seed(0)
    for _ in range(args.sft_steps):
        x, y = sft_batch(draw_pairs([dom], cfg.train.batch_size, gen), cfg.model.block_size, dom.tokenizer)
        loss = model.loss(x, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    model.eval()
    assert dom.pairs is not None
    new, block = cfg.rl.completion_length, cfg.model.block_size
    prompts = [prompt_tokens(p, block, new, dom.tokenizer) for p, _ in dom.pairs["val"][:args.prompts]]
    one_s, batch_s = [], []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        single = [answer_text(complete(model, p, 1, new, None)[0], dom.tokenizer) for p in prompts]
        one_s.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        batched = [answer_text(c, dom.tokenizer) for c in complete_batch(model, prompts, new, None)]
        batch_s.append(time.perf_counter() - t0)
    one, bat = sorted(one_s)[len(one_s) // 2], sorted(batch_s)[len(batch_s) // 2]
    print(json.dumps({"name": "task_eval_cost", "preset": "stages", "task": task, "prompts": len(prompts),
                      "new_tokens": new, "sft_steps": args.sft_steps, "one_by_one_seconds": round(one, 4),
                      "batched_seconds": round(bat, 4), "speedup": round(one / bat, 2),
                      "same_answers": single == batched, **describe(torch.device("cpu"), 1)}))


if __name__ == "__main__":
    main()
