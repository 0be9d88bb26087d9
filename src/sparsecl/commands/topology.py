"""`sparsecl topology`: draw a config's masks and print the topology report (no training)."""

from __future__ import annotations

import argparse

from sparsecl.config import load_experiment, preset_names
from sparsecl.errors import UserError
from sparsecl.store.atomic import atomic_write_json

EPILOG = """\
examples:
  sparsecl topology --preset quickstart sparse.density=0.05 sparse.topology=expander
  sparsecl topology my.yaml sparse.topology=brf sparse.brf_r=0.25 --json topo.json

topologies (sparse.topology):
  er        exactly round(rho*out*in) links, uniformly at random
  brf       bipartite receptive field: sparse.brf_r in [0, 1] (0 = band, 1 = uniform random),
            sparse.brf_degree fixed|random
  expander  random (near-)biregular graph, degree-preserving swaps; sparse.expander_degree near (default:
            exact link count, row/column degrees d or d+1) | exact (strictly biregular, nearest feasible density)
  nm        N of every M consecutive inputs (sparse.nm_n, sparse.nm_m); needs density = nm_n/nm_m
  block     random b x b blocks (sparse.block)
sparse.min_degree k (er, brf, expander): every row and column keeps >= k links (error if the density is too low).
allocations (sparse.allocation): uniform | erk.  matching (sparse.matching): shape | params | masked_params.

Per layer: density, row/column degree min/mean/max, dead rows/columns, sigma2 (second singular value of
the 0/1 mask) against the Ramanujan bound sqrt(d_r-1)+sqrt(d_c-1) (mean degrees; near-biregular masks
differ from them by under one link), the spectral gap 1 - sigma2/sigma1, and the realised density against
the target (deviation in %). Every `sparsecl run` also saves this report as <run>/topology.json.
"""


def register(sub: argparse._SubParsersAction) -> None:
    r = sub.add_parser("topology", help="print the connection masks' topology report for a config",
                       description="Draw the masks a config describes (for its seed, after matching) and print "
                       "per-layer degree and spectral statistics.",
                       epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    r.add_argument("config", nargs="?", help="YAML config file (optional with --preset)")
    r.add_argument("overrides", nargs="*", help="key=value overrides, e.g. sparse.density=0.1")
    r.add_argument("--preset", help=f"start from a named preset: {', '.join(preset_names())}")
    r.add_argument("--arm", help="with several arms, report this one (default: every arm)")
    r.add_argument("--json", metavar="FILE", help="also write the report(s) as JSON to FILE")
    r.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import torch  # lazy: keeps --help torch-free

    from sparsecl.model.gpt import GPT  # lazy: keeps --help torch-free
    from sparsecl.sparse.apply import draw_masks  # lazy: keeps --help torch-free
    from sparsecl.sparse.matching import resolve_matching  # lazy: keeps --help torch-free
    from sparsecl.sparse.report import plan_backends, report_table, topology_report  # lazy: keeps --help torch-free
    from sparsecl.train.validate import checked_configs  # lazy: keeps --help torch-free

    config = args.config
    overrides = list(args.overrides)
    if config and "=" in config and not config.endswith((".yaml", ".yml")):
        overrides.insert(0, config)
        config = None
    if not config and not args.preset:
        overrides = overrides or []
        # a bare command reports the default model, so `sparsecl topology sparse.density=0.1` works alone
        overrides.insert(0, "schedule=code")
    data, arms = load_experiment(config, overrides, args.preset)
    cfgs = checked_configs(data, arms)
    if args.arm:
        cfgs = [c for c in cfgs if c.name == args.arm or c.group == args.arm]
        if not cfgs:
            raise UserError(f"no arm named '{args.arm}'; the config's arms are {[a.name for a in arms]}")
    reports = {}
    for cfg in cfgs:
        match = resolve_matching(cfg.model, cfg.sparse)
        with torch.device("meta"):  # shapes only: masks are drawn on the CPU
            model = GPT(match.model)
        drawn = list(draw_masks(model, cfg.sparse, cfg.seed))
        masks = {n: m for n, _, m in drawn}
        device = torch.device("cuda" if cfg.device in ("cuda", "auto") and torch.cuda.is_available() else "cpu")
        plan = plan_backends(model, cfg.sparse, masks, device, cfg.train.batch_size * cfg.model.block_size)
        rep = topology_report(masks, cfg.sparse, {n: rho for n, rho, _ in drawn},
                              {n: c.backend for n, c in plan.items()}, {n: c.reason for n, c in plan.items()})
        rep.update(match.summary())
        reports[cfg.name] = rep
        print(f"== {cfg.name} (seed {cfg.seed}, d_model {match.model.d_model}, d_ff {match.model.hidden}, "
              f"dense reference {match.dense_reference_params:,} params, this model {match.nonzero_params:,})")
        print(report_table(rep))
        print()
    if args.json:
        atomic_write_json(args.json, reports if len(reports) > 1 else next(iter(reports.values())))
    return 0
