"""The pod table (docs/pods.md, BENCHMARKS.md) from the JSON files of --mode=compile in
benchmarks/results/compile (benchmarks/compile_table.sh writes them).

  python benchmarks/compile_table.py [DIR]
"""
import glob
import json
import os
import re
import sys

GIB = 2**30


def seconds(times: str) -> dict:
  """{(config, slice, dtype, remat): wall seconds} from compile_table.sh's times.txt."""
  out = {}
  for line in open(times) if os.path.exists(times) else ():
    match = re.search(r'(\w+):([\w-]+):(\w+):(True|False):\S* (\d+) s', line)
    if match:
      config, tpu, dtype, remat, secs = match.groups()
      out[(config, tpu, dtype, remat == 'True')] = int(secs)
  return out


def rows(directory: str):
  times = seconds(os.path.join(directory, 'times.txt'))
  for path in sorted(glob.glob(os.path.join(directory, 'compile_*.json'))):
    r = json.load(open(path))
    c, step = r['config'], r['programs']['train_step']
    config = 'imagenet128' if c['image_size'] == 128 else 'cifar10'
    m = step['memory']
    e = step.get('estimate')
    b = r.get('max_batch')
    yield {
        'order': (config != 'imagenet128', c['dtype'] != 'bfloat16', c['remat'],
                  r['slice'].split('-')[0], r['chips']),
        'config': config, 'slice': r['slice'], 'chips': r['chips'], 'hosts': r['processes'],
        'batch': c['batch_size'], 'dtype': c['dtype'], 'remat': c['remat'],
        'fits': 'yes' if step['fits'] else '**no**', 'gib': m['peak'] / GIB,
        'hbm': step['hbm'] / GIB,
        'max_per_chip': b['per_device'] if b else None,
        'ms': e['seconds'] * 1e3 if e else None, 'images_per_s': e['images_per_s'] if e else None,
        'bound': e['bound'] if e else '', 'gflop': step.get('flops', 0) / 1e9,
        'all_reduce': step.get('collectives', {}).get('all-reduce', {}).get('count'),
        'compile_s': step['compile_s'],
        'wall_s': times.get((config, r['slice'], c['dtype'], c['remat'])),
        'flags': (f"--config=configs/{config}.py --topology={r['slice']} "
                  f"--config.dtype={c['dtype']}" + (' --config.remat=True' if c['remat'] else '')
                  + (f" --config.batch_size={c['batch_size']}"
                     if c['batch_size'] != {'imagenet128': 256, 'cifar10': 64}[config] else '')
                  + (' --max_batch' if b else '')),
    }


def table(directory: str) -> str:
  lines = ['| config | slice (chips, hosts) | batch, dtype | fits | GiB per chip (of HBM) | '
           'largest batch per chip | est. step ms | est. images/s | bound by | GFLOP per chip | '
           'all-reduces | compile s | command: `python main.py --mode=compile '
           '--nocompile_evaluation` and |',
           '|---|---|---|---|---|---|---|---|---|---|---|---|---|']
  for r in sorted(rows(directory), key=lambda r: r['order']):
    opt = lambda v, f: f.format(v) if v is not None else '-'
    lines.append(
        f"| {r['config']} | {r['slice']} ({r['chips']}, {r['hosts']}) | {r['batch']}, "
        f"{r['dtype']}{', remat' if r['remat'] else ''} | {r['fits']} | {r['gib']:.2f} "
        f"({r['hbm']:.0f}) | {opt(r['max_per_chip'], '{}')} | {opt(r['ms'], '{:,.0f}')} | "
        f"{opt(r['images_per_s'], '{:,.0f}')} | {r['bound']} | {r['gflop']:,.0f} | "
        f"{opt(r['all_reduce'], '{}')} | {r['compile_s']:.0f} | `{r['flags']}` |")
  return '\n'.join(lines)


if __name__ == '__main__':
  print(table(sys.argv[1] if len(sys.argv) > 1 else os.path.join(
      os.path.dirname(os.path.abspath(__file__)), 'results', 'compile')))
