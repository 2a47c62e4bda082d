#!/usr/bin/env python3
"""Turns a bench/run.sh Markdown report into JSON and PNG bar charts (gnuplot):
  bench/plot.py bench/results/http1-DATE.md
writes http1-DATE.json, http1-DATE-rps.png (req/s per server and scenario, log scale) and
http1-DATE-cpu.png (server CPU µs per request) next to it."""
import json, os, re, subprocess, sys, tempfile

src = sys.argv[1]
base = os.path.splitext(src)[0]
rows = []
for line in open(src, encoding="utf-8"):
    cells = [c.strip() for c in line.strip().strip("|").split("|")]
    if len(cells) < 10 or cells[0] in ("server", "") or cells[0].startswith("-"):
        continue
    num = lambda s: float(re.sub(r"[^0-9.]", "", s)) if re.search(r"[0-9]", s) else None
    rows.append({"server": cells[0], "scenario": cells[1], "rps": num(cells[2]),
                 "vs_nginx": num(cells[3]), "p50": cells[4], "p99": cells[5],
                 "cpu_us_per_req": num(cells[6]), "vs_noop": num(cells[7]),
                 "server_core_busy": cells[8], "idle_rss": cells[9]})
json.dump({"source": os.path.basename(src), "rows": rows}, open(base + ".json", "w"), indent=1)

servers = list(dict.fromkeys(r["server"] for r in rows))
scenarios = list(dict.fromkeys(r["scenario"] for r in rows))
with tempfile.TemporaryDirectory() as tmp:
    dat = os.path.join(tmp, "d.dat")
    for key, out, ylabel, log in (("rps", "-rps.png", "requests/s", True),
                                  ("cpu_us_per_req", "-cpu.png", "server CPU µs per request", False)):
        with open(dat, "w") as f:
            f.write("scenario " + " ".join('"%s"' % s for s in servers) + "\n")
            for sc in scenarios:
                vals = [next((r[key] for r in rows if r["server"] == s and r["scenario"] == sc), 0)
                        for s in servers]
                f.write('"%s" ' % sc + " ".join(str(v or 0) for v in vals) + "\n")
        cols = " , ".join("'%s' using %d:xtic(1) title columnheader(%d)" % (dat, i + 2, i + 2)
                          for i in range(len(servers)))
        script = f"""set terminal pngcairo size 900,480
set output '{base + out}'
set style data histograms
set style histogram cluster gap 1
set style fill solid 0.8 border -1
set key top left
set ylabel '{ylabel}'
set grid ytics
{'set logscale y' if log else 'set yrange [0:*]'}
plot {cols}
"""
        subprocess.run(["gnuplot"], input=script.encode(), check=True)
print("wrote", base + ".json", base + "-rps.png", base + "-cpu.png")
